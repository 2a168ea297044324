// Private-file primitives of the keyring: permission checks, atomic writes, bounded reads and flock locks.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <expected>
#include <filesystem>
#include <string>
#include <string_view>

namespace smartbroker::keyring::storage {

/// Refuses `path` unless it exists, is not a symbolic link, is owned by the effective user and has no
/// permission bits outside `allowed` (0700 for directories, 0600 for secrets): another local user could
/// otherwise read or replace a key. `allowRootOwner` also accepts root as the owner (systemd credentials).
std::expected<void, std::string> requirePrivate(const std::filesystem::path& path, mode_t allowed,
                                                bool allowRootOwner = false);

/// True when something (a symbolic link included) exists at `path`.
bool exists(const std::filesystem::path& path);

/// Creates `dir` (and its parents) with mode 0700 when missing, then checks it with requirePrivate.
std::expected<void, std::string> ensurePrivateDirectory(const std::filesystem::path& dir);

/// Writes `content` to `path` with mode 0600: a temporary file in the same directory, fsync, rename, fsync of
/// the directory, so that a crash leaves the old or the new content, never a mixture.
std::expected<void, std::string> writeAtomically(const std::filesystem::path& path, std::string_view content);

/// The whole file, refused above `limit` bytes (a key or state file is small; /dev/zero is not).
std::expected<std::string, std::string> readCapped(const std::filesystem::path& path, std::size_t limit);

/// Removes `path`; a file that is already gone is not an error.
std::expected<void, std::string> removeFile(const std::filesystem::path& path);

/// An advisory flock(2) on a lock file (created 0600 when missing). Movable, unlocks and closes on destruction.
class FileLock {
 public:
  enum class Mode { Shared, Exclusive };

  struct Error {
    bool busy = false;    ///< another process held the lock for the whole timeout
    std::string message;  ///< names the file and says why
  };

  /// Tries for up to `timeout` (zero: once, without waiting).
  static std::expected<FileLock, Error> acquire(const std::filesystem::path& path, Mode mode,
                                                std::chrono::milliseconds timeout);
  /// True when another open file description holds any lock on `path` (a missing file holds none).
  static bool heldByOther(const std::filesystem::path& path);

  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace smartbroker::keyring::storage
