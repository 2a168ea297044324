// Validated public JWKs and JWK Sets (RFC 7517), their OpenSSL keys, RFC 7638 thumbprints and JWS signature checks.
#pragma once

#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct evp_pkey_st;  // OpenSSL's EVP_PKEY, kept out of this header.

namespace smartbroker::jwks {

/// OpenSSL verification state set up once per key (verify.cpp); read-only after construction.
struct PreparedVerifier;

/// The asymmetric JWS algorithms smart-broker knows (RFC 7518 §3.1). There is deliberately no `none` and no HS*.
enum class Alg : std::uint8_t { RS256, RS384, ES256, ES384 };

/// "RS384" -> Alg::RS384; nullopt for anything else (including "none", "HS256", "PS256", wrong case).
std::optional<Alg> algFromName(std::string_view name);
std::string_view algName(Alg alg);

enum class KeyType : std::uint8_t { RSA, EC };
enum class Curve : std::uint8_t { None, P256, P384 };

/// A public key that passed every validation rule. Immutable and shared between threads.
struct PublicKey {
  std::string kid;                 ///< may be empty for a lone parseJwk(); parseJwkSet requires one
  KeyType kty = KeyType::RSA;
  Curve crv = Curve::None;         ///< set for EC keys
  std::optional<Alg> alg;          ///< the JWK's own "alg", when it has one
  std::string use;                 ///< the JWK's "use", empty when absent
  int bits = 0;                    ///< RSA modulus size, or the EC field size (256/384)
  std::string thumbprint;          ///< RFC 7638 SHA-256 thumbprint, base64url
  std::shared_ptr<evp_pkey_st> key;  ///< the OpenSSL public key
  /// Verification contexts initialised once for `key`, duplicated per signature check; set by every function
  /// here that builds a PublicKey. Used only while it belongs to `key`; without it verifySignature sets up a
  /// context per call (same checks, slower).
  std::shared_ptr<const PreparedVerifier> prepared;

  /// True when this key may verify `a`: kty matches the alg family, the curve matches ES256/ES384,
  /// the JWK's own "alg" (if any) equals `a`, and "use" (if any) is "sig".
  bool fits(Alg a) const;
};

/// A validated JWK Set.
struct JwkSet {
  std::vector<PublicKey> keys;
};

/// How a set treats individual bad keys.
enum class BadKeyPolicy : std::uint8_t {
  Reject,  ///< any bad key rejects the whole set (registration-time inline keys)
  Skip,    ///< bad keys are skipped and reported in `skipped` (fetched sets, see issue on jwks_uri)
};

struct JwkSetParse {
  JwkSet set;
  std::vector<std::string> skipped;  ///< one line per skipped key: "keys[2] (kid x): reason"
};

/// Parses and validates one JWK from its JSON text. Rules (SPEC.md "Registration"): kty RSA or EC only;
/// RSA modulus >= 2048 bits and e odd and > 1; EC crv P-256 or P-384 with x/y of exact length and a point
/// on the curve; "alg", when present, an Alg that fits kty/crv; "use", when present, "sig"; no private
/// members (d, p, q, dp, dq, qi, oth, k). The error names the member and the problem; it never quotes key material.
std::expected<PublicKey, std::string> parseJwk(std::string_view json);

/// Parses a JWK Set: {"keys": [...]}, at most `maxKeys` keys, each validated as parseJwk does, every key
/// with a non-empty "kid", kids unique. With BadKeyPolicy::Skip a bad key is skipped (and listed), but a
/// duplicate kid, or a set left with no usable key, is still an error.
std::expected<JwkSetParse, std::string> parseJwkSet(std::string_view json, BadKeyPolicy policy = BadKeyPolicy::Reject,
                                                    std::size_t maxKeys = 100);

/// Builds a validated PublicKey from an OpenSSL public (or private: only the public half is used) key.
/// Used for the broker's own keys. The kid is set to `kid`, or to the thumbprint when `kid` is empty.
std::expected<PublicKey, std::string> publicKeyFromEvp(std::shared_ptr<evp_pkey_st> key, std::optional<Alg> alg,
                                                       std::string kid = {});

/// RFC 7638 thumbprint (SHA-256, base64url) of a validated key.
std::string thumbprint(const PublicKey& key);

/// The key as public JWK JSON: kty, kid, use "sig", alg (when set), n/e or crv/x/y. Never private members.
std::string publicJwkJson(const PublicKey& key);

/// {"keys":[...]} for the given keys.
std::string publicJwkSetJson(const std::vector<PublicKey>& keys);

/// Verifies a JWS signature over `signingInput` (ASCII "header.payload") with `key` under `alg`.
/// RS*: RSASSA-PKCS1-v1_5. ES*: `signature` must be raw R||S of exactly 64 (ES256) or 96 (ES384) bytes.
/// Returns false (never throws) for a key that does not fit `alg`, a wrong-length signature or a bad signature.
bool verifySignature(const PublicKey& key, Alg alg, std::string_view signingInput, std::string_view signature);

}  // namespace smartbroker::jwks
