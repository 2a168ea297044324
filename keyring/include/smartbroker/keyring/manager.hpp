// The broker's KeyringManager (policy ticks, snapshots) and the operator's KeyringAdmin, on any KeyringStorage.
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "smartbroker/keyring/keyring.hpp"
#include "smartbroker/keyring/keyring_storage.hpp"
#include "smartbroker/keyring/lifecycle.hpp"

namespace smartbroker::keyring {

/// Seconds since the Unix epoch; injected so that tests can walk a key through its lifecycle.
using NowFn = std::function<std::int64_t()>;

/// Layout of `<state_directory>/keys` (0700, owned by the service user):
///   keyring.json          lifecycle records (0600), replaced atomically
///   <kid>.pem             private key of a pending or active key, PKCS#8 (0600), or
///   <kid>.pem.sealed      the same sealed with AES-256-GCM under the key-encryption key (0600)
///   .lock                 flock(2): every change to the keyring holds it exclusively
///   .broker               flock(2): held shared by every running broker, so commands can tell one is running
///
/// Another storage (PostgreSQL, shared by several instances) keeps the same records and the sealed private keys; the
/// lifecycle is the same code on both.
struct KeyringOptions {
  std::string state_directory;
  Policy policy;
  std::string kek;  ///< 32 bytes: private keys are sealed with it; empty: stored as PEM (still 0600)
  NowFn now;        ///< defaults to the system clock
  /// Where the keyring lives; null: the files under `state_directory`. A storage that requires sealing refuses to
  /// open without a key-encryption key.
  std::shared_ptr<KeyringStorage> storage;
  /// A keyring to adopt, once, when `storage` is empty: the file keyring a single instance kept (keys and records,
  /// re-sealed with `kek`). Ignored, with a warning at start, once `storage` holds a keyring.
  std::shared_ptr<KeyringStorage> import_from;
  std::string instance;  ///< names this broker in the storage (PostgreSQL: heartbeat, last writer); host:pid
};

/// Reads a key-encryption key: exactly 32 bytes (`openssl rand -out FILE 32`), or 64 hexadecimal characters with an
/// optional trailing newline. The file must be private (at most 0600; owned by the service user or root, as
/// systemd credentials are). Errors never quote the content.
std::expected<std::string, std::string> loadKeyEncryptionKey(const std::string& path);

/// The running broker's side. Owns the signing keys in memory and republishes a KeySet whenever the published view
/// changes. Thread-safe: tick() is called from one thread, current() from any.
class KeyringManager {
 public:
  /// Opens (creating `keys/` 0700 on first start) and applies the policy once: a fresh keyring gets its first key,
  /// a keyring of the earlier `<kid>.pem`-only layout is adopted (newest key active, others retired). Refuses when a
  /// directory or file is not private, a file is damaged, a key cannot be decrypted, or the policy is inconsistent.
  static std::expected<std::unique_ptr<KeyringManager>, std::string> open(KeyringOptions options);
  ~KeyringManager();
  KeyringManager(const KeyringManager&) = delete;
  KeyringManager& operator=(const KeyringManager&) = delete;

  const Policy& policy() const;
  /// The current snapshot (never null after open()).
  std::shared_ptr<const KeySet> current() const;
  /// What open() did (key created, published, adopted ...), for the start-up log.
  const std::vector<Event>& startupEvents() const;

  struct Tick {
    std::shared_ptr<const KeySet> published;  ///< a new snapshot to serve, or null when nothing visible changed
    std::vector<Event> events;
    std::optional<std::string> error;          ///< reported once per distinct problem; the last snapshot stays
  };
  /// Applies the policy at now() and picks up changes that `smart-broker keys` or other instances made. Waits at most
  /// 250 ms for the exclusive lock; when another process holds it longer, this tick only follows what that process
  /// has committed (where the storage allows a read meanwhile: PostgreSQL) and says so after 30 such ticks in a row.
  /// When the storage does not answer, the last snapshot stays and the next tick tries again.
  Tick tick();
  /// Calls tick() every `interval` until `stop` is requested, handing each result to `onTick`.
  void run(const std::stop_token& stop, const std::function<void(const Tick&)>& onTick,
           std::chrono::milliseconds interval = std::chrono::seconds(1));

  struct Impl;

 private:
  explicit KeyringManager(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// The operator's side (`smart-broker keys ...`): reads and edits lifecycle records under the lock. It never
/// touches private keys or the key-encryption key: when a command needs a new key, it records a request that the
/// running broker fulfils at its next tick.
class KeyringAdmin {
 public:
  /// Refuses when `<state_directory>/keys` or its state file is missing (the broker creates them at its first
  /// start) or not private.
  static std::expected<KeyringAdmin, std::string> open(
      const std::string& stateDirectory, Policy policy, NowFn now = {},
      std::chrono::milliseconds lockTimeout = std::chrono::seconds(10));
  /// The same on any storage; refuses when no broker has created the keyring there yet.
  static std::expected<KeyringAdmin, std::string> open(
      std::shared_ptr<KeyringStorage> storage, Policy policy, NowFn now = {},
      std::chrono::milliseconds lockTimeout = std::chrono::seconds(10));

  const Policy& policy() const { return policy_; }
  /// Where the keyring is (a directory, or the database), for output.
  std::string location() const { return storage_->location(); }
  std::int64_t now() const { return now_(); }
  std::expected<RingState, std::string> read() const;
  /// True while at least one smart-broker process has this keyring open.
  bool brokerRunning() const;

  std::expected<CommandOutcome, std::string> rotate(bool immediate);
  std::expected<CommandOutcome, std::string> retire(const std::string& kid);
  std::expected<CommandOutcome, std::string> revoke(const std::string& kid, bool force);
  /// The JWK Set a broker serves for the current records (pending, active, retired keys; public members only).
  std::expected<std::string, std::string> exportJwks() const;
  /// Polls the state until `done` holds or `timeout` passes; returns the last state read.
  std::expected<RingState, std::string> waitFor(const std::function<bool(const RingState&)>& done,
                                                std::chrono::milliseconds timeout) const;

 private:
  KeyringAdmin(std::shared_ptr<KeyringStorage> storage, Policy policy, NowFn now,
               std::chrono::milliseconds lockTimeout);
  std::expected<CommandOutcome, std::string> change(
      const std::function<std::expected<CommandOutcome, std::string>(RingState&, std::int64_t)>& edit);

  std::shared_ptr<KeyringStorage> storage_;
  Policy policy_;
  NowFn now_;
  std::chrono::milliseconds lock_timeout_;
};

}  // namespace smartbroker::keyring
