// Unit tests for the jwks library: base64url, JWK and JWK Set validation, thumbprints, export and JWS verification.
#define BOOST_TEST_MODULE jwks
#include <boost/test/unit_test.hpp>

#include "smartbroker/jwks/base64url.hpp"
#include "smartbroker/jwks/jwk.hpp"
// Internal to jwks, for the nettle P-384 cross-checks against OpenSSL.
#include "../../jwks/src/prepared.hpp"

#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace jw = smartbroker::jwks;

namespace {

template <auto Free>
struct OsslDeleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    Free(p);
  }
};
using BnPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, OsslDeleter<&EVP_MD_CTX_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, OsslDeleter<&ECDSA_SIG_free>>;

std::shared_ptr<evp_pkey_st> generateRsa(std::size_t bits) {
  EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits);
  BOOST_REQUIRE(k != nullptr);
  return {k, EVP_PKEY_free};
}

std::shared_ptr<evp_pkey_st> generateEc(const char* curve) {
  EVP_PKEY* k = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve);
  BOOST_REQUIRE(k != nullptr);
  return {k, EVP_PKEY_free};
}

// Generated once per process: RSA key generation is slow and the keys are TEST-ONLY.
const std::shared_ptr<evp_pkey_st>& rsa2048() {
  static const auto key = generateRsa(2048);
  return key;
}
const std::shared_ptr<evp_pkey_st>& p256() {
  static const auto key = generateEc("P-256");
  return key;
}
const std::shared_ptr<evp_pkey_st>& p384() {
  static const auto key = generateEc("P-384");
  return key;
}

std::string b64(std::string_view bytes) { return jw::base64urlEncode(bytes); }

std::string bnParam(EVP_PKEY* k, const char* name) {
  BIGNUM* raw = nullptr;
  BOOST_REQUIRE(EVP_PKEY_get_bn_param(k, name, &raw) == 1);
  const BnPtr bn(raw);
  std::string out(static_cast<std::size_t>(BN_num_bytes(bn.get())), '\0');
  BN_bn2bin(bn.get(), reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

/// 04||x||y of an EC key.
std::string ecPoint(EVP_PKEY* k) {
  unsigned char* raw = nullptr;
  const std::size_t len = EVP_PKEY_get1_encoded_public_key(k, &raw);
  BOOST_REQUIRE(len > 0);
  std::string out(reinterpret_cast<const char*>(raw), len);
  OPENSSL_free(raw);
  return out;
}

/// Hand-built RSA JWK JSON from the key's n/e, plus `extra` members (",\"alg\":\"RS256\"").
std::string rsaJwk(EVP_PKEY* k, std::string_view extra = {}) {
  return R"({"kty":"RSA","n":")" + b64(bnParam(k, OSSL_PKEY_PARAM_RSA_N)) + R"(","e":")" +
         b64(bnParam(k, OSSL_PKEY_PARAM_RSA_E)) + '"' + std::string(extra) + '}';
}

std::string ecJwkFrom(std::string_view crv, std::string_view x, std::string_view y, std::string_view extra = {}) {
  return R"({"kty":"EC","crv":")" + std::string(crv) + R"(","x":")" + b64(x) + R"(","y":")" + b64(y) + '"' +
         std::string(extra) + '}';
}

std::string ecJwk(EVP_PKEY* k, std::string_view crv, std::string_view extra = {}) {
  const std::string point = ecPoint(k);
  const std::size_t w = (point.size() - 1) / 2;
  return ecJwkFrom(crv, point.substr(1, w), point.substr(1 + w, w), extra);
}

/// Signs like a JWS producer: PKCS#1 v1.5 for RSA, raw R||S for EC.
std::string sign(EVP_PKEY* k, jw::Alg alg, std::string_view input) {
  const bool sha256 = alg == jw::Alg::RS256 || alg == jw::Alg::ES256;
  const MdCtxPtr ctx(EVP_MD_CTX_new());
  BOOST_REQUIRE(EVP_DigestSignInit(ctx.get(), nullptr, sha256 ? EVP_sha256() : EVP_sha384(), nullptr, k) == 1);
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  std::size_t len = 0;
  BOOST_REQUIRE(EVP_DigestSign(ctx.get(), nullptr, &len, in, input.size()) == 1);
  std::string sig(len, '\0');
  BOOST_REQUIRE(EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()) == 1);
  sig.resize(len);
  if (alg == jw::Alg::RS256 || alg == jw::Alg::RS384) {
    return sig;
  }
  const int width = alg == jw::Alg::ES256 ? 32 : 48;
  const auto* der = reinterpret_cast<const unsigned char*>(sig.data());
  const EcdsaSigPtr parsed(d2i_ECDSA_SIG(nullptr, &der, static_cast<long>(sig.size())));
  BOOST_REQUIRE(parsed);
  std::string raw(static_cast<std::size_t>(2 * width), '\0');
  auto* out = reinterpret_cast<unsigned char*>(raw.data());
  BOOST_REQUIRE(BN_bn2binpad(ECDSA_SIG_get0_r(parsed.get()), out, width) == width);
  BOOST_REQUIRE(BN_bn2binpad(ECDSA_SIG_get0_s(parsed.get()), out + width, width) == width);
  return raw;
}

jw::PublicKey mustParse(const std::string& json) {
  auto key = jw::parseJwk(json);
  BOOST_REQUIRE_MESSAGE(key.has_value(), "parseJwk failed: " << (key ? std::string() : key.error()));
  return *key;
}

std::string mustDecode(std::string_view text) {
  auto bytes = jw::base64urlDecode(text);
  BOOST_REQUIRE(bytes.has_value());
  return *bytes;
}

bool errorContains(const std::expected<jw::PublicKey, std::string>& r, std::string_view needle) {
  return !r.has_value() && r.error().find(needle) != std::string::npos;
}

std::string flipBit(std::string s, std::size_t index) {
  s[index] = static_cast<char>(static_cast<unsigned char>(s[index]) ^ 0x01U);
  return s;
}

// RFC 7515 Appendix A.2 / A.3 (also the RFC 7517 example keys), public halves only.
constexpr std::string_view kA2N =
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-"
    "pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-"
    "KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_"
    "h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
constexpr std::string_view kA2SigningInput =
    "eyJhbGciOiJSUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
constexpr std::string_view kA2Signature =
    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZ"
    "cAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--"
    "xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_"
    "IoypGlUPQGe77Rw";
constexpr std::string_view kA3X = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
constexpr std::string_view kA3Y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
constexpr std::string_view kA3SigningInput =
    "eyJhbGciOiJFUzI1NiJ9."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
constexpr std::string_view kA3Signature =
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";

// RFC 7638 §3.1.
constexpr std::string_view kRfc7638N =
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
    "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5ha"
    "jrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
constexpr std::string_view kRfc7638Thumbprint = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

std::string a2Jwk(std::string_view extra = {}) {
  return R"({"kty":"RSA","n":")" + std::string(kA2N) + R"(","e":"AQAB")" + std::string(extra) + '}';
}
std::string a3Jwk(std::string_view extra = {}) {
  return R"({"kty":"EC","crv":"P-256","x":")" + std::string(kA3X) + R"(","y":")" + std::string(kA3Y) + '"' +
         std::string(extra) + '}';
}

std::string keySet(const std::vector<std::string>& keys) {
  std::string out = R"({"keys":[)";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    out += (i == 0 ? "" : ",") + keys[i];
  }
  return out + "]}";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(base64url)

BOOST_AUTO_TEST_CASE(round_trips_every_length_and_byte_value) {
  std::string bytes;
  for (int i = 0; i < 300; ++i) {
    bytes.push_back(static_cast<char>(i * 37 + 11));
    const std::string encoded = jw::base64urlEncode(bytes);
    BOOST_TEST(encoded.find_first_of("+/=") == std::string::npos);
    const auto decoded = jw::base64urlDecode(encoded);
    BOOST_REQUIRE(decoded.has_value());
    BOOST_TEST(*decoded == bytes);
  }
}

BOOST_AUTO_TEST_CASE(agrees_with_openssl_base64_on_every_length_and_every_trailing_character) {
  // OpenSSL's EVP_EncodeBlock as the independent reference: the standard alphabet, padded; base64url is the same
  // bits with '-' '_' for '+' '/' and no padding.
  std::string bytes;
  for (int i = 0; i < 200; ++i) {
    bytes.push_back(static_cast<char>((i * 151 + 7) & 0xFF));
    std::string reference(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(reference.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
    reference.resize(static_cast<std::size_t>(n));
    while (!reference.empty() && reference.back() == '=') {
      reference.pop_back();
    }
    for (char& c : reference) {
      c = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    BOOST_TEST(jw::base64urlEncode(bytes) == reference);
    BOOST_TEST(mustDecode(reference) == bytes);
  }
  // Every character in every position of a 3-character group: accepted exactly when it is in the alphabet and
  // leaves no stray trailing bits (the last of "Zm?" carries 2 spare bits: 16 of the 64 letters are canonical).
  int canonical = 0;
  for (int c = 0; c < 256; ++c) {
    const std::string text = std::string("Zm") + static_cast<char>(c);
    if (jw::base64urlDecode(text).has_value()) {
      ++canonical;
      BOOST_TEST(jw::base64urlEncode(*jw::base64urlDecode(text)) == text);
    }
  }
  BOOST_TEST(canonical == 16);
}

BOOST_AUTO_TEST_CASE(encodes_rfc4648_vectors_without_padding) {
  BOOST_TEST(jw::base64urlEncode("") == "");
  BOOST_TEST(jw::base64urlEncode("f") == "Zg");
  BOOST_TEST(jw::base64urlEncode("fo") == "Zm8");
  BOOST_TEST(jw::base64urlEncode("foo") == "Zm9v");
  BOOST_TEST(jw::base64urlEncode("foobar") == "Zm9vYmFy");
  BOOST_TEST(jw::base64urlEncode("\xfb\xff") == "-_8");
  BOOST_TEST(mustDecode("-_8") == "\xfb\xff");
  BOOST_TEST(mustDecode("") == "");
}

BOOST_AUTO_TEST_CASE(refuses_padding) {
  BOOST_TEST(!jw::base64urlDecode("Zg==").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm8=").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm9v=").has_value());
}

BOOST_AUTO_TEST_CASE(refuses_characters_outside_the_url_alphabet) {
  BOOST_TEST(!jw::base64urlDecode("+/8").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm 9v").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm9v\n").has_value());
  BOOST_TEST(!jw::base64urlDecode(std::string_view("Zm\0v", 4)).has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm9\xc3\xa9").has_value());
}

BOOST_AUTO_TEST_CASE(refuses_length_one_modulo_four) {
  BOOST_TEST(!jw::base64urlDecode("Z").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm9vY").has_value());
}

BOOST_AUTO_TEST_CASE(refuses_non_canonical_trailing_bits) {
  // "Zg" is the canonical spelling of "f"; "Zh" decodes to the same byte with a stray bit set.
  BOOST_TEST(jw::base64urlDecode("Zg").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zh").has_value());
  BOOST_TEST(!jw::base64urlDecode("Zm9").has_value());
  BOOST_TEST(jw::base64urlDecode("Zm8").has_value());
  BOOST_TEST(!jw::base64urlDecode(std::string(kA3Signature.substr(0, kA3Signature.size() - 1)) + "R").has_value());
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(alg_names)

BOOST_AUTO_TEST_CASE(maps_the_four_supported_names_both_ways) {
  for (const auto a : {jw::Alg::RS256, jw::Alg::RS384, jw::Alg::ES256, jw::Alg::ES384}) {
    const auto back = jw::algFromName(jw::algName(a));
    BOOST_REQUIRE(back.has_value());
    BOOST_TEST((*back == a));
  }
  BOOST_TEST(jw::algName(jw::Alg::RS384) == "RS384");
}

BOOST_AUTO_TEST_CASE(refuses_none_hmac_pss_and_wrong_case) {
  for (const char* name : {"none", "None", "HS256", "PS256", "rs256", "ES512", "EdDSA", "", "RS256 "}) {
    BOOST_TEST(!jw::algFromName(name).has_value(), name);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(thumbprint)

BOOST_AUTO_TEST_CASE(matches_the_rfc7638_example) {
  const auto key = mustParse(R"({"kty":"RSA","n":")" + std::string(kRfc7638N) +
                             R"(","e":"AQAB","alg":"RS256","kid":"2011-04-29"})");
  BOOST_TEST(key.thumbprint == kRfc7638Thumbprint);
  BOOST_TEST(jw::thumbprint(key) == kRfc7638Thumbprint);
}

BOOST_AUTO_TEST_CASE(ignores_a_tolerated_leading_zero_octet_in_the_modulus) {
  const auto key = mustParse(R"({"kty":"RSA","n":")" + b64(std::string(1, '\0') + mustDecode(kRfc7638N)) +
                             R"(","e":"AQAB"})");
  BOOST_TEST(key.bits == 2048);
  BOOST_TEST(key.thumbprint == kRfc7638Thumbprint);
}

BOOST_AUTO_TEST_CASE(is_the_same_for_a_key_and_its_export) {
  for (const auto& pkey : {rsa2048(), p256(), p384()}) {
    const auto fromEvp = jw::publicKeyFromEvp(pkey, std::nullopt);
    BOOST_REQUIRE(fromEvp.has_value());
    const auto reparsed = mustParse(jw::publicJwkJson(*fromEvp));
    BOOST_TEST(reparsed.thumbprint == fromEvp->thumbprint);
    BOOST_TEST(jw::thumbprint(reparsed) == fromEvp->thumbprint);
    BOOST_TEST(fromEvp->thumbprint.size() == 43U);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(parse_jwk_rsa)

BOOST_AUTO_TEST_CASE(accepts_rfc7515_a2_public_key) {
  const auto key = mustParse(a2Jwk(R"(,"kid":"a2","alg":"RS256","use":"sig","key_ops":["verify"])"));
  BOOST_TEST((key.kty == jw::KeyType::RSA));
  BOOST_TEST((key.crv == jw::Curve::None));
  BOOST_TEST(key.bits == 2048);
  BOOST_TEST(key.kid == "a2");
  BOOST_TEST(key.use == "sig");
  BOOST_TEST((key.alg == jw::Alg::RS256));
  BOOST_TEST(key.key != nullptr);
}

BOOST_AUTO_TEST_CASE(accepts_generated_rsa_2048_key) {
  const auto key = mustParse(rsaJwk(rsa2048().get()));
  BOOST_TEST(key.bits == 2048);
  BOOST_TEST(key.kid.empty());
  BOOST_TEST(!key.alg.has_value());
}

BOOST_AUTO_TEST_CASE(rejects_rsa_key_below_2048_bits) {
  const auto small = generateRsa(1024);
  const auto r = jw::parseJwk(rsaJwk(small.get()));
  BOOST_TEST(errorContains(r, "n: modulus is 1024 bits, at least 2048 required"));
  BOOST_TEST(!jw::publicKeyFromEvp(small, std::nullopt).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_modulus_that_is_2047_bits_after_a_leading_zero) {
  std::string n = mustDecode(kA2N);
  n[0] = '\x01';  // top bits cleared: 2041 bits
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + b64(std::string(1, '\0') + n) + R"(","e":"AQAB"})"),
                           "at least 2048"));
}

BOOST_AUTO_TEST_CASE(rejects_even_one_or_oversized_exponent) {
  const std::string n = std::string(kA2N);
  auto withE = [&](std::string_view e) { return jw::parseJwk(R"({"kty":"RSA","n":")" + n + R"(","e":")" + std::string(e) + R"("})"); };
  BOOST_TEST(errorContains(withE(b64(std::string("\x01\x00\x00", 3))), "e: exponent is even"));
  BOOST_TEST(errorContains(withE(b64("\x01")), "e: exponent is 1"));
  BOOST_TEST(errorContains(withE(b64(std::string(1, '\0'))), "e: exponent is zero"));
  BOOST_TEST(errorContains(withE(b64(std::string("\x01\x00\x00\x00\x01", 5))), "larger than 32 bits"));
  BOOST_TEST(withE(b64("\x03")).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_modulus_above_8192_bits) {
  const std::string n(1025, '\xff');
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + b64(n) + R"(","e":"AQAB"})"),
                           "n: modulus is 8200 bits, at most 8192 accepted"));
}

BOOST_AUTO_TEST_CASE(rejects_modulus_with_a_small_prime_factor) {
  // Odd and 2048 bits, but 2^2048 - 1 is divisible by 3.
  const std::string n(256, '\xff');
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + b64(n) + R"(","e":"AQAB"})"),
                           "n: modulus has a small prime factor"));
}

BOOST_AUTO_TEST_CASE(rejects_even_modulus) {
  std::string n = mustDecode(kA2N);
  n.back() = static_cast<char>(static_cast<unsigned char>(n.back()) & 0xFEU);
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + b64(n) + R"(","e":"AQAB"})"), "n: modulus is even"));
}

BOOST_AUTO_TEST_CASE(rejects_missing_or_malformed_n_and_e) {
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","e":"AQAB"})"), "n: missing"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + std::string(kA2N) + R"("})"), "e: missing"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":")" + std::string(kA2N) + R"(","e":"AQAB="})"),
                           "e: not unpadded base64url"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"RSA","n":12,"e":"AQAB"})"), "n: must be a string"));
}

BOOST_AUTO_TEST_CASE(error_text_never_quotes_key_material) {
  const auto small = generateRsa(1024);
  const std::string n = b64(bnParam(small.get(), OSSL_PKEY_PARAM_RSA_N));
  const auto r = jw::parseJwk(rsaJwk(small.get()));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find(n.substr(0, 16)) == std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(parse_jwk_ec)

BOOST_AUTO_TEST_CASE(accepts_rfc7515_a3_public_key) {
  const auto key = mustParse(a3Jwk(R"(,"alg":"ES256")"));
  BOOST_TEST((key.kty == jw::KeyType::EC));
  BOOST_TEST((key.crv == jw::Curve::P256));
  BOOST_TEST(key.bits == 256);
}

BOOST_AUTO_TEST_CASE(accepts_generated_p256_and_p384_keys) {
  const auto a = mustParse(ecJwk(p256().get(), "P-256"));
  BOOST_TEST((a.crv == jw::Curve::P256));
  const auto b = mustParse(ecJwk(p384().get(), "P-384", R"(,"alg":"ES384")"));
  BOOST_TEST((b.crv == jw::Curve::P384));
  BOOST_TEST(b.bits == 384);
}

BOOST_AUTO_TEST_CASE(rejects_p521_and_secp256k1) {
  const auto k521 = generateEc("P-521");
  BOOST_TEST(errorContains(jw::parseJwk(ecJwk(k521.get(), "P-521")), "crv: P-521 is not accepted"));
  BOOST_TEST(!jw::publicKeyFromEvp(k521, std::nullopt).has_value());
  const auto k256k1 = generateEc("secp256k1");
  BOOST_TEST(errorContains(jw::parseJwk(ecJwk(k256k1.get(), "secp256k1")), "crv:"));
  const auto fromEvp = jw::publicKeyFromEvp(k256k1, std::nullopt);
  BOOST_REQUIRE(!fromEvp.has_value());
  BOOST_TEST(fromEvp.error().find("crv:") != std::string::npos);
  // A secp256k1 point labelled P-256 is not on P-256.
  BOOST_TEST(!jw::parseJwk(ecJwk(k256k1.get(), "P-256")).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_point_not_on_the_curve) {
  const std::string y = flipBit(mustDecode(kA3Y), 31);
  BOOST_TEST(errorContains(jw::parseJwk(ecJwkFrom("P-256", mustDecode(kA3X), y)), "x/y: not a point on the curve"));
}

BOOST_AUTO_TEST_CASE(rejects_point_at_origin) {
  const std::string zero(32, '\0');
  BOOST_TEST(!jw::parseJwk(ecJwkFrom("P-256", zero, zero)).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_wrong_coordinate_length) {
  const std::string x = mustDecode(kA3X);
  const std::string y = mustDecode(kA3Y);
  BOOST_TEST(errorContains(jw::parseJwk(ecJwkFrom("P-256", x.substr(1), y)), "x: 31 bytes, P-256 needs 32"));
  BOOST_TEST(errorContains(jw::parseJwk(ecJwkFrom("P-256", x, std::string(1, '\0') + y)), "y: 33 bytes"));
  // A P-256 key labelled P-384 has coordinates that are too short.
  BOOST_TEST(errorContains(jw::parseJwk(ecJwkFrom("P-384", x, y)), "x: 32 bytes, P-384 needs 48"));
}

BOOST_AUTO_TEST_CASE(rejects_missing_crv_x_or_y) {
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"EC","x":")" + std::string(kA3X) + R"(","y":")" + std::string(kA3Y) + R"("})"),
                           "crv: missing"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"EC","crv":"P-256","x":")" + std::string(kA3X) + R"("})"), "y: missing"));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(parse_jwk_members)

BOOST_AUTO_TEST_CASE(rejects_alg_that_does_not_fit_the_key) {
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"alg":"ES256")")), "alg: ES256 does not fit a RSA key"));
  BOOST_TEST(errorContains(jw::parseJwk(a3Jwk(R"(,"alg":"ES384")")), "alg: ES384 does not fit a P-256 key"));
  BOOST_TEST(errorContains(jw::parseJwk(a3Jwk(R"(,"alg":"RS256")")), "alg:"));
  BOOST_TEST(errorContains(jw::parseJwk(ecJwk(p384().get(), "P-384", R"(,"alg":"ES256")")), "alg:"));
}

BOOST_AUTO_TEST_CASE(rejects_unknown_alg) {
  for (const char* alg : {"none", "HS256", "PS256", "RS512", "rs256"}) {
    BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(std::string(R"(,"alg":")") + alg + '"')), "alg: not one of"), alg);
  }
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"alg":256)")), "alg: must be a string"));
}

BOOST_AUTO_TEST_CASE(rejects_each_private_member) {
  for (const char* member : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
    const auto r = jw::parseJwk(a2Jwk(std::string(R"(,")") + member + R"(":"AQAB")"));
    BOOST_TEST(errorContains(r, std::string(member) + ": private key member present"), member);
  }
  BOOST_TEST(errorContains(jw::parseJwk(a3Jwk(R"(,"d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI")")), "d: private"));
  // Any value counts, even one that is not a string.
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"oth":[])")), "oth: private"));
}

BOOST_AUTO_TEST_CASE(rejects_oct_okp_and_unknown_key_types) {
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"})"),
                           "kty: symmetric (oct) keys are not accepted"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})"),
                           "kty: OKP"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":"rsa","n":"AQAB","e":"AQAB"})"), "kty: unsupported"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"n":"AQAB","e":"AQAB"})"), "kty: missing"));
}

BOOST_AUTO_TEST_CASE(rejects_use_other_than_sig) {
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"use":"enc")")), "use: must be \"sig\""));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"use":"SIG")")), "use:"));
}

BOOST_AUTO_TEST_CASE(requires_verify_in_key_ops) {
  BOOST_TEST(mustParse(a2Jwk(R"(,"key_ops":["verify"])")).key != nullptr);
  BOOST_TEST(mustParse(a2Jwk(R"(,"key_ops":["sign","verify"])")).key != nullptr);
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"key_ops":["encrypt"])")), "key_ops:"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"key_ops":["verify","encrypt"])")), "key_ops:"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"key_ops":[])")), "key_ops: does not include"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"key_ops":["verify","verify"])")), "key_ops: duplicate"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"key_ops":"verify")")), "key_ops: must be an array"));
}

BOOST_AUTO_TEST_CASE(rejects_empty_long_or_control_character_kid) {
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"kid":"")")), "kid: must not be empty"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"kid":")" + std::string(257, 'a') + '"')), "kid: longer"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"kid":"a\nb")")), "kid: only visible ASCII"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"kid":7)")), "kid: must be a string"));
}

BOOST_AUTO_TEST_CASE(rejects_duplicate_member_names) {
  const auto r = jw::parseJwk(R"({"kty":"EC","kty":"RSA","n":")" + std::string(kA2N) + R"(","e":"AQAB"})");
  BOOST_TEST(errorContains(r, "duplicate member \"kty\""));
}

BOOST_AUTO_TEST_CASE(rejects_non_object_malformed_and_oversized_json) {
  BOOST_TEST(errorContains(jw::parseJwk("[]"), "JWK: not a JSON object"));
  BOOST_TEST(!jw::parseJwk("\"RSA\"").has_value());
  BOOST_TEST(!jw::parseJwk("42").has_value());
  BOOST_TEST(errorContains(jw::parseJwk("{} {}"), "JSON:"));
  BOOST_TEST(errorContains(jw::parseJwk(R"({"kty":)"), "JSON:"));
  BOOST_TEST(errorContains(jw::parseJwk(""), "JSON:"));
  BOOST_TEST(errorContains(jw::parseJwk(a2Jwk(R"(,"x5c":[")" + std::string(70000, 'A') + R"("])")), "at most 65536"));
}

BOOST_AUTO_TEST_CASE(ignores_unknown_members) {
  BOOST_TEST(mustParse(a2Jwk(R"(,"ext":true,"x5t":"abc","custom":{"a":[1,2]})")).bits == 2048);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(parse_jwk_set)

BOOST_AUTO_TEST_CASE(accepts_set_of_rsa_and_ec_keys) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"rsa")"), a3Jwk(R"(,"kid":"ec")"),
                                        ecJwk(p384().get(), "P-384", R"(,"kid":"ec384")")}));
  BOOST_REQUIRE(r.has_value());
  BOOST_REQUIRE(r->set.keys.size() == 3U);
  BOOST_TEST(r->set.keys[0].kid == "rsa");
  BOOST_TEST(r->set.keys[1].kid == "ec");
  BOOST_TEST(r->set.keys[2].kid == "ec384");
  BOOST_TEST(r->skipped.empty());
}

BOOST_AUTO_TEST_CASE(rejects_duplicate_kids) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"k")"), a3Jwk(R"(,"kid":"k")")}));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error() == "keys[1] (kid k): duplicate kid");
}

BOOST_AUTO_TEST_CASE(rejects_duplicate_kids_in_skip_mode_even_when_one_key_is_bad) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"k")"), a3Jwk(R"(,"kid":"k","use":"enc")")}),
                                 jw::BadKeyPolicy::Skip);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("duplicate kid") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(rejects_key_without_kid) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"k")"), a3Jwk()}));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error() == "keys[1]: kid: missing");
  BOOST_TEST(!jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"")")})).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_set_that_is_not_an_object) {
  BOOST_TEST(jw::parseJwkSet("[]").error() == "JWK Set: not a JSON object");
  BOOST_TEST(jw::parseJwkSet(a2Jwk(R"(,"kid":"k")")).error() == "keys: missing");
  BOOST_TEST(jw::parseJwkSet("{\"keys\":").error().starts_with("JSON:"));
}

BOOST_AUTO_TEST_CASE(rejects_keys_that_is_not_an_array) {
  BOOST_TEST(jw::parseJwkSet(R"({"keys":{}})").error() == "keys: not an array");
  BOOST_TEST(jw::parseJwkSet(R"({"keys":"x"})").error() == "keys: not an array");
  BOOST_TEST(jw::parseJwkSet(R"({"keys":[]})").error() == "keys: the set has no keys");
}

BOOST_AUTO_TEST_CASE(rejects_too_many_keys) {
  const std::vector<std::string> keys{a2Jwk(R"(,"kid":"a")"), a3Jwk(R"(,"kid":"b")"), a2Jwk(R"(,"kid":"c")")};
  BOOST_TEST(jw::parseJwkSet(keySet(keys), jw::BadKeyPolicy::Reject, 2).error() == "keys: 3 keys, at most 2 accepted");
  BOOST_TEST(jw::parseJwkSet(keySet(keys), jw::BadKeyPolicy::Reject, 3).has_value());
}

BOOST_AUTO_TEST_CASE(rejects_oversized_document) {
  const std::string big = R"({"pad":")" + std::string(600 * 1024, 'a') + R"(","keys":[]})";
  BOOST_TEST(jw::parseJwkSet(big).error().find("at most 524288") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(rejects_whole_set_for_one_bad_key_in_reject_mode) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"good")"), a3Jwk(R"(,"kid":"bad","d":"AQAB")")}));
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error() == "keys[1] (kid bad): d: private key member present, only public keys are accepted");
}

BOOST_AUTO_TEST_CASE(skips_bad_keys_and_lists_them_in_skip_mode) {
  const auto small = generateRsa(1024);
  const auto r = jw::parseJwkSet(keySet({rsaJwk(small.get(), R"(,"kid":"weak")"), a2Jwk(R"(,"kid":"good")"),
                                        R"("not a key")", a3Jwk(R"(,"kid":"enc","use":"enc")"), a3Jwk()}),
                                 jw::BadKeyPolicy::Skip);
  BOOST_REQUIRE(r.has_value());
  BOOST_REQUIRE(r->set.keys.size() == 1U);
  BOOST_TEST(r->set.keys[0].kid == "good");
  BOOST_REQUIRE(r->skipped.size() == 4U);
  BOOST_TEST(r->skipped[0] == "keys[0] (kid weak): n: modulus is 1024 bits, at least 2048 required");
  BOOST_TEST(r->skipped[1] == "keys[2]: not a JSON object");
  BOOST_TEST(r->skipped[2] == "keys[3] (kid enc): use: must be \"sig\"");
  BOOST_TEST(r->skipped[3] == "keys[4]: kid: missing");
}

BOOST_AUTO_TEST_CASE(rejects_set_with_no_usable_key_in_skip_mode) {
  const auto r = jw::parseJwkSet(keySet({a3Jwk(R"(,"kid":"a","alg":"ES384")"), R"({"kty":"oct","kid":"b","k":"AA"})"}),
                                 jw::BadKeyPolicy::Skip);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().starts_with("keys: no usable key (2 skipped"));
}

BOOST_AUTO_TEST_CASE(does_not_echo_unsafe_kids_in_reasons) {
  const auto r = jw::parseJwkSet(keySet({a2Jwk(R"(,"kid":"good")"), a3Jwk(R"(,"kid":"evil\nkid=forged")")}),
                                 jw::BadKeyPolicy::Skip);
  BOOST_REQUIRE(r.has_value());
  BOOST_REQUIRE(r->skipped.size() == 1U);
  BOOST_TEST(r->skipped[0] == "keys[1]: kid: only visible ASCII characters are accepted");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(public_key_from_evp)

BOOST_AUTO_TEST_CASE(derives_type_curve_and_size_from_the_key) {
  const auto rsa = jw::publicKeyFromEvp(rsa2048(), jw::Alg::RS384);
  BOOST_REQUIRE(rsa.has_value());
  BOOST_TEST((rsa->kty == jw::KeyType::RSA));
  BOOST_TEST(rsa->bits == 2048);
  BOOST_TEST((rsa->alg == jw::Alg::RS384));
  const auto ec = jw::publicKeyFromEvp(p384(), jw::Alg::ES384, "broker-1");
  BOOST_REQUIRE(ec.has_value());
  BOOST_TEST((ec->crv == jw::Curve::P384));
  BOOST_TEST(ec->bits == 384);
  BOOST_TEST(ec->kid == "broker-1");
}

BOOST_AUTO_TEST_CASE(defaults_kid_to_the_thumbprint) {
  const auto ec = jw::publicKeyFromEvp(p256(), jw::Alg::ES256);
  BOOST_REQUIRE(ec.has_value());
  BOOST_TEST(ec->kid == ec->thumbprint);
  BOOST_TEST(ec->kid == mustParse(ecJwk(p256().get(), "P-256")).thumbprint);
}

BOOST_AUTO_TEST_CASE(refuses_alg_that_does_not_fit) {
  BOOST_TEST(!jw::publicKeyFromEvp(rsa2048(), jw::Alg::ES256).has_value());
  BOOST_TEST(!jw::publicKeyFromEvp(p256(), jw::Alg::ES384).has_value());
  BOOST_TEST(!jw::publicKeyFromEvp(p384(), jw::Alg::RS256).has_value());
}

BOOST_AUTO_TEST_CASE(refuses_unsupported_key_types_and_null) {
  EVP_PKEY* ed = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  BOOST_REQUIRE(ed != nullptr);
  const auto r = jw::publicKeyFromEvp({ed, EVP_PKEY_free}, std::nullopt);
  BOOST_TEST(!r.has_value());
  BOOST_TEST(!jw::publicKeyFromEvp(nullptr, std::nullopt).has_value());
}

BOOST_AUTO_TEST_CASE(keeps_only_the_public_half_of_a_private_key) {
  const auto rsa = jw::publicKeyFromEvp(rsa2048(), std::nullopt);
  BOOST_REQUIRE(rsa.has_value());
  BIGNUM* d = nullptr;
  BOOST_TEST(EVP_PKEY_get_bn_param(rsa->key.get(), OSSL_PKEY_PARAM_RSA_D, &d) != 1);
  BN_free(d);
  const auto ec = jw::publicKeyFromEvp(p256(), std::nullopt);
  BOOST_REQUIRE(ec.has_value());
  BIGNUM* priv = nullptr;
  BOOST_TEST(EVP_PKEY_get_bn_param(ec->key.get(), OSSL_PKEY_PARAM_PRIV_KEY, &priv) != 1);
  BN_free(priv);
  ERR_clear_error();
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(public_jwk_json)

BOOST_AUTO_TEST_CASE(never_contains_private_members) {
  for (const auto& pkey : {rsa2048(), p256(), p384()}) {
    const auto key = jw::publicKeyFromEvp(pkey, std::nullopt, "k1");
    BOOST_REQUIRE(key.has_value());
    const std::string json = jw::publicJwkJson(*key);
    Poco::JSON::Parser parser;
    const auto object = parser.parse(json).extract<Poco::JSON::Object::Ptr>();
    for (const char* member : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
      BOOST_TEST(!object->has(member), member);
    }
    BOOST_TEST(object->getValue<std::string>("use") == "sig");
    BOOST_TEST(object->getValue<std::string>("kid") == "k1");
  }
}

BOOST_AUTO_TEST_CASE(round_trips_through_parse_jwk_to_the_same_thumbprint) {
  const auto original = mustParse(a2Jwk(R"(,"kid":"2011-04-29","alg":"RS256")"));
  const auto again = mustParse(jw::publicJwkJson(original));
  BOOST_TEST(again.thumbprint == original.thumbprint);
  BOOST_TEST(again.kid == "2011-04-29");
  BOOST_TEST((again.alg == jw::Alg::RS256));
  const auto ec = mustParse(a3Jwk(R"(,"kid":"ec")"));
  BOOST_TEST(mustParse(jw::publicJwkJson(ec)).thumbprint == ec.thumbprint);
}

BOOST_AUTO_TEST_CASE(writes_members_in_a_stable_order) {
  const auto ec = mustParse(a3Jwk(R"(,"kid":"e\"c","alg":"ES256")"));
  BOOST_TEST(jw::publicJwkJson(ec) == R"({"kty":"EC","kid":"e\"c","use":"sig","alg":"ES256","crv":"P-256","x":")" +
                                          std::string(kA3X) + R"(","y":")" + std::string(kA3Y) + R"("})");
}

BOOST_AUTO_TEST_CASE(writes_a_set_that_parses_back) {
  const auto a = mustParse(a2Jwk(R"(,"kid":"a")"));
  const auto b = mustParse(a3Jwk(R"(,"kid":"b")"));
  const auto r = jw::parseJwkSet(jw::publicJwkSetJson({a, b}));
  BOOST_REQUIRE(r.has_value());
  BOOST_REQUIRE(r->set.keys.size() == 2U);
  BOOST_TEST(r->set.keys[1].thumbprint == b.thumbprint);
  BOOST_TEST(jw::publicJwkSetJson({}) == R"({"keys":[]})");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(fits)

BOOST_AUTO_TEST_CASE(follows_the_truth_table) {
  using jw::Alg;
  struct Row {
    jw::KeyType kty;
    jw::Curve crv;
    std::optional<Alg> alg;
    std::string use;
    std::array<bool, 4> fits;  // RS256, RS384, ES256, ES384
  };
  const std::vector<Row> rows{
      {jw::KeyType::RSA, jw::Curve::None, std::nullopt, "", {true, true, false, false}},
      {jw::KeyType::RSA, jw::Curve::None, Alg::RS256, "", {true, false, false, false}},
      {jw::KeyType::RSA, jw::Curve::None, Alg::RS384, "sig", {false, true, false, false}},
      {jw::KeyType::RSA, jw::Curve::None, std::nullopt, "enc", {false, false, false, false}},
      {jw::KeyType::EC, jw::Curve::P256, std::nullopt, "", {false, false, true, false}},
      {jw::KeyType::EC, jw::Curve::P256, Alg::ES256, "sig", {false, false, true, false}},
      {jw::KeyType::EC, jw::Curve::P256, Alg::ES384, "", {false, false, false, false}},
      {jw::KeyType::EC, jw::Curve::P384, std::nullopt, "", {false, false, false, true}},
      {jw::KeyType::EC, jw::Curve::P384, Alg::ES384, "", {false, false, false, true}},
      {jw::KeyType::EC, jw::Curve::None, std::nullopt, "", {false, false, false, false}},
  };
  const std::array<Alg, 4> algs{Alg::RS256, Alg::RS384, Alg::ES256, Alg::ES384};
  for (std::size_t r = 0; r < rows.size(); ++r) {
    jw::PublicKey key;
    key.kty = rows[r].kty;
    key.crv = rows[r].crv;
    key.alg = rows[r].alg;
    key.use = rows[r].use;
    for (std::size_t a = 0; a < algs.size(); ++a) {
      BOOST_TEST(key.fits(algs[a]) == rows[r].fits[a], "row " << r << " alg " << jw::algName(algs[a]));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(verify_signature)

BOOST_AUTO_TEST_CASE(verifies_rfc7515_a2_rs256) {
  const auto key = mustParse(a2Jwk());
  BOOST_TEST(jw::verifySignature(key, jw::Alg::RS256, kA2SigningInput, mustDecode(kA2Signature)));
}

BOOST_AUTO_TEST_CASE(verifies_rfc7515_a3_es256) {
  const auto key = mustParse(a3Jwk());
  BOOST_TEST(jw::verifySignature(key, jw::Alg::ES256, kA3SigningInput, mustDecode(kA3Signature)));
}

BOOST_AUTO_TEST_CASE(rejects_flipped_bit_in_signature) {
  const auto rsa = mustParse(a2Jwk());
  const std::string rs = mustDecode(kA2Signature);
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, flipBit(rs, 0)));
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, flipBit(rs, rs.size() - 1)));
  const auto ec = mustParse(a3Jwk());
  const std::string es = mustDecode(kA3Signature);
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, flipBit(es, 5)));
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, flipBit(es, 40)));
}

BOOST_AUTO_TEST_CASE(rejects_flipped_bit_in_payload) {
  const auto rsa = mustParse(a2Jwk());
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, flipBit(std::string(kA2SigningInput), 30), mustDecode(kA2Signature)));
  const auto ec = mustParse(a3Jwk());
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, flipBit(std::string(kA3SigningInput), 30), mustDecode(kA3Signature)));
}

BOOST_AUTO_TEST_CASE(rejects_rs256_signature_checked_as_rs384) {
  const auto rsa = mustParse(a2Jwk());
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS384, kA2SigningInput, mustDecode(kA2Signature)));
  const auto pinned = mustParse(a2Jwk(R"(,"alg":"RS384")"));
  BOOST_TEST(!jw::verifySignature(pinned, jw::Alg::RS256, kA2SigningInput, mustDecode(kA2Signature)));
}

BOOST_AUTO_TEST_CASE(rejects_truncated_overlong_or_empty_ecdsa_signature) {
  const auto ec = mustParse(a3Jwk());
  const std::string es = mustDecode(kA3Signature);
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, es.substr(0, 63)));
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, es + '\0'));
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, std::string(1, '\0') + es));
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, ""));
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, std::string(64, '\0')));
}

BOOST_AUTO_TEST_CASE(rejects_der_encoded_ecdsa_signature) {
  const auto key = mustParse(ecJwk(p256().get(), "P-256"));
  const std::string raw = sign(p256().get(), jw::Alg::ES256, "a.b");
  BOOST_REQUIRE(jw::verifySignature(key, jw::Alg::ES256, "a.b", raw));
  const MdCtxPtr ctx(EVP_MD_CTX_new());
  BOOST_REQUIRE(EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, p256().get()) == 1);
  std::array<unsigned char, 80> der{};
  std::size_t len = der.size();
  BOOST_REQUIRE(EVP_DigestSign(ctx.get(), der.data(), &len, reinterpret_cast<const unsigned char*>("a.b"), 3) == 1);
  BOOST_TEST(!jw::verifySignature(key, jw::Alg::ES256, "a.b",
                                  std::string_view(reinterpret_cast<const char*>(der.data()), len)));
}

BOOST_AUTO_TEST_CASE(rejects_es256_signature_presented_as_es384) {
  const auto ec = mustParse(a3Jwk());
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES384, kA3SigningInput, mustDecode(kA3Signature)));
  const auto p384Key = mustParse(ecJwk(p384().get(), "P-384"));
  const std::string sig384 = sign(p384().get(), jw::Alg::ES384, "x.y");
  BOOST_TEST(jw::verifySignature(p384Key, jw::Alg::ES384, "x.y", sig384));
  BOOST_TEST(!jw::verifySignature(p384Key, jw::Alg::ES256, "x.y", sig384));
  BOOST_TEST(!jw::verifySignature(p384Key, jw::Alg::ES256, "x.y", sig384.substr(0, 64)));
}

BOOST_AUTO_TEST_CASE(rejects_rsa_key_for_es256_and_ec_key_for_rs256) {
  const auto rsa = mustParse(a2Jwk());
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::ES256, kA3SigningInput, mustDecode(kA3Signature)));
  const auto ec = mustParse(a3Jwk());
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::RS256, kA2SigningInput, mustDecode(kA2Signature)));
}

BOOST_AUTO_TEST_CASE(rejects_key_whose_metadata_lies_about_its_type) {
  auto forged = mustParse(a2Jwk());
  forged.kty = jw::KeyType::EC;
  forged.crv = jw::Curve::P256;
  BOOST_TEST(!jw::verifySignature(forged, jw::Alg::ES256, kA3SigningInput, mustDecode(kA3Signature)));
  auto curve = mustParse(a3Jwk());
  curve.crv = jw::Curve::P384;
  BOOST_TEST(!jw::verifySignature(curve, jw::Alg::ES384, kA3SigningInput, mustDecode(kA3Signature) + std::string(32, '\x01')));
  jw::PublicKey empty;
  BOOST_TEST(!jw::verifySignature(empty, jw::Alg::RS256, kA2SigningInput, mustDecode(kA2Signature)));
}

BOOST_AUTO_TEST_CASE(rejects_rsa_signature_of_wrong_length) {
  const auto rsa = mustParse(a2Jwk());
  const std::string rs = mustDecode(kA2Signature);
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, std::string(1, '\0') + rs));
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, rs.substr(1)));
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, ""));
}

BOOST_AUTO_TEST_CASE(verifies_all_four_algs_with_generated_keys) {
  const auto rsa = jw::publicKeyFromEvp(rsa2048(), std::nullopt);
  const auto ec256 = jw::publicKeyFromEvp(p256(), std::nullopt);
  const auto ec384 = jw::publicKeyFromEvp(p384(), std::nullopt);
  BOOST_REQUIRE((rsa && ec256 && ec384));
  BOOST_TEST(jw::verifySignature(*rsa, jw::Alg::RS256, "h.p", sign(rsa2048().get(), jw::Alg::RS256, "h.p")));
  BOOST_TEST(jw::verifySignature(*rsa, jw::Alg::RS384, "h.p", sign(rsa2048().get(), jw::Alg::RS384, "h.p")));
  BOOST_TEST(!jw::verifySignature(*rsa, jw::Alg::RS256, "h.p", sign(rsa2048().get(), jw::Alg::RS384, "h.p")));
  BOOST_TEST(jw::verifySignature(*ec256, jw::Alg::ES256, "h.p", sign(p256().get(), jw::Alg::ES256, "h.p")));
  BOOST_TEST(jw::verifySignature(*ec384, jw::Alg::ES384, "h.p", sign(p384().get(), jw::Alg::ES384, "h.p")));
  // A signature by another key of the same curve does not verify.
  const auto other = generateEc("P-256");
  BOOST_TEST(!jw::verifySignature(*ec256, jw::Alg::ES256, "h.p", sign(other.get(), jw::Alg::ES256, "h.p")));
}

BOOST_AUTO_TEST_CASE(leaves_the_openssl_error_queue_empty_after_a_refusal) {
  ERR_clear_error();
  const auto ec = mustParse(a3Jwk());
  BOOST_TEST(!jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, std::string(64, '\xff')));
  BOOST_TEST(ERR_peek_error() == 0UL);
  const auto rsa = mustParse(a2Jwk());
  BOOST_TEST(!jw::verifySignature(rsa, jw::Alg::RS256, kA2SigningInput, std::string(256, '\xff')));
  BOOST_TEST(ERR_peek_error() == 0UL);
  BOOST_TEST(!jw::parseJwk(ecJwkFrom("P-256", mustDecode(kA3X), flipBit(mustDecode(kA3Y), 0))).has_value());
  BOOST_TEST(ERR_peek_error() == 0UL);
}

BOOST_AUTO_TEST_CASE(gives_correct_results_from_eight_threads_on_one_key) {
  const auto ec = mustParse(a3Jwk());
  const auto rsa = mustParse(a2Jwk());
  const std::string es = mustDecode(kA3Signature);
  const std::string rs = mustDecode(kA2Signature);
  const std::string esBad = flipBit(es, 10);
  std::atomic<int> wrong{0};
  std::atomic<int> checked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 100; ++i) {
        const bool good = ((i + t) % 2) == 0;
        if (jw::verifySignature(ec, jw::Alg::ES256, kA3SigningInput, good ? es : esBad) != good) {
          ++wrong;
        }
        if (jw::verifySignature(rsa, jw::Alg::RS256, good ? kA2SigningInput : kA3SigningInput, rs) != good) {
          ++wrong;
        }
        checked += 2;
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  BOOST_TEST(checked.load() == 1600);
  BOOST_TEST(wrong.load() == 0);
}

BOOST_AUTO_TEST_SUITE_END()

// The prepared per-key contexts (verify.cpp) must decide exactly as a context set up per call does. The
// reference here is the per-call path itself (a PublicKey whose prepared state is dropped) and, independently,
// OpenSSL's EVP_DigestVerify on the DER form.
namespace {

/// EVP_DigestVerify over `input` with a DER (ECDSA) or PKCS#1 (RSA) signature: the reference decision.
bool opensslVerifies(EVP_PKEY* k, jw::Alg alg, std::string_view input, std::string_view sig) {
  const bool sha256 = alg == jw::Alg::RS256 || alg == jw::Alg::ES256;
  const MdCtxPtr ctx(EVP_MD_CTX_new());
  BOOST_REQUIRE(EVP_DigestVerifyInit(ctx.get(), nullptr, sha256 ? EVP_sha256() : EVP_sha384(), nullptr, k) == 1);
  const int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                                  reinterpret_cast<const unsigned char*>(input.data()), input.size());
  ERR_clear_error();
  return rc == 1;
}

/// Raw R||S -> DER, so that the OpenSSL reference sees the same (r, s) as verifySignature; empty if r or s is 0
/// (DER cannot say "no signature" differently, and OpenSSL refuses those anyway).
std::string rawToDerForReference(std::string_view raw) {
  const std::size_t half = raw.size() / 2;
  BnPtr r(BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), static_cast<int>(half), nullptr));
  BnPtr s(BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data() + half), static_cast<int>(half), nullptr));
  const EcdsaSigPtr sig(ECDSA_SIG_new());
  BOOST_REQUIRE((r && s && sig));
  BOOST_REQUIRE(ECDSA_SIG_set0(sig.get(), r.get(), s.get()) == 1);
  static_cast<void>(r.release());
  static_cast<void>(s.release());
  unsigned char* out = nullptr;
  const int len = i2d_ECDSA_SIG(sig.get(), &out);
  BOOST_REQUIRE(len > 0);
  std::string der(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
  OPENSSL_free(out);
  return der;
}

/// The curve order n, big-endian, `width` bytes.
std::string curveOrder(const char* curve, int width) {
  const std::unique_ptr<EC_GROUP, OsslDeleter<&EC_GROUP_free>> group(
      EC_GROUP_new_by_curve_name(std::string_view(curve) == "P-256" ? NID_X9_62_prime256v1 : NID_secp384r1));
  BOOST_REQUIRE(group);
  std::string n(static_cast<std::size_t>(width), '\0');
  BOOST_REQUIRE(BN_bn2binpad(EC_GROUP_get0_order(group.get()), reinterpret_cast<unsigned char*>(n.data()), width) ==
                width);
  return n;
}

/// Big-endian a - b (a >= b), same width.
std::string subtract(std::string a, std::string_view b) {
  int borrow = 0;
  for (std::size_t i = a.size(); i-- > 0;) {
    int d = static_cast<unsigned char>(a[i]) - static_cast<unsigned char>(b[i]) - borrow;
    borrow = d < 0 ? 1 : 0;
    a[i] = static_cast<char>(d < 0 ? d + 256 : d);
  }
  return a;
}

jw::PublicKey withoutPrepared(jw::PublicKey key) {
  key.prepared.reset();
  return key;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(prepared_verification)

BOOST_AUTO_TEST_CASE(every_parsed_or_built_key_has_prepared_state) {
  BOOST_TEST(mustParse(a2Jwk()).prepared != nullptr);
  BOOST_TEST(mustParse(a3Jwk()).prepared != nullptr);
  BOOST_TEST(mustParse(ecJwk(p384().get(), "P-384")).prepared != nullptr);
  const auto built = jw::publicKeyFromEvp(rsa2048(), jw::Alg::RS384);
  BOOST_REQUIRE(built.has_value());
  BOOST_TEST(built->prepared != nullptr);
}

BOOST_AUTO_TEST_CASE(agrees_with_a_per_call_context_and_with_openssl_on_valid_and_corrupted_signatures) {
  struct Case {
    jw::Alg alg;
    const std::shared_ptr<evp_pkey_st>* key;
  };
  const auto rsaKey = generateRsa(2048);
  const auto p256Key = generateEc("P-256");
  const auto p384Key = generateEc("P-384");
  const std::array<Case, 4> cases{{{jw::Alg::RS256, &rsaKey},
                                   {jw::Alg::RS384, &rsaKey},
                                   {jw::Alg::ES256, &p256Key},
                                   {jw::Alg::ES384, &p384Key}}};
  int compared = 0;
  for (const Case& c : cases) {
    const auto built = jw::publicKeyFromEvp(*c.key, std::nullopt);
    BOOST_REQUIRE(built.has_value());
    const jw::PublicKey& prepared = *built;
    BOOST_REQUIRE(prepared.prepared != nullptr);
    const jw::PublicKey perCall = withoutPrepared(prepared);
    const bool ec = c.alg == jw::Alg::ES256 || c.alg == jw::Alg::ES384;
    const int width = c.alg == jw::Alg::ES256 ? 32 : 48;
    for (int i = 0; i < 12; ++i) {
      const std::string input = "eyJhbGciOiJ" + std::to_string(i * 7919) + ".payload-" + std::to_string(i);
      const std::string good = sign(c.key->get(), c.alg, input);
      std::vector<std::string> candidates{good, flipBit(good, static_cast<std::size_t>(i) % good.size()),
                                          flipBit(good, good.size() - 1), good.substr(1), good + '\0', ""};
      if (ec) {
        const std::string n = curveOrder(c.alg == jw::Alg::ES256 ? "P-256" : "P-384", width);
        const std::string r = good.substr(0, static_cast<std::size_t>(width));
        const std::string s = good.substr(static_cast<std::size_t>(width));
        const std::string zero(static_cast<std::size_t>(width), '\0');
        const std::string ones(static_cast<std::size_t>(width), '\xff');
        candidates.push_back(r + subtract(n, s));  // high-S twin: a valid ECDSA signature (no low-S rule in JWS)
        candidates.push_back(zero + s);
        candidates.push_back(r + zero);
        candidates.push_back(n + s);  // r = n
        candidates.push_back(r + n);  // s = n
        candidates.push_back(ones + s);
        candidates.push_back(r + ones);
      }
      for (std::size_t k = 0; k < candidates.size(); ++k) {
        const std::string& sig = candidates[k];
        const bool viaPrepared = jw::verifySignature(prepared, c.alg, input, sig);
        const bool viaPerCall = jw::verifySignature(perCall, c.alg, input, sig);
        BOOST_TEST(viaPrepared == viaPerCall, jw::algName(c.alg) << " case " << i << " candidate " << k);
        // Independently: what OpenSSL says about the same (r, s) or PKCS#1 block, for the right length only
        // (verifySignature refuses every other length before any crypto).
        const std::size_t rightLength = ec ? static_cast<std::size_t>(2 * width) : good.size();
        bool reference = false;
        if (sig.size() == rightLength) {
          const auto w = static_cast<std::size_t>(width);
          const bool zeroPart = ec && (sig.substr(0, w) == std::string(w, '\0') || sig.substr(w) == std::string(w, '\0'));
          reference = !zeroPart && opensslVerifies(c.key->get(), c.alg, input, ec ? rawToDerForReference(sig) : sig);
        }
        BOOST_TEST(viaPrepared == reference, jw::algName(c.alg) << " case " << i << " candidate " << k);
        ++compared;
      }
      BOOST_TEST(jw::verifySignature(prepared, c.alg, input, good));
      BOOST_TEST(!jw::verifySignature(prepared, c.alg, input + "x", good));
    }
  }
  BOOST_TEST(compared > 300);
}

BOOST_AUTO_TEST_CASE(prepared_state_of_another_key_is_never_used) {
  // PublicKey is plain data: pairing one key's prepared contexts with another key must not make the first key
  // verify in the second one's name.
  const auto a = generateEc("P-256");
  const auto b = generateEc("P-256");
  const auto keyA = jw::publicKeyFromEvp(a, std::nullopt);
  auto mixed = jw::publicKeyFromEvp(b, std::nullopt);
  BOOST_REQUIRE((keyA && mixed));
  mixed->prepared = keyA->prepared;
  BOOST_TEST(jw::verifySignature(*mixed, jw::Alg::ES256, "h.p", sign(b.get(), jw::Alg::ES256, "h.p")));
  BOOST_TEST(!jw::verifySignature(*mixed, jw::Alg::ES256, "h.p", sign(a.get(), jw::Alg::ES256, "h.p")));
}

BOOST_AUTO_TEST_CASE(keys_stay_usable_after_the_set_they_came_from_is_gone) {
  // A rotated-out key set may be dropped while a request still holds one of its keys (by copy).
  jw::PublicKey survivor;
  {
    const auto set = jw::parseJwkSet(R"({"keys":[)" + ecJwk(p384().get(), "P-384", R"(,"kid":"k1")") + "]}");
    BOOST_REQUIRE(set.has_value());
    survivor = set->set.keys.at(0);
  }
  BOOST_TEST(jw::verifySignature(survivor, jw::Alg::ES384, "h.p", sign(p384().get(), jw::Alg::ES384, "h.p")));
}

BOOST_AUTO_TEST_SUITE_END()

// nettle's P-384 verifier (ES384) must decide exactly as OpenSSL does, on every input class.
BOOST_AUTO_TEST_SUITE(nettle_p384)

BOOST_AUTO_TEST_CASE(verifies_exactly_what_openssl_verifies_for_random_keys_and_signatures) {
  const std::string n = curveOrder("P-384", 48);
  const std::string zero(48, '\0');
  const std::string ones(48, '\xff');
  std::string one = zero;
  one.back() = '\x01';
  const std::string nMinusOne = subtract(n, one);
  std::string nPlusOne = n;
  nPlusOne.back() = static_cast<char>(nPlusOne.back() + 1);  // n ends in ...0x73, no carry
  int accepted = 0;
  int compared = 0;
  for (int k = 0; k < 6; ++k) {
    const auto key = generateEc("P-384");
    const std::string point = ecPoint(key.get());
    const std::string x = point.substr(1, 48);
    const std::string y = point.substr(49, 48);
    const auto other = generateEc("P-384");
    for (int i = 0; i < 10; ++i) {
      const std::string input = "eyJhbGciOiJFUzM4NCJ9." + std::to_string(k * 1000 + i);
      const std::string good = sign(key.get(), jw::Alg::ES384, input);
      const std::string r = good.substr(0, 48);
      const std::string s = good.substr(48);
      const std::vector<std::string> candidates{good,
                                                flipBit(good, static_cast<std::size_t>(i * 9) % 96),
                                                flipBit(good, 95),
                                                r + subtract(n, s),  // high-S twin
                                                zero + s, r + zero, n + s, r + n, nPlusOne + s, r + nPlusOne,
                                                ones + s, r + ones, one + s, r + one, nMinusOne + s, r + nMinusOne,
                                                sign(other.get(), jw::Alg::ES384, input)};
      for (std::size_t c = 0; c < candidates.size(); ++c) {
        const std::string& sig = candidates[c];
        const bool zeroPart = sig.substr(0, 48) == zero || sig.substr(48) == zero;
        const bool reference =
            !zeroPart && opensslVerifies(key.get(), jw::Alg::ES384, input, rawToDerForReference(sig));
        const bool viaNettle = jw::detail::nettleP384Verifies(x, y, input, sig);
        BOOST_TEST(viaNettle == reference, "key " << k << " input " << i << " candidate " << c);
        accepted += viaNettle ? 1 : 0;
        ++compared;
      }
      BOOST_TEST(!jw::detail::nettleP384Verifies(x, y, input + ".", good));
      BOOST_TEST(!jw::detail::nettleP384Verifies(x, y, input, good.substr(0, 95)));
      BOOST_TEST(!jw::detail::nettleP384Verifies(x, y, input, good + '\0'));
      BOOST_TEST(!jw::detail::nettleP384Verifies(x, y, input, ""));
    }
  }
  BOOST_TEST(compared == 6 * 10 * 17);
  BOOST_TEST(accepted >= 6 * 10 * 2);  // at least the signature and its high-S twin every time
}

BOOST_AUTO_TEST_CASE(refuses_points_off_the_curve_or_outside_the_field) {
  const std::string point = ecPoint(p384().get());
  const std::string x = point.substr(1, 48);
  const std::string y = point.substr(49, 48);
  BOOST_TEST(jw::detail::nettleP384Accepts(x, y));
  BOOST_TEST(!jw::detail::nettleP384Accepts(x, flipBit(y, 0)));
  BOOST_TEST(!jw::detail::nettleP384Accepts(flipBit(x, 47), y));
  BOOST_TEST(!jw::detail::nettleP384Accepts(std::string(48, '\0'), std::string(48, '\0')));
  BOOST_TEST(!jw::detail::nettleP384Accepts(std::string(48, '\xff'), y));
  BOOST_TEST(!jw::detail::nettleP384Accepts(x.substr(1), y));
  // A P-256 point is not a P-384 point, whatever the padding.
  const std::string p256Point = ecPoint(p256().get());
  BOOST_TEST(!jw::detail::nettleP384Accepts(std::string(16, '\0') + p256Point.substr(1, 32),
                                            std::string(16, '\0') + p256Point.substr(33, 32)));
}

BOOST_AUTO_TEST_CASE(es384_keys_verify_through_nettle_and_agree_with_the_openssl_path_from_eight_threads) {
  const auto key = mustParse(ecJwk(p384().get(), "P-384"));
  const jw::PublicKey perCall = withoutPrepared(key);
  std::vector<std::string> inputs;
  std::vector<std::string> sigs;
  for (int i = 0; i < 16; ++i) {
    inputs.push_back("h." + std::to_string(i));
    const std::string good = sign(p384().get(), jw::Alg::ES384, inputs.back());
    sigs.push_back(i % 2 == 0 ? good : flipBit(good, static_cast<std::size_t>(i)));
  }
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        const bool expected = i % 2 == 0;
        if (jw::verifySignature(key, jw::Alg::ES384, inputs[i], sigs[i]) != expected ||
            jw::verifySignature(perCall, jw::Alg::ES384, inputs[i], sigs[i]) != expected) {
          ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) {
    th.join();
  }
  BOOST_TEST(wrong.load() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
