// A strict application/x-www-form-urlencoded parser (WHATWG URL "urlencoded parsing", minus its leniency).
#include "smartbroker/broker/form.hpp"

#include <algorithm>
#include <cctype>

namespace smartbroker::broker {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

/// Decodes one name or value; nullopt for a truncated or non-hex escape or a decoded NUL.
std::optional<std::string> decode(std::string_view in, std::size_t limit, bool& tooLong) {
  std::string out;
  out.reserve(std::min(in.size(), limit));
  std::size_t i = 0;
  while (i < in.size()) {
    // A run of plain characters (all of a base64url assertion) is checked for NUL and appended whole.
    std::size_t end = i;
    while (end < in.size() && in[end] != '%' && in[end] != '+' && in[end] != '\0') {
      ++end;
    }
    if (end > i) {
      if (out.size() + (end - i) > limit) {
        tooLong = true;
        return std::nullopt;
      }
      out.append(in.data() + i, end - i);
      i = end;
      continue;
    }
    char c = in[i];
    if (c == '+') {
      c = ' ';
    } else if (c == '%') {
      if (i + 2 >= in.size()) {
        return std::nullopt;
      }
      const int hi = hexValue(in[i + 1]);
      const int lo = hexValue(in[i + 2]);
      if (hi < 0 || lo < 0) {
        return std::nullopt;
      }
      c = static_cast<char>((hi << 4) | lo);
      i += 2;
    }
    if (c == '\0') {
      return std::nullopt;
    }
    if (out.size() == limit) {
      tooLong = true;
      return std::nullopt;
    }
    out.push_back(c);
    ++i;
  }
  return out;
}

}  // namespace

std::optional<std::string_view> Form::get(std::string_view name) const {
  for (const auto& [key, value] : params_) {
    if (key == name) {
      return value;
    }
  }
  return std::nullopt;
}

std::expected<Form, Denial> Form::parse(std::string_view body, const FormLimits& limits, std::string_view largeName) {
  Form form;
  std::size_t start = 0;
  while (start <= body.size()) {
    std::size_t end = body.find('&', start);
    if (end == std::string_view::npos) {
      end = body.size();
    }
    const std::string_view pair = body.substr(start, end - start);
    start = end + 1;
    if (pair.empty()) {
      if (end == body.size()) {
        break;
      }
      continue;  // "a=1&&b=2": empty sequences are skipped, as every form parser does.
    }
    if (form.params_.size() == limits.max_params) {
      return std::unexpected(Denial{DenyReason::TooManyParameters, "more than " + std::to_string(limits.max_params), {}});
    }
    const std::size_t eq = pair.find('=');
    const std::string_view rawName = pair.substr(0, eq);
    const std::string_view rawValue = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    bool tooLong = false;
    auto name = decode(rawName, 64, tooLong);
    if (!name || name->empty()) {
      return std::unexpected(Denial{tooLong ? DenyReason::ParameterTooLong : DenyReason::MalformedForm,
                                    "bad parameter name", {}});
    }
    const std::size_t valueLimit = (!largeName.empty() && *name == largeName) ? limits.max_large_value_bytes
                                                                               : limits.max_value_bytes;
    auto value = decode(rawValue, valueLimit, tooLong);
    if (!value) {
      return std::unexpected(Denial{tooLong ? DenyReason::ParameterTooLong : DenyReason::MalformedForm,
                                    "bad value of parameter " + *name, {}});
    }
    // RFC 6749 §3.2: request parameters MUST NOT be included more than once.
    if (form.get(*name)) {
      return std::unexpected(Denial{DenyReason::RepeatedParameter, "repeated parameter " + *name, {}});
    }
    form.params_.emplace_back(std::move(*name), std::move(*value));
    if (end == body.size()) {
      break;
    }
  }
  return form;
}

bool isFormContentType(std::string_view contentType) {
  constexpr std::string_view kForm = "application/x-www-form-urlencoded";
  const std::size_t semi = contentType.find(';');
  std::string_view type = contentType.substr(0, semi);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) {
    type.remove_suffix(1);
  }
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) {
    type.remove_prefix(1);
  }
  return type.size() == kForm.size() &&
         std::equal(type.begin(), type.end(), kForm.begin(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == b;
         });
}

}  // namespace smartbroker::broker
