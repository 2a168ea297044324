// Loading and first-start creation of the broker's signing keys, with permission checks and atomic writes.
#include "smartbroker/keyring/keyring.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace smartbroker::keyring {
namespace {

namespace fs = std::filesystem;

std::string errnoText() { return std::strerror(errno); }

/// Group or world bits on a secret are refused: another local user could read or replace the key.
std::expected<void, std::string> requirePrivate(const fs::path& path, mode_t allowed) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) {
    return std::unexpected(path.string() + ": " + errnoText());
  }
  if (S_ISLNK(st.st_mode)) {
    return std::unexpected(path.string() + ": is a symbolic link");
  }
  if ((st.st_mode & 0777 & ~allowed) != 0) {
    std::ostringstream msg;
    msg << path.string() << ": permissions " << std::oct << (st.st_mode & 0777) << " are too open (at most "
        << allowed << ")";
    return std::unexpected(msg.str());
  }
  if (st.st_uid != ::geteuid()) {
    return std::unexpected(path.string() + ": not owned by the user running smart-broker");
  }
  return {};
}

std::expected<void, std::string> writeAtomically(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return std::unexpected(tmp.string() + ": " + errnoText());
  }
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      const std::string why = errnoText();
      ::close(fd);
      ::unlink(tmp.c_str());
      return std::unexpected(tmp.string() + ": " + why);
    }
    done += static_cast<std::size_t>(n);
  }
  // fsync before rename so that a crash leaves either no key or the whole key, never a truncated one.
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    return std::unexpected(tmp.string() + ": " + errnoText());
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return std::unexpected(path.string() + ": " + errnoText());
  }
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return {};
}

std::expected<std::string, std::string> readSmallFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::unexpected(path.string() + ": cannot read");
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  if (text.size() > 64 * 1024) {
    return std::unexpected(path.string() + ": too large for a key file");
  }
  return text;
}

}  // namespace

std::expected<KeySet, std::string> openKeyring(const std::string& stateDirectory, jwks::Alg alg) {
  const fs::path dir = fs::path(stateDirectory) / "keys";
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    fs::create_directories(dir.parent_path(), ec);
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return std::unexpected(dir.string() + ": " + errnoText());
    }
  }
  if (auto ok = requirePrivate(dir, 0700); !ok) {
    return std::unexpected(ok.error());
  }

  struct Loaded {
    fs::file_time_type mtime;
    std::shared_ptr<const SigningKey> key;
  };
  std::vector<Loaded> loaded;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".pem") {
      continue;
    }
    if (auto ok = requirePrivate(entry.path(), 0600); !ok) {
      return std::unexpected(ok.error());
    }
    auto text = readSmallFile(entry.path());
    if (!text) {
      return std::unexpected(text.error());
    }
    // A key that does not fit the configured alg is still published (it may have signed live tokens
    // before a configuration change) but never signs.
    bool usable = false;
    for (const jwks::Alg candidate : {alg, jwks::Alg::ES256, jwks::Alg::RS256, jwks::Alg::ES384}) {
      auto key = SigningKey::fromPem(*text, candidate);
      if (key) {
        loaded.push_back({entry.last_write_time(), std::make_shared<const SigningKey>(std::move(*key))});
        usable = true;
        break;
      }
    }
    if (!usable) {
      return std::unexpected(entry.path().string() + ": not a usable private key");
    }
  }

  auto fitting = [&](const Loaded& l) { return l.key->alg() == alg; };
  if (std::none_of(loaded.begin(), loaded.end(), fitting)) {
    auto fresh = SigningKey::generate(alg);
    if (!fresh) {
      return std::unexpected(fresh.error());
    }
    const fs::path file = dir / (fresh->kid() + ".pem");
    if (auto ok = writeAtomically(file, fresh->privatePem()); !ok) {
      return std::unexpected(ok.error());
    }
    loaded.push_back({fs::last_write_time(file, ec), std::make_shared<const SigningKey>(std::move(*fresh))});
  }

  // Newest first: the newest fitting key signs; every loaded key is published.
  std::sort(loaded.begin(), loaded.end(), [](const Loaded& a, const Loaded& b) { return a.mtime > b.mtime; });
  KeySet set;
  for (const Loaded& l : loaded) {
    if (set.active == nullptr && fitting(l)) {
      set.active = l.key;
    }
    set.published.push_back(l.key->publicKey());
  }
  set.jwksJson = jwks::publicJwkSetJson(set.published);
  return set;
}

}  // namespace smartbroker::keyring
