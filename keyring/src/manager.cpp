// The broker's KeyringManager (policy ticks, snapshots) and the operator's KeyringAdmin, on any KeyringStorage.
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

/// Busy ticks (one a second) after which a held lock is reported: a stuck command would stall rotation.
constexpr int kBusyTicksReported = 30;
/// How long a tick waits for the lock before it gives up until the next tick.
constexpr std::chrono::milliseconds kTickLockWait{250};
/// At start-up, waiting for a command or another instance to finish is right: a broker must not start on a
/// half-seen keyring.
constexpr std::chrono::milliseconds kOpenLockWait{10000};

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
  std::shared_ptr<KeyringStorage> storage;
  RingState state;
  std::optional<std::int64_t> generation;  ///< of `state`, when the storage keeps one
  bool loaded = false;                     ///< `state` has been read from the storage at least once
  std::string lastStateText;
  PrivateKeys privateKeys;  ///< pending and active keys
  std::string view;
  mutable std::mutex mutex;  ///< guards `current`
  std::shared_ptr<const KeySet> current;
  std::vector<Event> startupEvents;
  std::optional<std::string> lastError;
  int busyTicks = 0;
  bool imported = false;  ///< open() adopted `options.import_from`

  Impl(KeyringOptions o, std::shared_ptr<KeyringStorage> s) : options(std::move(o)), storage(std::move(s)) {}
  ~Impl() { OPENSSL_cleanse(options.kek.data(), options.kek.size()); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  /// Stores `key` in `session` the way this keyring keeps private keys (sealed when a KEK is configured).
  std::expected<void, std::string> store(KeyringSession& session, const SigningKey& key) const {
    if (options.kek.empty() && storage->requiresSealing()) {
      return std::unexpected(storage->location() + " keeps private keys only sealed, and no key-encryption key is "
                                                   "configured");
    }
    return session.writePrivateKey(key.kid(), storedForm(key, options.kek));
  }

  std::expected<KeyRecord, std::string> mint(KeyringSession& session, PrivateKeys& keys, jwks::Alg alg,
                                             std::int64_t now) const {
    auto key = SigningKey::generate(alg);
    if (!key) {
      return std::unexpected(key.error());
    }
    // The private key is stored before the record that names it: a crash in between leaves an unreferenced key
    // (removed later, never published), not a record without its key.
    if (auto ok = store(session, *key); !ok) {
      return std::unexpected(ok.error());
    }
    KeyRecord record;
    record.kid = key->kid();
    record.alg = alg;
    record.state = KeyState::Pending;
    record.public_jwk = jwks::publicJwkJson(key->publicKey());
    record.created_at = now;
    keys[record.kid] = std::make_shared<const SigningKey>(std::move(*key));
    return record;
  }

  /// A keyring of the earlier layout: `<kid>.pem` files only. The newest key fitting the configured alg was the one
  /// signing and every key was published, so it stays active and the others retire now (conservatively: any of them
  /// may have signed until now). `sameStorage`: the files are the target's own, so a plain key already is in place.
  std::expected<RingState, std::string> adoptLegacy(const std::vector<LegacyKey>& legacy, KeyringSession& target,
                                                    bool sameStorage, std::int64_t now, std::vector<Event>& events,
                                                    PrivateKeys& keys) const {
    RingState adopted;
    if (legacy.empty()) {
      return adopted;
    }
    auto activeIt = std::ranges::find_if(legacy, [&](const LegacyKey& l) {
      return l.key->alg() == options.policy.algorithm;
    });
    if (activeIt == legacy.end()) {
      activeIt = legacy.begin();
    }
    for (auto it = legacy.begin(); it != legacy.end(); ++it) {
      KeyRecord record;
      record.kid = it->key->kid();
      record.alg = it->key->alg();
      record.public_jwk = jwks::publicJwkJson(it->key->publicKey());
      record.created_at = it->modified;
      record.published_at = it->modified;
      record.activated_at = it->modified;
      if (it == activeIt) {
        record.state = KeyState::Active;
        if (!options.kek.empty() || !sameStorage) {
          // Adopted keys are sealed like new ones when a KEK is configured; the plain copy goes with the next cleanup.
          if (auto ok = store(target, *it->key); !ok) {
            return std::unexpected(ok.error());
          }
        }
        keys[record.kid] = it->key;
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

  /// The keyring of `options.import_from` (records and the private keys of pending and active keys, re-stored in
  /// `target`), or nullopt when it holds none. Runs under the target's exclusive lock, so exactly one instance
  /// imports, once: every other finds the target no longer empty.
  std::expected<std::optional<RingState>, std::string> importKeyring(KeyringSession& target, std::int64_t now,
                                                                     std::vector<Event>& events,
                                                                     PrivateKeys& keys) const {
    const std::string from = options.import_from->location();
    auto source = options.import_from->read(kOpenLockWait);
    if (!source) {
      return std::unexpected("cannot read the keyring to import at " + from + ": " + source.error().message);
    }
    auto records = (*source)->readState();
    if (!records) {
      return std::unexpected(records.error());
    }
    if (!*records) {
      auto legacy = (*source)->legacyKeys(options.policy.algorithm);
      if (!legacy) {
        return std::unexpected(legacy.error());
      }
      if (legacy->empty()) {
        return std::optional<RingState>{};
      }
      auto adopted = adoptLegacy(*legacy, target, false, now, events, keys);
      if (!adopted) {
        return std::unexpected(adopted.error());
      }
      return std::optional<RingState>(std::move(*adopted));
    }
    RingState ring = std::move(**records);
    if (auto problem = recordsProblem(ring)) {
      return std::unexpected(from + ": " + *problem);
    }
    std::size_t withKey = 0;
    for (const KeyRecord& k : ring.keys) {
      if (!k.hasPrivateKey()) {
        continue;  // retired and ended keys never sign again: their private halves stay behind
      }
      auto key = loadKey(**source, k);
      if (!key) {
        return std::unexpected(key.error());
      }
      if (auto ok = store(target, **key); !ok) {
        return std::unexpected(ok.error());
      }
      keys[k.kid] = *key;
      ++withKey;
    }
    events.push_back({"keyring_imported", "",
                      std::to_string(ring.keys.size()) + " key records and " + std::to_string(withKey) +
                          " private keys from " + from + " into " + storage->location() +
                          "; the files are no longer read (remove them once every instance runs on the new keyring)",
                      false});
    return std::optional<RingState>(std::move(ring));
  }

  /// Reads and opens the private key of `record` from `session`.
  std::expected<std::shared_ptr<const SigningKey>, std::string> loadKey(KeyringSession& session,
                                                                        const KeyRecord& record) const {
    auto stored = session.readPrivateKey(record.kid);
    if (!stored) {
      return std::unexpected(stored.error());
    }
    const std::string where = session.keyLocation(record.kid);
    if (!*stored) {
      return std::unexpected("the private key of " + record.kid + " is missing (" + where + ")");
    }
    return openPrivateKey(**stored, record.kid, record.alg, options.kek, where);
  }

  /// Loads (or re-checks) the private key of every pending and active record of `next` into `keys`. Any problem
  /// refuses the whole tick: a key that was tampered with must not become the signing key, and the active one must
  /// be sound. `write`: a plain key is sealed in place when a KEK is configured.
  std::expected<void, std::string> loadPrivateKeys(KeyringSession& session, const RingState& next, PrivateKeys& keys,
                                                   bool write) const {
    for (const KeyRecord& k : next.keys) {
      if (!k.hasPrivateKey()) {
        continue;
      }
      if (keys.contains(k.kid)) {
        if (auto ok = session.checkPrivateKey(k.kid); !ok) {
          return ok;
        }
        continue;
      }
      auto stored = session.readPrivateKey(k.kid);
      if (!stored) {
        return std::unexpected(stored.error());
      }
      const std::string where = session.keyLocation(k.kid);
      if (!*stored) {
        return std::unexpected("the private key of " + k.kid + " is missing (" + where + ")");
      }
      if (!(*stored)->sealed && storage->requiresSealing()) {
        return std::unexpected(where + ": a plain private key where only sealed ones may be");
      }
      auto key = openPrivateKey(**stored, k.kid, k.alg, options.kek, where);
      if (!key) {
        return std::unexpected(key.error());
      }
      if (write && !(*stored)->sealed && !options.kek.empty()) {
        if (auto ok = store(session, **key); !ok) {
          return ok;
        }
      }
      keys[k.kid] = *key;
    }
    std::erase_if(keys, [&](const auto& entry) {
      const KeyRecord* record = next.find(entry.first);
      return record == nullptr || !record->hasPrivateKey();
    });
    return {};
  }

  /// One step in `session`. `write` (exclusive session): read what is stored, apply the policy, write back what
  /// changed, commit. Otherwise only follow what others committed. Memory changes only once the step has succeeded,
  /// so a failure anywhere (a database gone mid-transaction) leaves the last good state in place.
  std::expected<void, std::string> step(KeyringSession& session, std::int64_t now, std::vector<Event>& events,
                                        bool write) {
    std::vector<Event> happened;  ///< handed to `events` once committed: a rolled-back step did nothing
    auto generationNow = session.generation();
    if (!generationNow) {
      return std::unexpected(generationNow.error());
    }
    RingState next;
    PrivateKeys keys = privateKeys;
    bool fresh = false;
    // The generation moves with every committed change: an unchanged one means the copy in memory is current, and
    // the tick costs one small read.
    const bool upToDate = loaded && *generationNow && generation && **generationNow == *generation;
    if (upToDate) {
      next = state;
    } else {
      auto stored = session.readState();
      if (!stored) {
        return std::unexpected(stored.error());
      }
      if (*stored) {
        if (auto problem = recordsProblem(**stored)) {
          return std::unexpected(storage->location() + ": " + *problem);
        }
        next = std::move(**stored);
      } else if (!write) {
        return std::unexpected(storage->location() + ": the keyring is empty");
      } else {
        std::optional<RingState> adopted;
        if (options.import_from) {
          auto importedState = importKeyring(session, now, happened, keys);
          if (!importedState) {
            return std::unexpected(importedState.error());
          }
          adopted = std::move(*importedState);
          imported = adopted.has_value();
        }
        if (!adopted) {
          auto legacy = session.legacyKeys(options.policy.algorithm);
          if (!legacy) {
            return std::unexpected(legacy.error());
          }
          auto fromLegacy = adoptLegacy(*legacy, session, true, now, happened, keys);
          if (!fromLegacy) {
            return std::unexpected(fromLegacy.error());
          }
          adopted = std::move(*fromLegacy);
        }
        next = std::move(*adopted);
        fresh = true;
      }
    }
    if (auto ok = loadPrivateKeys(session, next, keys, write); !ok) {
      return ok;
    }
    if (write) {
      auto result = applyPolicy(next, options.policy, now, [&](jwks::Alg alg, std::int64_t at) {
        return mint(session, keys, alg, at);
      });
      if (!result) {
        return std::unexpected(result.error());
      }
      happened.insert(happened.end(), result->events.begin(), result->events.end());
      std::string text = fingerprint(next);
      const bool changedElsewhere = text != lastStateText;
      if (result->changed || fresh) {
        if (auto ok = session.writeState(next); !ok) {
          return ok;
        }
      }
      if (result->changed || fresh || changedElsewhere) {
        // After the state is written: a key leaves the storage only once no record says it may sign.
        if (auto ok = session.removeStaleKeys(next); !ok) {
          return ok;
        }
      }
      if (result->changed || fresh) {
        generationNow = session.generation();
        if (!generationNow) {
          return std::unexpected(generationNow.error());
        }
      }
      if (auto ok = session.commit(); !ok) {
        return ok;
      }
      lastStateText = std::move(text);
    }
    // Committed: from here on memory follows the storage.
    events.insert(events.end(), happened.begin(), happened.end());
    state = std::move(next);
    privateKeys = std::move(keys);
    generation = *generationNow;
    loaded = true;
    return {};
  }

  /// step() with OpenSSL, storage and file-system exceptions turned into errors: the tick thread must never die.
  std::expected<void, std::string> guardedStep(KeyringSession& session, std::int64_t now, std::vector<Event>& events,
                                               bool write) {
    try {
      return step(session, now, events, write);
    } catch (const std::exception& e) {
      return std::unexpected(std::string("unexpected failure: ") + e.what());
    }
  }

  /// What of the state decides which private keys may exist (compared between ticks).
  static std::string fingerprint(const RingState& ring);

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
    const bool first = !current;
    {
      const std::lock_guard guard(mutex);
      current = snapshot;
    }
    view = next;
    if (!first && out.events.empty()) {
      // Another instance or a command changed the keyring; this one only follows (the change is logged where made).
      out.events.push_back({"keyring_loaded", snapshot->active->kid(),
                            "picked up a change made elsewhere; " + std::to_string(snapshot->published.size()) +
                                " keys published, this one signs",
                            false});
    }
    out.published = std::move(snapshot);
  }

  /// While another process holds the lock: follow what it has committed, where the storage allows a read meanwhile.
  void follow(Tick& out, std::int64_t now) {
    auto session = storage->read(std::chrono::milliseconds(0));
    if (!session) {
      return;  // files: the holder excludes readers too; the next tick tries again
    }
    if (auto ok = guardedStep(**session, now, out.events, false); !ok) {
      report(out, ok.error());
    }
  }

  Tick tick() {
    Tick out;
    const std::int64_t now = options.now();
    storage->brokerAlive();
    {
      // A short, bounded wait: commands and other instances hold the lock for milliseconds, and this thread serves
      // no request.
      auto session = storage->lock(kTickLockWait);
      if (!session) {
        if (!session.error().busy) {
          report(out, session.error().message);
          return out;
        }
        if (++busyTicks == kBusyTicksReported) {
          report(out, "the keyring has been locked by another process for " + std::to_string(busyTicks) +
                          " s; rotation waits");
        }
        follow(out, now);
      } else {
        busyTicks = 0;
        if (auto ok = guardedStep(**session, now, out.events, true); !ok) {
          // The snapshot being served stays: the keys in memory are intact, and nothing unsafe is picked up.
          report(out, ok.error());
          return out;
        }
      }
    }
    if (out.error) {
      return out;
    }
    publishIfChanged(out);
    if (out.error) {
      report(out, *out.error);
      return out;
    }
    if (lastError && busyTicks == 0) {
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

std::string KeyringManager::Impl::fingerprint(const RingState& ring) {
  std::string text;
  for (const KeyRecord& k : ring.keys) {
    text += k.kid + std::string(keyStateName(k.state)) + std::to_string(k.activate_after) + ";";
  }
  if (ring.rotation_request) {
    text += "request" + std::to_string(ring.rotation_request->requested_at);
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
  std::shared_ptr<KeyringStorage> storage =
      options.storage ? options.storage : fileKeyringStorage(options.state_directory);
  if (storage->requiresSealing() && options.kek.empty()) {
    // Why: a database is reachable by everyone who can reach its server and lands in its backups; a private key
    // enters it only encrypted, so without the key-encryption key there is nothing this broker may do.
    return std::unexpected("the keyring in " + storage->location() +
                           " keeps private keys sealed with a key-encryption key, and none is configured: set "
                           "keyring.kek_file or keyring.kek_credential (the same key on every instance)");
  }
  if (auto ok = storage->attachBroker(options.instance); !ok) {
    return std::unexpected(ok.error());
  }
  auto impl = std::make_unique<Impl>(std::move(options), storage);
  {
    auto session = storage->lock(kOpenLockWait);
    if (!session) {
      return std::unexpected(session.error().message);
    }
    if (auto ok = impl->guardedStep(**session, impl->options.now(), impl->startupEvents, true); !ok) {
      return std::unexpected(ok.error());
    }
  }
  storage->brokerAlive();
  Tick first;
  impl->publishIfChanged(first);
  if (first.error) {
    return std::unexpected(*first.error);
  }
  if (impl->options.import_from && !impl->imported && impl->options.import_from->checkCreated()) {
    impl->startupEvents.push_back(
        {"keyring_files_ignored", "",
         impl->options.import_from->location() + " holds a file keyring, but the keyring in " + storage->location() +
             " is in use and the files are not read; remove them once they are no longer needed",
         true});
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

KeyringAdmin::KeyringAdmin(std::shared_ptr<KeyringStorage> storage, Policy policy, NowFn now,
                           std::chrono::milliseconds lockTimeout)
    : storage_(std::move(storage)), policy_(policy), now_(std::move(now)), lock_timeout_(lockTimeout) {}

std::expected<KeyringAdmin, std::string> KeyringAdmin::open(const std::string& stateDirectory, Policy policy,
                                                            NowFn now, std::chrono::milliseconds lockTimeout) {
  return open(fileKeyringStorage(stateDirectory), policy, std::move(now), lockTimeout);
}

std::expected<KeyringAdmin, std::string> KeyringAdmin::open(std::shared_ptr<KeyringStorage> storage, Policy policy,
                                                            NowFn now, std::chrono::milliseconds lockTimeout) {
  if (auto ok = storage->checkCreated(); !ok) {
    return std::unexpected(ok.error());
  }
  return KeyringAdmin(std::move(storage), policy, now ? std::move(now) : NowFn(systemNow), lockTimeout);
}

std::expected<RingState, std::string> KeyringAdmin::read() const {
  auto session = storage_->read(lock_timeout_);
  if (!session) {
    return std::unexpected(session.error().message);
  }
  auto state = (*session)->readState();
  if (!state) {
    return std::unexpected(state.error());
  }
  if (!*state) {
    return std::unexpected(storage_->location() + ": no keyring state");
  }
  if (auto problem = recordsProblem(**state)) {
    return std::unexpected(storage_->location() + ": " + *problem);
  }
  return std::move(**state);
}

bool KeyringAdmin::brokerRunning() const { return storage_->brokerRunning(); }

std::expected<CommandOutcome, std::string> KeyringAdmin::change(
    const std::function<std::expected<CommandOutcome, std::string>(RingState&, std::int64_t)>& edit) {
  auto session = storage_->lock(lock_timeout_);
  if (!session) {
    return std::unexpected(session.error().message);
  }
  auto state = (*session)->readState();
  if (!state) {
    return std::unexpected(state.error());
  }
  if (!*state) {
    return std::unexpected(storage_->location() + ": no keyring state");
  }
  if (auto problem = recordsProblem(**state)) {
    return std::unexpected(storage_->location() + ": " + *problem);
  }
  auto outcome = edit(**state, now_());
  if (!outcome || !outcome->changed) {
    return outcome;
  }
  if (auto ok = (*session)->writeState(**state); !ok) {
    return std::unexpected(ok.error());
  }
  // A revoked key's private half is destroyed at once; it must never sign again.
  std::optional<std::string> cleanup;
  if (auto ok = (*session)->removeStaleKeys(**state); !ok) {
    cleanup = ok.error();
  }
  // Files are durable as written; a database transaction is all or nothing, and only its commit records the change.
  if (auto ok = (*session)->commit(); !ok) {
    return std::unexpected("the change was not recorded: " + ok.error());
  }
  if (cleanup) {
    outcome->warnings.push_back("the change is recorded, but a stale private key could not be removed: " + *cleanup);
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
