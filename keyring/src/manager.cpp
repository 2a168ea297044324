// The keyring on disk: the broker's KeyringManager (policy ticks, snapshots) and the operator's KeyringAdmin.
#include "smartbroker/keyring/manager.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "sealed.hpp"
#include "storage.hpp"
#include "store.hpp"

namespace smartbroker::keyring {
namespace {

namespace fs = std::filesystem;
using storage::FileLock;

/// Busy ticks (one a second) after which a held lock is reported: a stuck command would stall rotation.
constexpr int kBusyTicksReported = 30;
/// How long a tick waits for the lock before it gives up until the next tick.
constexpr std::chrono::milliseconds kTickLockWait{250};

std::int64_t systemNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

/// The published view a snapshot depends on: which keys, in which state.
std::string viewOf(const RingState& state) {
  std::string out;
  for (const KeyRecord& k : state.keys) {
    if (k.published()) {
      out += k.kid;
      out += keyStateName(k.state);
      out += ';';
    }
  }
  return out;
}

}  // namespace

std::expected<std::string, std::string> loadKeyEncryptionKey(const std::string& path) {
  // Root may own it: systemd's LoadCredential= hands the service a copy it owns, but a file may also be
  // provisioned by root with read access for the service user only through that mechanism.
  if (auto ok = storage::requirePrivate(path, 0600, true); !ok) {
    return std::unexpected("key-encryption key " + ok.error());
  }
  auto raw = storage::readCapped(path, 1024);
  if (!raw) {
    return std::unexpected("key-encryption key " + raw.error());
  }
  std::string content = std::move(*raw);
  std::string key;
  if (content.size() == sealed::kKekBytes) {
    key = content;
  } else {
    std::string_view hex = content;
    if (hex.ends_with('\n')) {
      hex.remove_suffix(1);
    }
    if (hex.size() == 2 * sealed::kKekBytes) {
      for (std::size_t i = 0; i < hex.size(); i += 2) {
        const int hi = hexValue(hex[i]);
        const int lo = hexValue(hex[i + 1]);
        if (hi < 0 || lo < 0) {
          key.clear();
          break;
        }
        key += static_cast<char>(hi * 16 + lo);
      }
    }
  }
  OPENSSL_cleanse(content.data(), content.size());
  if (key.size() != sealed::kKekBytes) {
    OPENSSL_cleanse(key.data(), key.size());
    return std::unexpected("key-encryption key " + path +
                           ": must hold exactly 32 bytes (openssl rand -out FILE 32) or 64 hexadecimal characters");
  }
  return key;
}

// ---------------------------------------------------------------------------------------------- KeyringManager

struct KeyringManager::Impl {
  KeyringOptions options;
  Store store;
  FileLock brokerLock;  ///< held shared for the manager's lifetime: "a broker is running"
  RingState state;
  std::string lastStateText;
  std::map<std::string, std::shared_ptr<const SigningKey>> privateKeys;  ///< pending and active keys
  std::string view;
  mutable std::mutex mutex;  ///< guards `current`
  std::shared_ptr<const KeySet> current;
  std::vector<Event> startupEvents;
  std::optional<std::string> lastError;
  int busyTicks = 0;

  Impl(KeyringOptions o, Store s, FileLock b) : options(std::move(o)), store(std::move(s)), brokerLock(std::move(b)) {}
  ~Impl() { OPENSSL_cleanse(options.kek.data(), options.kek.size()); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::expected<KeyRecord, std::string> mint(jwks::Alg alg, std::int64_t now) {
    auto key = SigningKey::generate(alg);
    if (!key) {
      return std::unexpected(key.error());
    }
    // The private key is on disk before the record that names it: a crash in between leaves an unreferenced file
    // (removed later, never published), not a record without its key.
    if (auto ok = store.writePrivateKey(*key, options.kek); !ok) {
      return std::unexpected(ok.error());
    }
    KeyRecord record;
    record.kid = key->kid();
    record.alg = alg;
    record.state = KeyState::Pending;
    record.public_jwk = jwks::publicJwkJson(key->publicKey());
    record.created_at = now;
    privateKeys[record.kid] = std::make_shared<const SigningKey>(std::move(*key));
    return record;
  }

  /// A keyring of the earlier layout: `<kid>.pem` files only. The newest key fitting the configured alg was the one
  /// signing and every key was published, so it stays active and the others retire now (conservatively: any of them
  /// may have signed until now).
  std::expected<RingState, std::string> adoptLegacy(std::int64_t now, std::vector<Event>& events) {
    auto legacy = store.readLegacyKeys(options.policy.algorithm);
    if (!legacy) {
      return std::unexpected(legacy.error());
    }
    RingState adopted;
    if (legacy->empty()) {
      return adopted;
    }
    auto activeIt = std::ranges::find_if(*legacy, [&](const Store::LegacyKey& l) {
      return l.key->alg() == options.policy.algorithm;
    });
    if (activeIt == legacy->end()) {
      activeIt = legacy->begin();
    }
    for (auto it = legacy->begin(); it != legacy->end(); ++it) {
      KeyRecord record;
      record.kid = it->key->kid();
      record.alg = it->key->alg();
      record.public_jwk = jwks::publicJwkJson(it->key->publicKey());
      record.created_at = it->modified;
      record.published_at = it->modified;
      record.activated_at = it->modified;
      if (it == activeIt) {
        record.state = KeyState::Active;
        if (!options.kek.empty()) {
          // Adopted keys are sealed like new ones when a KEK is configured; the plain copy goes with the next cleanup.
          if (auto ok = store.writePrivateKey(*it->key, options.kek); !ok) {
            return std::unexpected(ok.error());
          }
        }
        privateKeys[record.kid] = it->key;
      } else {
        record.state = KeyState::Retired;
        record.retired_at = now;
      }
      events.push_back({"key_adopted", record.kid,
                        "from the earlier key layout as " + std::string(keyStateName(record.state)), false});
      adopted.keys.push_back(std::move(record));
    }
    return adopted;
  }

  /// Loads (or re-checks) the private key of every pending and active record. Any problem refuses the whole tick:
  /// a key whose file was tampered with must not become the signing key, and the active one must be sound.
  std::expected<void, std::string> loadPrivateKeys() {
    for (const KeyRecord& k : state.keys) {
      if (!k.hasPrivateKey()) {
        continue;
      }
      if (privateKeys.contains(k.kid)) {
        if (auto ok = store.checkPrivateKey(k.kid); !ok) {
          return ok;
        }
        continue;
      }
      auto loaded = store.readPrivateKey(k.kid, k.alg, options.kek);
      if (!loaded) {
        return std::unexpected(loaded.error());
      }
      if (loaded->plain && !options.kek.empty()) {
        if (auto ok = store.writePrivateKey(*loaded->key, options.kek); !ok) {
          return ok;
        }
      }
      privateKeys[k.kid] = loaded->key;
    }
    std::erase_if(privateKeys, [&](const auto& entry) {
      const KeyRecord* record = state.find(entry.first);
      return record == nullptr || !record->hasPrivateKey();
    });
    return {};
  }

  /// One step under the exclusive lock: read what is on disk, apply the policy, write back what changed.
  std::expected<void, std::string> step(std::int64_t now, std::vector<Event>& events) {
    if (auto ok = store.checkPrivate(); !ok) {
      return ok;
    }
    auto onDisk = store.readState();
    if (!onDisk) {
      return std::unexpected(onDisk.error());
    }
    bool fresh = false;
    if (*onDisk) {
      state = std::move(**onDisk);
    } else {
      auto adopted = adoptLegacy(now, events);
      if (!adopted) {
        return std::unexpected(adopted.error());
      }
      state = std::move(*adopted);
      fresh = true;
    }
    if (auto ok = loadPrivateKeys(); !ok) {
      return ok;
    }
    auto result = applyPolicy(state, options.policy, now,
                              [this](jwks::Alg alg, std::int64_t at) { return mint(alg, at); });
    if (!result) {
      return std::unexpected(result.error());
    }
    events.insert(events.end(), result->events.begin(), result->events.end());
    std::string text = fingerprint();
    const bool changedOnDisk = text != lastStateText;
    if (result->changed || fresh) {
      if (auto ok = store.writeState(state); !ok) {
        return ok;
      }
    }
    if (result->changed || fresh || changedOnDisk) {
      // After the state is durable: a key leaves the disk only once no record says it may sign.
      if (auto ok = store.removeStaleFiles(state); !ok) {
        return ok;
      }
    }
    lastStateText = std::move(text);
    return {};
  }

  /// step() with OpenSSL and file-system exceptions turned into errors: the tick thread must never die of one.
  std::expected<void, std::string> guardedStep(std::int64_t now, std::vector<Event>& events) {
    try {
      return step(now, events);
    } catch (const std::exception& e) {
      return std::unexpected(std::string("unexpected failure: ") + e.what());
    }
  }

  /// What of the state decides which key files may exist (compared between ticks).
  std::string fingerprint() const;

  void publishIfChanged(Tick& out) {
    const std::string next = viewOf(state);
    if (next == view && current) {
      return;
    }
    auto set = buildKeySet(state, privateKeys);
    if (!set) {
      out.error = set.error();
      return;
    }
    auto snapshot = std::make_shared<const KeySet>(std::move(*set));
    {
      const std::lock_guard guard(mutex);
      current = snapshot;
    }
    view = next;
    out.published = std::move(snapshot);
  }

  Tick tick() {
    Tick out;
    const std::int64_t now = options.now();
    {
      // A short, bounded wait: commands hold the lock for milliseconds, and this thread serves no request.
      auto lock = store.lock(FileLock::Mode::Exclusive, kTickLockWait);
      if (!lock) {
        if (lock.error().busy) {
          if (++busyTicks == kBusyTicksReported) {
            report(out, "the keyring has been locked by another process for " + std::to_string(busyTicks) +
                            " s; rotation waits");
          }
          return out;
        }
        report(out, lock.error().message);
        return out;
      }
      busyTicks = 0;
      if (auto ok = guardedStep(now, out.events); !ok) {
        // The snapshot being served stays: the keys in memory are intact, and nothing unsafe is picked up.
        report(out, ok.error());
        return out;
      }
    }
    publishIfChanged(out);
    if (out.error) {
      report(out, *out.error);
      return out;
    }
    if (lastError) {
      out.events.push_back({"keyring_recovered", "", "the keyring is readable again", false});
      lastError.reset();
    }
    return out;
  }

  void report(Tick& out, const std::string& error) {
    out.error.reset();
    if (lastError != error) {
      out.error = error;
      lastError = error;
    }
  }
};

std::string KeyringManager::Impl::fingerprint() const {
  std::string text;
  for (const KeyRecord& k : state.keys) {
    text += k.kid + std::string(keyStateName(k.state)) + std::to_string(k.activate_after) + ";";
  }
  if (state.rotation_request) {
    text += "request" + std::to_string(state.rotation_request->requested_at);
  }
  return text;
}

KeyringManager::KeyringManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KeyringManager::~KeyringManager() = default;

std::expected<std::unique_ptr<KeyringManager>, std::string> KeyringManager::open(KeyringOptions options) {
  if (auto problem = options.policy.problem()) {
    return std::unexpected("keyring policy: " + *problem);
  }
  if (!options.kek.empty() && options.kek.size() != sealed::kKekBytes) {
    return std::unexpected("the key-encryption key must be 32 bytes");
  }
  if (!options.now) {
    options.now = systemNow;
  }
  Store store(fs::path(options.state_directory) / "keys");
  if (auto ok = storage::ensurePrivateDirectory(store.dir()); !ok) {
    return std::unexpected(ok.error());
  }
  auto brokerLock = storage::FileLock::acquire(store.brokerPath(), FileLock::Mode::Shared, std::chrono::seconds(10));
  if (!brokerLock) {
    return std::unexpected(brokerLock.error().message);
  }
  auto impl = std::make_unique<Impl>(std::move(options), std::move(store), std::move(*brokerLock));
  {
    // At start-up, waiting for a command to finish is right; a broker must not start on a half-seen keyring.
    auto lock = impl->store.lock(FileLock::Mode::Exclusive, std::chrono::seconds(10));
    if (!lock) {
      return std::unexpected(lock.error().message);
    }
    if (auto ok = impl->guardedStep(impl->options.now(), impl->startupEvents); !ok) {
      return std::unexpected(ok.error());
    }
  }
  Tick first;
  impl->publishIfChanged(first);
  if (first.error) {
    return std::unexpected(*first.error);
  }
  return std::unique_ptr<KeyringManager>(new KeyringManager(std::move(impl)));
}

const Policy& KeyringManager::policy() const { return impl_->options.policy; }

std::shared_ptr<const KeySet> KeyringManager::current() const {
  const std::lock_guard guard(impl_->mutex);
  return impl_->current;
}

const std::vector<Event>& KeyringManager::startupEvents() const { return impl_->startupEvents; }

KeyringManager::Tick KeyringManager::tick() { return impl_->tick(); }

void KeyringManager::run(const std::stop_token& stop, const std::function<void(const Tick&)>& onTick,
                         std::chrono::milliseconds interval) {
  std::mutex m;
  std::condition_variable_any wake;
  std::unique_lock lock(m);
  for (;;) {
    wake.wait_for(lock, stop, interval, [] { return false; });
    if (stop.stop_requested()) {
      return;
    }
    onTick(tick());
  }
}

// ---------------------------------------------------------------------------------------------- KeyringAdmin

KeyringAdmin::KeyringAdmin(std::string keysDir, Policy policy, NowFn now, std::chrono::milliseconds lockTimeout)
    : keys_dir_(std::move(keysDir)), policy_(policy), now_(std::move(now)), lock_timeout_(lockTimeout) {}

std::expected<KeyringAdmin, std::string> KeyringAdmin::open(const std::string& stateDirectory, Policy policy,
                                                            NowFn now, std::chrono::milliseconds lockTimeout) {
  const Store store(fs::path(stateDirectory) / "keys");
  if (!storage::exists(store.statePath())) {
    return std::unexpected("no keyring at " + store.dir().string() +
                           " (smart-broker creates it at its first start; is this the right --config, and are you "
                           "running as the service user?)");
  }
  if (auto ok = store.checkPrivate(); !ok) {
    return std::unexpected(ok.error());
  }
  return KeyringAdmin(store.dir().string(), policy, now ? std::move(now) : NowFn(systemNow), lockTimeout);
}

std::expected<RingState, std::string> KeyringAdmin::read() const {
  const Store store{fs::path(keys_dir_)};
  auto lock = store.lock(FileLock::Mode::Shared, lock_timeout_);
  if (!lock) {
    return std::unexpected(lock.error().message);
  }
  auto state = store.readState();
  if (!state) {
    return std::unexpected(state.error());
  }
  if (!*state) {
    return std::unexpected(store.statePath().string() + ": missing");
  }
  return std::move(**state);
}

bool KeyringAdmin::brokerRunning() const { return FileLock::heldByOther(Store{fs::path(keys_dir_)}.brokerPath()); }

std::expected<CommandOutcome, std::string> KeyringAdmin::change(
    const std::function<std::expected<CommandOutcome, std::string>(RingState&, std::int64_t)>& edit) {
  const Store store{fs::path(keys_dir_)};
  auto lock = store.lock(FileLock::Mode::Exclusive, lock_timeout_);
  if (!lock) {
    return std::unexpected(lock.error().message);
  }
  if (auto ok = store.checkPrivate(); !ok) {
    return std::unexpected(ok.error());
  }
  auto state = store.readState();
  if (!state) {
    return std::unexpected(state.error());
  }
  if (!*state) {
    return std::unexpected(store.statePath().string() + ": missing");
  }
  auto outcome = edit(**state, now_());
  if (!outcome || !outcome->changed) {
    return outcome;
  }
  if (auto ok = store.writeState(**state); !ok) {
    return std::unexpected(ok.error());
  }
  // A revoked key's private half is destroyed at once; it must never sign again.
  if (auto ok = store.removeStaleFiles(**state); !ok) {
    outcome->warnings.push_back("the change is recorded, but a stale key file could not be removed: " + ok.error());
  }
  return outcome;
}

std::expected<CommandOutcome, std::string> KeyringAdmin::rotate(bool immediate) {
  return change([&](RingState& s, std::int64_t now) { return rotateKeys(s, policy_, now, immediate); });
}

std::expected<CommandOutcome, std::string> KeyringAdmin::retire(const std::string& kid) {
  return change([&](RingState& s, std::int64_t now) { return retireKey(s, policy_, kid, now); });
}

std::expected<CommandOutcome, std::string> KeyringAdmin::revoke(const std::string& kid, bool force) {
  return change([&](RingState& s, std::int64_t now) { return revokeKey(s, policy_, kid, now, force); });
}

std::expected<std::string, std::string> KeyringAdmin::exportJwks() const {
  auto state = read();
  if (!state) {
    return std::unexpected(state.error());
  }
  auto keys = publishedKeys(*state);
  if (!keys) {
    return std::unexpected(keys.error());
  }
  return jwks::publicJwkSetJson(*keys);
}

std::expected<RingState, std::string> KeyringAdmin::waitFor(const std::function<bool(const RingState&)>& done,
                                                            std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto state = read();
    if (!state || done(*state) || std::chrono::steady_clock::now() >= deadline) {
      return state;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace smartbroker::keyring
