// Parsing and validation of public JWKs and JWK Sets into OpenSSL keys, RFC 7638 thumbprints and JWK export.
#include "smartbroker/jwks/jwk.hpp"

#include "prepared.hpp"
#include "smartbroker/jwks/base64url.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/ParseHandler.h>
#include <Poco/JSON/Parser.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <array>
#include <cstddef>
#include <set>
#include <stdexcept>
#include <typeinfo>
#include <unordered_set>
#include <utility>

namespace smartbroker::jwks {
namespace {

template <auto Free>
struct OsslDeleter {
  template <typename T>
  void operator()(T* p) const noexcept {
    Free(p);
  }
};
using BnPtr = std::unique_ptr<BIGNUM, OsslDeleter<&BN_free>>;
using ParamBldPtr = std::unique_ptr<OSSL_PARAM_BLD, OsslDeleter<&OSSL_PARAM_BLD_free>>;
using ParamPtr = std::unique_ptr<OSSL_PARAM, OsslDeleter<&OSSL_PARAM_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, OsslDeleter<&EVP_PKEY_CTX_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, OsslDeleter<&EVP_PKEY_free>>;

void freeOsslBytes(unsigned char* p) noexcept { OPENSSL_free(p); }
using OsslBytesPtr = std::unique_ptr<unsigned char, OsslDeleter<&freeOsslBytes>>;

using Error = std::unexpected<std::string>;

struct AlgEntry {
  Alg alg;
  std::string_view name;
};
constexpr std::array<AlgEntry, 4> kAlgs{{
    {Alg::RS256, "RS256"},
    {Alg::RS384, "RS384"},
    {Alg::ES256, "ES256"},
    {Alg::ES384, "ES384"},
}};

// Members that only a private or symmetric key carries (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
constexpr std::array<std::string_view, 8> kPrivateMembers{"d", "p", "q", "dp", "dq", "qi", "oth", "k"};

constexpr std::size_t kMaxJwkBytes = 64 * 1024;
constexpr std::size_t kMaxJwkSetBytes = 512 * 1024;
// A JWK Set nests four levels (set, keys array, key, x5c array); a much deeper document is not a JWK Set.
constexpr std::size_t kMaxJsonDepth = 16;
constexpr std::size_t kMaxKidLength = 256;

constexpr int kMinRsaBits = 2048;
// RSA verification cost grows with the modulus and keys can arrive from a client's jwks_uri, so a bound
// keeps one fetched set from costing seconds of CPU; no client needs more than 8192 bits.
constexpr int kMaxRsaBits = 8192;
// Every real key uses 3 or 65537; a larger exponent only makes each verification slower.
constexpr std::size_t kMaxRsaExponentBytes = 4;

constexpr std::size_t kSmallPrimeCount = 100;

constexpr std::array<unsigned, kSmallPrimeCount> makeSmallOddPrimes() {
  std::array<unsigned, kSmallPrimeCount> primes{};
  std::size_t count = 0;
  for (unsigned candidate = 3; count < primes.size(); candidate += 2) {
    bool prime = true;
    for (std::size_t i = 0; i < count && primes[i] * primes[i] <= candidate; ++i) {
      if (candidate % primes[i] == 0) {
        prime = false;
        break;
      }
    }
    if (prime) {
      primes[count++] = candidate;
    }
  }
  return primes;
}

// The first 100 odd primes (3 .. 547): a real RSA modulus is the product of two large primes.
constexpr std::array<unsigned, kSmallPrimeCount> kSmallOddPrimes = makeSmallOddPrimes();

constexpr std::string_view kP256Group = "prime256v1";
constexpr std::string_view kP384Group = "secp384r1";

/// The public values of a key in their canonical JWK byte form: RSA n/e big-endian without leading zeros,
/// EC x/y big-endian at the full field width.
struct Components {
  KeyType kty = KeyType::RSA;
  Curve crv = Curve::None;
  std::string first;   // n or x
  std::string second;  // e or y
};

std::size_t coordinateBytes(Curve crv) { return crv == Curve::P384 ? 48 : 32; }
std::string_view curveName(Curve crv) { return crv == Curve::P384 ? "P-384" : "P-256"; }

/// True when kty/crv alone permit `a` (without looking at the JWK's own alg/use).
bool algFitsKeyType(KeyType kty, Curve crv, Alg a) {
  switch (a) {
    case Alg::RS256:
    case Alg::RS384:
      return kty == KeyType::RSA;
    case Alg::ES256:
      return kty == KeyType::EC && crv == Curve::P256;
    case Alg::ES384:
      return kty == KeyType::EC && crv == Curve::P384;
  }
  return false;
}

/// Only short printable ASCII from untrusted input is echoed in error text, so logs cannot be forged.
bool safeToQuote(std::string_view s) {
  if (s.empty() || s.size() > 64) {
    return false;
  }
  for (const char c : s) {
    if (c < 0x21 || c > 0x7E || c == '"' || c == '\\') {
      return false;
    }
  }
  return true;
}

void clearOpensslErrors() { ERR_clear_error(); }

void appendJsonString(std::string& out, std::string_view s) {
  static constexpr std::string_view kHex = "0123456789abcdef";
  out.push_back('"');
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      out += "\\u00";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0x0F]);
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
}

// ---- JSON -------------------------------------------------------------------------------------------------

/// Poco keeps the last of two equal member names; RFC 7517 §4 allows that, but refusing duplicates means
/// no two parsers can disagree about which "kty" or "n" a key has.
class UniqueMembersHandler final : public Poco::JSON::ParseHandler {
 public:
  void reset() override {
    ParseHandler::reset();
    seen_.clear();
  }
  void startObject() override {
    ParseHandler::startObject();
    seen_.emplace_back();
  }
  void endObject() override {
    ParseHandler::endObject();
    if (!seen_.empty()) {
      seen_.pop_back();
    }
  }
  void key(const std::string& k) override {
    if (!seen_.empty() && !seen_.back().insert(k).second) {
      throw Poco::JSON::JSONException(safeToQuote(k) ? "duplicate member \"" + k + "\"" : "duplicate member name");
    }
    ParseHandler::key(k);
  }

 private:
  std::vector<std::set<std::string>> seen_;
};

std::expected<Poco::Dynamic::Var, std::string> parseJson(std::string_view json) {
  try {
    const Poco::SharedPtr<UniqueMembersHandler> handler = new UniqueMembersHandler;
    Poco::JSON::Parser parser(handler);
    parser.setDepth(kMaxJsonDepth);
    parser.setAllowNullByte(false);
    // in_place: Var converts to anything, so plain construction would be ambiguous.
    return std::expected<Poco::Dynamic::Var, std::string>(std::in_place, parser.parse(std::string(json)));
  } catch (const Poco::Exception& e) {
    // Poco's message names the syntax problem and position, not the (possibly secret) text.
    return Error("JSON: " + e.message());
  }
}

Poco::JSON::Object::Ptr asObject(const Poco::Dynamic::Var& v) {
  if (v.type() == typeid(Poco::JSON::Object::Ptr)) {
    return v.extract<Poco::JSON::Object::Ptr>();
  }
  return nullptr;
}

Poco::JSON::Array::Ptr asArray(const Poco::Dynamic::Var& v) {
  if (v.type() == typeid(Poco::JSON::Array::Ptr)) {
    return v.extract<Poco::JSON::Array::Ptr>();
  }
  return nullptr;
}

/// nullopt when absent; an error when present but not a string.
std::expected<std::optional<std::string>, std::string> optionalString(const Poco::JSON::Object& o,
                                                                      const std::string& name) {
  if (!o.has(name)) {
    return std::optional<std::string>{};
  }
  const Poco::Dynamic::Var v = o.get(name);
  if (v.type() != typeid(std::string)) {
    return Error(name + ": must be a string");
  }
  return std::optional<std::string>{v.extract<std::string>()};
}

std::expected<std::string, std::string> requiredString(const Poco::JSON::Object& o, const std::string& name) {
  auto s = optionalString(o, name);
  if (!s) {
    return Error(s.error());
  }
  if (!s->has_value()) {
    return Error(name + ": missing");
  }
  return std::move(**s);
}

std::expected<std::string, std::string> requiredBase64url(const Poco::JSON::Object& o, const std::string& name) {
  auto text = requiredString(o, name);
  if (!text) {
    return Error(text.error());
  }
  auto bytes = base64urlDecode(*text);
  if (!bytes) {
    return Error(name + ": not unpadded base64url");
  }
  return std::move(*bytes);
}

std::optional<std::string> checkKid(std::string_view kid) {
  if (kid.empty()) {
    return "kid: must not be empty";
  }
  if (kid.size() > kMaxKidLength) {
    return "kid: longer than 256 characters";
  }
  // kids are matched against JWS headers and written to logs: visible ASCII only keeps both unambiguous.
  for (const char c : kid) {
    if (c < 0x21 || c > 0x7E) {
      return "kid: only visible ASCII characters are accepted";
    }
  }
  return std::nullopt;
}

// ---- OpenSSL key construction and extraction ---------------------------------------------------------------

std::string_view stripLeadingZeros(std::string_view bytes) {
  std::size_t i = 0;
  while (i < bytes.size() && bytes[i] == '\0') {
    ++i;
  }
  return bytes.substr(i);
}

int bitLength(std::string_view minimalBytes) {
  if (minimalBytes.empty()) {
    return 0;
  }
  int top = 0;
  for (auto b = static_cast<unsigned char>(minimalBytes[0]); b != 0; b = static_cast<unsigned char>(b >> 1)) {
    ++top;
  }
  return static_cast<int>((minimalBytes.size() - 1) * 8) + top;
}

const unsigned char* bytePtr(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

BnPtr bignum(std::string_view bytes) { return BnPtr(BN_bin2bn(bytePtr(bytes), static_cast<int>(bytes.size()), nullptr)); }

std::string bignumBytes(const BIGNUM* bn) {
  std::string out(static_cast<std::size_t>(BN_num_bytes(bn)), '\0');
  BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
  return out;
}

/// Validates RSA n/e (already stripped of leading zeros) against the registration rules.
std::optional<std::string> checkRsa(std::string_view n, std::string_view e, int& bits) {
  bits = bitLength(n);
  if (bits < kMinRsaBits) {
    return "n: modulus is " + std::to_string(bits) + " bits, at least 2048 required";
  }
  if (bits > kMaxRsaBits) {
    return "n: modulus is " + std::to_string(bits) + " bits, at most 8192 accepted";
  }
  if ((static_cast<unsigned char>(n.back()) & 1U) == 0) {
    return "n: modulus is even";
  }
  if (e.empty()) {
    return "e: exponent is zero";
  }
  if (e.size() > kMaxRsaExponentBytes) {
    return "e: exponent is larger than 32 bits";
  }
  if ((static_cast<unsigned char>(e.back()) & 1U) == 0) {
    return "e: exponent is even";
  }
  if (e.size() == 1 && e[0] == '\x01') {
    return "e: exponent is 1";
  }
  // A small factor means the modulus is not a two-prime RSA modulus (garbage or a trivially factorable key).
  const BnPtr bn = bignum(n);
  if (!bn) {
    clearOpensslErrors();
    return "n: out of memory";
  }
  for (const unsigned p : kSmallOddPrimes) {
    if (BN_mod_word(bn.get(), p) == 0) {
      return "n: modulus has a small prime factor";
    }
  }
  return std::nullopt;
}

/// Builds a public-only provider key; for EC OpenSSL also checks the point.
std::expected<std::shared_ptr<evp_pkey_st>, std::string> buildKey(const Components& c) {
  const ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld) {
    clearOpensslErrors();
    return Error("key: out of memory");
  }
  BnPtr n;
  BnPtr e;
  std::string point;
  const char* keyType = nullptr;
  bool pushed = false;
  if (c.kty == KeyType::RSA) {
    keyType = "RSA";
    n = bignum(c.first);
    e = bignum(c.second);
    pushed = n && e && OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) == 1 &&
             OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) == 1;
  } else {
    keyType = "EC";
    point.reserve(1 + c.first.size() + c.second.size());
    point.push_back('\x04');  // SEC 1 §2.3.3 uncompressed point
    point += c.first;
    point += c.second;
    const std::string_view group = c.crv == Curve::P384 ? kP384Group : kP256Group;
    pushed = OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group.data(), group.size()) == 1 &&
             OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) == 1;
  }
  const ParamPtr params(pushed ? OSSL_PARAM_BLD_to_param(bld.get()) : nullptr);
  const PkeyCtxPtr ctx(params ? EVP_PKEY_CTX_new_from_name(nullptr, keyType, nullptr) : nullptr);
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1) {
    clearOpensslErrors();
    return Error("key: OpenSSL could not prepare the key");
  }
  EVP_PKEY* raw = nullptr;
  const std::string_view what = c.kty == KeyType::RSA ? "n/e: not a valid RSA public key" : "x/y: not a point on the curve";
  if (EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) != 1 || raw == nullptr) {
    clearOpensslErrors();
    return Error(std::string(what));
  }
  PkeyPtr pkey(raw);
  // fromdata already refuses off-curve points; the explicit check (on the curve, not at infinity) keeps that
  // true if OpenSSL changes. RSA is left out: its check is a Miller-Rabin test costing ~5 ms at 2048 and ~55 ms
  // at 4096 bits per key (a fetched set of 100 keys would cost seconds), and a bad modulus only weakens the
  // registrant's own key; checkRsa covers the cheap structural rules instead.
  if (c.kty == KeyType::EC) {
    const PkeyCtxPtr checkCtx(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
    if (!checkCtx || EVP_PKEY_public_check(checkCtx.get()) != 1) {
      clearOpensslErrors();
      return Error(std::string(what));
    }
  }
  return std::shared_ptr<evp_pkey_st>(pkey.release(), EVP_PKEY_free);
}

/// Reads the public values out of any RSA or EC EVP_PKEY (provider-native or legacy, public or private).
std::expected<Components, std::string> componentsFromEvp(EVP_PKEY* pkey) {
  if (pkey == nullptr) {
    return Error("key: no key");
  }
  Components c;
  if (EVP_PKEY_is_a(pkey, "RSA") == 1) {
    c.kty = KeyType::RSA;
    BIGNUM* nRaw = nullptr;
    BIGNUM* eRaw = nullptr;
    const int gotN = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &nRaw);
    const BnPtr n(nRaw);
    const int gotE = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &eRaw);
    const BnPtr e(eRaw);
    if (gotN != 1 || gotE != 1 || !n || !e) {
      clearOpensslErrors();
      return Error("n/e: cannot read the RSA public key");
    }
    c.first = bignumBytes(n.get());
    c.second = bignumBytes(e.get());
    return c;
  }
  if (EVP_PKEY_is_a(pkey, "EC") != 1) {
    // RSA-PSS, Ed25519, X25519, DH, ... have no place in RS*/ES* signing.
    return Error("kty: unsupported key type, only RSA and EC keys are accepted");
  }
  c.kty = KeyType::EC;
  std::array<char, 64> group{};
  std::size_t groupLen = 0;
  if (EVP_PKEY_get_group_name(pkey, group.data(), group.size(), &groupLen) != 1) {
    clearOpensslErrors();
    return Error("crv: the key has no named curve");
  }
  const std::string_view groupName(group.data(), groupLen);
  if (groupName == kP256Group || groupName == "P-256") {
    c.crv = Curve::P256;
  } else if (groupName == kP384Group || groupName == "P-384") {
    c.crv = Curve::P384;
  } else {
    return Error("crv: curve " + (safeToQuote(groupName) ? std::string(groupName) : std::string("?")) +
                 " is not accepted, only P-256 and P-384");
  }
  const std::size_t width = coordinateBytes(c.crv);
  unsigned char* encodedRaw = nullptr;
  const std::size_t encodedLen = EVP_PKEY_get1_encoded_public_key(pkey, &encodedRaw);
  const OsslBytesPtr encoded(encodedRaw);
  if (encoded && encodedLen == 1 + 2 * width && encodedRaw[0] == 0x04) {
    const std::string_view all(reinterpret_cast<const char*>(encodedRaw), encodedLen);
    c.first = std::string(all.substr(1, width));
    c.second = std::string(all.substr(1 + width, width));
    return c;
  }
  // A key set to compressed point form encodes differently; the affine coordinates still work for it.
  clearOpensslErrors();
  BIGNUM* xRaw = nullptr;
  BIGNUM* yRaw = nullptr;
  const int gotX = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &xRaw);
  const BnPtr x(xRaw);
  const int gotY = EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &yRaw);
  const BnPtr y(yRaw);
  if (gotX != 1 || gotY != 1 || !x || !y) {
    clearOpensslErrors();
    return Error("x/y: cannot read the EC public key");
  }
  c.first.assign(width, '\0');
  c.second.assign(width, '\0');
  if (BN_bn2binpad(x.get(), reinterpret_cast<unsigned char*>(c.first.data()), static_cast<int>(width)) < 0 ||
      BN_bn2binpad(y.get(), reinterpret_cast<unsigned char*>(c.second.data()), static_cast<int>(width)) < 0) {
    clearOpensslErrors();
    return Error("x/y: cannot read the EC public key");
  }
  return c;
}

std::string canonicalThumbprintInput(const Components& c) {
  // RFC 7638 §3.2/§3.3: required members only, in lexicographic order, no whitespace.
  std::string json;
  if (c.kty == KeyType::RSA) {
    json = R"({"e":")" + base64urlEncode(c.second) + R"(","kty":"RSA","n":")" + base64urlEncode(c.first) + R"("})";
  } else {
    json = R"({"crv":")" + std::string(curveName(c.crv)) + R"(","kty":"EC","x":")" + base64urlEncode(c.first) +
           R"(","y":")" + base64urlEncode(c.second) + R"("})";
  }
  return json;
}

std::string thumbprintOf(const Components& c) {
  const std::string input = canonicalThumbprintInput(c);
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int digestLen = 0;
  if (EVP_Digest(input.data(), input.size(), digest.data(), &digestLen, EVP_sha256(), nullptr) != 1) {
    clearOpensslErrors();
    throw std::runtime_error("thumbprint: SHA-256 failed");
  }
  return base64urlEncode(std::string_view(reinterpret_cast<const char*>(digest.data()), digestLen));
}

/// Completes a PublicKey from validated components: builds the OpenSSL key and the thumbprint.
std::expected<PublicKey, std::string> makeKey(const Components& c, std::optional<Alg> alg) {
  PublicKey key;
  key.kty = c.kty;
  key.crv = c.crv;
  if (c.kty == KeyType::RSA) {
    if (auto err = checkRsa(c.first, c.second, key.bits)) {
      return Error(std::move(*err));
    }
  } else {
    key.bits = c.crv == Curve::P384 ? 384 : 256;
  }
  if (alg && !algFitsKeyType(c.kty, c.crv, *alg)) {
    // The alg must name this key's family and curve; otherwise a verifier that trusts "alg" could be
    // steered into the wrong algorithm (RFC 8725 §3.1).
    return Error("alg: " + std::string(algName(*alg)) + " does not fit a " +
                 (c.kty == KeyType::RSA ? std::string("RSA key") : std::string(curveName(c.crv)) + " key"));
  }
  key.alg = alg;
  auto built = buildKey(c);
  if (!built) {
    return Error(built.error());
  }
  key.key = std::move(*built);
  key.prepared = detail::prepareVerifier(key.key, key.kty, key.crv);
  key.thumbprint = thumbprintOf(c);
  return key;
}

/// Validates one JWK object (RFC 7517 §4, RFC 7518 §6) against SPEC.md "Registration".
std::expected<PublicKey, std::string> keyFromObject(const Poco::JSON::Object& o) {
  const auto kty = requiredString(o, "kty");
  if (!kty) {
    return Error(kty.error());
  }
  if (*kty == "oct") {
    // A symmetric key would turn a client assertion into a shared secret; Backend Services uses key pairs.
    return Error("kty: symmetric (oct) keys are not accepted");
  }
  if (*kty == "OKP") {
    return Error("kty: OKP keys (Ed25519, X25519) are not supported, only RSA and EC");
  }
  if (*kty != "RSA" && *kty != "EC") {
    return Error("kty: unsupported key type, only RSA and EC keys are accepted");
  }
  // A registered key must be public: private material in a registration is a leaked key and must not be
  // stored, whatever the member's value.
  for (const std::string_view member : kPrivateMembers) {
    if (o.has(std::string(member))) {
      return Error(std::string(member) + ": private key member present, only public keys are accepted");
    }
  }

  PublicKey meta;
  const auto kid = optionalString(o, "kid");
  if (!kid) {
    return Error(kid.error());
  }
  if (kid->has_value()) {
    if (auto err = checkKid(**kid)) {
      return Error(std::move(*err));
    }
    meta.kid = **kid;
  }

  const auto use = optionalString(o, "use");
  if (!use) {
    return Error(use.error());
  }
  if (use->has_value()) {
    if (**use != "sig") {
      return Error("use: must be \"sig\"");
    }
    meta.use = **use;
  }

  if (o.has("key_ops")) {
    const auto ops = asArray(o.get("key_ops"));
    if (!ops) {
      return Error("key_ops: must be an array of strings");
    }
    std::set<std::string> seen;
    for (std::size_t i = 0; i < ops->size(); ++i) {
      const Poco::Dynamic::Var op = ops->get(static_cast<unsigned int>(i));
      if (op.type() != typeid(std::string)) {
        return Error("key_ops: must be an array of strings");
      }
      const auto& name = op.extract<std::string>();
      // RFC 7517 §4.3 forbids duplicates; a public signature key can only "verify" (a copied "sign" from
      // the key pair is tolerated), never encrypt or derive.
      if (!seen.insert(name).second) {
        return Error("key_ops: duplicate operation");
      }
      if (name != "verify" && name != "sign") {
        return Error("key_ops: only \"verify\" is accepted for a signature key");
      }
    }
    if (seen.count("verify") == 0) {
      return Error("key_ops: does not include \"verify\"");
    }
  }

  std::optional<Alg> alg;
  const auto algText = optionalString(o, "alg");
  if (!algText) {
    return Error(algText.error());
  }
  if (algText->has_value()) {
    alg = algFromName(**algText);
    if (!alg) {
      return Error("alg: not one of RS256, RS384, ES256, ES384");
    }
  }

  Components c;
  if (*kty == "RSA") {
    c.kty = KeyType::RSA;
    auto n = requiredBase64url(o, "n");
    if (!n) {
      return Error(n.error());
    }
    auto e = requiredBase64url(o, "e");
    if (!e) {
      return Error(e.error());
    }
    // RFC 7518 §6.3.1 forbids leading zero octets, but some libraries emit one; the value is what counts,
    // and the canonical (stripped) form is what the thumbprint and re-export use.
    c.first = std::string(stripLeadingZeros(*n));
    c.second = std::string(stripLeadingZeros(*e));
  } else {
    c.kty = KeyType::EC;
    const auto crv = requiredString(o, "crv");
    if (!crv) {
      return Error(crv.error());
    }
    if (*crv == "P-256") {
      c.crv = Curve::P256;
    } else if (*crv == "P-384") {
      c.crv = Curve::P384;
    } else {
      return Error("crv: " + (safeToQuote(*crv) ? *crv + " is" : std::string("the curve is")) +
                   " not accepted, only P-256 and P-384");
    }
    auto x = requiredBase64url(o, "x");
    if (!x) {
      return Error(x.error());
    }
    auto y = requiredBase64url(o, "y");
    if (!y) {
      return Error(y.error());
    }
    // RFC 7518 §6.2.1.2/3: coordinates are full-width; a short or long one is malformed, not "padded".
    const std::size_t width = coordinateBytes(c.crv);
    if (x->size() != width) {
      return Error("x: " + std::to_string(x->size()) + " bytes, " + std::string(curveName(c.crv)) + " needs " +
                   std::to_string(width));
    }
    if (y->size() != width) {
      return Error("y: " + std::to_string(y->size()) + " bytes, " + std::string(curveName(c.crv)) + " needs " +
                   std::to_string(width));
    }
    c.first = std::move(*x);
    c.second = std::move(*y);
  }

  auto key = makeKey(c, alg);
  if (!key) {
    return Error(key.error());
  }
  key->kid = std::move(meta.kid);
  key->use = std::move(meta.use);
  return key;
}

std::string describeEntry(std::size_t index, const std::optional<std::string>& kid) {
  std::string s = "keys[" + std::to_string(index) + "]";
  if (kid && safeToQuote(*kid)) {
    s += " (kid " + *kid + ")";
  }
  return s;
}

std::string jwkJson(const PublicKey& key, const Components& c) {
  std::string out;
  out.reserve(64 + 2 * (c.first.size() + c.second.size()));
  out += R"({"kty":)";
  out += c.kty == KeyType::RSA ? R"("RSA")" : R"("EC")";
  if (!key.kid.empty()) {
    out += R"(,"kid":)";
    appendJsonString(out, key.kid);
  }
  out += R"(,"use":"sig")";
  if (key.alg) {
    out += R"(,"alg":")";
    out += algName(*key.alg);
    out += '"';
  }
  if (c.kty == KeyType::RSA) {
    out += R"(,"n":")" + base64urlEncode(c.first) + R"(","e":")" + base64urlEncode(c.second) + '"';
  } else {
    out += R"(,"crv":")" + std::string(curveName(c.crv)) + R"(","x":")" + base64urlEncode(c.first) + R"(","y":")" +
           base64urlEncode(c.second) + '"';
  }
  out += '}';
  return out;
}

Components requireComponents(const PublicKey& key) {
  auto c = componentsFromEvp(key.key.get());
  if (!c) {
    // A PublicKey without a readable key was not produced by this library: a programming error.
    throw std::invalid_argument("jwks: PublicKey has no usable OpenSSL key (" + c.error() + ")");
  }
  return std::move(*c);
}

}  // namespace

std::optional<Alg> algFromName(std::string_view name) {
  for (const auto& entry : kAlgs) {
    if (entry.name == name) {
      return entry.alg;
    }
  }
  return std::nullopt;
}

std::string_view algName(Alg alg) {
  for (const auto& entry : kAlgs) {
    if (entry.alg == alg) {
      return entry.name;
    }
  }
  return "unknown";
}

bool PublicKey::fits(Alg a) const {
  if (!algFitsKeyType(kty, crv, a)) {
    return false;
  }
  if (alg && *alg != a) {
    return false;
  }
  return use.empty() || use == "sig";
}

std::expected<PublicKey, std::string> parseJwk(std::string_view json) {
  if (json.size() > kMaxJwkBytes) {
    return Error("JWK: " + std::to_string(json.size()) + " bytes, at most 65536 accepted");
  }
  const auto root = parseJson(json);
  if (!root) {
    return Error(root.error());
  }
  const auto object = asObject(*root);
  if (!object) {
    return Error("JWK: not a JSON object");
  }
  return keyFromObject(*object);
}

std::expected<JwkSetParse, std::string> parseJwkSet(std::string_view json, BadKeyPolicy policy, std::size_t maxKeys) {
  if (json.size() > kMaxJwkSetBytes) {
    return Error("JWK Set: " + std::to_string(json.size()) + " bytes, at most 524288 accepted");
  }
  const auto root = parseJson(json);
  if (!root) {
    return Error(root.error());
  }
  const auto object = asObject(*root);
  if (!object) {
    return Error("JWK Set: not a JSON object");
  }
  if (!object->has("keys")) {
    return Error("keys: missing");
  }
  const auto keys = asArray(object->get("keys"));
  if (!keys) {
    return Error("keys: not an array");
  }
  const std::size_t count = keys->size();
  if (count == 0) {
    return Error("keys: the set has no keys");
  }
  if (count > maxKeys) {
    return Error("keys: " + std::to_string(count) + " keys, at most " + std::to_string(maxKeys) + " accepted");
  }

  // First pass over every entry, good or bad: a kid used twice is ambiguous even if one of its keys would be
  // skipped, because the publisher may rotate the bad one into a good one on the next fetch.
  std::vector<Poco::JSON::Object::Ptr> entries(count);
  std::vector<std::optional<std::string>> kids(count);
  std::unordered_set<std::string> seenKids;
  for (std::size_t i = 0; i < count; ++i) {
    entries[i] = asObject(keys->get(static_cast<unsigned int>(i)));
    if (!entries[i] || !entries[i]->has("kid")) {
      continue;
    }
    const Poco::Dynamic::Var kid = entries[i]->get("kid");
    if (kid.type() != typeid(std::string)) {
      continue;
    }
    kids[i] = kid.extract<std::string>();
    if (!kids[i]->empty() && !seenKids.insert(*kids[i]).second) {
      return Error(describeEntry(i, kids[i]) + ": duplicate kid");
    }
  }

  JwkSetParse result;
  result.set.keys.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    std::expected<PublicKey, std::string> key = Error("not a JSON object");
    if (entries[i]) {
      key = keyFromObject(*entries[i]);
      if (key && key->kid.empty()) {
        // A set is looked up by kid; a key without one could only be found by trying every key.
        key = Error("kid: missing");
      }
    }
    if (key) {
      result.set.keys.push_back(std::move(*key));
      continue;
    }
    std::string line = describeEntry(i, kids[i]) + ": " + key.error();
    if (policy == BadKeyPolicy::Reject) {
      return Error(std::move(line));
    }
    result.skipped.push_back(std::move(line));
  }
  if (result.set.keys.empty()) {
    return Error("keys: no usable key (" + std::to_string(result.skipped.size()) + " skipped, first: " +
                 result.skipped.front() + ")");
  }
  return result;
}

std::expected<PublicKey, std::string> publicKeyFromEvp(std::shared_ptr<evp_pkey_st> key, std::optional<Alg> alg,
                                                       std::string kid) {
  auto c = componentsFromEvp(key.get());
  if (!c) {
    return Error(c.error());
  }
  if (c->kty == KeyType::RSA) {
    c->first = std::string(stripLeadingZeros(c->first));
    c->second = std::string(stripLeadingZeros(c->second));
  }
  // The key is rebuilt from its public values, so the PublicKey never holds private material even when the
  // caller passes its signing key.
  auto pub = makeKey(*c, alg);
  if (!pub) {
    return Error(pub.error());
  }
  if (!kid.empty()) {
    if (auto err = checkKid(kid)) {
      return Error(std::move(*err));
    }
    pub->kid = std::move(kid);
  } else {
    pub->kid = pub->thumbprint;
  }
  pub->use = "sig";
  return pub;
}

std::string thumbprint(const PublicKey& key) { return thumbprintOf(requireComponents(key)); }

std::string publicJwkJson(const PublicKey& key) { return jwkJson(key, requireComponents(key)); }

std::string publicJwkSetJson(const std::vector<PublicKey>& keys) {
  std::string out = R"({"keys":[)";
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i != 0) {
      out += ',';
    }
    out += publicJwkJson(keys[i]);
  }
  out += "]}";
  return out;
}

}  // namespace smartbroker::jwks
