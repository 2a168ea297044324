// One of the broker's own private signing keys: generation, PEM storage form, and JWS signing.
#pragma once

#include <expected>
#include <memory>
#include <string>
#include <string_view>

#include "smartbroker/jwks/jwk.hpp"

struct evp_pkey_ctx_st;  // OpenSSL's EVP_PKEY_CTX, kept out of this header.

namespace smartbroker::keyring {

/// An immutable private key with its public JWK. Safe to share between threads; sign() is const.
class SigningKey {
 public:
  /// A fresh key: ES256 → P-256, ES384 → P-384, RS256/RS384 → RSA 3072.
  static std::expected<SigningKey, std::string> generate(jwks::Alg alg);
  /// Loads a PKCS#8 PEM private key for `alg`; refuses a key whose type, curve or size does not fit it.
  static std::expected<SigningKey, std::string> fromPem(std::string_view pem, jwks::Alg alg);

  /// The private key as PKCS#8 PEM (only for writing the key file).
  std::string privatePem() const;
  jwks::Alg alg() const { return alg_; }
  /// The RFC 7638 thumbprint, used as `kid`.
  const std::string& kid() const { return public_.kid; }
  const jwks::PublicKey& publicKey() const { return public_; }

  /// The JWS signature of `signingInput`: RSASSA-PKCS1-v1_5, or raw R||S padded to the curve size for ES*
  /// (OpenSSL rather than POCO, whose ES384 signatures are sometimes invalid; POCO-NOTES.md).
  std::string sign(std::string_view signingInput) const;

  /// `base64url(header).base64url(payload).base64url(signature)` with header {"alg","typ","kid"}.
  std::string signCompact(std::string_view typ, std::string_view payloadJson) const;

 /// Assembles a key from parts already checked to fit each other (internal; use generate/fromPem).
  static SigningKey fromParts(std::shared_ptr<evp_pkey_st> key, jwks::PublicKey pub, jwks::Alg alg);

 private:
  SigningKey(std::shared_ptr<evp_pkey_st> key, jwks::PublicKey pub, jwks::Alg alg);
  std::shared_ptr<evp_pkey_st> key_;
  /// An EVP_PKEY_sign context for key_ and alg_, set up once; sign() works on a duplicate of it, never on it,
  /// so copies of this key on other threads share nothing mutable. Null if OpenSSL could not set it up.
  std::shared_ptr<const evp_pkey_ctx_st> signContext_;
  jwks::PublicKey public_;
  jwks::Alg alg_;
};

}  // namespace smartbroker::keyring
