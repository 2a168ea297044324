// Strict base64url (RFC 4648 §5) without padding, as JWS compact serialization requires (RFC 7515 §2).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace smartbroker::jwks {

/// Encodes bytes as unpadded base64url.
std::string base64urlEncode(std::string_view bytes);

/// Decodes unpadded base64url. Returns nullopt for any character outside [A-Za-z0-9_-], for '=' padding,
/// for an impossible length (n % 4 == 1) and for non-zero trailing bits (a non-canonical encoding), so that
/// one value has exactly one accepted spelling.
std::optional<std::string> base64urlDecode(std::string_view text);

}  // namespace smartbroker::jwks
