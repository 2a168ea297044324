// The keyring storage of one machine: the files under `<state_directory>/keys`, serialised with flock(2).
#include <filesystem>
#include <mutex>
#include <optional>

#include "smartbroker/keyring/keyring_storage.hpp"
#include "storage.hpp"
#include "store.hpp"

namespace smartbroker::keyring {
namespace {

namespace fs = std::filesystem;
using storage::FileLock;

/// How long a broker waits at start for the `.broker` lock (only a crashed command holding it exclusively blocks).
constexpr std::chrono::seconds kBrokerLockWait{10};

/// Holds the keyring lock (shared or exclusive) for as long as it lives; writes go straight to the files.
class FileSession final : public KeyringSession {
 public:
  FileSession(const Store& store, FileLock lock) : store_(store), lock_(std::move(lock)) {}

  std::expected<std::optional<std::int64_t>, std::string> generation() override {
    // The state file is small and read under the lock every tick; no separate marker is kept.
    return std::optional<std::int64_t>{};
  }
  std::expected<std::optional<RingState>, std::string> readState() override { return store_.readState(); }
  std::expected<void, std::string> writeState(const RingState& state) override { return store_.writeState(state); }
  std::expected<std::optional<StoredPrivateKey>, std::string> readPrivateKey(const std::string& kid) override {
    return store_.readPrivateKey(kid);
  }
  std::expected<void, std::string> writePrivateKey(const std::string& kid, const StoredPrivateKey& key) override {
    return store_.writePrivateKey(kid, key);
  }
  std::expected<void, std::string> checkPrivateKey(const std::string& kid) override {
    return store_.checkPrivateKey(kid);
  }
  std::expected<void, std::string> removeStaleKeys(const RingState& state) override {
    return store_.removeStaleFiles(state);
  }
  std::expected<std::vector<LegacyKey>, std::string> legacyKeys(jwks::Alg preferred) override {
    return store_.readLegacyKeys(preferred);
  }
  std::string keyLocation(const std::string& kid) const override { return store_.keyPath(kid).string(); }
  std::expected<void, std::string> commit() override { return {}; }

 private:
  Store store_;
  FileLock lock_;
};

class FileStorage final : public KeyringStorage {
 public:
  explicit FileStorage(const std::string& stateDirectory) : store_(fs::path(stateDirectory) / "keys") {}

  std::string location() const override { return store_.dir().string(); }
  bool requiresSealing() const override { return false; }

  std::expected<void, std::string> checkCreated() override {
    if (!storage::exists(store_.statePath())) {
      return std::unexpected("no keyring at " + store_.dir().string() +
                             " (smart-broker creates it at its first start; is this the right --config, and are you "
                             "running as the service user?)");
    }
    return store_.checkPrivate();
  }

  std::expected<void, std::string> attachBroker(const std::string& instance) override {
    (void)instance;
    if (auto ok = storage::ensurePrivateDirectory(store_.dir()); !ok) {
      return ok;
    }
    auto held = FileLock::acquire(store_.brokerPath(), FileLock::Mode::Shared, kBrokerLockWait);
    if (!held) {
      return std::unexpected(held.error().message);
    }
    const std::lock_guard guard(mutex_);
    broker_lock_.emplace(std::move(*held));
    return {};
  }

  void brokerAlive() override {}

  bool brokerRunning() override { return FileLock::heldByOther(store_.brokerPath()); }

  std::expected<std::unique_ptr<KeyringSession>, LockError> lock(std::chrono::milliseconds wait) override {
    return open(FileLock::Mode::Exclusive, wait);
  }

  std::expected<std::unique_ptr<KeyringSession>, LockError> read(std::chrono::milliseconds wait) override {
    return open(FileLock::Mode::Shared, wait);
  }

 private:
  std::expected<std::unique_ptr<KeyringSession>, LockError> open(FileLock::Mode mode, std::chrono::milliseconds wait) {
    if (auto ok = storage::requirePrivate(store_.dir(), 0700); !ok) {
      return std::unexpected(LockError{false, ok.error()});
    }
    auto held = store_.lock(mode, wait);
    if (!held) {
      return std::unexpected(LockError{held.error().busy, held.error().message});
    }
    // Checked again under the lock: a command may have changed a mode since.
    if (auto ok = store_.checkPrivate(); !ok) {
      return std::unexpected(LockError{false, ok.error()});
    }
    return std::make_unique<FileSession>(store_, std::move(*held));
  }

  Store store_;
  std::mutex mutex_;
  std::optional<FileLock> broker_lock_;  ///< held shared while a broker runs on this keyring
};

}  // namespace

std::shared_ptr<KeyringStorage> fileKeyringStorage(const std::string& stateDirectory) {
  return std::make_shared<FileStorage>(stateDirectory);
}

std::optional<std::string> recordsProblem(const RingState& state) {
  for (const KeyRecord& k : state.keys) {
    if (k.public_jwk.empty()) {
      continue;  // a tombstone keeps no key material (invariantProblem refuses a published key without one)
    }
    // The JWKS is built from this: it must be a valid public key of the record's alg, named by its thumbprint.
    auto pub = jwks::parseJwk(k.public_jwk);
    if (!pub) {
      return k.kid + ": public key: " + pub.error();
    }
    if (pub->thumbprint != k.kid) {
      return k.kid + ": the public key does not match the kid (thumbprint " + pub->thumbprint + ")";
    }
    if (!pub->fits(k.alg)) {
      return k.kid + ": the public key does not fit " + std::string(jwks::algName(k.alg));
    }
  }
  return invariantProblem(state);
}

}  // namespace smartbroker::keyring
