// application/x-www-form-urlencoded parsing with limits and refusal of repeated parameters.
#pragma once

#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "smartbroker/broker/errors.hpp"

namespace smartbroker::broker {

struct FormLimits {
  std::size_t max_params = 16;
  std::size_t max_value_bytes = 8 * 1024;
  /// A value may exceed max_value_bytes up to this size for the names listed in `large` (the assertion).
  std::size_t max_large_value_bytes = 8 * 1024;
};

/// Decoded form parameters in body order. Names are unique (a repeated name is refused, RFC 6749 §3.2).
class Form {
 public:
  std::optional<std::string_view> get(std::string_view name) const;
  std::size_t size() const { return params_.size(); }

  /// Parses `body` ('+' is a space, %XX decoded; bad escapes, NUL and empty names are refused).
  static std::expected<Form, Denial> parse(std::string_view body, const FormLimits& limits,
                                           std::string_view largeName = {});

 private:
  std::vector<std::pair<std::string, std::string>> params_;
};

/// True for "application/x-www-form-urlencoded", case-insensitively, with optional parameters (charset).
bool isFormContentType(std::string_view contentType);

}  // namespace smartbroker::broker
