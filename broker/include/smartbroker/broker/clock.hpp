// The time source of every expiry decision, injectable for tests.
#pragma once

#include <chrono>
#include <cstdint>

namespace smartbroker::broker {

/// Seconds since the Unix epoch (JWT NumericDate, RFC 7519 §2).
class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::int64_t now() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::int64_t now() const override {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace smartbroker::broker
