// Internal to smartbroker_jwks: building the per-key verification state that verify.cpp uses.
#pragma once

#include <memory>
#include <string_view>

#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::jwks::detail {

/// Verification contexts for every alg `kty`/`crv` allows (RSA: RS256 and RS384; P-256: ES256; P-384: ES384,
/// with nettle's form of the key), or null if they cannot be set up (verifySignature then falls back to an
/// OpenSSL context per call).
std::shared_ptr<const PreparedVerifier> prepareVerifier(const std::shared_ptr<evp_pkey_st>& key, KeyType kty,
                                                        Curve crv);

/// For tests: whether nettle takes big-endian (x, y) as a P-384 point, and verifies raw R||S with it.
bool nettleP384Accepts(std::string_view x, std::string_view y);
bool nettleP384Verifies(std::string_view x, std::string_view y, std::string_view signingInput,
                        std::string_view signature);

}  // namespace smartbroker::jwks::detail
