// Loading and first-start creation of the broker's signing keys, with permission checks and atomic writes.
#include "smartbroker/keyring/keyring.hpp"

#include <algorithm>
#include <filesystem>
#include <map>

#include "storage.hpp"
#include "store.hpp"

namespace smartbroker::keyring {
namespace {

namespace fs = std::filesystem;

/// A keyring the lifecycle manages: serve exactly what a broker would (the active key signs, never a pending one).
std::expected<KeySet, std::string> openManaged(const Store& store) {
  auto lock = store.lock(storage::FileLock::Mode::Shared, std::chrono::seconds(10));
  if (!lock) {
    return std::unexpected(lock.error().message);
  }
  auto state = store.readState();
  if (!state) {
    return std::unexpected(state.error());
  }
  const KeyRecord* active = *state ? (*state)->active() : nullptr;
  if (active == nullptr) {
    return std::unexpected(store.statePath().string() + ": no active key");
  }
  auto stored = store.readPrivateKey(active->kid);
  if (!stored) {
    return std::unexpected(stored.error());
  }
  if (!*stored) {
    return std::unexpected("the private key file of " + active->kid + " is missing (" +
                           store.keyPath(active->kid).string() + ")");
  }
  auto key = openPrivateKey(**stored, active->kid, active->alg, {}, store.keyPath(active->kid).string());
  if (!key) {
    return std::unexpected(key.error());
  }
  return buildKeySet(**state, {{active->kid, *key}});
}

}  // namespace

std::expected<KeySet, std::string> openKeyring(const std::string& stateDirectory, jwks::Alg alg) {
  const Store store(fs::path(stateDirectory) / "keys");
  if (auto ok = storage::ensurePrivateDirectory(store.dir()); !ok) {
    return std::unexpected(ok.error());
  }
  if (storage::exists(store.statePath())) {
    return openManaged(store);
  }

  auto legacy = store.readLegacyKeys(alg);
  if (!legacy) {
    return std::unexpected(legacy.error());
  }
  auto fitting = [&](const LegacyKey& l) { return l.key->alg() == alg; };
  if (std::ranges::none_of(*legacy, fitting)) {
    auto fresh = SigningKey::generate(alg);
    if (!fresh) {
      return std::unexpected(fresh.error());
    }
    if (auto ok = store.writePrivateKey(fresh->kid(), storedForm(*fresh, {})); !ok) {
      return std::unexpected(ok.error());
    }
    // Newest first: the fresh key goes in front.
    legacy->insert(legacy->begin(), LegacyKey{std::make_shared<const SigningKey>(std::move(*fresh)), 0});
  }

  // Newest first: the newest fitting key signs; every loaded key is published. A key that does not fit the
  // configured alg is still published (it may have signed live tokens before a configuration change).
  KeySet set;
  for (const LegacyKey& l : *legacy) {
    if (set.active == nullptr && fitting(l)) {
      set.active = l.key;
    }
    set.published.push_back(l.key->publicKey());
  }
  set.jwksJson = jwks::publicJwkSetJson(set.published);
  return set;
}

}  // namespace smartbroker::keyring
