// JWS signature verification (RFC 7515 §5.2, RFC 7518 §3.3/§3.4) with an already validated public key.
#include "smartbroker/jwks/jwk.hpp"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include <array>
#include <cstddef>
#include <memory>

namespace smartbroker::jwks {
namespace {

template <auto Free>
struct OsslDeleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    Free(p);
  }
};
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, OsslDeleter<&EVP_MD_CTX_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, OsslDeleter<&ECDSA_SIG_free>>;
using BnPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_free>>;

// DER of two 48-byte integers: 2 x (tag + length + sign octet + 48) + sequence header = 104 bytes at most.
constexpr std::size_t kMaxDerSignature = 128;

const unsigned char* bytePtr(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

/// Converts JWS raw R||S (RFC 7518 §3.4) to the DER ECDSA-Sig-Value OpenSSL verifies; returns its length or 0.
std::size_t rawToDer(std::string_view raw, std::array<unsigned char, kMaxDerSignature>& der) {
  const std::size_t half = raw.size() / 2;
  BnPtr r(BN_bin2bn(bytePtr(raw), static_cast<int>(half), nullptr));
  BnPtr s(BN_bin2bn(bytePtr(raw.substr(half)), static_cast<int>(half), nullptr));
  const EcdsaSigPtr sig(ECDSA_SIG_new());
  if (!r || !s || !sig || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return 0;
  }
  // ECDSA_SIG_set0 took ownership of r and s.
  static_cast<void>(r.release());
  static_cast<void>(s.release());
  const int len = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (len <= 0 || static_cast<std::size_t>(len) > der.size()) {
    return 0;
  }
  unsigned char* out = der.data();
  if (i2d_ECDSA_SIG(sig.get(), &out) != len) {
    return 0;
  }
  return static_cast<std::size_t>(len);
}

bool digestVerify(EVP_PKEY* pkey, const EVP_MD* md, std::string_view signingInput, const unsigned char* sig,
                  std::size_t sigLen) {
  const MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, pkey) != 1) {
    return false;
  }
  // Only 1 is success; 0 is a bad signature and a negative value an error, both a refusal.
  return EVP_DigestVerify(ctx.get(), sig, sigLen, bytePtr(signingInput), signingInput.size()) == 1;
}

bool verifyImpl(const PublicKey& key, Alg alg, std::string_view signingInput, std::string_view signature) {
  // The registered key decides which algorithms are possible; the caller's alg (from an untrusted JWS
  // header) is only accepted if this key fits it, so an RSA key can never verify an ES* token or vice versa.
  EVP_PKEY* const pkey = key.key.get();
  if (pkey == nullptr || !key.fits(alg)) {
    return false;
  }
  const bool sha256 = alg == Alg::RS256 || alg == Alg::ES256;
  const EVP_MD* const md = sha256 ? EVP_sha256() : EVP_sha384();

  if (alg == Alg::RS256 || alg == Alg::RS384) {
    // The PublicKey fields are plain data; re-check the OpenSSL key itself before trusting them.
    // RFC 7518 §3.3: the signature is exactly k octets, k the modulus length; no shortened forms.
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA || EVP_PKEY_get_size(pkey) <= 0 ||
        signature.size() != static_cast<std::size_t>(EVP_PKEY_get_size(pkey))) {
      return false;
    }
    return digestVerify(pkey, md, signingInput, bytePtr(signature), signature.size());
  }

  // RFC 7518 §3.4: R and S each as a fixed-width octet string; DER or any other length is refused.
  const int fieldBits = alg == Alg::ES256 ? 256 : 384;
  const std::size_t expected = alg == Alg::ES256 ? 64 : 96;
  if (signature.size() != expected || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
      EVP_PKEY_get_bits(pkey) != fieldBits) {
    return false;
  }
  std::array<unsigned char, kMaxDerSignature> der{};
  const std::size_t derLen = rawToDer(signature, der);
  if (derLen == 0) {
    return false;
  }
  return digestVerify(pkey, md, signingInput, der.data(), derLen);
}

}  // namespace

bool verifySignature(const PublicKey& key, Alg alg, std::string_view signingInput, std::string_view signature) {
  const bool ok = verifyImpl(key, alg, signingInput, signature);
  if (!ok) {
    // A refused signature leaves reasons on this thread's error queue; they must not leak into the next,
    // unrelated OpenSSL call's error report.
    ERR_clear_error();
  }
  return ok;
}

}  // namespace smartbroker::jwks
