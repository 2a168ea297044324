// The files of one keyring directory: state file, private key files (plain or sealed), locks.
#include "store.hpp"

#include <sys/stat.h>

#include <openssl/crypto.h>

#include <algorithm>
#include <chrono>

#include "sealed.hpp"
#include "state_file.hpp"

namespace smartbroker::keyring {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxStateBytes = 1024 * 1024;
constexpr std::size_t kMaxKeyFileBytes = 64 * 1024;

/// Wipes a string that held private key material before its memory is released.
struct Wiped {
  std::string text;
  ~Wiped() { OPENSSL_cleanse(text.data(), text.size()); }
};

bool isKeyFileName(const std::string& name, std::string& kid) {
  for (const std::string_view suffix : {std::string_view(".pem.sealed"), std::string_view(".pem")}) {
    if (name.size() > suffix.size() && name.ends_with(suffix)) {
      kid = name.substr(0, name.size() - suffix.size());
      return true;
    }
  }
  return false;
}

std::int64_t modifiedSeconds(const fs::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    return 0;
  }
  return static_cast<std::int64_t>(st.st_mtim.tv_sec);
}

}  // namespace

std::expected<void, std::string> Store::checkPrivate() const {
  if (auto ok = storage::requirePrivate(dir_, 0700); !ok) {
    return ok;
  }
  if (storage::exists(statePath())) {
    return storage::requirePrivate(statePath(), 0600);
  }
  return {};
}

std::expected<storage::FileLock, storage::FileLock::Error> Store::lock(storage::FileLock::Mode mode,
                                                                       std::chrono::milliseconds timeout) const {
  return storage::FileLock::acquire(lockPath(), mode, timeout);
}

std::expected<std::optional<RingState>, std::string> Store::readState() const {
  if (!storage::exists(statePath())) {
    return std::optional<RingState>{};
  }
  if (auto ok = storage::requirePrivate(statePath(), 0600); !ok) {
    return std::unexpected(ok.error());
  }
  auto text = storage::readCapped(statePath(), kMaxStateBytes);
  if (!text) {
    return std::unexpected(text.error());
  }
  auto state = state_file::parse(*text);
  if (!state) {
    return std::unexpected(statePath().string() + ": " + state.error());
  }
  return std::optional<RingState>(std::move(*state));
}

std::expected<void, std::string> Store::writeState(const RingState& state) const {
  return storage::writeAtomically(statePath(), state_file::serialize(state));
}

std::expected<void, std::string> Store::writePrivateKey(const std::string& kid, const StoredPrivateKey& key) const {
  return storage::writeAtomically(key.sealed ? sealedKeyPath(kid) : plainKeyPath(kid), key.data);
}

fs::path Store::keyPath(const std::string& kid) const {
  const fs::path sealedPath = sealedKeyPath(kid);
  return storage::exists(sealedPath) ? sealedPath : plainKeyPath(kid);
}

std::expected<std::optional<StoredPrivateKey>, std::string> Store::readPrivateKey(const std::string& kid) const {
  const fs::path path = keyPath(kid);
  if (!storage::exists(path)) {
    return std::optional<StoredPrivateKey>{};
  }
  if (auto ok = storage::requirePrivate(path, 0600); !ok) {
    return std::unexpected(ok.error());
  }
  auto raw = storage::readCapped(path, kMaxKeyFileBytes);
  if (!raw) {
    return std::unexpected(raw.error());
  }
  std::optional<StoredPrivateKey> out(std::in_place);
  out->data = std::move(*raw);
  out->sealed = path == sealedKeyPath(kid);
  return out;
}

std::expected<void, std::string> Store::checkPrivateKey(const std::string& kid) const {
  return storage::requirePrivate(keyPath(kid), 0600);
}

std::expected<void, std::string> Store::removeStaleFiles(const RingState& state) const {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    std::string kid;
    bool stale = false;
    if (name.find(".tmp.") != std::string::npos) {
      stale = true;  // a temporary file of a write that did not finish (writers hold the lock)
    } else if (isKeyFileName(name, kid)) {
      const KeyRecord* record = state.find(kid);
      // Only pending and active keys may sign again; any other private key is only a liability. A file without a
      // record was never published (a crash between writing the key and the state), so it never signed either.
      stale = record == nullptr || !record->hasPrivateKey();
      if (!stale && name.ends_with(".pem")) {
        // A plain copy next to a sealed one is the leftover of sealing an existing key.
        stale = storage::exists(sealedKeyPath(kid));
      }
    }
    if (stale) {
      if (auto ok = storage::removeFile(entry.path()); !ok) {
        return ok;
      }
    }
  }
  if (ec) {
    return std::unexpected(dir_.string() + ": " + ec.message());
  }
  return {};
}

std::expected<std::vector<LegacyKey>, std::string> Store::readLegacyKeys(jwks::Alg preferred) const {
  std::vector<LegacyKey> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.ends_with(".pem")) {
      continue;
    }
    if (auto ok = storage::requirePrivate(entry.path(), 0600); !ok) {
      return std::unexpected(ok.error());
    }
    auto raw = storage::readCapped(entry.path(), kMaxKeyFileBytes);
    if (!raw) {
      return std::unexpected(raw.error());
    }
    const Wiped pem{std::move(*raw)};
    std::shared_ptr<const SigningKey> key;
    for (const jwks::Alg candidate : {preferred, jwks::Alg::ES256, jwks::Alg::RS256, jwks::Alg::ES384}) {
      if (auto parsed = SigningKey::fromPem(pem.text, candidate)) {
        key = std::make_shared<const SigningKey>(std::move(*parsed));
        break;
      }
    }
    if (!key) {
      return std::unexpected(entry.path().string() + ": not a usable private key");
    }
    out.push_back({key, modifiedSeconds(entry.path())});
  }
  if (ec) {
    return std::unexpected(dir_.string() + ": " + ec.message());
  }
  std::ranges::sort(out, std::greater<>(), &LegacyKey::modified);
  return out;
}

StoredPrivateKey::~StoredPrivateKey() { OPENSSL_cleanse(data.data(), data.size()); }

std::expected<std::shared_ptr<const SigningKey>, std::string> openPrivateKey(const StoredPrivateKey& stored,
                                                                            const std::string& kid, jwks::Alg alg,
                                                                            const std::string& kek,
                                                                            const std::string& where) {
  Wiped pem;
  if (stored.sealed) {
    if (kek.empty()) {
      return std::unexpected(where +
                             ": encrypted at rest, but no key-encryption key is configured (keyring.kek_file or "
                             "keyring.kek_credential)");
    }
    auto opened = sealed::open(stored.data, kek, kid);
    if (!opened) {
      return std::unexpected(where + ": " + opened.error());
    }
    pem.text = std::move(*opened);
  } else {
    if (sealed::isSealed(stored.data)) {
      return std::unexpected(where + ": holds an encrypted key under a plain-key name");
    }
    pem.text = stored.data;
  }
  auto key = SigningKey::fromPem(pem.text, alg);
  if (!key) {
    return std::unexpected(where + ": " + key.error());
  }
  // Why: the name is only a name; the key inside must be the one the records (and the JWKS) describe.
  if (key->kid() != kid) {
    return std::unexpected(where + ": holds a different key (thumbprint " + key->kid() + ")");
  }
  return std::make_shared<const SigningKey>(std::move(*key));
}

StoredPrivateKey storedForm(const SigningKey& key, const std::string& kek) {
  const Wiped pem{key.privatePem()};
  StoredPrivateKey out;
  if (kek.empty()) {
    out.data = pem.text;
    return out;
  }
  out.data = sealed::seal(pem.text, kek, key.kid());
  out.sealed = true;
  return out;
}

std::expected<std::vector<jwks::PublicKey>, std::string> publishedKeys(const RingState& state) {
  std::vector<const KeyRecord*> order;
  for (const KeyState wanted : {KeyState::Active, KeyState::Pending, KeyState::Retired}) {
    std::vector<const KeyRecord*> group;
    for (const KeyRecord& k : state.keys) {
      if (k.state == wanted) {
        group.push_back(&k);
      }
    }
    std::ranges::stable_sort(group, std::greater<>(), &KeyRecord::created_at);
    order.insert(order.end(), group.begin(), group.end());
  }
  std::vector<jwks::PublicKey> out;
  for (const KeyRecord* k : order) {
    auto pub = jwks::parseJwk(k->public_jwk);
    if (!pub) {
      return std::unexpected(k->kid + ": public key: " + pub.error());
    }
    pub->kid = k->kid;
    out.push_back(std::move(*pub));
  }
  return out;
}

std::expected<KeySet, std::string> buildKeySet(const RingState& state, const PrivateKeys& privateKeys) {
  const KeyRecord* active = state.active();
  if (active == nullptr) {
    return std::unexpected("no active key");
  }
  const auto it = privateKeys.find(active->kid);
  if (it == privateKeys.end()) {
    return std::unexpected("the private key of the active key " + active->kid + " is not loaded");
  }
  auto published = publishedKeys(state);
  if (!published) {
    return std::unexpected(published.error());
  }
  KeySet set;
  set.active = it->second;
  set.published = std::move(*published);
  set.jwksJson = jwks::publicJwkSetJson(set.published);
  return set;
}

}  // namespace smartbroker::keyring
