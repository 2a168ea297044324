// Authenticating a client by its signed JWT assertion: the steps of SPEC.md "Authenticating the assertion".
#include "smartbroker/broker/client_auth.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>

#include "jws.hpp"

namespace smartbroker::broker {
namespace {

using Poco::JSON::Object;
using jws::equalsIgnoreCase;
using jws::NumericDate;
using jws::numericDate;
using jws::stringMember;

constexpr std::size_t kMaxJti = 255;

std::unexpected<Denial> deny(DenyReason reason, std::string detail = {}, std::string clientId = {}) {
  return std::unexpected(Denial{reason, std::move(detail), std::move(clientId)});
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3); it must name `audience` exactly.
bool audienceMatches(const Object& payload, const std::string& audience, bool& present) {
  const Poco::Dynamic::Var aud = payload.get("aud");
  present = !aud.isEmpty();
  if (aud.isString()) {
    return aud.extract<std::string>() == audience;
  }
  if (aud.type() == typeid(Poco::JSON::Array::Ptr)) {
    const auto array = aud.extract<Poco::JSON::Array::Ptr>();
    for (std::size_t i = 0; array && i < array->size(); ++i) {
      const Poco::Dynamic::Var entry = array->get(static_cast<unsigned int>(i));
      if (entry.isString() && entry.extract<std::string>() == audience) {
        return true;
      }
    }
  }
  return false;
}

/// Step 2 (the part that needs no registration): which alg the header claims, refusing none and HMAC outright.
std::expected<jwks::Alg, Denial> headerAlg(const Object& header) {
  const auto alg = stringMember(header, "alg");
  if (!alg) {
    return deny(DenyReason::AlgMissing);
  }
  if (equalsIgnoreCase(*alg, "none")) {
    return deny(DenyReason::AlgNone);
  }
  // HS* keyed with a public key is the classic key-confusion attack (RFC 8725 §2.1): refused by name.
  if (alg->size() >= 2 && equalsIgnoreCase(alg->substr(0, 2), "HS")) {
    return deny(DenyReason::AlgSymmetric, *alg);
  }
  const auto known = jwks::algFromName(*alg);
  if (!known) {
    return deny(DenyReason::AlgUnsupported, *alg);
  }
  return *known;
}

}  // namespace

std::expected<KeyMatch, std::string> InlineKeySource::find(const Client& client, std::string_view kid, jwks::Alg alg) {
  KeyMatch match;
  match.set = client.jwks;
  if (!match.set) {
    return std::unexpected("client has no inline keys");
  }
  for (const jwks::PublicKey& key : match.set->keys) {
    if (key.kid == kid && key.fits(alg)) {
      match.keys.push_back(&key);
    }
  }
  return match;
}

ClientAuthenticator::ClientAuthenticator(AssertionPolicy policy, const RegistryHolder& registry,
                                         ClientKeySource& keys, const Clock& clock, const TokenState* state)
    : policy_(std::move(policy)), registry_(registry), keys_(keys), clock_(clock), state_(state) {}

std::expected<VerifiedAssertion, Denial> ClientAuthenticator::verify(
    std::string_view assertion, std::optional<std::string_view> clientIdParam) const {
  // 1. Structure, bounded before any decoding work.
  if (assertion.size() > policy_.max_bytes) {
    return deny(DenyReason::AssertionTooLarge, std::to_string(assertion.size()) + " bytes");
  }
  auto decoded = jws::decode(assertion);
  if (!decoded) {
    switch (decoded.error()) {
      case jws::DecodeError::Structure:
        return deny(DenyReason::MalformedJwt, "not three base64url parts with a non-empty header and payload");
      case jws::DecodeError::Header:
        return deny(DenyReason::MalformedHeader);
      case jws::DecodeError::Payload:
        return deny(DenyReason::MalformedPayload);
    }
  }
  const Object& header = *decoded->header;
  const Object& payload = *decoded->payload;

  // 2. Header.
  auto alg = headerAlg(header);
  if (!alg) {
    return std::unexpected(alg.error());
  }
  const auto kid = stringMember(header, "kid");
  if (!kid || kid->empty()) {
    return deny(DenyReason::KidMissing);
  }
  if (header.has("typ")) {
    const auto typ = stringMember(header, "typ");
    if (!typ || !equalsIgnoreCase(*typ, "JWT")) {
      return deny(DenyReason::TypInvalid);
    }
  }
  // We implement no JWS extension, so any crit (RFC 7515 §4.1.11) must be refused.
  if (header.has("crit")) {
    return deny(DenyReason::CritUnsupported);
  }

  // 3. Who claims to be calling. Still untrusted: it only selects which keys may prove it.
  const auto iss = stringMember(payload, "iss");
  if (!iss || iss->empty()) {
    return deny(DenyReason::IssMissing);
  }
  const auto sub = stringMember(payload, "sub");
  if (!sub || sub->empty()) {
    return deny(DenyReason::SubMissing, {}, *iss);
  }
  if (*sub != *iss) {
    return deny(DenyReason::SubMismatch, {}, *iss);
  }
  if (clientIdParam && *clientIdParam != *iss) {
    return deny(DenyReason::ClientIdMismatch, {}, *iss);
  }
  const auto registry = registry_.get();
  auto client = registry->find(*iss);
  if (!client) {
    return deny(DenyReason::UnknownClient, {}, *iss);
  }
  if (!client->enabled) {
    return deny(DenyReason::ClientDisabled, {}, *iss);
  }
  // A suspension made on another instance may not be in a stale mirror: refuse to decide (503).
  const auto stateRefusal = [&]() -> std::optional<std::unexpected<Denial>> {
    if (state_ == nullptr) {
      return std::nullopt;
    }
    if (!state_->current()) {
      return deny(DenyReason::StoreUnavailable, "state mirror is not current", *iss);
    }
    if (state_->isSuspended(client->client_id)) {
      return deny(DenyReason::ClientSuspended, {}, *iss);
    }
    return std::nullopt;
  };
  if (auto refused = stateRefusal()) {
    return *refused;
  }
  if (!client->allows(*alg)) {
    return deny(DenyReason::AlgNotAllowedForClient, std::string(jwks::algName(*alg)), *iss);
  }

  // 4. jku is only ever compared, never fetched: a URL of the caller's choosing would let it bring its own key.
  if (header.has("jku")) {
    const auto jku = stringMember(header, "jku");
    if (!client->jwks_uri) {
      return deny(DenyReason::JkuNotRegistered, {}, *iss);
    }
    if (!jku || *jku != *client->jwks_uri) {
      return deny(DenyReason::JkuMismatch, {}, *iss);
    }
  }

  // 5. Key selection: exactly one registered key with this kid that fits the alg.
  auto match = keys_.find(*client, *kid, *alg);
  if (!match) {
    return deny(DenyReason::KeysUnavailable, match.error(), *iss);
  }
  if (match->keys.empty()) {
    return deny(DenyReason::NoKeyForKid, "kid " + *kid, *iss);
  }
  if (match->keys.size() > 1) {
    return deny(DenyReason::AmbiguousKey, "kid " + *kid, *iss);
  }

  // 6. Signature. Only from here on are the claims the client's own words.
  if (!jwks::verifySignature(*match->keys.front(), *alg, decoded->signingInput, decoded->signature)) {
    return deny(DenyReason::SignatureInvalid, "kid " + *kid, *iss);
  }
  // The key lookup may have waited seconds on a jwks_uri fetch: the state is read again, so that a suspension
  // made meanwhile (or a mirror that stopped syncing) still counts.
  if (auto refused = stateRefusal()) {
    return *refused;
  }

  // 7. Audience and time.
  bool audPresent = false;
  bool accepted = audienceMatches(payload, policy_.audience, audPresent);
  for (std::size_t i = 0; !accepted && i < policy_.also_accepted.size(); ++i) {
    accepted = audienceMatches(payload, policy_.also_accepted[i], audPresent);
  }
  if (!accepted) {
    return deny(audPresent ? DenyReason::AudMismatch : DenyReason::AudMissing, {}, *iss);
  }
  const std::int64_t now = clock_.now();
  std::int64_t exp = 0;
  switch (numericDate(payload, "exp", exp)) {
    case NumericDate::Absent:
      return deny(DenyReason::ExpMissing, {}, *iss);
    case NumericDate::Invalid:
      return deny(DenyReason::ExpNotNumeric, {}, *iss);
    case NumericDate::Valid:
      break;
  }
  if (exp <= now - policy_.clock_skew) {
    return deny(DenyReason::Expired, "exp " + std::to_string(exp) + " now " + std::to_string(now), *iss);
  }
  // Inferno sends exp = now + 300 on its own clock: the skew allowance applies here too.
  if (exp > now + policy_.max_lifetime + policy_.clock_skew) {
    return deny(DenyReason::ExpTooFarAhead, "exp " + std::to_string(exp) + " now " + std::to_string(now), *iss);
  }
  std::int64_t nbf = 0;
  switch (numericDate(payload, "nbf", nbf)) {
    case NumericDate::Invalid:
      return deny(DenyReason::NbfNotNumeric, {}, *iss);
    case NumericDate::Valid:
      if (nbf > now + policy_.clock_skew) {
        return deny(DenyReason::NotYetValid, "nbf " + std::to_string(nbf) + " now " + std::to_string(now), *iss);
      }
      break;
    case NumericDate::Absent:
      break;
  }
  std::int64_t iat = 0;
  switch (numericDate(payload, "iat", iat)) {
    case NumericDate::Invalid:
      return deny(DenyReason::IatNotNumeric, {}, *iss);
    case NumericDate::Valid:
      if (iat > now + policy_.clock_skew) {
        return deny(DenyReason::IatInFuture, "iat " + std::to_string(iat) + " now " + std::to_string(now), *iss);
      }
      break;
    case NumericDate::Absent:
      break;
  }

  // 8 (first half): jti must be usable as a replay key; recording it is consumeJti's job, done last.
  if (!payload.has("jti")) {
    return deny(DenyReason::JtiMissing, {}, *iss);
  }
  auto jti = stringMember(payload, "jti");
  if (!jti || jti->empty() || jti->size() > kMaxJti) {
    return deny(DenyReason::JtiInvalid, {}, *iss);
  }
  return VerifiedAssertion{std::move(client), std::move(*jti), exp};
}

std::expected<void, Denial> consumeJti(StateStore& store, const VerifiedAssertion& assertion, std::int64_t clockSkew,
                                       const IssuedToken* issued) {
  // Kept until the assertion could no longer pass the exp check, so no replay window opens before that.
  auto outcome = store.recordJti(assertion.client->client_id, assertion.jti, assertion.exp + clockSkew, issued);
  if (!outcome) {
    return deny(DenyReason::StoreUnavailable, outcome.error().detail, assertion.client->client_id);
  }
  if (*outcome == JtiOutcome::Replayed) {
    return deny(DenyReason::JtiReplayed, {}, assertion.client->client_id);
  }
  if (*outcome == JtiOutcome::ConsentWithdrawn) {
    return deny(DenyReason::ConsentRequired, "consent withdrawn during issuance", assertion.client->client_id);
  }
  return {};
}

}  // namespace smartbroker::broker
