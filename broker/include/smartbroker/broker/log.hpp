// One structured line per event to stderr (journald), `event=... key=value`, values sanitised.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace smartbroker::broker {

/// Writes whole lines with a single write(2) so that lines from concurrent threads never interleave.
/// Values are quoted when they contain spaces, control and non-ASCII bytes are escaped, and each value is
/// cut at 256 bytes: untrusted input (an unknown client_id, say) can neither forge lines nor flood the log.
/// Never pass a secret (assertion, token, private key).
class Log {
 public:
  explicit Log(int fd = 2) : fd_(fd) {}
  void event(std::string_view name, std::initializer_list<std::pair<std::string_view, std::string_view>> fields) const;

 private:
  int fd_;
};

}  // namespace smartbroker::broker
