// JWS signature verification (RFC 7515 §5.2, RFC 7518 §3.3/§3.4) with an already validated public key.
#include "smartbroker/jwks/jwk.hpp"

#include <gmp.h>
#include <nettle/ecc-curve.h>
#include <nettle/ecc.h>
#include <nettle/ecdsa.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "prepared.hpp"

#include <array>
#include <cstddef>
#include <memory>
#include <optional>

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
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OsslDeleter<&EVP_PKEY_CTX_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, OsslDeleter<&ECDSA_SIG_free>>;
using BnPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_free>>;

// DER of two 48-byte integers: 2 x (tag + length + sign octet + 48) + sequence header = 104 bytes at most.
constexpr std::size_t kMaxDerSignature = 128;

const unsigned char* bytePtr(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

constexpr std::size_t kP384Bytes = 48;

/// A P-384 public key for nettle's ECDSA verification, which takes about half the instructions of OpenSSL
/// 3.0's (no optimised P-384 there): ~4.9M vs ~9.1M per verification. Built only from a key OpenSSL has
/// already validated, and refused again by nettle if the point is not on the curve. Read-only once built:
/// ecdsa_verify takes the point as const and allocates its own scratch, so threads may share it.
class NettleP384 {
 public:
  NettleP384() { ecc_point_init(&point_, nettle_get_secp_384r1()); }
  ~NettleP384() { ecc_point_clear(&point_); }
  NettleP384(const NettleP384&) = delete;
  NettleP384& operator=(const NettleP384&) = delete;

  /// Sets the point from big-endian X and Y of kP384Bytes each; false unless it is a point on P-384.
  bool set(std::string_view x, std::string_view y) {
    if (x.size() != kP384Bytes || y.size() != kP384Bytes) {
      return false;
    }
    Mpz mx(x);
    Mpz my(y);
    return ecc_point_set(&point_, mx.z, my.z) == 1;
  }

  /// RFC 7518 §3.4 verification of raw R||S (exactly 2 x kP384Bytes) over SHA-384(signingInput). ecdsa_verify
  /// refuses r or s outside [1, n-1]; like OpenSSL it accepts both s and n - s (JWS has no low-S rule).
  bool verify(std::string_view signingInput, std::string_view raw) const {
    if (raw.size() != 2 * kP384Bytes) {
      return false;
    }
    std::array<unsigned char, SHA384_DIGEST_LENGTH> digest{};
    SHA384(bytePtr(signingInput), signingInput.size(), digest.data());
    dsa_signature sig;
    dsa_signature_init(&sig);
    mpz_import(sig.r, kP384Bytes, 1, 1, 1, 0, raw.data());
    mpz_import(sig.s, kP384Bytes, 1, 1, 1, 0, raw.data() + kP384Bytes);
    const int ok = ecdsa_verify(&point_, digest.size(), digest.data(), &sig);
    dsa_signature_clear(&sig);
    return ok == 1;
  }

 private:
  struct Mpz {
    explicit Mpz(std::string_view bigEndian) {
      mpz_init(z);
      mpz_import(z, bigEndian.size(), 1, 1, 1, 0, bigEndian.data());
    }
    ~Mpz() { mpz_clear(z); }
    Mpz(const Mpz&) = delete;
    Mpz& operator=(const Mpz&) = delete;
    mpz_t z;
  };
  ecc_point point_;
};

/// Nettle's form of an OpenSSL P-384 public key, or null.
std::unique_ptr<NettleP384> nettleP384(EVP_PKEY* pkey) {
  std::array<unsigned char, 1 + 2 * kP384Bytes> point{};
  std::size_t len = 0;
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC || EVP_PKEY_get_bits(pkey) != 384 ||
      EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, point.data(), point.size(), &len) !=
          1 ||
      len != point.size() || point[0] != 0x04) {  // SEC 1 §2.3.3 uncompressed
    ERR_clear_error();
    return nullptr;
  }
  const std::string_view xy(reinterpret_cast<const char*>(point.data()) + 1, 2 * kP384Bytes);
  auto key = std::make_unique<NettleP384>();
  if (!key->set(xy.substr(0, kP384Bytes), xy.substr(kP384Bytes))) {
    return nullptr;
  }
  return key;
}

/// Verifies with the key's nettle P-384 form when it has one; nullopt when it has none.
std::optional<bool> nettleVerify(const PublicKey& key, std::string_view signingInput, std::string_view signature);

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

/// The same verification as digestVerify from a prepared context: EVP_DigestVerify is hash-then-
/// EVP_PKEY_verify with the signature digest set, which is exactly what this does, minus the per-call
/// provider fetches and context set-up (~28k of ~335k instructions of an RSA-2048 verification, plus method
/// store lookups under OpenSSL's shared lock that every request thread would otherwise take). The template is
/// never used directly: every call verifies on its own duplicate, so concurrent calls share nothing mutable.
bool preparedVerify(const EVP_PKEY_CTX* prepared, bool sha256, std::string_view signingInput, const unsigned char* sig,
                    std::size_t sigLen) {
  std::array<unsigned char, SHA384_DIGEST_LENGTH> digest{};
  const std::size_t digestLen = sha256 ? SHA256_DIGEST_LENGTH : SHA384_DIGEST_LENGTH;
  if (sha256) {
    SHA256(bytePtr(signingInput), signingInput.size(), digest.data());
  } else {
    SHA384(bytePtr(signingInput), signingInput.size(), digest.data());
  }
  const PkeyCtxPtr ctx(EVP_PKEY_CTX_dup(prepared));
  // Only 1 is success; 0 is a bad signature and a negative value an error, both a refusal.
  return ctx && EVP_PKEY_verify(ctx.get(), sig, sigLen, digest.data(), digestLen) == 1;
}

/// EVP_PKEY_verify context for `pkey` with signature digest `md` (and PKCS#1 v1.5 padding for RSA), or null.
PkeyCtxPtr verifyContext(EVP_PKEY* pkey, const EVP_MD* md, bool rsa) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1 ||
      (rsa && EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_PADDING) != 1) ||
      EVP_PKEY_CTX_set_signature_md(ctx.get(), md) != 1) {
    ERR_clear_error();
    return nullptr;
  }
  return ctx;
}

/// Verifies with the key's prepared context when it has one for this digest, else with a fresh one.
bool verifyWith(const PublicKey& key, bool sha256, std::string_view signingInput, const unsigned char* sig,
                std::size_t sigLen);

bool verifyImpl(const PublicKey& key, Alg alg, std::string_view signingInput, std::string_view signature) {
  // The registered key decides which algorithms are possible; the caller's alg (from an untrusted JWS
  // header) is only accepted if this key fits it, so an RSA key can never verify an ES* token or vice versa.
  EVP_PKEY* const pkey = key.key.get();
  if (pkey == nullptr || !key.fits(alg)) {
    return false;
  }
  const bool sha256 = alg == Alg::RS256 || alg == Alg::ES256;

  if (alg == Alg::RS256 || alg == Alg::RS384) {
    // The PublicKey fields are plain data; re-check the OpenSSL key itself before trusting them.
    // RFC 7518 §3.3: the signature is exactly k octets, k the modulus length; no shortened forms.
    if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA || EVP_PKEY_get_size(pkey) <= 0 ||
        signature.size() != static_cast<std::size_t>(EVP_PKEY_get_size(pkey))) {
      return false;
    }
    return verifyWith(key, sha256, signingInput, bytePtr(signature), signature.size());
  }

  // RFC 7518 §3.4: R and S each as a fixed-width octet string; DER or any other length is refused.
  const int fieldBits = alg == Alg::ES256 ? 256 : 384;
  const std::size_t expected = alg == Alg::ES256 ? 64 : 96;
  if (signature.size() != expected || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
      EVP_PKEY_get_bits(pkey) != fieldBits) {
    return false;
  }
  if (alg == Alg::ES384) {
    if (const auto verdict = nettleVerify(key, signingInput, signature)) {
      return *verdict;
    }
  }
  std::array<unsigned char, kMaxDerSignature> der{};
  const std::size_t derLen = rawToDer(signature, der);
  if (derLen == 0) {
    return false;
  }
  return verifyWith(key, sha256, signingInput, der.data(), derLen);
}

}  // namespace

struct PreparedVerifier {
  /// Which key these contexts are for: identity only. Each context holds a reference to it, so while this
  /// object lives no other key can be allocated at this address.
  EVP_PKEY* pkey = nullptr;
  PkeyCtxPtr sha256;         ///< RS256 or ES256, null when the key cannot do it
  PkeyCtxPtr sha384;         ///< RS384 or ES384, likewise
  std::unique_ptr<NettleP384> p384;  ///< ES384: the same key for nettle's verifier
};

namespace {

bool verifyWith(const PublicKey& key, bool sha256, std::string_view signingInput, const unsigned char* sig,
                std::size_t sigLen) {
  // A PublicKey is plain data: the prepared state counts only while it was built for this very key.
  const PreparedVerifier* prepared = key.prepared.get();
  const EVP_PKEY_CTX* ctx = nullptr;
  if (prepared != nullptr && prepared->pkey == key.key.get()) {
    ctx = (sha256 ? prepared->sha256 : prepared->sha384).get();
  }
  if (ctx != nullptr) {
    return preparedVerify(ctx, sha256, signingInput, sig, sigLen);
  }
  return digestVerify(key.key.get(), sha256 ? EVP_sha256() : EVP_sha384(), signingInput, sig, sigLen);
}

std::optional<bool> nettleVerify(const PublicKey& key, std::string_view signingInput, std::string_view signature) {
  const PreparedVerifier* prepared = key.prepared.get();
  if (prepared == nullptr || prepared->pkey != key.key.get() || !prepared->p384) {
    return std::nullopt;
  }
  return prepared->p384->verify(signingInput, signature);
}

}  // namespace

std::shared_ptr<const PreparedVerifier> detail::prepareVerifier(const std::shared_ptr<evp_pkey_st>& key, KeyType kty,
                                                                Curve crv) {
  if (!key) {
    return nullptr;
  }
  auto prepared = std::make_shared<PreparedVerifier>();
  prepared->pkey = key.get();
  const bool rsa = kty == KeyType::RSA;
  if (rsa || crv == Curve::P256) {
    prepared->sha256 = verifyContext(key.get(), EVP_sha256(), rsa);
    if (!prepared->sha256) {
      return nullptr;
    }
  }
  if (rsa || crv == Curve::P384) {
    prepared->sha384 = verifyContext(key.get(), EVP_sha384(), rsa);
    if (!prepared->sha384) {
      return nullptr;
    }
  }
  if (!rsa && crv == Curve::P384) {
    prepared->p384 = nettleP384(key.get());
    if (!prepared->p384) {
      return nullptr;
    }
  }
  return prepared;
}

bool detail::nettleP384Accepts(std::string_view x, std::string_view y) {
  NettleP384 key;
  return key.set(x, y);
}

bool detail::nettleP384Verifies(std::string_view x, std::string_view y, std::string_view signingInput,
                                std::string_view signature) {
  NettleP384 key;
  return key.set(x, y) && key.verify(signingInput, signature);
}

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
