// The keyring state file (keys/keyring.json): the lifecycle records as strict, versioned JSON.
#pragma once

#include <expected>
#include <string>
#include <string_view>

#include "smartbroker/keyring/lifecycle.hpp"

namespace smartbroker::keyring::state_file {

/// {"format":"smart-broker-keyring","version":1,"rotation_request":{...}|null,"keys":[{...}]}.
std::string serialize(const RingState& state);

/// Parses and checks every member's type; an unknown format or version, a malformed record or a broken invariant
/// is an error naming the record. Public JWKs are checked to be valid public keys whose thumbprint is the kid.
std::expected<RingState, std::string> parse(std::string_view json);

}  // namespace smartbroker::keyring::state_file
