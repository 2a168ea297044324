// Decoding compact JWS (RFC 7515 §7.1) strictly, and reading JWT claims (RFC 7519) without trusting them.
#pragma once

#include <Poco/JSON/Object.h>

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <string_view>

namespace smartbroker::broker::jws {

/// A decoded but not yet trusted JWS: nothing in it is believed until the signature verifies.
struct UntrustedJws {
  Poco::JSON::Object::Ptr header;
  Poco::JSON::Object::Ptr payload;
  std::string_view signingInput;  ///< points into the input
  std::string signature;
};

enum class DecodeError : std::uint8_t { Structure, Header, Payload };

/// Exactly three parts, strictly base64url (no padding), header and payload JSON objects; the signature part
/// may be empty (alg none has one; it is refused later). POCO's JWT reader accepts four parts, trailing dots
/// and padding (POCO-NOTES.md); this does not.
std::expected<UntrustedJws, DecodeError> decode(std::string_view jwt);

std::optional<std::string> stringMember(const Poco::JSON::Object& obj, const std::string& name);

enum class NumericDate : std::uint8_t { Absent, Invalid, Valid };
/// RFC 7519 §2 NumericDate: a JSON number (fractions allowed, floored); strings, booleans and null are not.
NumericDate numericDate(const Poco::JSON::Object& obj, const std::string& name, std::int64_t& out);

bool equalsIgnoreCase(std::string_view a, std::string_view b);

}  // namespace smartbroker::broker::jws
