// End-to-end: the real smart-broker binary over loopback HTTP; assertions signed and tokens verified by jose.
#define BOOST_TEST_MODULE e2e
#include <signal.h>
#include <sys/stat.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"

using namespace e2e;

namespace {

Broker& broker() {
  static Broker instance;
  return instance;
}

const std::string kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Signer {
  std::string alg;
  std::string key;  ///< key file name under tests/data/keys
  std::string kid;
};

Signer signerFor(const std::string& clientId) {
  if (clientId == "es384-client") {
    return {"ES384", "es384-client", "es384-client"};
  }
  if (clientId == "rs256-client") {
    return {"RS256", "rs256-client", "rs256-client"};
  }
  if (clientId == "es256-client") {
    return {"ES256", "es256-client", "es256-client"};
  }
  if (clientId == "other-client") {
    return {"RS384", "other-client", "other-client"};
  }
  return {"RS384", "rs384-client", "rs384-client"};
}

/// A valid assertion for `clientId`, after `mutate` had its way with header and claims.
std::string assertion(const std::string& clientId, const std::function<void(Json&, Json&)>& mutate = {},
                      std::optional<Signer> signer = std::nullopt) {
  const Signer s = signer.value_or(signerFor(clientId));
  Json header = object({{"alg", s.alg}, {"kid", s.kid}, {"typ", "JWT"}});
  Json payload = claims(clientId, broker().tokenUrl());
  if (mutate) {
    mutate(header, payload);
  }
  return jose().sign(s.alg, keyFile(s.key), header, payload);
}

Response token(const std::string& jwt, const std::string& scope = "system/*.rs") {
  return broker().post("/token", tokenForm(jwt, scope));
}

/// Asserts the exact wire error, the no-store headers, and the log line with the internal reason.
void expectRefused(const std::function<Response()>& send, int status, const std::string& error,
                   const std::string& reason) {
  const std::size_t before = broker().log().size();
  const Response r = send();
  BOOST_TEST(r.status == status);
  BOOST_TEST(r.header("cache-control") == "no-store");
  BOOST_TEST(r.header("pragma") == "no-cache");
  BOOST_TEST(r.header("content-type").starts_with("application/json"));
  const Json body = r.json();
  BOOST_TEST(body->getValue<std::string>("error") == error);
  const std::string description = body->getValue<std::string>("error_description");
  BOOST_TEST(!description.empty());
  for (const char c : description) {
    // RFC 6749 §5.2: %x20-21 / %x23-5B / %x5D-7E.
    BOOST_TEST((c >= 0x20 && c <= 0x7e && c != '"' && c != '\\'));
  }
  BOOST_TEST(body->size() == 2U);
  const std::string needle = "reason=" + reason;
  BOOST_TEST(broker().waitForLog(needle), "log has " << needle);
  BOOST_TEST(broker().log().find(needle, before) != std::string::npos, "new log line has " << needle);
}

void expectClientRefused(const std::string& jwt, const std::string& reason) {
  expectRefused([&] { return token(jwt); }, 401, "invalid_client", reason);
  // Never a secret in the log: not the assertion, not even its signature.
  const std::string signature = jwt.substr(jwt.rfind('.') + 1);
  BOOST_TEST((signature.size() < 16 || broker().log().find(signature) == std::string::npos));
  BOOST_TEST(broker().log().find(jwt.substr(0, jwt.find('.'))) == std::string::npos);
}

Json decodePart(const std::string& jwt, int part) {
  return jose().call(object({{"op", "decode"}, {"token", jwt}}))->getObject(part == 0 ? "header" : "payload");
}

std::set<std::string> words(const std::string& text) {
  std::set<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) {
    out.insert(w);
  }
  return out;
}

/// Issues a token and checks every property of a successful response, including independent verification.
Json expectIssued(const std::string& jwt, const std::string& scope, const std::string& expectedScope,
                  std::int64_t expectedLifetime = 300) {
  const Response r = token(jwt, scope);
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  BOOST_TEST(r.header("cache-control") == "no-store");
  BOOST_TEST(r.header("pragma") == "no-cache");
  BOOST_TEST(r.header("content-type").starts_with("application/json"));
  const Json body = r.json();
  BOOST_TEST(body->size() == 4U);
  BOOST_TEST(body->getValue<std::string>("token_type") == "bearer");
  BOOST_TEST(body->getValue<std::int64_t>("expires_in") == expectedLifetime);
  BOOST_TEST(words(body->getValue<std::string>("scope")) == words(expectedScope));
  BOOST_TEST(!body->has("refresh_token"));
  const std::string accessToken = body->getValue<std::string>("access_token");

  const Json verified = jose().verify(accessToken, broker().baseUrl() + "/jwks.json", broker().baseUrl(),
                                      "https://fhir.example.org/r4");
  BOOST_TEST_REQUIRE(verified->getValue<bool>("ok"), verified->optValue<std::string>("error", ""));
  const Json header = verified->getObject("header");
  BOOST_TEST(header->getValue<std::string>("typ") == "at+jwt");
  BOOST_TEST(header->getValue<std::string>("alg") == "ES256");
  BOOST_TEST(!header->getValue<std::string>("kid").empty());
  const Json claims = verified->getObject("payload");
  const std::string clientId = decodePart(jwt, 1)->getValue<std::string>("iss");
  BOOST_TEST(claims->getValue<std::string>("iss") == broker().baseUrl());
  BOOST_TEST(claims->getValue<std::string>("sub") == clientId);
  BOOST_TEST(claims->getValue<std::string>("client_id") == clientId);
  BOOST_TEST(claims->getValue<std::string>("aud") == "https://fhir.example.org/r4");
  BOOST_TEST(words(claims->getValue<std::string>("scope")) == words(expectedScope));
  const auto iat = claims->getValue<std::int64_t>("iat");
  BOOST_TEST(claims->getValue<std::int64_t>("exp") - iat == expectedLifetime);
  BOOST_TEST(std::abs(iat - now()) <= 5);
  BOOST_TEST(claims->getValue<std::string>("jti").size() >= 16U);
  return claims;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(token_success)

BOOST_AUTO_TEST_CASE(issues_token_to_rs384_client_signed_by_jose) {
  const std::string jwt = jose().joseSign("RS384", keyFile("rs384-client"), "rs384-client",
                                          claims("rs384-client", broker().tokenUrl()));
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(issues_token_to_es384_client_signed_by_jose) {
  const std::string jwt = jose().joseSign("ES384", keyFile("es384-client"), "es384-client",
                                          claims("es384-client", broker().tokenUrl()));
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(issues_token_to_rs256_client_signed_by_jose) {
  const std::string jwt = jose().joseSign("RS256", keyFile("rs256-client"), "rs256-client",
                                          claims("rs256-client", broker().tokenUrl()));
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(issues_token_to_es256_client_signed_by_jose) {
  const std::string jwt = jose().joseSign("ES256", keyFile("es256-client"), "es256-client",
                                          claims("es256-client", broker().tokenUrl()));
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(accepts_inferno_assertion_shape_with_exp_now_plus_300_and_no_iat) {
  // Exactly what the Inferno bulk-data test kit sends: header {alg, kid, typ}, claims {iss, sub, aud, exp, jti}.
  Json payload = object({{"iss", "rs384-client"},
                         {"sub", "rs384-client"},
                         {"aud", broker().tokenUrl()},
                         {"exp", now() + 300},
                         {"jti", randomJti()}});
  const std::string jwt =
      jose().sign("RS384", keyFile("rs384-client"), object({{"kid", "rs384-client"}, {"typ", "JWT"}}), payload);
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(accepts_client_id_parameter_equal_to_iss) {
  const std::string jwt = assertion("rs384-client");
  const Response r = broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                         {"client_assertion_type", kJwtBearer},
                                                         {"client_assertion", jwt},
                                                         {"client_id", "rs384-client"},
                                                         {"scope", "system/*.rs"}}));
  BOOST_TEST(r.status == 200);
}

BOOST_AUTO_TEST_CASE(accepts_aud_array_containing_the_token_endpoint) {
  const std::string jwt = assertion("rs384-client", [](Json&, Json& p) {
    Poco::JSON::Array::Ptr aud = new Poco::JSON::Array;
    aud->add(std::string("https://other.example.org"));
    aud->add(broker().tokenUrl());
    p->set("aud", aud);
  });
  expectIssued(jwt, "system/*.rs", "system/*.rs");
}

BOOST_AUTO_TEST_CASE(applies_the_client_token_lifetime) {
  expectIssued(assertion("short-lived-client", {}, Signer{"RS384", "rs384-client", "rs384-client"}), "system/*.rs",
               "system/*.rs", 60);
}

BOOST_AUTO_TEST_CASE(issues_unique_token_ids) {
  const Json a = expectIssued(assertion("rs384-client"), "system/*.rs", "system/*.rs");
  const Json b = expectIssued(assertion("rs384-client"), "system/*.rs", "system/*.rs");
  BOOST_TEST(a->getValue<std::string>("jti") != b->getValue<std::string>("jti"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(assertion_refusals)

BOOST_AUTO_TEST_CASE(rejects_alg_none) {
  const Json payload = claims("rs384-client", broker().tokenUrl());
  const std::string jwt = jose()
                              .call(object({{"op", "none"}, {"header", object({{"kid", "rs384-client"}})},
                                            {"payload", payload}}))
                              ->getValue<std::string>("jwt");
  expectClientRefused(jwt, "alg_none");
}

BOOST_AUTO_TEST_CASE(rejects_hs256_keyed_with_the_public_jwks) {
  const std::string jwt =
      jose()
          .call(object({{"op", "hs256"},
                        {"secret_file", dataDir() + "/keys/rs384-client.jwks.json"},
                        {"header", object({{"kid", "rs384-client"}})},
                        {"payload", claims("rs384-client", broker().tokenUrl())}}))
          ->getValue<std::string>("jwt");
  expectClientRefused(jwt, "alg_symmetric");
}

BOOST_AUTO_TEST_CASE(rejects_alg_not_allowed_for_client) {
  // es384-client may use ES384 only; a valid RS384 signature by a key it does not have is never even tried.
  expectClientRefused(assertion("es384-client", {}, Signer{"RS384", "rs384-client", "es384-client"}),
                      "alg_not_allowed_for_client");
}

BOOST_AUTO_TEST_CASE(rejects_unsupported_alg) {
  expectClientRefused(assertion("rs384-client", [](Json& h, Json&) { h->set("alg", "PS384"); }), "alg_unsupported");
}

BOOST_AUTO_TEST_CASE(rejects_missing_alg) {
  const std::string jwt = jose()
                              .call(object({{"op", "sign"},
                                            {"alg", "RS384"},
                                            {"key", keyFile("rs384-client")},
                                            {"header", object({{"kid", "rs384-client"}})},
                                            {"drop_header", Poco::JSON::Array::Ptr([] {
                                               Poco::JSON::Array::Ptr a = new Poco::JSON::Array;
                                               a->add(std::string("alg"));
                                               return a;
                                             }())},
                                            {"payload", claims("rs384-client", broker().tokenUrl())}}))
                              ->getValue<std::string>("jwt");
  expectClientRefused(jwt, "alg_missing");
}

BOOST_AUTO_TEST_CASE(rejects_unknown_kid) {
  expectClientRefused(assertion("rs384-client", [](Json& h, Json&) { h->set("kid", "no-such-kid"); }),
                      "no_key_for_kid");
}

BOOST_AUTO_TEST_CASE(rejects_missing_kid) {
  expectClientRefused(assertion("rs384-client", [](Json& h, Json&) { h->remove("kid"); }), "kid_missing");
}

BOOST_AUTO_TEST_CASE(rejects_signature_by_an_unregistered_key) {
  expectClientRefused(assertion("rs384-client", {}, Signer{"RS384", "wrong", "rs384-client"}), "signature_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_another_clients_key) {
  // other-client's key and kid, but claiming to be rs384-client: that kid is not in rs384-client's set.
  expectClientRefused(assertion("rs384-client", {}, Signer{"RS384", "other-client", "other-client"}),
                      "no_key_for_kid");
}

BOOST_AUTO_TEST_CASE(rejects_alg_that_does_not_fit_the_key_type) {
  // rs384-client may use ES384, but its only key is RSA: ES384 with the RSA key's kid has no fitting key.
  expectClientRefused(assertion("rs384-client", {}, Signer{"ES384", "es384-client", "rs384-client"}),
                      "no_key_for_kid");
}

BOOST_AUTO_TEST_CASE(rejects_tampered_payload) {
  const std::string jwt = assertion("rs384-client");
  const std::size_t d1 = jwt.find('.');
  const std::size_t d2 = jwt.find('.', d1 + 1);
  Json payload = decodePart(jwt, 1);
  payload->set("exp", payload->getValue<std::int64_t>("exp") - 1);
  std::ostringstream text;
  payload->stringify(text);
  std::string encoded = jose()
                            .call(object({{"op", "none"}, {"header", object({})}, {"payload", payload}}))
                            ->getValue<std::string>("jwt");
  encoded = encoded.substr(encoded.find('.') + 1);
  encoded = encoded.substr(0, encoded.find('.'));
  const std::string tampered = jwt.substr(0, d1 + 1) + encoded + jwt.substr(d2);
  expectClientRefused(tampered, "signature_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_tampered_signature) {
  std::string jwt = assertion("es384-client");
  const std::size_t at = jwt.rfind('.') + 10;
  jwt[at] = jwt[at] == 'A' ? 'B' : 'A';
  expectClientRefused(jwt, "signature_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_der_encoded_ecdsa_signature) {
  const std::string jwt =
      jose()
          .call(object({{"op", "sign"},
                        {"alg", "ES384"},
                        {"key", keyFile("es384-client")},
                        {"header", object({{"kid", "es384-client"}})},
                        {"signature_encoding", "der"},
                        {"payload", claims("es384-client", broker().tokenUrl())}}))
          ->getValue<std::string>("jwt");
  expectClientRefused(jwt, "signature_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_sub_different_from_iss) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("sub", "other-client"); }),
                      "sub_mismatch");
}

BOOST_AUTO_TEST_CASE(rejects_unknown_client) {
  expectClientRefused(assertion("rs384-client",
                                [](Json&, Json& p) {
                                  p->set("iss", "nobody");
                                  p->set("sub", "nobody");
                                }),
                      "unknown_client");
}

BOOST_AUTO_TEST_CASE(rejects_disabled_client) {
  expectClientRefused(assertion("disabled-client", {}, Signer{"RS384", "rs384-client", "rs384-client"}),
                      "client_disabled");
}

BOOST_AUTO_TEST_CASE(rejects_client_id_parameter_different_from_iss) {
  const std::string jwt = assertion("rs384-client");
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                   {"client_assertion_type", kJwtBearer},
                                                   {"client_assertion", jwt},
                                                   {"client_id", "other-client"},
                                                   {"scope", "system/*.rs"}}));
      },
      401, "invalid_client", "client_id_mismatch");
}

BOOST_AUTO_TEST_CASE(rejects_missing_iss) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->remove("iss"); }), "iss_missing");
}

BOOST_AUTO_TEST_CASE(rejects_missing_sub) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->remove("sub"); }), "sub_missing");
}

BOOST_AUTO_TEST_CASE(rejects_missing_aud) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->remove("aud"); }), "aud_missing");
}

BOOST_AUTO_TEST_CASE(rejects_missing_exp) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->remove("exp"); }), "exp_missing");
}

BOOST_AUTO_TEST_CASE(rejects_missing_jti) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->remove("jti"); }), "jti_missing");
}

BOOST_AUTO_TEST_CASE(rejects_non_string_jti) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("jti", 12345); }), "jti_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_aud_equal_to_the_fhir_base_url) {
  expectClientRefused(
      assertion("rs384-client", [](Json&, Json& p) { p->set("aud", std::string("https://fhir.example.org/r4")); }),
      "aud_mismatch");
}

BOOST_AUTO_TEST_CASE(rejects_expired_assertion) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("exp", now() - 120); }), "expired");
}

BOOST_AUTO_TEST_CASE(rejects_exp_more_than_300_seconds_ahead) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("exp", now() + 400); }),
                      "exp_too_far_ahead");
}

BOOST_AUTO_TEST_CASE(rejects_nbf_in_the_future) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("nbf", now() + 120); }), "not_yet_valid");
}

BOOST_AUTO_TEST_CASE(rejects_iat_in_the_future) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("iat", now() + 120); }), "iat_in_future");
}

BOOST_AUTO_TEST_CASE(rejects_non_numeric_exp) {
  expectClientRefused(assertion("rs384-client",
                                [](Json&, Json& p) { p->set("exp", std::to_string(now() + 200)); }),
                      "exp_not_numeric");
}

BOOST_AUTO_TEST_CASE(rejects_non_numeric_nbf) {
  expectClientRefused(assertion("rs384-client", [](Json&, Json& p) { p->set("nbf", "yesterday"); }),
                      "nbf_not_numeric");
}

BOOST_AUTO_TEST_CASE(rejects_unknown_crit_header) {
  expectClientRefused(assertion("rs384-client",
                                [](Json& h, Json&) {
                                  Poco::JSON::Array::Ptr crit = new Poco::JSON::Array;
                                  crit->add(std::string("urn:example:unknown"));
                                  h->set("crit", crit);
                                  h->set("urn:example:unknown", true);
                                }),
                      "crit_unsupported");
}

BOOST_AUTO_TEST_CASE(rejects_typ_other_than_jwt) {
  expectClientRefused(assertion("rs384-client", [](Json& h, Json&) { h->set("typ", "at+jwt"); }), "typ_invalid");
}

BOOST_AUTO_TEST_CASE(rejects_four_part_token) {
  expectClientRefused(assertion("rs384-client") + ".AAAA", "malformed_jwt");
}

BOOST_AUTO_TEST_CASE(rejects_trailing_dot) {
  expectClientRefused(assertion("rs384-client") + ".", "malformed_jwt");
}

BOOST_AUTO_TEST_CASE(rejects_padded_base64) {
  expectClientRefused(assertion("rs384-client") + "==", "malformed_jwt");
}

BOOST_AUTO_TEST_CASE(rejects_header_that_is_not_json) {
  const std::string jwt = assertion("rs384-client");
  expectClientRefused("bm90LWpzb24" + jwt.substr(jwt.find('.')), "malformed_header");
}

BOOST_AUTO_TEST_CASE(rejects_payload_that_is_not_an_object) {
  const std::string jwt = assertion("rs384-client");
  const std::size_t d1 = jwt.find('.');
  const std::size_t d2 = jwt.find('.', d1 + 1);
  expectClientRefused(jwt.substr(0, d1 + 1) + "WzEsMl0" + jwt.substr(d2), "malformed_payload");  // [1,2]
}

BOOST_AUTO_TEST_CASE(rejects_oversized_assertion) {
  const std::string jwt = assertion("rs384-client", [](Json&, Json& p) { p->set("padding", std::string(9000, 'x')); });
  expectClientRefused(jwt, "assertion_too_large");
}

BOOST_AUTO_TEST_CASE(rejects_jku_on_a_client_with_inline_keys) {
  expectClientRefused(assertion("rs384-client",
                                [](Json& h, Json&) { h->set("jku", std::string("https://attacker.example/jwks")); }),
                      "jku_not_registered");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(replay)

BOOST_AUTO_TEST_CASE(rejects_replay_of_the_same_assertion) {
  const std::string jwt = assertion("rs384-client");
  BOOST_TEST(token(jwt).status == 200);
  expectClientRefused(jwt, "jti_replayed");
}

BOOST_AUTO_TEST_CASE(rejects_reused_jti_in_a_new_assertion_of_the_same_issuer) {
  const std::string jti = randomJti();
  BOOST_TEST(token(assertion("rs384-client", [&](Json&, Json& p) { p->set("jti", jti); })).status == 200);
  expectClientRefused(assertion("rs384-client",
                                [&](Json&, Json& p) {
                                  p->set("jti", jti);
                                  p->set("exp", now() + 200);
                                }),
                      "jti_replayed");
}

BOOST_AUTO_TEST_CASE(accepts_same_jti_from_a_different_issuer) {
  const std::string jti = randomJti();
  BOOST_TEST(token(assertion("rs384-client", [&](Json&, Json& p) { p->set("jti", jti); })).status == 200);
  BOOST_TEST(token(assertion("es384-client", [&](Json&, Json& p) { p->set("jti", jti); })).status == 200);
}

BOOST_AUTO_TEST_CASE(admits_exactly_one_of_concurrent_requests_with_one_assertion) {
  const std::string jwt = assertion("es256-client");
  std::atomic<int> ok{0};
  std::atomic<int> replayed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 24; ++i) {
    threads.emplace_back([&] {
      const Response r = token(jwt);
      if (r.status == 200) {
        ++ok;
      } else if (r.status == 401) {
        ++replayed;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(ok.load() == 1);
  BOOST_TEST(replayed.load() == 23);
}

BOOST_AUTO_TEST_CASE(rejects_replay_after_a_restart) {
  Broker b;
  Json header = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  const std::string jwt = jose().sign("RS384", keyFile("rs384-client"), header, claims("rs384-client", b.tokenUrl()));
  BOOST_TEST(b.post("/token", tokenForm(jwt)).status == 200);
  BOOST_TEST(b.stop() == 0);
  b.start();
  const Response again = b.post("/token", tokenForm(jwt));
  BOOST_TEST(again.status == 401);
  BOOST_TEST(again.json()->getValue<std::string>("error") == "invalid_client");
  BOOST_TEST(b.log().find("reason=jti_replayed") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(request_refusals)

BOOST_AUTO_TEST_CASE(rejects_wrong_grant_type_with_exactly_unsupported_grant_type) {
  const std::string jwt = assertion("rs384-client");
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "authorization_code"},
                                                   {"client_assertion_type", kJwtBearer},
                                                   {"client_assertion", jwt},
                                                   {"scope", "system/*.rs"}}));
      },
      400, "unsupported_grant_type", "unsupported_grant_type");
  // A refused request spends nothing: the same assertion still works.
  BOOST_TEST(token(jwt).status == 200);
}

BOOST_AUTO_TEST_CASE(rejects_missing_grant_type) {
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"client_assertion_type", kJwtBearer},
                                                   {"client_assertion", assertion("rs384-client")},
                                                   {"scope", "system/*.rs"}}));
      },
      400, "invalid_request", "missing_grant_type");
}

BOOST_AUTO_TEST_CASE(rejects_wrong_client_assertion_type) {
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                   {"client_assertion_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"},
                                                   {"client_assertion", assertion("rs384-client")},
                                                   {"scope", "system/*.rs"}}));
      },
      400, "invalid_request", "wrong_assertion_type");
}

BOOST_AUTO_TEST_CASE(rejects_missing_client_assertion_type) {
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                   {"client_assertion", assertion("rs384-client")},
                                                   {"scope", "system/*.rs"}}));
      },
      400, "invalid_request", "missing_assertion_type");
}

BOOST_AUTO_TEST_CASE(rejects_missing_client_assertion) {
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                   {"client_assertion_type", kJwtBearer},
                                                   {"scope", "system/*.rs"}}));
      },
      400, "invalid_request", "missing_assertion");
}

BOOST_AUTO_TEST_CASE(rejects_repeated_parameters) {
  const std::string jwt = assertion("rs384-client");
  expectRefused([&] { return broker().post("/token", tokenForm(jwt) + "&scope=system%2F*.rs"); }, 400,
                "invalid_request", "repeated_parameter");
  expectRefused([&] { return broker().post("/token", tokenForm(jwt) + "&grant_type=client_credentials"); }, 400,
                "invalid_request", "repeated_parameter");
}

BOOST_AUTO_TEST_CASE(rejects_too_many_parameters) {
  std::vector<std::pair<std::string, std::string>> params{{"grant_type", "client_credentials"}};
  for (int i = 0; i < 20; ++i) {
    params.emplace_back("extra" + std::to_string(i), "x");
  }
  expectRefused([&] { return broker().post("/token", formEncode(params)); }, 400, "invalid_request",
                "too_many_parameters");
}

BOOST_AUTO_TEST_CASE(rejects_get_on_the_token_endpoint) {
  expectRefused([&] { return broker().get("/token?grant_type=client_credentials"); }, 405, "invalid_request",
                "method_not_allowed");
  BOOST_TEST(broker().get("/token").header("allow") == "POST");
}

BOOST_AUTO_TEST_CASE(rejects_wrong_content_type) {
  expectRefused([&] { return broker().post("/token", tokenForm(assertion("rs384-client")), "application/json"); },
                400, "invalid_request", "unsupported_media_type");
}

BOOST_AUTO_TEST_CASE(ignores_parameters_in_the_query_string) {
  const std::string jwt = assertion("rs384-client");
  const std::string query = tokenForm(jwt);
  expectRefused([&] { return broker().post("/token?" + query, ""); }, 400, "invalid_request", "missing_grant_type");
}

BOOST_AUTO_TEST_CASE(rejects_oversized_body_with_413) {
  const std::string body = tokenForm(assertion("rs384-client")) + "&pad=" + std::string(20000, 'x');
  const Response r = broker().post("/token", body);
  BOOST_TEST(r.status == 413);
  BOOST_TEST(r.json()->getValue<std::string>("error") == "invalid_request");
  BOOST_TEST(r.header("cache-control") == "no-store");
  // The server keeps serving.
  BOOST_TEST(token(assertion("rs384-client")).status == 200);
}

BOOST_AUTO_TEST_CASE(rejects_malformed_percent_encoding) {
  expectRefused([&] { return broker().post("/token", "grant_type=client%2Gcredentials"); }, 400, "invalid_request",
                "malformed_form");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(scopes)

namespace {
Json scoped(const std::string& request, const std::string& expected) {
  return expectIssued(assertion("scoped-client", {}, Signer{"RS384", "rs384-client", "rs384-client"}), request,
                      expected);
}
void scopeRefused(const std::string& request, const std::string& reason) {
  const std::string jwt = assertion("scoped-client", {}, Signer{"RS384", "rs384-client", "rs384-client"});
  expectRefused([&] { return token(jwt, request); }, 400, "invalid_scope", reason);
}
}  // namespace

BOOST_AUTO_TEST_CASE(grants_v2_scope_within_pre_authorization) { scoped("system/Observation.rs", "system/Observation.rs"); }

BOOST_AUTO_TEST_CASE(echoes_v1_syntax_when_v1_was_requested) {
  scoped("system/Observation.read", "system/Observation.read");
  scoped("system/Patient.read", "system/Patient.read");
}

BOOST_AUTO_TEST_CASE(narrows_a_wildcard_request_to_the_pre_authorized_resources) {
  scoped("system/*.rs",
         "system/Observation.rs system/Patient.rs system/Condition.rs?category=problem-list-item system/Encounter.rs");
}

BOOST_AUTO_TEST_CASE(refuses_escalation_beyond_pre_authorization) {
  scoped("system/Observation.cruds", "system/Observation.rs");
  scopeRefused("system/Medication.rs", "no_scope_granted");
}

BOOST_AUTO_TEST_CASE(grants_granular_scopes_only_within_their_constraint) {
  scoped("system/Condition.rs", "system/Condition.rs?category=problem-list-item");
  scoped("system/Encounter.rs?date=ge2020", "system/Encounter.rs?date=ge2020");
}

BOOST_AUTO_TEST_CASE(grants_valid_scopes_of_a_mixed_request_and_drops_the_rest) {
  scoped("system/Observation.rs patient/*.rs launch openid garbage system/Observation.sr",
         "system/Observation.rs");
}

BOOST_AUTO_TEST_CASE(refuses_non_system_scopes) { scopeRefused("patient/Observation.rs user/*.read", "no_scope_granted"); }

BOOST_AUTO_TEST_CASE(refuses_malformed_scopes) { scopeRefused("system/Observation.sr system/observation.rs", "no_scope_granted"); }

BOOST_AUTO_TEST_CASE(refuses_garbage_scope) { scopeRefused("%%%% ???", "no_scope_granted"); }

BOOST_AUTO_TEST_CASE(refuses_missing_scope) {
  const std::string jwt = assertion("rs384-client");
  expectRefused(
      [&] {
        return broker().post("/token", formEncode({{"grant_type", "client_credentials"},
                                                   {"client_assertion_type", kJwtBearer},
                                                   {"client_assertion", jwt}}));
      },
      400, "invalid_scope", "scope_missing");
}

BOOST_AUTO_TEST_CASE(invalid_scope_does_not_spend_the_assertion) {
  const std::string jwt = assertion("scoped-client", {}, Signer{"RS384", "rs384-client", "rs384-client"});
  BOOST_TEST(token(jwt, "system/Medication.rs").status == 400);
  BOOST_TEST(token(jwt, "system/Observation.rs").status == 200);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(discovery_and_keys)

BOOST_AUTO_TEST_CASE(serves_smart_configuration_with_absolute_urls_whatever_accept_says) {
  const Response r = broker().request("GET", "/.well-known/smart-configuration", "", "", {{"Accept", "text/html"}});
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.header("content-type").starts_with("application/json"));
  BOOST_TEST(r.header("access-control-allow-origin") == "*");
  const Json doc = r.json();
  BOOST_TEST(doc->getValue<std::string>("token_endpoint") == broker().tokenUrl());
  BOOST_TEST(doc->getValue<std::string>("jwks_uri") == broker().baseUrl() + "/jwks.json");
  const auto list = [&](const std::string& name) {
    std::vector<std::string> out;
    const auto array = doc->getArray(name);
    for (std::size_t i = 0; array && i < array->size(); ++i) {
      out.push_back(array->getElement<std::string>(static_cast<unsigned>(i)));
    }
    return out;
  };
  BOOST_TEST(list("grant_types_supported") == std::vector<std::string>{"client_credentials"});
  BOOST_TEST(list("token_endpoint_auth_methods_supported") == std::vector<std::string>{"private_key_jwt"});
  BOOST_TEST(list("token_endpoint_auth_signing_alg_values_supported") ==
             (std::vector<std::string>{"RS384", "ES384", "RS256", "ES256"}));
  BOOST_TEST(list("code_challenge_methods_supported") == std::vector<std::string>{"S256"});
  const auto caps = list("capabilities");
  BOOST_TEST(std::set<std::string>(caps.begin(), caps.end()) ==
             (std::set<std::string>{"client-confidential-asymmetric", "permission-v1", "permission-v2"}));
  BOOST_TEST(!list("scopes_supported").empty());
  // issuer only with sso-openid-connect; no endpoints that are not implemented.
  BOOST_TEST(!doc->has("issuer"));
  BOOST_TEST(!doc->has("authorization_endpoint"));
}

BOOST_AUTO_TEST_CASE(serves_rfc8414_metadata_with_issuer) {
  const Response r = broker().get("/.well-known/oauth-authorization-server");
  BOOST_TEST(r.status == 200);
  const Json doc = r.json();
  BOOST_TEST(doc->getValue<std::string>("issuer") == broker().baseUrl());
  BOOST_TEST(doc->getValue<std::string>("token_endpoint") == broker().tokenUrl());
}

BOOST_AUTO_TEST_CASE(jwks_has_public_members_only_and_a_cache_lifetime) {
  const Response r = broker().get("/jwks.json");
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.header("cache-control").find("max-age=") != std::string::npos);
  BOOST_TEST(r.header("access-control-allow-origin") == "*");
  const Json doc = r.json();
  const auto keys = doc->getArray("keys");
  BOOST_TEST_REQUIRE(keys->size() >= 1U);
  for (std::size_t i = 0; i < keys->size(); ++i) {
    const auto key = keys->getObject(static_cast<unsigned>(i));
    for (const char* member : {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}) {
      BOOST_TEST(!key->has(member), member);
    }
    // kid = RFC 7638 thumbprint, computed independently by jose.
    const std::string thumb =
        jose().call(object({{"op", "thumbprint"}, {"jwk", key}}))->getValue<std::string>("thumbprint");
    BOOST_TEST(key->getValue<std::string>("kid") == thumb);
  }
}

BOOST_AUTO_TEST_CASE(answers_health_checks) {
  const Response r = broker().get("/healthz");
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.json()->getValue<std::string>("status") == "ok");
}

BOOST_AUTO_TEST_CASE(answers_unknown_paths_with_404) { BOOST_TEST(broker().get("/nope").status == 404); }

BOOST_AUTO_TEST_CASE(refuses_post_on_discovery) {
  BOOST_TEST(broker().post("/.well-known/smart-configuration", "x=1").status == 405);
}

BOOST_AUTO_TEST_SUITE_END()
