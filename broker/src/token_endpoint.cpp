// POST /token: the SPEC steps in order, each returning a refusal or handing on to the next.
#include "smartbroker/broker/token_endpoint.hpp"

#include <openssl/rand.h>

#include <chrono>
#include <cstdint>
#include <stdexcept>

#include "json_text.hpp"
#include "smartbroker/broker/consent.hpp"
#include "smartbroker/jwks/base64url.hpp"

namespace smartbroker::broker {
namespace {

constexpr std::string_view kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

std::unexpected<Denial> refuse(DenyReason reason, std::string detail = {}, std::string clientId = {}) {
  return std::unexpected(Denial{reason, std::move(detail), std::move(clientId)});
}

/// Access token ids: the issuing millisecond (48 bits, big-endian, as UUIDv7 lays it out) then 80 random bits.
/// 80 random bits per millisecond make a collision negligible; the time prefix makes ids issued together share a
/// prefix, so the token store inserts them side by side instead of into one random page each (issue 3). The jti is
/// a signed claim, not a secret: nothing relies on it being unguessable, and iat already tells the time.
std::string tokenId() {
  unsigned char bytes[16];
  const auto millis = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  for (int i = 0; i < 6; ++i) {
    bytes[i] = static_cast<unsigned char>(millis >> (8 * (5 - i)));
  }
  if (RAND_bytes(bytes + 6, sizeof bytes - 6) != 1) {
    throw std::runtime_error("RAND_bytes failed");
  }
  return jwks::base64urlEncode(std::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
}

struct TokenRequest {
  std::string_view assertion;
  std::optional<std::string_view> clientId;
  std::optional<std::string_view> scope;
};

/// Grant type, then assertion type. Nothing here looks at the assertion.
std::expected<TokenRequest, Denial> readRequest(const Form& form) {
  const auto grantType = form.get("grant_type");
  if (!grantType) {
    return refuse(DenyReason::MissingGrantType);
  }
  if (*grantType != "client_credentials") {
    return refuse(DenyReason::UnsupportedGrantType, std::string(grantType->substr(0, 64)));
  }
  const auto assertionType = form.get("client_assertion_type");
  if (!assertionType) {
    return refuse(DenyReason::MissingAssertionType);
  }
  if (*assertionType != kJwtBearer) {
    return refuse(DenyReason::WrongAssertionType);
  }
  const auto assertion = form.get("client_assertion");
  if (!assertion || assertion->empty()) {
    return refuse(DenyReason::MissingAssertion);
  }
  return TokenRequest{*assertion, form.get("client_id"), form.get("scope")};
}

}  // namespace

TokenEndpoint::TokenEndpoint(TokenPolicy policy, const ClientAuthenticator& auth, StateStore& store,
                             const KeyringHolder& keys, const Clock& clock, const Log& log,
                             const ConsentService* consent)
    : policy_(std::move(policy)), auth_(auth), store_(store), keys_(keys), clock_(clock), log_(log),
      consent_(consent) {}

HttpReply TokenEndpoint::deny(const Denial& denial) const {
  log_.event("token_denied", {{"client_id", denial.client_id},
                              {"reason", reasonName(denial.reason)},
                              {"detail", denial.detail}});
  const WireError wire = wireError(denial.reason);
  HttpReply reply = HttpReply::noStoreJson(wire.status, errorBody(wire));
  if (wire.status == 405) {
    reply.headers.emplace_back("Allow", "POST");
  }
  if (wire.status == 503) {
    reply.headers.emplace_back("Retry-After", "5");
  }
  return reply;
}

HttpReply TokenEndpoint::handle(const HttpRequest& request) const {
  if (request.method != "POST") {
    return deny({DenyReason::MethodNotAllowed, request.method, {}});
  }
  if (!isFormContentType(request.content_type)) {
    return deny({DenyReason::UnsupportedMediaType, request.content_type.substr(0, 64), {}});
  }
  // Parameters are read from the body only; the query string is never consulted (SPEC "Token request").
  auto form = Form::parse(request.body, policy_.form, "client_assertion");
  if (!form) {
    return deny(form.error());
  }
  auto tokenRequest = readRequest(*form);
  if (!tokenRequest) {
    return deny(tokenRequest.error());
  }

  // Authenticate before reading scope, so that an unauthenticated caller learns nothing about scopes.
  auto verified = auth_.verify(tokenRequest->assertion, tokenRequest->clientId);
  if (!verified) {
    return deny(verified.error());
  }
  const Client& client = *verified->client;

  if (!tokenRequest->scope || tokenRequest->scope->empty()) {
    return deny({DenyReason::ScopeMissing, {}, client.client_id});
  }
  const ScopeGrant grant =
      grantScopes(*tokenRequest->scope, client.scopes, client.permissions, policy_.max_scope_count);
  std::string scope = grant.scopeString();
  if (scope.empty()) {
    return deny({DenyReason::NoScopeGranted, std::string(tokenRequest->scope->substr(0, 256)), client.client_id});
  }

  // Consent after the scope grant (it can only narrow it) and before the jti is spent, so that a refusal leaves the
  // assertion unspent; the token is linked to the consents that authorized it.
  std::vector<std::string> consentIds;
  if (consent_ != nullptr) {
    auto consented = consent_->checkIssuance(client, scope);
    if (!consented) {
      return deny(consented.error());
    }
    scope = std::move(consented->scope);
    consentIds = std::move(consented->consent_ids);
  }

  const auto keys = keys_.get();
  const std::int64_t lifetime =
      std::min(policy_.max_lifetime, client.token_lifetime ? client.token_lifetime->count() : policy_.default_lifetime);
  const std::int64_t iat = clock_.now();
  const std::string jti = tokenId();
  const IssuedToken issued{jti,        client.client_id, scope, iat, iat + lifetime, keys->active->kid(), consentIds,
                           consent_ != nullptr && consent_->local() && !consentIds.empty()};

  // The jti is recorded last: a request refused for any other reason leaves the assertion unspent. The issued
  // token's record goes into the same transaction.
  if (auto spent = consumeJti(store_, *verified, auth_.policy().clock_skew, &issued); !spent) {
    return deny(spent.error());
  }

  // RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti; plus scope (§2.2.3).
  std::string claims;
  claims.reserve(256 + scope.size());
  claims += '{';
  appendJsonMember(claims, "iss", policy_.issuer);
  claims += ',';
  appendJsonMember(claims, "sub", client.client_id);
  claims += ',';
  appendJsonMember(claims, "client_id", client.client_id);
  claims += ",\"aud\":";
  if (policy_.audiences.size() == 1) {
    appendJsonString(claims, policy_.audiences.front());
  } else {
    claims += '[';
    for (std::size_t i = 0; i < policy_.audiences.size(); ++i) {
      if (i > 0) {
        claims += ',';
      }
      appendJsonString(claims, policy_.audiences[i]);
    }
    claims += ']';
  }
  claims += ",\"iat\":" + std::to_string(iat);
  claims += ",\"exp\":" + std::to_string(iat + lifetime);
  claims += ',';
  appendJsonMember(claims, "jti", jti);
  claims += ',';
  appendJsonMember(claims, "scope", scope);
  if (!consentIds.empty()) {
    claims += ",\"consent\":[";
    for (std::size_t i = 0; i < consentIds.size(); ++i) {
      claims += i == 0 ? "" : ",";
      appendJsonString(claims, consentIds[i]);
    }
    claims += ']';
  }
  claims += '}';

  const std::string token = keys->active->signCompact("at+jwt", claims);

  std::string body;
  body.reserve(token.size() + scope.size() + 96);
  body += '{';
  appendJsonMember(body, "access_token", token);
  body += ",\"token_type\":\"bearer\",\"expires_in\":" + std::to_string(lifetime) + ',';
  appendJsonMember(body, "scope", scope);
  body += '}';

  const std::string dropped = [&] {
    std::string out;
    for (const std::string& d : grant.dropped) {
      out += out.empty() ? "" : " ";
      out += d;
    }
    return out;
  }();
  log_.event("token_issued", {{"client_id", client.client_id},
                              {"jti", jti},
                              {"scope", scope},
                              {"dropped", dropped},
                              {"expires_in", std::to_string(lifetime)},
                              {"kid", keys->active->kid()}});
  return HttpReply::noStoreJson(200, std::move(body));
}

}  // namespace smartbroker::broker
