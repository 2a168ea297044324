// Client authentication by signed JWT assertion (RFC 7523, SMART "Client Authentication: Asymmetric").
#pragma once

#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/errors.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_state.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::broker {

/// Keys of one client that may verify one assertion.
struct KeyMatch {
  std::shared_ptr<const jwks::JwkSet> set;       ///< keeps `keys` alive
  std::vector<const jwks::PublicKey*> keys;      ///< kid matches and the key fits the alg
};

/// Where a client's verification keys come from: its inline JWK Set, or its jwks_uri through the fetch cache.
class ClientKeySource {
 public:
  virtual ~ClientKeySource() = default;
  /// Keys of `client` whose kid is `kid` and that fit `alg`. A source that can refresh (jwks_uri) refetches
  /// once on a miss, as SPEC "Authenticating" 5 says. An error means the keys could not be obtained at all.
  virtual std::expected<KeyMatch, std::string> find(const Client& client, std::string_view kid, jwks::Alg alg) = 0;
};

/// Inline keys from the registration.
class InlineKeySource final : public ClientKeySource {
 public:
  std::expected<KeyMatch, std::string> find(const Client& client, std::string_view kid, jwks::Alg alg) override;
};

struct AssertionPolicy {
  std::string audience;                  ///< the endpoint URL the assertion must name in `aud`
  std::vector<std::string> also_accepted;  ///< further accepted audiences (e.g. the token endpoint at /introspect)
  std::int64_t clock_skew = 30;          ///< seconds
  std::int64_t max_lifetime = 300;       ///< exp - now at most this (+ skew)
  std::size_t max_bytes = 8 * 1024;
};

/// An assertion that passed every check but the jti check, which the caller performs last (consumeJti).
struct VerifiedAssertion {
  std::shared_ptr<const Client> client;
  std::string jti;
  std::int64_t exp = 0;
};

/// Steps 1-7 of SPEC "Authenticating the assertion". Thread-safe; holds no lock.
class ClientAuthenticator {
 public:
  /// `state`, when given, refuses systems an operator suspended at run time.
  ClientAuthenticator(AssertionPolicy policy, const RegistryHolder& registry, ClientKeySource& keys,
                      const Clock& clock, const TokenState* state = nullptr);

  /// `clientIdParam` is the request's client_id parameter, if sent (it must equal iss).
  std::expected<VerifiedAssertion, Denial> verify(std::string_view assertion,
                                                  std::optional<std::string_view> clientIdParam) const;

  const AssertionPolicy& policy() const { return policy_; }

 private:
  AssertionPolicy policy_;
  const RegistryHolder& registry_;
  ClientKeySource& keys_;
  const Clock& clock_;
  const TokenState* state_;
};

/// Step 8: records (iss, jti) durably and atomically; a second use is JtiReplayed, a store failure
/// StoreUnavailable. Call it after every other check of the request has passed, so that a refused request
/// changes no state.
std::expected<void, Denial> consumeJti(StateStore& store, const VerifiedAssertion& assertion, std::int64_t clockSkew,
                                       const IssuedToken* issued = nullptr);

}  // namespace smartbroker::broker
