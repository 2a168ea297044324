// The registered systems as an immutable snapshot, swapped atomically on reload.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smartbroker/broker/scopes.hpp"
#include "smartbroker/broker/snapshot.hpp"
#include "smartbroker/config/config.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::broker {

/// A registered system in the form the request path uses: scopes parsed, keys validated.
struct Client {
  std::string client_id;
  std::string name;
  bool enabled = true;
  std::vector<jwks::Alg> algorithms;
  std::vector<SystemScope> scopes;
  std::vector<std::string> permissions;         ///< broker permissions (e.g. introspection) it is pre-authorized for
  std::shared_ptr<const jwks::JwkSet> jwks;    ///< inline keys; null for jwks_uri systems
  std::optional<std::string> jwks_uri;
  std::optional<config::Seconds> token_lifetime;
  config::ConsentRequirement consent;           ///< README "Consent"

  bool allows(jwks::Alg alg) const;
};

/// An immutable map client_id → Client.
class ClientRegistry {
 public:
  /// Systems must have passed config validation: each scope parses as a system/ scope or is one of
  /// `permissionNames` (broker permissions such as the introspection permission).
  explicit ClientRegistry(const std::vector<config::System>& systems,
                          const std::vector<std::string>& permissionNames = {});
  std::shared_ptr<const Client> find(std::string_view clientId) const;
  /// Union of the algorithms any registered system may use, in SPEC order (RS384, ES384, RS256, ES256).
  std::vector<jwks::Alg> allAlgorithms() const;
  std::size_t size() const { return clients_.size(); }

 private:
  std::unordered_map<std::string, std::shared_ptr<const Client>> clients_;
};

using RegistryHolder = Snapshot<ClientRegistry>;

}  // namespace smartbroker::broker
