// The broker's signing keys under the state directory: load or create, and publish their public JWK Set.
#pragma once

#include <expected>
#include <memory>
#include <string>
#include <vector>

#include "smartbroker/keyring/signing_key.hpp"

namespace smartbroker::keyring {

/// An immutable view of the keys: the one that signs, and every key that is published.
struct KeySet {
  std::shared_ptr<const SigningKey> active;
  std::vector<jwks::PublicKey> published;  ///< always contains the active key
  std::string jwksJson;                    ///< {"keys":[...]} of `published`, public members only
};

/// Opens `<stateDirectory>/keys`: a 0700 directory holding `<kid>.pem` files (0600, PKCS#8). Creates the
/// directory and a first key for `alg` when there is none, writing it atomically (temp file, fsync, rename).
/// Refuses (returns an error) when the directory or a key file is group/world accessible, when a key file does not
/// parse, or when no key fits `alg`. Without lifecycle state the newest key fitting `alg` signs and all loaded keys
/// are published. The running broker uses KeyringManager (manager.hpp) instead; on a directory that manager keeps,
/// this returns the same view read-only (its active key signs, pending and retired keys are only published).
std::expected<KeySet, std::string> openKeyring(const std::string& stateDirectory, jwks::Alg alg);

}  // namespace smartbroker::keyring
