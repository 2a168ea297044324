// Encryption at rest of private key files with the key-encryption key (AES-256-GCM, OpenSSL EVP).
#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace smartbroker::keyring::sealed {

/// Key-encryption keys are exactly 32 bytes (AES-256).
inline constexpr std::size_t kKekBytes = 32;

/// True when `data` starts with the sealed-file magic.
bool isSealed(std::string_view data);

/// magic ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte tag. The magic and `kid` are authenticated (AAD), so a
/// sealed file moved to another kid's name, or altered in any bit, fails to open. Throws on an OpenSSL failure.
std::string seal(std::string_view plaintext, std::string_view kek, std::string_view kid);

/// The plaintext, or a refusal that does not say which byte was wrong: a wrong KEK and a damaged file look alike.
std::expected<std::string, std::string> open(std::string_view sealedData, std::string_view kek, std::string_view kid);

}  // namespace smartbroker::keyring::sealed
