// Helpers the unit tests share: a temporary directory and a clock the test moves by hand (header-only).
#pragma once

#include <stdlib.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <system_error>

namespace test_support {

/// 2023-11-14T22:13:20Z: where fake clocks start unless a test says otherwise.
constexpr std::int64_t kFixedNow = 1'700'000'000;

/// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "sb-test-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// The default base of FakeClock: no interface, the clock is handed out as a callable (fn()).
struct NoClockInterface {};

/// Seconds since the Unix epoch that move only when the test sets them. Atomic: the code under test may read the
/// clock from a thread of its own (the store's writer, the keyring manager).
///
/// `Interface` is the production clock interface it stands in for, one with `virtual std::int64_t now() const`
/// (e.g. smartbroker::broker::Clock), which now() then overrides. Libraries that take a callable instead use fn().
template <class Interface = NoClockInterface>
class FakeClock final : public Interface {
 public:
  explicit FakeClock(std::int64_t start = kFixedNow) : now_(start) {}
  std::int64_t now() const { return now_.load(); }
  void set(std::int64_t t) { now_.store(t); }
  /// Reads this clock; it must outlive the callable.
  std::function<std::int64_t()> fn() const {
    return [this] { return now(); };
  }

 private:
  std::atomic<std::int64_t> now_;
};

}  // namespace test_support
