// OpenSSL for the bench: sign client assertions from TEST-ONLY keys and measure the single-core crypto ceiling.
#include "crypto.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "smartbroker/jwks/base64url.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::bench {
namespace {

using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;
using BioPtr = std::unique_ptr<BIO, decltype(&BIO_free)>;
using SigPtr = std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)>;

[[noreturn]] void fail(const std::string& what) {
  const unsigned long code = ERR_get_error();
  char text[256] = "no OpenSSL error";
  if (code != 0) {
    ERR_error_string_n(code, text, sizeof text);
  }
  throw std::runtime_error(what + ": " + text);
}

const EVP_MD* digestFor(JwsAlg alg) { return alg == JwsAlg::ES256 ? EVP_sha256() : EVP_sha384(); }

std::size_t ecHalf(JwsAlg alg) { return alg == JwsAlg::ES256 ? 32 : 48; }

const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

/// DER signature from EVP_DigestSign.
std::string derSign(EVP_PKEY* key, JwsAlg alg, std::string_view input) {
  const MdCtxPtr ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, digestFor(alg), nullptr, key) != 1) {
    fail("EVP_DigestSignInit");
  }
  std::size_t length = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &length, bytes(input), input.size()) != 1) {
    fail("EVP_DigestSign (size)");
  }
  std::string out(length, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(out.data()), &length, bytes(input), input.size()) !=
      1) {
    fail("EVP_DigestSign");
  }
  out.resize(length);
  return out;
}

/// DER ECDSA-Sig-Value -> JWS R||S, each left-padded to the curve size (RFC 7518 §3.4).
std::string derToRaw(std::string_view der, std::size_t half) {
  const unsigned char* p = bytes(der);
  const SigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der.size())), &ECDSA_SIG_free);
  if (!sig) {
    fail("d2i_ECDSA_SIG");
  }
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  std::string raw(2 * half, '\0');
  auto* out = reinterpret_cast<unsigned char*>(raw.data());
  if (BN_bn2binpad(r, out, static_cast<int>(half)) < 0 || BN_bn2binpad(s, out + half, static_cast<int>(half)) < 0) {
    fail("BN_bn2binpad");
  }
  return raw;
}

std::string b64(std::string_view s) { return jwks::base64urlEncode(s); }

/// Runs `op` in three windows of about `seconds` / 3 each on the calling thread and returns the best
/// window's operations per wall-clock second: on a shared VM interference only ever slows a window down.
template <typename Op>
double rate(double seconds, Op op) {
  for (int i = 0; i < 20; ++i) {  // warm caches and lazy provider fetches
    op();
  }
  double best = 0;
  for (int window = 0; window < 3; ++window) {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration<double>(seconds / 3);
    std::uint64_t n = 0;
    auto now = start;
    while (now < deadline) {
      for (int i = 0; i < 10; ++i) {
        op();
      }
      n += 10;
      now = std::chrono::steady_clock::now();
    }
    best = std::max(best, static_cast<double>(n) / std::chrono::duration<double>(now - start).count());
  }
  return best;
}

PkeyPtr generateP256() {
  PkeyPtr key(EVP_EC_gen("P-256"), &EVP_PKEY_free);
  if (!key) {
    fail("EVP_EC_gen(P-256)");
  }
  return key;
}

std::string formEscape(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '*') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  return out;
}

}  // namespace

const char* algName(JwsAlg alg) {
  switch (alg) {
    case JwsAlg::RS384:
      return "RS384";
    case JwsAlg::ES384:
      return "ES384";
    case JwsAlg::ES256:
      return "ES256";
  }
  return "?";
}

PkeyPtr loadPrivateKey(const std::string& path) {
  const BioPtr bio(BIO_new_file(path.c_str(), "r"), &BIO_free);
  if (!bio) {
    fail("cannot open " + path);
  }
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr), &EVP_PKEY_free);
  if (!key) {
    fail("cannot read a private key from " + path);
  }
  return key;
}

JwsAlg algForKey(EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
    return JwsAlg::RS384;
  }
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC && EVP_PKEY_get_bits(key) == 384) {
    return JwsAlg::ES384;
  }
  throw std::runtime_error("the bench signs assertions with RSA (RS384) or P-384 (ES384) keys only");
}

std::string signJws(EVP_PKEY* key, JwsAlg alg, std::string_view input) {
  std::string der = derSign(key, alg, input);
  return alg == JwsAlg::RS384 ? der : derToRaw(der, ecHalf(alg));
}

std::vector<std::string> makeTokenRequests(const AssertionSpec& spec, std::size_t first, std::size_t count,
                                           unsigned threads) {
  std::vector<std::string> out(count);
  threads = std::max(1U, std::min<unsigned>(threads, static_cast<unsigned>(std::max<std::size_t>(1, count / 64))));
  const std::int64_t exp = static_cast<std::int64_t>(std::time(nullptr)) + 300;
  const auto work = [&](std::size_t from, std::size_t to) {
    const PkeyPtr key = loadPrivateKey(spec.key_file);  // one key object per thread
    const JwsAlg alg = algForKey(key.get());
    const std::string header =
        b64(std::string("{\"alg\":\"") + algName(alg) + "\",\"kid\":\"" + spec.kid + "\",\"typ\":\"JWT\"}");
    const std::string prefix = "grant_type=client_credentials&client_assertion_type=" +
                               formEscape("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") +
                               "&client_assertion=";
    const std::string suffix = "&scope=" + formEscape(spec.scope);
    for (std::size_t i = from; i < to; ++i) {
      const std::string claims = "{\"iss\":\"" + spec.client_id + "\",\"sub\":\"" + spec.client_id + "\",\"aud\":\"" +
                                 spec.audience + "\",\"exp\":" + std::to_string(exp) + ",\"jti\":\"" +
                                 spec.jti_prefix + std::to_string(first + i) + "\"}";
      const std::string input = header + "." + b64(claims);
      const std::string body = prefix + input + "." + b64(signJws(key.get(), alg, input)) + suffix;
      std::string& request = out[i];
      request.reserve(body.size() + 160);
      request += "POST " + spec.path + " HTTP/1.1\r\nHost: " + spec.host +
                 "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n";
      request += body;
    }
  };
  std::vector<std::thread> pool;
  std::exception_ptr error;
  std::mutex errorMutex;
  for (unsigned t = 0; t < threads; ++t) {
    const std::size_t from = count * t / threads;
    const std::size_t to = count * (t + 1) / threads;
    pool.emplace_back([&, from, to] {
      try {
        work(from, to);
      } catch (...) {
        const std::lock_guard lock(errorMutex);
        error = std::current_exception();
      }
    });
  }
  for (auto& t : pool) {
    t.join();
  }
  if (error) {
    std::rethrow_exception(error);
  }
  return out;
}

CryptoRates measureCrypto(const std::string& rsaKeyFile, const std::string& p384KeyFile, double secondsEach) {
  const PkeyPtr rsa = loadPrivateKey(rsaKeyFile);
  const PkeyPtr p384 = loadPrivateKey(p384KeyFile);
  const PkeyPtr p256 = generateP256();
  if (EVP_PKEY_get_bits(rsa.get()) != 2048 || algForKey(p384.get()) != JwsAlg::ES384) {
    throw std::runtime_error("crypto ceiling needs an RSA-2048 and a P-384 key");
  }
  // A realistic signing input: a base64url header and claims of about the size the bench sends.
  const std::string input = b64(R"({"alg":"RS384","kid":"rs384-client","typ":"JWT"})") + "." +
                            b64(R"({"iss":"rs384-client","sub":"rs384-client","aud":"http://127.0.0.1:8080/token",)"
                                R"("exp":1700000300,"jti":"bench-0123456789abcdef-123456"})");
  const std::string rsaSig = derSign(rsa.get(), JwsAlg::RS384, input);
  const std::string p384Sig = derSign(p384.get(), JwsAlg::ES384, input);
  const std::string p384Raw = derToRaw(p384Sig, ecHalf(JwsAlg::ES384));

  // The broker's verification: the key as jwks builds a registered one (public half only, prepared contexts,
  // nettle's P-384 verifier for ES384), checked by jwks::verifySignature with all its checks; ES384 as raw R||S.
  const auto publicKey = [](EVP_PKEY* key, jwks::Alg alg) {
    if (EVP_PKEY_up_ref(key) != 1) {
      fail("EVP_PKEY_up_ref");
    }
    auto pub = jwks::publicKeyFromEvp(std::shared_ptr<evp_pkey_st>(key, &EVP_PKEY_free), alg, "bench");
    if (!pub) {
      throw std::runtime_error("publicKeyFromEvp: " + pub.error());
    }
    return std::move(*pub);
  };
  const jwks::PublicKey rsaPub = publicKey(rsa.get(), jwks::Alg::RS384);
  const jwks::PublicKey p384Pub = publicKey(p384.get(), jwks::Alg::ES384);
  const auto verifyServer = [&](const jwks::PublicKey& key, jwks::Alg alg, const std::string& sig) {
    if (!jwks::verifySignature(key, alg, input, sig)) {
      fail("jwks::verifySignature");
    }
  };

  // The broker's ES256 signing (keyring::SigningKey::sign): hash, EVP_PKEY_sign on a duplicate of a context
  // prepared once for the key, DER -> R||S.
  const PkeyCtxPtr signTemplate(EVP_PKEY_CTX_new_from_pkey(nullptr, p256.get(), nullptr), &EVP_PKEY_CTX_free);
  if (!signTemplate || EVP_PKEY_sign_init(signTemplate.get()) != 1 ||
      EVP_PKEY_CTX_set_signature_md(signTemplate.get(), EVP_sha256()) != 1) {
    fail("EVP_PKEY_sign_init");
  }
  const auto signServer = [&] {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(bytes(input), input.size(), digest);
    const PkeyCtxPtr sctx(EVP_PKEY_CTX_dup(signTemplate.get()), &EVP_PKEY_CTX_free);
    std::size_t len = static_cast<std::size_t>(EVP_PKEY_get_size(p256.get()));
    std::string der(len, '\0');
    if (!sctx ||
        EVP_PKEY_sign(sctx.get(), reinterpret_cast<unsigned char*>(der.data()), &len, digest, sizeof digest) != 1) {
      fail("EVP_PKEY_sign");
    }
    der.resize(len);
    (void)derToRaw(der, ecHalf(JwsAlg::ES256));
  };

  const MdCtxPtr ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  // The per-operation variant: (re)initialise the context with the key, then verify.
  const auto verifyPerOp = [&](EVP_PKEY* key, const std::string& sig) {
    EVP_MD_CTX_reset(ctx.get());
    if (EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha384(), nullptr, key) != 1 ||
        EVP_DigestVerify(ctx.get(), bytes(sig), sig.size(), bytes(input), input.size()) != 1) {
      fail("EVP_DigestVerify");
    }
  };
  CryptoRates r;
  r.rs384_verify = rate(secondsEach, [&] { verifyServer(rsaPub, jwks::Alg::RS384, rsaSig); });
  r.rs384_verify_per_op_init = rate(secondsEach, [&] { verifyPerOp(rsa.get(), rsaSig); });
  r.es384_verify = rate(secondsEach, [&] { verifyServer(p384Pub, jwks::Alg::ES384, p384Raw); });
  r.es384_verify_per_op_init = rate(secondsEach, [&] { verifyPerOp(p384.get(), p384Sig); });
  r.es256_sign = rate(secondsEach, signServer);
  r.es256_sign_per_op_init = rate(secondsEach, [&] { (void)signJws(p256.get(), JwsAlg::ES256, input); });
  r.rs384_sign = rate(secondsEach / 2, [&] { (void)signJws(rsa.get(), JwsAlg::RS384, input); });
  r.es384_sign = rate(secondsEach / 2, [&] { (void)signJws(p384.get(), JwsAlg::ES384, input); });
  std::printf("== crypto set-up: a context per operation (EVP_Digest*Init each time) vs the broker's way, used for the "
              "ceiling below (prepared per-key contexts; nettle for ES384 verify)\n");
  std::printf("  RS384 verify %10.0f /s per-op init  %10.0f /s prepared  x%.2f\n", r.rs384_verify_per_op_init,
              r.rs384_verify, r.rs384_verify / r.rs384_verify_per_op_init);
  std::printf("  ES384 verify %10.0f /s per-op init  %10.0f /s prepared  x%.2f\n", r.es384_verify_per_op_init,
              r.es384_verify, r.es384_verify / r.es384_verify_per_op_init);
  std::printf("  ES256 sign   %10.0f /s per-op init  %10.0f /s prepared  x%.2f\n", r.es256_sign_per_op_init,
              r.es256_sign, r.es256_sign / r.es256_sign_per_op_init);
  return r;
}

}  // namespace smartbroker::bench
