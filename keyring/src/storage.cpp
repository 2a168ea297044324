// Private-file primitives of the keyring: permission checks, atomic writes, bounded reads and flock locks.
#include "storage.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>
#include <utility>

namespace smartbroker::keyring::storage {
namespace {

namespace fs = std::filesystem;

std::string errnoText(int err) { return std::strerror(err); }

/// close(2) that keeps errno of the failure being reported.
void closeQuietly(int fd) {
  const int saved = errno;
  ::close(fd);
  errno = saved;
}

}  // namespace

std::expected<void, std::string> requirePrivate(const fs::path& path, mode_t allowed, bool allowRootOwner) {
  struct stat st{};
  if (::lstat(path.c_str(), &st) != 0) {
    return std::unexpected(path.string() + ": " + errnoText(errno));
  }
  // Why: a symbolic link could point a secret write at another file, or a read at an attacker's key.
  if (S_ISLNK(st.st_mode)) {
    return std::unexpected(path.string() + ": is a symbolic link");
  }
  if ((st.st_mode & 0777 & ~allowed) != 0) {
    std::ostringstream msg;
    msg << path.string() << ": permissions " << std::oct << (st.st_mode & 0777) << " are too open (at most "
        << allowed << ")";
    return std::unexpected(msg.str());
  }
  if (st.st_uid != ::geteuid() && !(allowRootOwner && st.st_uid == 0)) {
    return std::unexpected(path.string() + ": not owned by the user running smart-broker");
  }
  return {};
}

bool exists(const fs::path& path) {
  struct stat st{};
  return ::lstat(path.c_str(), &st) == 0;
}

std::expected<void, std::string> ensurePrivateDirectory(const fs::path& dir) {
  std::error_code ec;
  if (!storage::exists(dir)) {
    if (dir.has_parent_path()) {
      fs::create_directories(dir.parent_path(), ec);
    }
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return std::unexpected(dir.string() + ": " + errnoText(errno));
    }
  }
  return requirePrivate(dir, 0700);
}

std::expected<void, std::string> writeAtomically(const fs::path& path, std::string_view content) {
  // A unique temporary name (mkostemp, mode 0600): a temp file left by a crash never blocks the next write.
  std::string tmp = path.string() + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return std::unexpected(path.string() + ": cannot create a temporary file: " + errnoText(errno));
  }
  auto fail = [&](const std::string& what) -> std::expected<void, std::string> {
    const std::string why = errnoText(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    return std::unexpected(path.string() + ": " + what + ": " + why);
  };
  if (::fchmod(fd, 0600) != 0) {
    return fail("chmod");
  }
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return fail("write");
    }
    done += static_cast<std::size_t>(n);
  }
  // fsync before rename so that a crash leaves either the old file or the whole new one, never a truncated one.
  if (::fsync(fd) != 0) {
    return fail("fsync");
  }
  if (::close(fd) != 0) {
    const std::string why = errnoText(errno);
    ::unlink(tmp.c_str());
    return std::unexpected(path.string() + ": close: " + why);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errnoText(errno);
    ::unlink(tmp.c_str());
    return std::unexpected(path.string() + ": rename: " + why);
  }
  // The rename itself is durable only once the directory entry is on disk.
  const int dir = ::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
  return {};
}

std::expected<std::string, std::string> readCapped(const fs::path& path, std::size_t limit) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return std::unexpected(path.string() + ": " + errnoText(errno));
  }
  std::string out;
  std::array<char, 4096> buffer{};
  for (;;) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const std::string why = errnoText(errno);
      ::close(fd);
      return std::unexpected(path.string() + ": " + why);
    }
    if (n == 0) {
      break;
    }
    out.append(buffer.data(), static_cast<std::size_t>(n));
    if (out.size() > limit) {
      ::close(fd);
      return std::unexpected(path.string() + ": larger than " + std::to_string(limit) + " bytes");
    }
  }
  ::close(fd);
  return out;
}

std::expected<void, std::string> removeFile(const fs::path& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return std::unexpected(path.string() + ": " + errnoText(errno));
  }
  return {};
}

std::expected<FileLock, FileLock::Error> FileLock::acquire(const fs::path& path, Mode mode,
                                                            std::chrono::milliseconds timeout) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return std::unexpected(Error{false, path.string() + ": " + errnoText(errno)});
  }
  if (auto ok = requirePrivate(path, 0600); !ok) {
    ::close(fd);
    return std::unexpected(Error{false, ok.error()});
  }
  const int op = (mode == Mode::Exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (::flock(fd, op) == 0) {
      return FileLock(fd);
    }
    if (errno != EWOULDBLOCK && errno != EINTR) {
      const std::string why = errnoText(errno);
      closeQuietly(fd);
      return std::unexpected(Error{false, path.string() + ": flock: " + why});
    }
    // Polling rather than a blocking flock: the wait stays bounded, so neither the broker's tick nor an
    // operator's command can hang behind a stuck process.
    if (std::chrono::steady_clock::now() >= deadline) {
      ::close(fd);
      return std::unexpected(Error{true, path.string() + ": locked by another smart-broker process (try again)"});
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool FileLock::heldByOther(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return false;
  }
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // also releases the probe's lock when it was granted
  return held;
}

FileLock::FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

FileLock::~FileLock() {
  if (fd_ >= 0) {
    ::close(fd_);  // closing the last descriptor of the open file description releases the flock
  }
}

}  // namespace smartbroker::keyring::storage
