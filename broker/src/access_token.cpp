// Access token verification: strict JWS decode, typ at+jwt, published kid, signature, iss, exp/iat; cached.
#include "smartbroker/broker/access_token.hpp"

#include <Poco/JSON/Stringifier.h>
#include <openssl/sha.h>

#include <sstream>

#include "jws.hpp"

namespace smartbroker::broker {

std::string_view rejectionName(TokenRejection rejection) {
  switch (rejection) {
    case TokenRejection::Malformed: return "malformed";
    case TokenRejection::NotAccessToken: return "not_access_token";
    case TokenRejection::UnknownKey: return "unknown_key";
    case TokenRejection::BadSignature: return "bad_signature";
    case TokenRejection::WrongIssuer: return "wrong_issuer";
    case TokenRejection::MissingClaim: return "missing_claim";
    case TokenRejection::Expired: return "expired";
    case TokenRejection::NotYetValid: return "not_yet_valid";
  }
  return "unknown";
}

AccessTokenVerifier::AccessTokenVerifier(std::string issuer, const KeyringHolder& keys, const Clock& clock,
                                         std::int64_t clockSkew, std::size_t cacheCapacity)
    : issuer_(std::move(issuer)),
      keys_(keys),
      clock_(clock),
      skew_(clockSkew),
      perShard_(std::max<std::size_t>(1, cacheCapacity / kShards)) {}

bool AccessTokenVerifier::keyPublished(const std::string& kid) const {
  const auto keys = keys_.get();
  for (const jwks::PublicKey& key : keys->published) {
    if (key.kid == kid) {
      return true;
    }
  }
  return false;
}

std::expected<std::shared_ptr<const TokenClaims>, TokenRejection> AccessTokenVerifier::verify(std::string_view token,
                                                                                             bool allowExpired) const {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  std::string key(reinterpret_cast<const char*>(digest), sizeof digest);
  Shard& shard = shards_[digest[0] % kShards];
  const std::int64_t now = clock_.now();

  std::shared_ptr<const TokenClaims> claims;
  {
    std::lock_guard lock(shard.mutex);
    const auto it = shard.entries.find(key);
    if (it != shard.entries.end()) {
      claims = it->second;
    }
  }
  if (!claims) {
    auto verified = verifyUncached(token);
    if (!verified) {
      return verified;
    }
    claims = *verified;
    std::lock_guard lock(shard.mutex);
    if (shard.entries.emplace(key, claims).second) {
      shard.order.push_back(std::move(key));
      // Bounded: the oldest entry goes first (tokens live minutes; FIFO is close to LRU here).
      while (shard.order.size() > perShard_) {
        shard.entries.erase(shard.order.front());
        shard.order.pop_front();
      }
    }
  }
  // Checked on every use, cached or not: a token expires, and a key can be revoked, after it was cached.
  if (!keyPublished(claims->kid)) {
    return std::unexpected(TokenRejection::UnknownKey);
  }
  if (!allowExpired && claims->exp <= now) {
    return std::unexpected(TokenRejection::Expired);
  }
  if (claims->iat > now + skew_) {
    return std::unexpected(TokenRejection::NotYetValid);
  }
  return claims;
}

std::expected<std::shared_ptr<const TokenClaims>, TokenRejection> AccessTokenVerifier::verifyUncached(
    std::string_view token) const {
  auto decoded = jws::decode(token);
  if (!decoded) {
    return std::unexpected(TokenRejection::Malformed);
  }
  const auto& header = *decoded->header;
  const auto typ = jws::stringMember(header, "typ");
  if (!typ || !(jws::equalsIgnoreCase(*typ, "at+jwt") || jws::equalsIgnoreCase(*typ, "application/at+jwt"))) {
    return std::unexpected(TokenRejection::NotAccessToken);
  }
  const auto kid = jws::stringMember(header, "kid");
  const auto algName = jws::stringMember(header, "alg");
  const auto alg = algName ? jwks::algFromName(*algName) : std::nullopt;
  if (!kid || !alg || header.has("crit")) {
    return std::unexpected(TokenRejection::Malformed);
  }
  const auto keys = keys_.get();
  const jwks::PublicKey* key = nullptr;
  for (const jwks::PublicKey& candidate : keys->published) {
    if (candidate.kid == *kid && candidate.fits(*alg)) {
      key = &candidate;
    }
  }
  if (key == nullptr) {
    return std::unexpected(TokenRejection::UnknownKey);
  }
  if (!jwks::verifySignature(*key, *alg, decoded->signingInput, decoded->signature)) {
    return std::unexpected(TokenRejection::BadSignature);
  }
  const auto& payload = *decoded->payload;
  auto claims = std::make_shared<TokenClaims>();
  const auto iss = jws::stringMember(payload, "iss");
  if (!iss || *iss != issuer_) {
    return std::unexpected(TokenRejection::WrongIssuer);
  }
  claims->iss = *iss;
  const auto jti = jws::stringMember(payload, "jti");
  const auto clientId = jws::stringMember(payload, "client_id");
  const auto sub = jws::stringMember(payload, "sub");
  const auto scope = jws::stringMember(payload, "scope");
  if (!jti || !clientId || !sub || !scope || !payload.has("aud") ||
      jws::numericDate(payload, "exp", claims->exp) != jws::NumericDate::Valid ||
      jws::numericDate(payload, "iat", claims->iat) != jws::NumericDate::Valid) {
    return std::unexpected(TokenRejection::MissingClaim);
  }
  claims->jti = *jti;
  claims->client_id = *clientId;
  claims->sub = *sub;
  claims->scope = *scope;
  claims->kid = *kid;
  if (payload.has("consent")) {
    // Our own claim, signed by us: an array of consent id strings (README "Consent").
    const auto consent = payload.getArray("consent");
    if (!consent) {
      return std::unexpected(TokenRejection::MissingClaim);
    }
    for (std::size_t i = 0; i < consent->size(); ++i) {
      const Poco::Dynamic::Var id = consent->get(static_cast<unsigned>(i));
      if (!id.isString()) {
        return std::unexpected(TokenRejection::MissingClaim);
      }
      claims->consent_ids.push_back(id.extract<std::string>());
    }
  }
  std::ostringstream aud;
  Poco::JSON::Stringifier::stringify(payload.get("aud"), aud);
  claims->aud_json = aud.str();
  return claims;
}

}  // namespace smartbroker::broker
