// Unit tests for the keyring: SigningKey generation, PEM round trip and signing, and openKeyring on disk.
#include <boost/test/unit_test.hpp>

#include "smartbroker/jwks/base64url.hpp"
#include "smartbroker/jwks/jwk.hpp"
#include "smartbroker/keyring/keyring.hpp"
#include "smartbroker/keyring/signing_key.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "test_support.hpp"

// Boost.Test printers for failure messages (internal linkage, found by ADL).
namespace smartbroker::jwks {
[[maybe_unused]] static std::ostream& boost_test_print_type(std::ostream& os, Alg alg) { return os << algName(alg); }
[[maybe_unused]] static std::ostream& boost_test_print_type(std::ostream& os, Curve crv) {
  return os << "curve#" << static_cast<int>(crv);
}
[[maybe_unused]] static std::ostream& boost_test_print_type(std::ostream& os, KeyType kty) {
  return os << (kty == KeyType::RSA ? "RSA" : "EC");
}
}  // namespace smartbroker::jwks

namespace {

namespace fs = std::filesystem;
namespace jw = smartbroker::jwks;
namespace kr = smartbroker::keyring;

constexpr std::array kAllAlgs{jw::Alg::ES256, jw::Alg::ES384, jw::Alg::RS256, jw::Alg::RS384};

/// One key per alg per process, made on first use: RSA 3072 generation is slow, and nothing here mutates a key.
const kr::SigningKey& keyFor(jw::Alg alg) {
  auto make = [](jw::Alg a) {
    auto k = kr::SigningKey::generate(a);
    if (!k) {
      throw std::runtime_error("generate failed: " + k.error());
    }
    return *k;
  };
  switch (alg) {
    case jw::Alg::ES256: {
      static const kr::SigningKey key = make(jw::Alg::ES256);
      return key;
    }
    case jw::Alg::ES384: {
      static const kr::SigningKey key = make(jw::Alg::ES384);
      return key;
    }
    case jw::Alg::RS256: {
      static const kr::SigningKey key = make(jw::Alg::RS256);
      return key;
    }
    case jw::Alg::RS384: {
      static const kr::SigningKey key = make(jw::Alg::RS384);
      return key;
    }
  }
  throw std::logic_error("unknown alg");
}

using test_support::TempDir;

unsigned modeOf(const fs::path& p) {
  struct stat st {};
  BOOST_REQUIRE(::stat(p.c_str(), &st) == 0);
  return static_cast<unsigned>(st.st_mode & 07777);
}

std::vector<fs::path> filesIn(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out.push_back(e.path());
  }
  return out;
}

void writeFile(const fs::path& p, std::string_view content, fs::perms perms) {
  {
    std::ofstream out(p, std::ios::binary);
    out << content;
  }
  fs::permissions(p, perms);
}

std::vector<std::string> splitDots(std::string_view s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = s.find('.', start);
    out.emplace_back(s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) {
      return out;
    }
    start = dot + 1;
  }
}

Poco::JSON::Object::Ptr parseObject(const std::string& json) {
  Poco::JSON::Parser parser;
  return parser.parse(json).extract<Poco::JSON::Object::Ptr>();
}

/// RFC 7638 §3.2 thumbprint computed here independently of the jwks library: SHA-256 over the required
/// members in lexicographic order, no whitespace.
std::string independentThumbprint(const Poco::JSON::Object& jwk) {
  std::string canonical;
  const std::string kty = jwk.getValue<std::string>("kty");
  if (kty == "EC") {
    canonical = R"({"crv":")" + jwk.getValue<std::string>("crv") + R"(","kty":"EC","x":")" +
                jwk.getValue<std::string>("x") + R"(","y":")" + jwk.getValue<std::string>("y") + R"("})";
  } else {
    canonical = R"({"e":")" + jwk.getValue<std::string>("e") + R"(","kty":"RSA","n":")" +
                jwk.getValue<std::string>("n") + R"("})";
  }
  std::array<unsigned char, SHA256_DIGEST_LENGTH> digest{};
  SHA256(reinterpret_cast<const unsigned char*>(canonical.data()), canonical.size(), digest.data());
  return jw::base64urlEncode(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

/// A PKCS#8 PEM made outside the keyring (OpenSSL directly), to check fromPem's type/curve checks.
std::string foreignPem(const char* type, const char* curve) {
  EVP_PKEY* raw = curve != nullptr ? EVP_PKEY_Q_keygen(nullptr, nullptr, type, curve)
                                   : EVP_PKEY_Q_keygen(nullptr, nullptr, type, static_cast<std::size_t>(2048));
  BOOST_REQUIRE(raw != nullptr);
  const std::shared_ptr<evp_pkey_st> key(raw, EVP_PKEY_free);
  // Round-trip through a SigningKey of the matching alg to get the PEM text.
  const jw::Alg alg = curve == nullptr ? jw::Alg::RS256
                      : std::string_view(curve) == "P-256" ? jw::Alg::ES256
                                                           : jw::Alg::ES384;
  auto pub = jw::publicKeyFromEvp(key, alg);
  BOOST_REQUIRE(pub.has_value());
  return kr::SigningKey::fromParts(key, *pub, alg).privatePem();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(signing_key)

BOOST_AUTO_TEST_CASE(generated_key_of_every_alg_signs_what_verify_signature_accepts) {
  for (const jw::Alg alg : kAllAlgs) {
    BOOST_TEST_CONTEXT("alg " << jw::algName(alg)) {
      const kr::SigningKey& key = keyFor(alg);
      BOOST_TEST(key.alg() == alg);
      BOOST_TEST(key.publicKey().fits(alg));
      const std::string input = "eyJhbGciOiJ4In0.eyJzdWIiOiJ5In0";
      const std::string sig = key.sign(input);
      BOOST_TEST(jw::verifySignature(key.publicKey(), alg, input, sig));
      // Crypto negatives: another input, a flipped bit, a truncated signature must all fail.
      BOOST_TEST(!jw::verifySignature(key.publicKey(), alg, input + "x", sig));
      std::string flipped = sig;
      flipped[flipped.size() / 2] = static_cast<char>(flipped[flipped.size() / 2] ^ 0x01);
      BOOST_TEST(!jw::verifySignature(key.publicKey(), alg, input, flipped));
      BOOST_TEST(!jw::verifySignature(key.publicKey(), alg, input, sig.substr(1)));
    }
  }
}

BOOST_AUTO_TEST_CASE(signatures_verify_with_plain_openssl_on_the_public_key_from_eight_threads) {
  // sign() works on duplicates of one prepared context per key; check its output with EVP_DigestVerify set up
  // from scratch on the published public key (not through jwks), with several threads signing at once.
  for (const jw::Alg alg : kAllAlgs) {
    BOOST_TEST_CONTEXT("alg " << jw::algName(alg)) {
      const kr::SigningKey& key = keyFor(alg);
      const bool ec = alg == jw::Alg::ES256 || alg == jw::Alg::ES384;
      const std::size_t width = alg == jw::Alg::ES256 ? 32 : 48;
      const EVP_MD* md = alg == jw::Alg::ES256 || alg == jw::Alg::RS256 ? EVP_sha256() : EVP_sha384();
      constexpr int kThreads = 8;
      constexpr int kEach = 6;
      std::vector<std::vector<std::string>> sigs(kThreads);
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          for (int i = 0; i < kEach; ++i) {
            sigs[static_cast<std::size_t>(t)].push_back(key.sign("h." + std::to_string(t * kEach + i)));
          }
        });
      }
      for (auto& th : threads) {
        th.join();
      }
      int good = 0;
      for (int t = 0; t < kThreads; ++t) {
        for (int i = 0; i < kEach; ++i) {
          const std::string input = "h." + std::to_string(t * kEach + i);
          std::string sig = sigs[static_cast<std::size_t>(t)][static_cast<std::size_t>(i)];
          if (ec) {
            BOOST_REQUIRE(sig.size() == 2 * width);
            const std::unique_ptr<ECDSA_SIG, decltype(&ECDSA_SIG_free)> parsed(ECDSA_SIG_new(), &ECDSA_SIG_free);
            BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()), static_cast<int>(width), nullptr);
            BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data() + width), static_cast<int>(width),
                                  nullptr);
            BOOST_REQUIRE(ECDSA_SIG_set0(parsed.get(), r, s) == 1);
            unsigned char* der = nullptr;
            const int len = i2d_ECDSA_SIG(parsed.get(), &der);
            BOOST_REQUIRE(len > 0);
            sig.assign(reinterpret_cast<const char*>(der), static_cast<std::size_t>(len));
            OPENSSL_free(der);
          }
          const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
          BOOST_REQUIRE(EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key.publicKey().key.get()) == 1);
          if (EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                               reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1) {
            ++good;
          }
        }
      }
      BOOST_TEST(good == kThreads * kEach);
    }
  }
}

BOOST_AUTO_TEST_CASE(generated_keys_have_the_documented_type_and_size) {
  BOOST_TEST(keyFor(jw::Alg::ES256).publicKey().crv == jw::Curve::P256);
  BOOST_TEST(keyFor(jw::Alg::ES384).publicKey().crv == jw::Curve::P384);
  BOOST_TEST(keyFor(jw::Alg::RS256).publicKey().kty == jw::KeyType::RSA);
  BOOST_TEST(keyFor(jw::Alg::RS256).publicKey().bits == 3072);
  BOOST_TEST(keyFor(jw::Alg::RS384).publicKey().bits == 3072);
  BOOST_TEST(keyFor(jw::Alg::ES256).sign("a.b").size() == 64U);
  BOOST_TEST(keyFor(jw::Alg::ES384).sign("a.b").size() == 96U);
  BOOST_TEST(keyFor(jw::Alg::RS384).sign("a.b").size() == 384U);
}

BOOST_AUTO_TEST_CASE(two_generated_keys_have_different_kids) {
  auto a = kr::SigningKey::generate(jw::Alg::ES256);
  auto b = kr::SigningKey::generate(jw::Alg::ES256);
  BOOST_REQUIRE(a.has_value());
  BOOST_REQUIRE(b.has_value());
  BOOST_TEST(a->kid() != b->kid());
}

BOOST_AUTO_TEST_CASE(es384_signatures_verify_every_time_including_short_r_or_s) {
  // About 1 in 128 signatures has an R or S with a leading zero byte; without padding those fail (POCO's bug).
  const kr::SigningKey& key = keyFor(jw::Alg::ES384);
  int failures = 0;
  for (int i = 0; i < 300; ++i) {
    const std::string input = "header." + std::to_string(i);
    const std::string sig = key.sign(input);
    if (sig.size() != 96U || !jw::verifySignature(key.publicKey(), jw::Alg::ES384, input, sig)) {
      ++failures;
    }
  }
  BOOST_TEST(failures == 0);
}

BOOST_AUTO_TEST_CASE(es256_signatures_verify_every_time) {
  const kr::SigningKey& key = keyFor(jw::Alg::ES256);
  int failures = 0;
  for (int i = 0; i < 300; ++i) {
    const std::string input = "h." + std::to_string(i);
    const std::string sig = key.sign(input);
    if (sig.size() != 64U || !jw::verifySignature(key.publicKey(), jw::Alg::ES256, input, sig)) {
      ++failures;
    }
  }
  BOOST_TEST(failures == 0);
}

BOOST_AUTO_TEST_CASE(sign_compact_yields_three_parts_with_alg_typ_kid_header_and_a_valid_signature) {
  for (const jw::Alg alg : kAllAlgs) {
    BOOST_TEST_CONTEXT("alg " << jw::algName(alg)) {
      const kr::SigningKey& key = keyFor(alg);
      const std::string payload = R"({"sub":"x","n":1})";
      const std::string jws = key.signCompact("at+jwt", payload);
      const auto parts = splitDots(jws);
      BOOST_REQUIRE_EQUAL(parts.size(), 3U);
      const auto header = jw::base64urlDecode(parts[0]);
      const auto body = jw::base64urlDecode(parts[1]);
      const auto sig = jw::base64urlDecode(parts[2]);
      BOOST_REQUIRE(header.has_value());
      BOOST_REQUIRE(body.has_value());
      BOOST_REQUIRE(sig.has_value());
      BOOST_TEST(*body == payload);
      const auto h = parseObject(*header);
      BOOST_TEST(h->size() == 3U);
      BOOST_TEST(h->getValue<std::string>("alg") == std::string(jw::algName(alg)));
      BOOST_TEST(h->getValue<std::string>("typ") == "at+jwt");
      BOOST_TEST(h->getValue<std::string>("kid") == key.kid());
      BOOST_TEST(jw::verifySignature(key.publicKey(), alg, parts[0] + "." + parts[1], *sig));
    }
  }
}

BOOST_AUTO_TEST_CASE(from_pem_of_private_pem_round_trips_to_the_same_kid_and_key) {
  for (const jw::Alg alg : kAllAlgs) {
    BOOST_TEST_CONTEXT("alg " << jw::algName(alg)) {
      const kr::SigningKey& key = keyFor(alg);
      const std::string pem = key.privatePem();
      BOOST_TEST(pem.find("-----BEGIN PRIVATE KEY-----") == 0U);
      auto again = kr::SigningKey::fromPem(pem, alg);
      BOOST_REQUIRE_MESSAGE(again.has_value(), again.error());
      BOOST_TEST(again->kid() == key.kid());
      BOOST_TEST(again->kid() == key.publicKey().thumbprint);
      // The reloaded private key signs what the original public key verifies.
      BOOST_TEST(jw::verifySignature(key.publicKey(), alg, "a.b", again->sign("a.b")));
    }
  }
}

BOOST_AUTO_TEST_CASE(from_pem_refuses_a_key_that_does_not_fit_the_alg) {
  const std::string p256 = keyFor(jw::Alg::ES256).privatePem();
  const std::string p384 = keyFor(jw::Alg::ES384).privatePem();
  const std::string rsa = keyFor(jw::Alg::RS256).privatePem();
  BOOST_TEST(!kr::SigningKey::fromPem(p256, jw::Alg::ES384).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(p384, jw::Alg::ES256).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(rsa, jw::Alg::ES256).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(rsa, jw::Alg::ES384).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(p256, jw::Alg::RS256).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(p384, jw::Alg::RS384).has_value());
  // An RSA key serves either RS alg.
  BOOST_TEST(kr::SigningKey::fromPem(rsa, jw::Alg::RS384).has_value());
}

BOOST_AUTO_TEST_CASE(from_pem_refuses_keys_made_elsewhere_with_the_wrong_curve_or_type) {
  BOOST_TEST(!kr::SigningKey::fromPem(foreignPem("EC", "P-256"), jw::Alg::ES384).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem(foreignPem("RSA", nullptr), jw::Alg::ES256).has_value());
  BOOST_TEST(kr::SigningKey::fromPem(foreignPem("EC", "P-384"), jw::Alg::ES384).has_value());
}

BOOST_AUTO_TEST_CASE(from_pem_refuses_garbage_and_public_keys) {
  BOOST_TEST(!kr::SigningKey::fromPem("", jw::Alg::ES256).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem("garbage", jw::Alg::ES256).has_value());
  BOOST_TEST(!kr::SigningKey::fromPem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                                      jw::Alg::ES256)
                  .has_value());
  // A truncated real key.
  const std::string pem = keyFor(jw::Alg::ES256).privatePem();
  BOOST_TEST(!kr::SigningKey::fromPem(pem.substr(0, pem.size() / 2), jw::Alg::ES256).has_value());
}

BOOST_AUTO_TEST_CASE(public_key_carries_no_private_members) {
  for (const jw::Alg alg : kAllAlgs) {
    BOOST_TEST_CONTEXT("alg " << jw::algName(alg)) {
      const auto jwk = parseObject(jw::publicJwkJson(keyFor(alg).publicKey()));
      for (const char* member : {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}) {
        BOOST_TEST(!jwk->has(member), member);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(keyring)

BOOST_AUTO_TEST_CASE(opening_a_fresh_state_directory_creates_a_private_key_file_and_publishes_it) {
  const TempDir tmp;
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(set.has_value(), set.error());
  const fs::path keys = tmp.path() / "keys";
  BOOST_TEST(fs::is_directory(keys));
  BOOST_TEST(modeOf(keys) == 0700U);
  const auto files = filesIn(keys);
  BOOST_REQUIRE_EQUAL(files.size(), 1U);
  BOOST_REQUIRE(set->active != nullptr);
  BOOST_TEST(files[0].filename().string() == set->active->kid() + ".pem");
  BOOST_TEST(modeOf(files[0]) == 0600U);
  BOOST_TEST(set->active->alg() == jw::Alg::ES256);
  BOOST_REQUIRE_EQUAL(set->published.size(), 1U);
  BOOST_TEST(set->published[0].kid == set->active->kid());

  // kid is the RFC 7638 thumbprint, recomputed here from the published JWK.
  const auto jwksObj = parseObject(set->jwksJson);
  const auto keyArray = jwksObj->getArray("keys");
  BOOST_REQUIRE(keyArray);
  BOOST_REQUIRE_EQUAL(keyArray->size(), 1U);
  const auto jwk = keyArray->getObject(0);
  BOOST_TEST(jwk->getValue<std::string>("kid") == set->active->kid());
  BOOST_TEST(independentThumbprint(*jwk) == set->active->kid());
  for (const char* member : {"d", "p", "q", "dp", "dq", "qi", "k"}) {
    BOOST_TEST(!jwk->has(member), member);
  }
  // The file on disk is the key that signs.
  std::ifstream in(files[0]);
  std::ostringstream text;
  text << in.rdbuf();
  const std::string pem = text.str();
  auto fromDisk = kr::SigningKey::fromPem(pem, jw::Alg::ES256);
  BOOST_REQUIRE(fromDisk.has_value());
  BOOST_TEST(fromDisk->kid() == set->active->kid());
}

BOOST_AUTO_TEST_CASE(published_jwks_verifies_what_the_active_key_signs) {
  const TempDir tmp;
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES384);
  BOOST_REQUIRE_MESSAGE(set.has_value(), set.error());
  auto parsed = jw::parseJwkSet(set->jwksJson);
  BOOST_REQUIRE_MESSAGE(parsed.has_value(), parsed.error());
  BOOST_REQUIRE_EQUAL(parsed->set.keys.size(), 1U);
  const std::string jws = set->active->signCompact("at+jwt", "{}");
  const auto parts = splitDots(jws);
  BOOST_REQUIRE_EQUAL(parts.size(), 3U);
  BOOST_TEST(jw::verifySignature(parsed->set.keys[0], jw::Alg::ES384, parts[0] + "." + parts[1],
                                 jw::base64urlDecode(parts[2]).value_or("")));
}

BOOST_AUTO_TEST_CASE(reopening_returns_the_same_kid_and_creates_no_second_key) {
  const TempDir tmp;
  auto first = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(first.has_value(), first.error());
  auto second = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(second.has_value(), second.error());
  BOOST_TEST(second->active->kid() == first->active->kid());
  BOOST_TEST(second->published.size() == 1U);
  BOOST_TEST(filesIn(tmp.path() / "keys").size() == 1U);
}

BOOST_AUTO_TEST_CASE(refuses_a_keys_directory_readable_by_others) {
  const TempDir tmp;
  BOOST_REQUIRE(kr::openKeyring(tmp.path().string(), jw::Alg::ES256).has_value());
  fs::permissions(tmp.path() / "keys", static_cast<fs::perms>(0755));
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE(!set.has_value());
  BOOST_TEST(set.error().find("permissions") != std::string::npos, set.error());
}

BOOST_AUTO_TEST_CASE(refuses_a_key_file_readable_by_others) {
  const TempDir tmp;
  auto first = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE(first.has_value());
  fs::permissions(tmp.path() / "keys" / (first->active->kid() + ".pem"), static_cast<fs::perms>(0644));
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE(!set.has_value());
  BOOST_TEST(set.error().find("permissions") != std::string::npos, set.error());
}

BOOST_AUTO_TEST_CASE(refuses_a_key_file_that_is_not_a_private_key) {
  const TempDir tmp;
  fs::create_directory(tmp.path() / "keys");
  fs::permissions(tmp.path() / "keys", static_cast<fs::perms>(0700));
  writeFile(tmp.path() / "keys" / "garbage.pem", "this is not a key\n", static_cast<fs::perms>(0600));
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE(!set.has_value());
  BOOST_TEST(set.error().find("garbage.pem") != std::string::npos, set.error());
}

BOOST_AUTO_TEST_CASE(loads_an_existing_key_file_instead_of_generating_one) {
  const TempDir tmp;
  fs::create_directory(tmp.path() / "keys");
  fs::permissions(tmp.path() / "keys", static_cast<fs::perms>(0700));
  const kr::SigningKey& key = keyFor(jw::Alg::ES384);
  writeFile(tmp.path() / "keys" / (key.kid() + ".pem"), key.privatePem(), static_cast<fs::perms>(0600));
  auto set = kr::openKeyring(tmp.path().string(), jw::Alg::ES384);
  BOOST_REQUIRE_MESSAGE(set.has_value(), set.error());
  BOOST_TEST(set->active->kid() == key.kid());
  BOOST_TEST(filesIn(tmp.path() / "keys").size() == 1U);
}

BOOST_AUTO_TEST_SUITE_END()
