// Where a keyring lives: the storage interface the lifecycle code runs on, and the files of a state directory as one
// implementation (PostgreSQL, shared by several instances, is the other: broker/postgres_keyring.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "smartbroker/keyring/lifecycle.hpp"
#include "smartbroker/keyring/signing_key.hpp"

namespace smartbroker::keyring {

/// A private key as a storage holds it: sealed with the key-encryption key (AES-256-GCM, authenticated with the kid)
/// or, only in files without a key-encryption key, a PKCS#8 PEM. Storages never interpret it: KeyringManager seals,
/// opens and checks it. Wiped when destroyed.
struct StoredPrivateKey {
  std::string data;
  bool sealed = false;
  ~StoredPrivateKey();
};

/// A key of the earlier files-only layout (`<kid>.pem` without a state file), for adoption.
struct LegacyKey {
  std::shared_ptr<const SigningKey> key;
  std::int64_t modified = 0;
};

/// Access to one keyring, obtained from KeyringStorage::lock (exclusive: the only writer until it ends) or ::read (a
/// consistent view). Used by one thread. Ends when destroyed: what was not committed is rolled back where the storage
/// is transactional (PostgreSQL); files are written as they go, each atomically, in an order that is safe to stop
/// after any write.
class KeyringSession {
 public:
  virtual ~KeyringSession() = default;

  /// A number that changes with every committed change of the lifecycle records, so that a reader can tell cheaply
  /// that its copy is current; nullopt when the storage keeps none (then the state is read every time).
  virtual std::expected<std::optional<std::int64_t>, std::string> generation() = 0;
  /// The lifecycle records; nullopt when the keyring has never been written.
  virtual std::expected<std::optional<RingState>, std::string> readState() = 0;
  /// Replaces the lifecycle records (and moves the generation on). Exclusive sessions only.
  virtual std::expected<void, std::string> writeState(const RingState& state) = 0;
  /// nullopt when nothing is stored for `kid`.
  virtual std::expected<std::optional<StoredPrivateKey>, std::string> readPrivateKey(const std::string& kid) = 0;
  /// Exclusive sessions only. A storage that holds sealed keys only refuses a plain one.
  virtual std::expected<void, std::string> writePrivateKey(const std::string& kid, const StoredPrivateKey& key) = 0;
  /// Re-checks a private key already loaded at an earlier tick (files: still private to the service user).
  virtual std::expected<void, std::string> checkPrivateKey(const std::string& kid) = 0;
  /// Deletes every private key that `state` does not allow to sign again (not pending or active, or unknown), and
  /// leftovers of interrupted writes. Exclusive sessions only; call after the state is written.
  virtual std::expected<void, std::string> removeStaleKeys(const RingState& state) = 0;
  /// The keys of the earlier files-only layout, newest first (empty for other storages).
  virtual std::expected<std::vector<LegacyKey>, std::string> legacyKeys(jwks::Alg preferred) = 0;
  /// Where the private key of `kid` is, for messages ("/var/lib/smart-broker/keys/KID.pem.sealed").
  virtual std::string keyLocation(const std::string& kid) const = 0;
  /// Makes the writes of this session durable and visible to others at once (files: already are).
  virtual std::expected<void, std::string> commit() = 0;
};

/// A keyring's storage. Thread-safe: every call opens what it needs; a session belongs to the thread that opened it.
class KeyringStorage {
 public:
  struct LockError {
    bool busy = false;    ///< another process held the keyring for the whole wait
    std::string message;  ///< names the keyring and says why
  };

  virtual ~KeyringStorage() = default;

  /// Where the keyring is, for logs and `keys list`; never a password.
  virtual std::string location() const = 0;
  /// True when private keys must be sealed with a key-encryption key (PostgreSQL: a PEM never enters the database).
  virtual bool requiresSealing() const = 0;
  /// Refuses, with a message for the operator, when no broker has created this keyring yet.
  virtual std::expected<void, std::string> checkCreated() = 0;
  /// Called once by a broker before its first session (files: creates `keys/` 0700, takes the shared `.broker`
  /// lock); afterwards brokerRunning() is true for this storage elsewhere.
  virtual std::expected<void, std::string> attachBroker(const std::string& instance) = 0;
  /// Called by a broker at every tick, so that commands can tell a broker is running (PostgreSQL: a heartbeat,
  /// timed by the database's clock so that the machines' clocks do not matter). Best effort.
  virtual void brokerAlive() = 0;
  /// True while at least one broker uses this keyring.
  virtual bool brokerRunning() = 0;
  /// The exclusive session every change holds; tries for up to `wait`.
  virtual std::expected<std::unique_ptr<KeyringSession>, LockError> lock(std::chrono::milliseconds wait) = 0;
  /// A read-only session that sees one consistent state; tries for up to `wait` (files: shared lock).
  virtual std::expected<std::unique_ptr<KeyringSession>, LockError> read(std::chrono::milliseconds wait) = 0;
};

/// The files under `<stateDirectory>/keys` (layout in manager.hpp). Opening creates nothing.
std::shared_ptr<KeyringStorage> fileKeyringStorage(const std::string& stateDirectory);

/// Checks records read from any storage as strictly as the state file parser does: each published record's public
/// JWK is a valid public key of its alg whose thumbprint is its kid, and the invariants hold. nullopt when sound.
std::optional<std::string> recordsProblem(const RingState& state);

}  // namespace smartbroker::keyring
