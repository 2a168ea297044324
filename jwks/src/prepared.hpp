// Internal to smartbroker_jwks: building the per-key verification state that verify.cpp uses.
#pragma once

#include <memory>

#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::jwks::detail {

/// Verification contexts for every alg `kty`/`crv` allows (RSA: RS256 and RS384; P-256: ES256; P-384: ES384),
/// or null if OpenSSL cannot set them up (verifySignature then falls back to a context per call).
std::shared_ptr<const PreparedVerifier> prepareVerifier(const std::shared_ptr<evp_pkey_st>& key, KeyType kty,
                                                        Curve crv);

}  // namespace smartbroker::jwks::detail
