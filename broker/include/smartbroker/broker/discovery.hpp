// Discovery documents (SMART .well-known/smart-configuration, RFC 8414) built from the enforced configuration.
#pragma once

#include <string>
#include <vector>

#include "smartbroker/config/config.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::broker {

struct DiscoveryDocuments {
  std::string smart_configuration;
  std::string oauth_metadata;
};

/// `algorithms` is exactly what the token endpoint accepts (the registry's union), so advertised == enforced.
DiscoveryDocuments buildDiscovery(const config::Server& server, const std::vector<jwks::Alg>& algorithms);

}  // namespace smartbroker::broker
