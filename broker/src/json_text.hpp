// Writing JSON text by hand on hot paths: string escaping per RFC 8259 §7.
#pragma once

#include <string>
#include <string_view>

namespace smartbroker::broker {

/// Appends `value` as a quoted JSON string. Control characters are \u-escaped; bytes >= 0x80 are copied
/// (inputs are UTF-8 or validated ASCII).
inline void appendJsonString(std::string& out, std::string_view value) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + value.size() + 2);
  out.push_back('"');
  // Runs that need no escape (all of a base64url token, nearly all of anything else) are appended whole.
  std::size_t run = 0;
  for (std::size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    const auto u = static_cast<unsigned char>(c);
    if (c != '"' && c != '\\' && u >= 0x20) {
      continue;
    }
    out.append(value.data() + run, i - run);
    run = i + 1;
    if (u >= 0x20) {
      out.push_back('\\');
      out.push_back(c);
    } else {
      out += "\\u00";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  out.append(value.data() + run, value.size() - run);
  out.push_back('"');
}

inline void appendJsonMember(std::string& out, std::string_view name, std::string_view value) {
  appendJsonString(out, name);
  out.push_back(':');
  appendJsonString(out, value);
}

}  // namespace smartbroker::broker
