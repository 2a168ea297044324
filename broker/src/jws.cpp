// Strict compact-JWS decoding and claim readers shared by client authentication and token verification.
#include "jws.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>

#include <cctype>
#include <cmath>

#include "smartbroker/jwks/base64url.hpp"

namespace smartbroker::broker::jws {
namespace {

using Poco::JSON::Object;

constexpr std::size_t kJsonDepth = 8;

Object::Ptr parseObject(const std::string& json) {
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(kJsonDepth);
    const Poco::Dynamic::Var value = parser.parse(json);
    if (value.type() != typeid(Object::Ptr)) {
      return nullptr;
    }
    return value.extract<Object::Ptr>();
  } catch (const Poco::Exception&) {
    return nullptr;
  } catch (const std::exception&) {
    return nullptr;
  }
}

}  // namespace

std::expected<UntrustedJws, DecodeError> decode(std::string_view jwt) {
  const std::size_t d1 = jwt.find('.');
  const std::size_t d2 = d1 == std::string_view::npos ? d1 : jwt.find('.', d1 + 1);
  if (d1 == std::string_view::npos || d2 == std::string_view::npos || jwt.find('.', d2 + 1) != std::string_view::npos ||
      d1 == 0 || d2 == d1 + 1) {
    return std::unexpected(DecodeError::Structure);
  }
  auto header = jwks::base64urlDecode(jwt.substr(0, d1));
  auto payload = jwks::base64urlDecode(jwt.substr(d1 + 1, d2 - d1 - 1));
  auto signature = jwks::base64urlDecode(jwt.substr(d2 + 1));
  if (!header || !payload || !signature) {
    return std::unexpected(DecodeError::Structure);
  }
  UntrustedJws out;
  out.header = parseObject(*header);
  if (!out.header) {
    return std::unexpected(DecodeError::Header);
  }
  out.payload = parseObject(*payload);
  if (!out.payload) {
    return std::unexpected(DecodeError::Payload);
  }
  out.signingInput = jwt.substr(0, d2);
  out.signature = std::move(*signature);
  return out;
}

std::optional<std::string> stringMember(const Object& obj, const std::string& name) {
  const Poco::Dynamic::Var value = obj.get(name);
  if (value.isEmpty() || !value.isString()) {
    return std::nullopt;
  }
  return value.extract<std::string>();
}

NumericDate numericDate(const Object& obj, const std::string& name, std::int64_t& out) {
  if (!obj.has(name)) {
    return NumericDate::Absent;
  }
  const Poco::Dynamic::Var value = obj.get(name);
  if (value.isEmpty() || value.isString() || value.isBoolean() || !value.isNumeric()) {
    return NumericDate::Invalid;
  }
  try {
    if (value.isInteger()) {
      out = value.convert<std::int64_t>();
      return NumericDate::Valid;
    }
    const double d = value.convert<double>();
    // Beyond 2^53 a double no longer names one second; such a date is nonsense anyway.
    if (!std::isfinite(d) || std::fabs(d) > 9007199254740992.0) {
      return NumericDate::Invalid;
    }
    out = static_cast<std::int64_t>(std::floor(d));
    return NumericDate::Valid;
  } catch (const Poco::Exception&) {
    return NumericDate::Invalid;
  }
}

bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace smartbroker::broker::jws
