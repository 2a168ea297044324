// Structured, injection-safe log lines written with one write(2) each.
#include "smartbroker/broker/log.hpp"

#include <unistd.h>

namespace smartbroker::broker {
namespace {

constexpr std::size_t kMaxValue = 256;

void appendValue(std::string& out, std::string_view value) {
  bool quote = value.empty();
  for (const char c : value) {
    if (c == ' ' || c == '"' || c == '=') {
      quote = true;
      break;
    }
  }
  if (quote) {
    out.push_back('"');
  }
  std::size_t n = 0;
  for (const char c : value) {
    if (n++ == kMaxValue) {
      out += "...";
      break;
    }
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20 || u >= 0x7f) {
      // Escaped, never raw: a newline in untrusted input must not start a forged log line.
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    } else {
      out.push_back(c);
    }
  }
  if (quote) {
    out.push_back('"');
  }
}

}  // namespace

void Log::event(std::string_view name,
                std::initializer_list<std::pair<std::string_view, std::string_view>> fields) const {
  std::string line;
  line.reserve(160);
  line += "event=";
  line += name;
  for (const auto& [key, value] : fields) {
    line.push_back(' ');
    line += key;
    line.push_back('=');
    appendValue(line, value);
  }
  line.push_back('\n');
  std::size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + done, line.size() - done);
    if (n <= 0) {
      return;  // Logging must never take the request down with it.
    }
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace smartbroker::broker
