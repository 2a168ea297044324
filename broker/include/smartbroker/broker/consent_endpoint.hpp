// PUT and DELETE /consents/{id}: the local consent store, fed by the consent platform (README "Consent").
#pragma once

#include <cstdint>
#include <string>

#include "smartbroker/broker/access_token.hpp"
#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/consent.hpp"
#include "smartbroker/broker/http.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_state.hpp"

namespace smartbroker::broker {

/// Callers authenticate like introspection callers: `Authorization: Bearer <access token>` carrying `permission`,
/// or private_key_jwt with the assertion in `Authorization: Client-Assertion <jwt>` (the body is the FHIR
/// resource, so the assertion cannot travel as a form parameter) from a system pre-authorized for `permission`.
/// Unauthenticated: 401 with WWW-Authenticate; authenticated without the permission: 403. The assertion's jti is
/// spent last, after the request was validated. PUT takes a FHIR R4 Consent (application/fhir+json or
/// application/json) whose id equals the path; DELETE withdraws. Thread-safe.
class ConsentEndpoint {
 public:
  ConsentEndpoint(const ConsentService& consents, const AccessTokenVerifier& verifier, const TokenState& state,
                  const RegistryHolder& registry, StateStore& store, const ClientAuthenticator& auth,
                  std::string permission, std::int64_t clockSkew, const Log& log);

  HttpReply handle(const HttpRequest& request) const;
  /// The body limit for PUT (consent.max_resource_bytes).
  std::size_t maxBodyBytes() const { return consents_.maxResourceBytes(); }

 private:
  const ConsentService& consents_;
  const AccessTokenVerifier& verifier_;
  const TokenState& state_;
  const RegistryHolder& registry_;
  StateStore& store_;
  const ClientAuthenticator& auth_;
  std::string permission_;
  std::int64_t skew_;
  const Log& log_;
};

}  // namespace smartbroker::broker
