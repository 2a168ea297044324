// POST /token: client_credentials with private_key_jwt, returning an RFC 9068 JWT access token.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/form.hpp"
#include "smartbroker/broker/http.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/snapshot.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/keyring/keyring.hpp"

namespace smartbroker::broker {

using KeyringHolder = Snapshot<keyring::KeySet>;
class ConsentService;

struct TokenPolicy {
  std::string issuer;                    ///< access token `iss`
  std::vector<std::string> audiences;    ///< access token `aud`
  std::int64_t default_lifetime = 300;   ///< seconds
  std::int64_t max_lifetime = 300;       ///< seconds; caps per-client lifetimes
  std::size_t max_scope_count = 64;
  FormLimits form;
};

/// The token endpoint. Thread-safe; no lock on the request path.
class TokenEndpoint {
 public:
  /// `consent`, when given, enforces the consent requirements of registrations (README "Consent").
  TokenEndpoint(TokenPolicy policy, const ClientAuthenticator& auth, StateStore& store, const KeyringHolder& keys,
                const Clock& clock, const Log& log, const ConsentService* consent = nullptr);

  HttpReply handle(const HttpRequest& request) const;

 private:
  HttpReply deny(const Denial& denial) const;

  TokenPolicy policy_;
  const ClientAuthenticator& auth_;
  StateStore& store_;
  const KeyringHolder& keys_;
  const Clock& clock_;
  const Log& log_;
  const ConsentService* consent_;
};

}  // namespace smartbroker::broker
