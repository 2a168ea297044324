// POST /introspect (RFC 7662, SMART token introspection) and POST /revoke (RFC 7009).
#pragma once

#include <string>

#include "smartbroker/broker/access_token.hpp"
#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/form.hpp"
#include "smartbroker/broker/http.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_state.hpp"

namespace smartbroker::broker {

class ConsentService;

/// Everything the two endpoints share.
struct TokenServices {
  const AccessTokenVerifier& verifier;
  TokenState& state;
  const RegistryHolder& registry;
  StateStore& store;
  const Clock& clock;
  const Log& log;
  FormLimits form;
  std::int64_t clock_skew = 30;
  const ConsentService* consent = nullptr;  ///< re-checks the consents a token is linked to (README "Consent")
};

/// Introspection. Callers authenticate with a bearer access token that carries `permission`, or with
/// private_key_jwt as a system pre-authorized for `permission`; anyone else gets 401 (unauthenticated) or 403
/// (authenticated without the permission). A live token yields {"active":true,...}; every other token exactly
/// {"active":false}. token_type_hint is read and ignored: it never narrows the search (RFC 7662 §2.1).
class IntrospectionEndpoint {
 public:
  IntrospectionEndpoint(TokenServices services, const ClientAuthenticator& auth, std::string permission);
  HttpReply handle(const HttpRequest& request) const;

 private:
  TokenServices s_;
  const ClientAuthenticator& auth_;
  std::string permission_;
};

/// Revocation. The caller authenticates with private_key_jwt and may revoke its own tokens; another system's
/// token is refused (unauthorized_client); unknown, malformed, expired or already revoked tokens get 200.
class RevocationEndpoint {
 public:
  RevocationEndpoint(TokenServices services, const ClientAuthenticator& auth);
  HttpReply handle(const HttpRequest& request) const;

 private:
  TokenServices s_;
  const ClientAuthenticator& auth_;
};

/// True when `token` (a verified access token's claims) is live: not revoked, its system registered,
/// enabled, not suspended and without a revoke-all covering it.
bool tokenIsLive(const TokenClaims& claims, const TokenState& state, const RegistryHolder& registry);

}  // namespace smartbroker::broker
