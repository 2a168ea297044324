// Introspection and revocation: authenticate the caller, then answer from verified claims and the state mirror.
#include "smartbroker/broker/introspection.hpp"

#include "json_text.hpp"
#include "jws.hpp"
#include "smartbroker/broker/consent.hpp"

namespace smartbroker::broker {
namespace {

constexpr std::string_view kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

HttpReply errorReply(int status, std::string_view error, std::string_view description) {
  return HttpReply::noStoreJson(status, errorBody({status, error, description}));
}

/// 401 with the challenge RFC 7662 §2.2 / RFC 6750 §3 ask for.
HttpReply unauthenticated(std::string_view description) {
  HttpReply reply = errorReply(401, "invalid_client", description);
  reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\"");
  return reply;
}

/// Common transport checks; on success the parsed form.
std::expected<Form, HttpReply> readForm(const HttpRequest& request, const FormLimits& limits, const Log& log,
                                        std::string_view event) {
  if (request.method != "POST") {
    HttpReply reply = errorReply(405, "invalid_request", "Method not allowed on this endpoint");
    reply.headers.emplace_back("Allow", "POST");
    return std::unexpected(reply);
  }
  if (!isFormContentType(request.content_type)) {
    log.event(event, {{"outcome", "refused"}, {"reason", "unsupported_media_type"}});
    return std::unexpected(errorReply(400, "invalid_request", "Content-Type must be application/x-www-form-urlencoded"));
  }
  auto form = Form::parse(request.body, limits, "client_assertion");
  if (!form) {
    const WireError wire = wireError(form.error().reason);
    log.event(event, {{"outcome", "refused"}, {"reason", reasonName(form.error().reason)}});
    return std::unexpected(HttpReply::noStoreJson(wire.status, errorBody(wire)));
  }
  return std::move(*form);
}

struct Caller {
  std::string client_id;
  std::shared_ptr<const Client> client;  ///< set for private_key_jwt callers
};

/// private_key_jwt: the assertion is verified and its jti spent, exactly as at the token endpoint.
std::expected<Caller, HttpReply> assertionCaller(const Form& form, const ClientAuthenticator& auth, StateStore& store,
                                                 std::int64_t skew, const Log& log, std::string_view event) {
  const auto type = form.get("client_assertion_type");
  const auto assertion = form.get("client_assertion");
  if (!type || !assertion || *type != kJwtBearer) {
    log.event(event, {{"outcome", "refused"}, {"reason", "unauthenticated"}});
    return std::unexpected(unauthenticated("Client authentication is required (private_key_jwt)"));
  }
  auto verified = auth.verify(*assertion, form.get("client_id"));
  if (verified) {
    if (auto spent = consumeJti(store, *verified, skew); !spent) {
      verified = std::unexpected(spent.error());
    }
  }
  if (!verified) {
    const Denial& d = verified.error();
    log.event(event, {{"outcome", "refused"}, {"client_id", d.client_id}, {"reason", reasonName(d.reason)},
                      {"detail", d.detail}});
    const WireError wire = wireError(d.reason);
    HttpReply reply = HttpReply::noStoreJson(wire.status, errorBody(wire));
    if (wire.status == 401) {
      reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\"");
    }
    if (wire.status == 503) {
      reply.headers.emplace_back("Retry-After", "5");
    }
    return std::unexpected(reply);
  }
  return Caller{verified->client->client_id, verified->client};
}

/// 503 while the state mirror may miss a revocation or suspension made elsewhere (TokenState::current).
HttpReply stateUnavailable(const Log& log, std::string_view event) {
  log.event(event, {{"outcome", "failed"}, {"reason", "store_unavailable"}, {"detail", "state mirror is not current"}});
  HttpReply reply = errorReply(503, "temporarily_unavailable", "The service is temporarily unavailable");
  reply.headers.emplace_back("Retry-After", "5");
  return reply;
}

bool clientHasPermission(const Client& client, std::string_view permission) {
  for (const std::string& p : client.permissions) {
    if (p == permission) {
      return true;
    }
  }
  return false;
}

}  // namespace

bool tokenIsLive(const TokenClaims& claims, const TokenState& state, const RegistryHolder& registry) {
  if (state.isRevoked(claims.jti) || state.systemBlocks(claims.client_id, claims.iat)) {
    return false;
  }
  const auto client = registry.get()->find(claims.client_id);
  return client != nullptr && client->enabled;
}

IntrospectionEndpoint::IntrospectionEndpoint(TokenServices services, const ClientAuthenticator& auth,
                                             std::string permission)
    : s_(services), auth_(auth), permission_(std::move(permission)) {}

HttpReply IntrospectionEndpoint::handle(const HttpRequest& request) const {
  auto form = readForm(request, s_.form, s_.log, "introspection");
  if (!form) {
    return form.error();
  }
  // Every answer below (the caller's own token, the token asked about) comes from the mirror.
  if (!s_.state.current()) {
    return stateUnavailable(s_.log, "introspection");
  }

  // Authenticate the caller first: an unauthenticated caller learns nothing about any token.
  std::string caller;
  constexpr std::string_view kBearer = "Bearer ";
  if (request.authorization.size() > kBearer.size() &&
      jws::equalsIgnoreCase(std::string_view(request.authorization).substr(0, kBearer.size()), kBearer)) {
    const std::string_view bearer = std::string_view(request.authorization).substr(kBearer.size());
    auto claims = s_.verifier.verify(bearer);
    if (!claims || !tokenIsLive(**claims, s_.state, s_.registry)) {
      s_.log.event("introspection", {{"outcome", "refused"}, {"reason", "caller_token_invalid"}});
      HttpReply reply = errorReply(401, "invalid_token", "The bearer token is not valid");
      reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\", error=\"invalid_token\"");
      return reply;
    }
    // The token must carry the permission, and the caller's registration must still grant it: a permission
    // withdrawn by a reload takes effect for live tokens too.
    const auto registered = s_.registry.get()->find((*claims)->client_id);
    if (!scopeHas((*claims)->scope, permission_) || registered == nullptr ||
        !clientHasPermission(*registered, permission_)) {
      s_.log.event("introspection", {{"outcome", "refused"}, {"client_id", (*claims)->client_id},
                                     {"reason", "insufficient_scope"}});
      HttpReply reply = errorReply(403, "insufficient_scope", "The bearer token lacks the introspection permission");
      reply.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"smart-broker\", error=\"insufficient_scope\"");
      return reply;
    }
    caller = (*claims)->client_id;
  } else {
    auto who = assertionCaller(*form, auth_, s_.store, s_.clock_skew, s_.log, "introspection");
    if (!who) {
      return who.error();
    }
    if (!clientHasPermission(*who->client, permission_)) {
      s_.log.event("introspection", {{"outcome", "refused"}, {"client_id", who->client_id},
                                     {"reason", "insufficient_permission"}});
      return errorReply(403, "unauthorized_client", "This client may not introspect tokens");
    }
    caller = who->client_id;
  }

  const auto token = form->get("token");
  if (!token || token->empty()) {
    s_.log.event("introspection", {{"outcome", "refused"}, {"client_id", caller}, {"reason", "missing_token"}});
    return errorReply(400, "invalid_request", "Missing token parameter");
  }
  // token_type_hint is deliberately not consulted: every token is looked up the same way.
  auto claims = s_.verifier.verify(*token);
  if (!claims || !tokenIsLive(**claims, s_.state, s_.registry)) {
    s_.log.event("introspection", {{"outcome", "inactive"},
                                   {"caller", caller},
                                   {"reason", claims ? "revoked_or_blocked" : rejectionName(claims.error())}});
    return HttpReply::noStoreJson(200, "{\"active\":false}");
  }
  // Consent is re-checked (within the cache time) after the cheaper checks; a withdrawal seen here revokes.
  if (s_.consent != nullptr && !s_.consent->tokenAuthorized(**claims)) {
    s_.log.event("introspection", {{"outcome", "inactive"}, {"caller", caller}, {"reason", "consent_not_active"}});
    return HttpReply::noStoreJson(200, "{\"active\":false}");
  }
  const TokenClaims& c = **claims;
  std::string body = "{\"active\":true,";
  appendJsonMember(body, "scope", c.scope);
  body += ',';
  appendJsonMember(body, "client_id", c.client_id);
  body += ',';
  appendJsonMember(body, "sub", c.sub);
  body += ',';
  appendJsonMember(body, "iss", c.iss);
  body += ",\"aud\":" + c.aud_json;
  body += ",\"exp\":" + std::to_string(c.exp) + ",\"iat\":" + std::to_string(c.iat) + ',';
  appendJsonMember(body, "jti", c.jti);
  if (!c.consent_ids.empty()) {
    body += ",\"consent\":[";
    for (std::size_t i = 0; i < c.consent_ids.size(); ++i) {
      body += i == 0 ? "" : ",";
      appendJsonString(body, c.consent_ids[i]);
    }
    body += ']';
  }
  body += ",\"token_type\":\"bearer\"}";
  s_.log.event("introspection", {{"outcome", "active"}, {"caller", caller}, {"client_id", c.client_id}, {"jti", c.jti}});
  return HttpReply::noStoreJson(200, std::move(body));
}

RevocationEndpoint::RevocationEndpoint(TokenServices services, const ClientAuthenticator& auth)
    : s_(services), auth_(auth) {}

HttpReply RevocationEndpoint::handle(const HttpRequest& request) const {
  auto form = readForm(request, s_.form, s_.log, "revocation");
  if (!form) {
    return form.error();
  }
  auto who = assertionCaller(*form, auth_, s_.store, s_.clock_skew, s_.log, "revocation");
  if (!who) {
    return who.error();
  }
  const auto token = form->get("token");
  if (!token || token->empty()) {
    s_.log.event("revocation", {{"outcome", "refused"}, {"client_id", who->client_id}, {"reason", "missing_token"}});
    return errorReply(400, "invalid_request", "Missing token parameter");
  }
  HttpReply ok = HttpReply::noStoreJson(200, "");
  ok.content_type.clear();
  // RFC 7009 §2.2: an invalid token (garbage, not ours, expired) is no error; there is nothing to revoke.
  auto claims = s_.verifier.verify(*token, true);
  if (!claims || (*claims)->exp <= s_.clock.now()) {
    s_.log.event("revocation", {{"outcome", "nothing_to_revoke"}, {"client_id", who->client_id},
                                {"reason", claims ? "expired" : rejectionName(claims.error())}});
    return ok;
  }
  const TokenClaims& c = **claims;
  if (c.client_id != who->client_id) {
    s_.log.event("revocation", {{"outcome", "refused"}, {"client_id", who->client_id}, {"reason", "not_own_token"},
                                {"token_client_id", c.client_id}});
    return errorReply(400, "unauthorized_client", "A client may revoke only tokens issued to it");
  }
  if (auto done = s_.store.revokeToken(c.jti, c.client_id, c.exp); !done) {
    s_.log.event("revocation", {{"outcome", "failed"}, {"client_id", c.client_id}, {"reason", "store_unavailable"},
                                {"detail", done.error().detail}});
    HttpReply reply = errorReply(503, "temporarily_unavailable", "The service is temporarily unavailable");
    reply.headers.emplace_back("Retry-After", "5");
    return reply;
  }
  // Durable first, then in memory: the next introspection in this instance already sees it.
  s_.state.noteRevoked(c.jti, c.exp);
  s_.log.event("revocation", {{"outcome", "revoked"}, {"client_id", c.client_id}, {"jti", c.jti}});
  return ok;
}

}  // namespace smartbroker::broker
