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
#include "smartbroker/keyring/keyring_storage.hpp"
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

  /// Writes a private key as stored (`<kid>.pem.sealed` when sealed, `<kid>.pem` otherwise) atomically, mode 0600.
  std::expected<void, std::string> writePrivateKey(const std::string& kid, const StoredPrivateKey& key) const;
  /// The stored private key of `kid` (the sealed file when both exist), after checking that the file is private;
  /// nullopt when there is none.
  std::expected<std::optional<StoredPrivateKey>, std::string> readPrivateKey(const std::string& kid) const;
  /// The file the private key of `kid` is in (the sealed one when it exists).
  std::filesystem::path keyPath(const std::string& kid) const;
  /// Checks that the private key file of `kid` is still private (for keys already loaded).
  std::expected<void, std::string> checkPrivateKey(const std::string& kid) const;

  /// Removes the private key files of keys not pending or active (retired, revoked, removed, unknown: they never
  /// sign again) and temporary files left by a crash. Call with the exclusive lock held.
  std::expected<void, std::string> removeStaleFiles(const RingState& state) const;

  /// The `<kid>.pem` files of the earlier layout (no state file), newest first.
  std::expected<std::vector<LegacyKey>, std::string> readLegacyKeys(jwks::Alg preferred) const;

 private:
  std::filesystem::path dir_;
};

/// Opens a stored private key: unseals it with `kek` (refused without one, or with the wrong one), parses it for
/// `alg` and checks that its thumbprint is `kid`. `where` names it in messages. A plain key that carries the sealed
/// magic is refused (a sealed key under a plain name).
std::expected<std::shared_ptr<const SigningKey>, std::string> openPrivateKey(const StoredPrivateKey& stored,
                                                                            const std::string& kid, jwks::Alg alg,
                                                                            const std::string& kek,
                                                                            const std::string& where);
/// The private key of `key` as it is stored: sealed under `kek`, or its PEM when `kek` is empty.
StoredPrivateKey storedForm(const SigningKey& key, const std::string& kek);

/// The KeySet a broker serves for `state`: every published key, the active one signing. `privateKeys` holds the
/// loaded private key of at least the active record.
using PrivateKeys = std::map<std::string, std::shared_ptr<const SigningKey>>;
std::expected<KeySet, std::string> buildKeySet(const RingState& state, const PrivateKeys& privateKeys);

/// The published public keys of `state`, active first, then pending, then retired (newest first).
std::expected<std::vector<jwks::PublicKey>, std::string> publishedKeys(const RingState& state);

}  // namespace smartbroker::keyring
