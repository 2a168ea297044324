// Building the immutable client registry from validated configuration.
#include "smartbroker/broker/registry.hpp"

#include <algorithm>
#include <stdexcept>

namespace smartbroker::broker {

bool Client::allows(jwks::Alg alg) const {
  return std::find(algorithms.begin(), algorithms.end(), alg) != algorithms.end();
}

ClientRegistry::ClientRegistry(const std::vector<config::System>& systems,
                               const std::vector<std::string>& permissionNames) {
  for (const config::System& s : systems) {
    auto client = std::make_shared<Client>();
    client->client_id = s.client_id;
    client->name = s.name;
    client->enabled = s.enabled;
    client->algorithms = s.algorithms;
    for (const std::string& text : s.scopes) {
      if (std::find(permissionNames.begin(), permissionNames.end(), text) != permissionNames.end()) {
        client->permissions.push_back(text);
        continue;
      }
      auto scope = parseSystemScope(text);
      if (!scope) {
        // Config validation ran the same parser; reaching this is a bug, not bad input.
        throw std::logic_error("unvalidated scope in registration of " + s.client_id);
      }
      client->scopes.push_back(std::move(*scope));
    }
    if (s.jwks) {
      client->jwks = std::make_shared<const jwks::JwkSet>(*s.jwks);
    }
    client->jwks_uri = s.jwks_uri;
    client->token_lifetime = s.token_lifetime;
    client->consent = s.consent;
    clients_.emplace(s.client_id, std::move(client));
  }
}

std::shared_ptr<const Client> ClientRegistry::find(std::string_view clientId) const {
  const auto it = clients_.find(std::string(clientId));
  return it == clients_.end() ? nullptr : it->second;
}

std::vector<jwks::Alg> ClientRegistry::allAlgorithms() const {
  std::vector<jwks::Alg> out;
  for (const jwks::Alg alg : {jwks::Alg::RS384, jwks::Alg::ES384, jwks::Alg::RS256, jwks::Alg::ES256}) {
    const bool used = std::any_of(clients_.begin(), clients_.end(), [&](const auto& entry) {
      return entry.second->enabled && entry.second->allows(alg);
    });
    if (used) {
      out.push_back(alg);
    }
  }
  return out;
}

}  // namespace smartbroker::broker
