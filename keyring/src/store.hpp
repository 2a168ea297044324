// The files of one keyring directory: state file, private key files (plain or sealed), locks. Internal.
#pragma once

#include <expected>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>
#include <optional>
#include <set>
#include <string>

#include "smartbroker/keyring/keyring.hpp"
#include "smartbroker/keyring/lifecycle.hpp"
#include "smartbroker/keyring/signing_key.hpp"
#include "storage.hpp"

namespace smartbroker::keyring {

class Store {
 public:
  explicit Store(std::filesystem::path keysDir) : dir_(std::move(keysDir)) {}

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path statePath() const { return dir_ / "keyring.json"; }
  std::filesystem::path lockPath() const { return dir_ / ".lock"; }
  std::filesystem::path brokerPath() const { return dir_ / ".broker"; }
  std::filesystem::path plainKeyPath(const std::string& kid) const { return dir_ / (kid + ".pem"); }
  std::filesystem::path sealedKeyPath(const std::string& kid) const { return dir_ / (kid + ".pem.sealed"); }

  /// The directory is 0700 and ours; the state file, when present, 0600 and ours.
  std::expected<void, std::string> checkPrivate() const;
  std::expected<storage::FileLock, storage::FileLock::Error> lock(storage::FileLock::Mode mode,
                                                                  std::chrono::milliseconds timeout) const;

  /// nullopt when there is no state file yet.
  std::expected<std::optional<RingState>, std::string> readState() const;
  std::expected<void, std::string> writeState(const RingState& state) const;

  /// Writes a private key (sealed when `kek` is set) atomically with mode 0600.
  std::expected<void, std::string> writePrivateKey(const SigningKey& key, const std::string& kek) const;

  struct Loaded {
    std::shared_ptr<const SigningKey> key;
    bool plain = false;  ///< stored as plain PEM (to be sealed when a KEK is configured)
  };
  /// Loads the private key of `kid`: checks the file is private, opens it with `kek` when sealed, parses it for
  /// `alg` and checks that its thumbprint is `kid`. Sealed without a configured KEK, a wrong KEK, a missing file:
  /// each a clear error.
  std::expected<Loaded, std::string> readPrivateKey(const std::string& kid, jwks::Alg alg,
                                                    const std::string& kek) const;
  /// Checks that the private key file of `kid` is still private (for keys already loaded).
  std::expected<void, std::string> checkPrivateKey(const std::string& kid) const;

  /// Removes the private key files of keys not pending or active (retired, revoked, removed, unknown: they never
  /// sign again) and temporary files left by a crash. Call with the exclusive lock held.
  std::expected<void, std::string> removeStaleFiles(const RingState& state) const;

  /// The `<kid>.pem` files of the earlier layout (no state file), newest first.
  struct LegacyKey {
    std::shared_ptr<const SigningKey> key;
    std::int64_t modified = 0;
  };
  std::expected<std::vector<LegacyKey>, std::string> readLegacyKeys(jwks::Alg preferred) const;

 private:
  std::filesystem::path dir_;
};

/// The KeySet a broker serves for `state`: every published key, the active one signing. `privateKeys` holds the
/// loaded private key of at least the active record.
using PrivateKeys = std::map<std::string, std::shared_ptr<const SigningKey>>;
std::expected<KeySet, std::string> buildKeySet(const RingState& state, const PrivateKeys& privateKeys);

/// The published public keys of `state`, active first, then pending, then retired (newest first).
std::expected<std::vector<jwks::PublicKey>, std::string> publishedKeys(const RingState& state);

}  // namespace smartbroker::keyring
