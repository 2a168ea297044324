// The local consent endpoint: authenticate, check the consent-admin permission, validate, then store and revoke.
#include "smartbroker/broker/consent_endpoint.hpp"

#include <algorithm>

#include "json_text.hpp"
#include "jws.hpp"
#include "smartbroker/broker/introspection.hpp"

namespace smartbroker::broker {
namespace {

constexpr std::string_view kPathPrefix = "/consents/";
constexpr std::string_view kBearer = "Bearer ";
constexpr std::string_view kAssertion = "Client-Assertion ";

HttpReply errorReply(int status, std::string_view error, std::string_view description) {
  return HttpReply::noStoreJson(status, errorBody({status, error, description}));
}

HttpReply unauthenticated(std::string_view error, std::string_view description) {
  HttpReply reply = errorReply(401, error, description);
  reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\"");
  return reply;
}

bool startsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() > prefix.size() && jws::equalsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

bool isConsentMediaType(const std::string& contentType) {
  std::string_view type = std::string_view(contentType).substr(0, contentType.find(';'));
  while (!type.empty() && type.back() == ' ') {
    type.remove_suffix(1);
  }
  return jws::equalsIgnoreCase(type, "application/fhir+json") || jws::equalsIgnoreCase(type, "application/json");
}

bool isFhirId(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::ranges::all_of(id, [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
         });
}

std::string resultBody(std::string_view id, const ConsentWriteResult& r, bool withdrawn) {
  std::string body = "{";
  appendJsonMember(body, "id", id);
  body += ',';
  appendJsonMember(body, "status", r.status);
  body += withdrawn ? "" : (r.active ? ",\"active\":true" : ",\"active\":false");
  body += ",\"revoked_token_ids\":[";
  for (std::size_t i = 0; i < r.revoked_token_ids.size(); ++i) {
    body += i == 0 ? "" : ",";
    appendJsonString(body, r.revoked_token_ids[i]);
  }
  body += "]}";
  return body;
}

}  // namespace

ConsentEndpoint::ConsentEndpoint(const ConsentService& consents, const AccessTokenVerifier& verifier,
                                 const TokenState& state, const RegistryHolder& registry, StateStore& store,
                                 const ClientAuthenticator& auth, std::string permission, std::int64_t clockSkew,
                                 const Log& log)
    : consents_(consents),
      verifier_(verifier),
      state_(state),
      registry_(registry),
      store_(store),
      auth_(auth),
      permission_(std::move(permission)),
      skew_(clockSkew),
      log_(log) {}

HttpReply ConsentEndpoint::handle(const HttpRequest& request) const {
  if (request.method != "PUT" && request.method != "DELETE") {
    HttpReply reply = errorReply(405, "invalid_request", "Method not allowed on this endpoint");
    reply.headers.emplace_back("Allow", "PUT, DELETE");
    return reply;
  }

  // The caller's token is checked against the mirror; a mirror that may miss a revocation decides nothing.
  if (!state_.current()) {
    log_.event("consent_admin", {{"outcome", "failed"}, {"reason", "store_unavailable"},
                                 {"detail", "state mirror is not current"}});
    HttpReply reply = errorReply(503, "temporarily_unavailable", "The service is temporarily unavailable");
    reply.headers.emplace_back("Retry-After", "5");
    return reply;
  }
  // Authenticate first: an unauthenticated caller learns nothing about consents, not even whether an id is valid.
  std::string caller;
  std::optional<VerifiedAssertion> assertion;
  const std::string_view authorization = request.authorization;
  if (startsWithIgnoreCase(authorization, kBearer)) {
    auto claims = verifier_.verify(authorization.substr(kBearer.size()));
    if (!claims || !tokenIsLive(**claims, state_, registry_) || !consents_.tokenAuthorized(**claims)) {
      log_.event("consent_admin", {{"outcome", "refused"}, {"reason", "caller_token_invalid"}});
      HttpReply reply = errorReply(401, "invalid_token", "The bearer token is not valid");
      reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\", error=\"invalid_token\"");
      return reply;
    }
    // The token must carry the permission, and the caller's registration must still grant it (a reload that
    // withdraws it takes effect for live tokens too).
    const auto registered = registry_.get()->find((*claims)->client_id);
    if (!scopeHas((*claims)->scope, permission_) || registered == nullptr ||
        std::ranges::find(registered->permissions, permission_) == registered->permissions.end()) {
      log_.event("consent_admin",
                 {{"outcome", "refused"}, {"client_id", (*claims)->client_id}, {"reason", "insufficient_scope"}});
      HttpReply reply = errorReply(403, "insufficient_scope", "The bearer token lacks the consent-admin permission");
      reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\", error=\"insufficient_scope\"");
      return reply;
    }
    caller = (*claims)->client_id;
  } else if (startsWithIgnoreCase(authorization, kAssertion)) {
    auto verified = auth_.verify(authorization.substr(kAssertion.size()), std::nullopt);
    if (!verified) {
      const Denial& d = verified.error();
      log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", d.client_id},
                                   {"reason", reasonName(d.reason)}, {"detail", d.detail}});
      const WireError wire = wireError(d.reason);
      return wire.status == 401 ? unauthenticated(wire.error, wire.description)
                                : HttpReply::noStoreJson(wire.status, errorBody(wire));
    }
    const auto& permissions = verified->client->permissions;
    if (std::ranges::find(permissions, permission_) == permissions.end()) {
      log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", verified->client->client_id},
                                   {"reason", "insufficient_permission"}});
      return errorReply(403, "unauthorized_client", "This client may not manage consents");
    }
    caller = verified->client->client_id;
    assertion = std::move(*verified);
  } else {
    log_.event("consent_admin", {{"outcome", "refused"}, {"reason", "unauthenticated"}});
    return unauthenticated("invalid_client",
                           "Authentication is required (Bearer access token or Client-Assertion private_key_jwt)");
  }

  const std::size_t at = request.path.find(kPathPrefix);
  const std::string id = at == std::string::npos ? std::string() : request.path.substr(at + kPathPrefix.size());
  if (!isFhirId(id)) {
    log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", caller}, {"reason", "invalid_id"}});
    return errorReply(400, "invalid_request", "The consent id in the URL must be a FHIR id (A-Z a-z 0-9 - . up to 64)");
  }
  if (request.method == "PUT" && !isConsentMediaType(request.content_type)) {
    log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", caller}, {"reason", "unsupported_media_type"}});
    return errorReply(415, "invalid_request", "Content-Type must be application/fhir+json or application/json");
  }
  if (!consents_.local()) {
    return errorReply(404, "invalid_request", "Consents are read from the FHIR server; there is no local store");
  }
  // PUT: validated before the jti is spent, so that a malformed resource leaves the assertion usable.
  if (request.method == "PUT") {
    auto record = parseConsentResource(request.body, consents_.mapping());
    if (!record || record->id != id) {
      const std::string description = record ? "The resource id must equal the id in the URL" : record.error();
      log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", caller}, {"consent_id", id},
                                   {"reason", "invalid_resource"}, {"detail", description}});
      return errorReply(400, "invalid_request", description);
    }
  }
  if (assertion) {
    if (auto spent = consumeJti(store_, *assertion, skew_); !spent) {
      const WireError wire = wireError(spent.error().reason);
      log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", caller},
                                   {"reason", reasonName(spent.error().reason)}});
      return wire.status == 401 ? unauthenticated(wire.error, wire.description)
                                : HttpReply::noStoreJson(wire.status, errorBody(wire));
    }
  }

  const bool put = request.method == "PUT";
  auto result = put ? consents_.put(id, request.body) : consents_.withdraw(id);
  if (!result) {
    const ConsentWriteError& e = result.error();
    log_.event("consent_admin", {{"outcome", "refused"}, {"client_id", caller}, {"consent_id", id},
                                 {"reason", e.kind == ConsentWriteError::Kind::StoreUnavailable ? "store_unavailable"
                                            : e.kind == ConsentWriteError::Kind::NotFound       ? "not_found"
                                                                                                : "invalid_resource"},
                                 {"detail", e.description}});
    switch (e.kind) {
      case ConsentWriteError::Kind::NotFound: return errorReply(404, "invalid_request", e.description);
      case ConsentWriteError::Kind::Invalid: return errorReply(400, "invalid_request", e.description);
      case ConsentWriteError::Kind::StoreUnavailable: {
        HttpReply reply = errorReply(503, "temporarily_unavailable", "The service is temporarily unavailable");
        reply.headers.emplace_back("Retry-After", "5");
        return reply;
      }
    }
  }
  log_.event("consent_admin", {{"outcome", put ? (result->created ? "created" : "updated") : "withdrawn"},
                               {"client_id", caller},
                               {"consent_id", id},
                               {"status", result->status},
                               {"revoked", std::to_string(result->revoked_token_ids.size())}});
  return HttpReply::noStoreJson(put && result->created ? 201 : 200, resultBody(id, *result, !put));
}

}  // namespace smartbroker::broker
