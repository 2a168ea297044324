// The bench's OpenSSL side: TEST-ONLY key loading, JWS signing, assertion pre-generation, crypto ceiling.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace smartbroker::bench {

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

enum class JwsAlg : std::uint8_t { RS384, ES384, ES256 };

const char* algName(JwsAlg alg);

/// Reads a PEM private key; throws std::runtime_error on failure.
PkeyPtr loadPrivateKey(const std::string& path);

/// RS384 for RSA keys, ES384 for P-384 keys; throws for anything else.
JwsAlg algForKey(EVP_PKEY* key);

/// The JWS signature bytes over `input`: PKCS#1 v1.5 for RS384, raw R||S (48+48 or 32+32 bytes) for ECDSA.
std::string signJws(EVP_PKEY* key, JwsAlg alg, std::string_view input);

/// What goes into each pre-made token request.
struct AssertionSpec {
  std::string key_file;   ///< TEST-ONLY PEM private key
  std::string client_id;  ///< iss = sub
  std::string kid;
  std::string audience;   ///< <public_base_url>/token
  std::string scope = "system/*.rs";
  std::string path = "/token";
  std::string host;       ///< Host header value
  std::string jti_prefix; ///< unique per run, so that runs against one broker never replay each other
};

/// Complete HTTP/1.1 requests (headers + form body), one distinct signed assertion each, numbered from
/// `first`; generated on `threads` threads. exp = now + 300 at generation time.
std::vector<std::string> makeTokenRequests(const AssertionSpec& spec, std::size_t first, std::size_t count,
                                           unsigned threads);

/// Single-core operation rates (ops/s). The three ceiling operations are measured the way the broker does them:
/// verification through jwks::verifySignature (prepared per-key contexts, nettle for ES384, every check included)
/// and ES256 signing with a prepared per-key context as keyring::SigningKey::sign does; the *_per_op_init
/// variants set up a fresh OpenSSL EVP_DigestVerify/EVP_DigestSign context per operation (what the broker did
/// before), for comparison.
struct CryptoRates {
  double rs384_verify = 0;  ///< RSA-2048
  double es384_verify = 0;  ///< P-384
  double es256_sign = 0;    ///< P-256, including DER -> R||S
  double rs384_verify_per_op_init = 0;
  double es384_verify_per_op_init = 0;
  double es256_sign_per_op_init = 0;
  double rs384_sign = 0;    ///< RSA-2048 (client-side cost of assertion generation)
  double es384_sign = 0;    ///< P-384 (client-side cost of assertion generation)

  /// One token request = one client-assertion verification + one ES256 signature.
  static double tokenCeiling(double verifyRate, double signRate) { return 1.0 / (1.0 / verifyRate + 1.0 / signRate); }
};

/// Runs each operation for about `secondsEach` on the calling thread, with the TEST-ONLY keys given, and prints
/// the per-operation-set-up variants and their ratio to the prepared ones to stdout.
CryptoRates measureCrypto(const std::string& rsaKeyFile, const std::string& p384KeyFile, double secondsEach);

}  // namespace smartbroker::bench
