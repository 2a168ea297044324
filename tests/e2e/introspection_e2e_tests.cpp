// End-to-end: introspection (RFC 7662), revocation (RFC 7009) and the operator's system commands.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace e2e;

namespace {

const std::string kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Fixture {
  Broker b;

  std::string assertion(const std::string& clientId, const std::string& aud) {
    const bool rs = clientId == "resource-server";
    const std::string key = rs ? "other-client" : "rs384-client";
    Json header = object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}});
    return jose().sign("RS384", keyFile(key), header, claims(clientId, aud));
  }

  std::string accessToken(const std::string& clientId = "rs384-client", const std::string& scope = "system/*.rs") {
    const Response r = b.post("/token", tokenForm(assertion(clientId, b.tokenUrl()), scope));
    BOOST_TEST_REQUIRE(r.status == 200, r.body);
    return r.json()->getValue<std::string>("access_token");
  }

  /// Introspects as resource-server with private_key_jwt.
  Response introspect(const std::string& token, const std::string& hint = {}) {
    std::vector<std::pair<std::string, std::string>> form{
        {"token", token},
        {"client_assertion_type", kJwtBearer},
        {"client_assertion", assertion("resource-server", b.baseUrl() + "/introspect")}};
    if (!hint.empty()) {
      form.emplace_back("token_type_hint", hint);
    }
    return b.post("/introspect", formEncode(form));
  }

  Response revoke(const std::string& token, const std::string& clientId = "rs384-client") {
    return b.post("/revoke", formEncode({{"token", token},
                                         {"client_assertion_type", kJwtBearer},
                                         {"client_assertion", assertion(clientId, b.baseUrl() + "/revoke")}}));
  }

  /// `smart-broker systems ARGS --config <the broker's config>`: the exit status, and its output in `output`.
  int admin(const std::string& args, std::string* output = nullptr) {
    const Run run = runBroker("systems " + args + " --config " + b.configPath());
    if (output != nullptr) {
      *output = run.output;
    }
    return run.status;
  }

  bool active(const std::string& token) {
    const Response r = introspect(token);
    BOOST_TEST_REQUIRE(r.status == 200, r.body);
    return r.json()->getValue<bool>("active");
  }

  /// Polls for up to 3 s (the mirror follows the store every second).
  bool becomesInactive(const std::string& token) {
    for (int i = 0; i < 30; ++i) {
      if (!active(token)) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
};

void expectInactiveExactly(const Response& r) {
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.body == "{\"active\":false}");
  BOOST_TEST(r.header("cache-control") == "no-store");
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(introspection, Fixture)

BOOST_AUTO_TEST_CASE(reports_a_live_token_to_a_private_key_jwt_caller) {
  const std::string token = accessToken();
  const Response r = introspect(token);
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  BOOST_TEST(r.header("cache-control") == "no-store");
  BOOST_TEST(r.header("pragma") == "no-cache");
  const Json body = r.json();
  BOOST_TEST(body->getValue<bool>("active"));
  BOOST_TEST(body->getValue<std::string>("client_id") == "rs384-client");
  BOOST_TEST(body->getValue<std::string>("sub") == "rs384-client");
  BOOST_TEST(body->getValue<std::string>("scope") == "system/*.rs");
  BOOST_TEST(body->getValue<std::string>("iss") == b.baseUrl());
  BOOST_TEST(body->getValue<std::string>("aud") == "https://fhir.example.org/r4");
  BOOST_TEST(body->getValue<std::string>("token_type") == "bearer");
  BOOST_TEST(body->getValue<std::int64_t>("exp") - body->getValue<std::int64_t>("iat") == 300);
  BOOST_TEST(!body->getValue<std::string>("jti").empty());
}

BOOST_AUTO_TEST_CASE(reports_a_live_token_to_a_bearer_caller_with_the_permission) {
  const std::string callerToken = accessToken("resource-server", "smart-broker:introspect");
  const std::string token = accessToken();
  const Response r = b.request("POST", "/introspect", formEncode({{"token", token}}),
                               "application/x-www-form-urlencoded", {{"Authorization", "Bearer " + callerToken}});
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  BOOST_TEST(r.json()->getValue<bool>("active"));
}

BOOST_AUTO_TEST_CASE(ignores_a_wrong_token_type_hint) {
  const Response r = introspect(accessToken(), "refresh_token");
  BOOST_TEST_REQUIRE(r.status == 200);
  BOOST_TEST(r.json()->getValue<bool>("active"));
}

BOOST_AUTO_TEST_CASE(answers_exactly_inactive_for_garbage) {
  expectInactiveExactly(introspect("not-a-token"));
  expectInactiveExactly(introspect("a.b.c"));
}

BOOST_AUTO_TEST_CASE(answers_inactive_for_a_token_of_another_issuer) {
  // Signed by a key that is not ours (jose), with our issuer and a plausible kid: still unknown key.
  Json header = object({{"alg", "ES256"}, {"typ", "at+jwt"}, {"kid", "es256-client"}});
  Json payload = object({{"iss", b.baseUrl()},
                         {"sub", "rs384-client"},
                         {"client_id", "rs384-client"},
                         {"aud", "https://fhir.example.org/r4"},
                         {"iat", now()},
                         {"exp", now() + 300},
                         {"jti", randomJti()},
                         {"scope", "system/*.rs"}});
  expectInactiveExactly(introspect(jose().sign("ES256", keyFile("es256-client"), header, payload)));
  // A token from another broker (its own keys and issuer).
  Broker other;
  Json h2 = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  const Response r =
      other.post("/token", tokenForm(jose().sign("RS384", keyFile("rs384-client"), h2, claims("rs384-client", other.tokenUrl()))));
  BOOST_TEST_REQUIRE(r.status == 200);
  expectInactiveExactly(introspect(r.json()->getValue<std::string>("access_token")));
}

BOOST_AUTO_TEST_CASE(refuses_an_unauthenticated_caller_with_401) {
  const Response r = b.post("/introspect", formEncode({{"token", accessToken()}}));
  BOOST_TEST(r.status == 401);
  BOOST_TEST(r.header("www-authenticate").starts_with("Bearer"));
  const Response garbage = b.request("POST", "/introspect", formEncode({{"token", "x"}}),
                                     "application/x-www-form-urlencoded", {{"Authorization", "Bearer garbage"}});
  BOOST_TEST(garbage.status == 401);
  BOOST_TEST(garbage.header("www-authenticate").find("invalid_token") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(refuses_a_caller_without_the_permission_with_403) {
  const Response viaAssertion =
      b.post("/introspect", formEncode({{"token", accessToken()},
                                        {"client_assertion_type", kJwtBearer},
                                        {"client_assertion", assertion("rs384-client", b.baseUrl() + "/introspect")}}));
  BOOST_TEST(viaAssertion.status == 403);
  const Response viaBearer = b.request("POST", "/introspect", formEncode({{"token", accessToken()}}),
                                       "application/x-www-form-urlencoded",
                                       {{"Authorization", "Bearer " + accessToken()}});
  BOOST_TEST(viaBearer.status == 403);
  BOOST_TEST(viaBearer.header("www-authenticate").find("insufficient_scope") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(refuses_a_replayed_caller_assertion) {
  const std::string a = assertion("resource-server", b.baseUrl() + "/introspect");
  const auto send = [&] {
    return b.post("/introspect",
                  formEncode({{"token", "x"}, {"client_assertion_type", kJwtBearer}, {"client_assertion", a}}));
  };
  BOOST_TEST(send().status == 200);
  BOOST_TEST(send().status == 401);
}

BOOST_AUTO_TEST_CASE(grants_the_permission_only_when_pre_authorized) {
  const Response r = b.post("/token", tokenForm(assertion("rs384-client", b.tokenUrl()), "smart-broker:introspect"));
  BOOST_TEST(r.status == 400);
  BOOST_TEST(r.json()->getValue<std::string>("error") == "invalid_scope");
}

BOOST_AUTO_TEST_CASE(advertises_the_endpoints) {
  const Json doc = b.get("/.well-known/smart-configuration").json();
  BOOST_TEST(doc->getValue<std::string>("introspection_endpoint") == b.baseUrl() + "/introspect");
  BOOST_TEST(doc->getValue<std::string>("revocation_endpoint") == b.baseUrl() + "/revoke");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(answers_inactive_for_an_expired_token) {
  Broker b(Broker::Options{"  token_lifetime: 1\n", {}, {}});
  Json header = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  const Response r =
      b.post("/token", tokenForm(jose().sign("RS384", keyFile("rs384-client"), header, claims("rs384-client", b.tokenUrl()))));
  BOOST_TEST_REQUIRE(r.status == 200);
  const std::string token = r.json()->getValue<std::string>("access_token");
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  Json h2 = object({{"alg", "RS384"}, {"kid", "other-client"}, {"typ", "JWT"}});
  const std::string caller =
      jose().sign("RS384", keyFile("other-client"), h2, claims("resource-server", b.baseUrl() + "/introspect"));
  const Response i = b.post(
      "/introspect", formEncode({{"token", token}, {"client_assertion_type", kJwtBearer}, {"client_assertion", caller}}));
  expectInactiveExactly(i);
}

BOOST_FIXTURE_TEST_SUITE(revocation, Fixture)

BOOST_AUTO_TEST_CASE(revokes_its_own_token_at_once) {
  const std::string token = accessToken();
  BOOST_TEST(active(token));
  const Response r = revoke(token);
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.header("cache-control") == "no-store");
  expectInactiveExactly(introspect(token));
}

BOOST_AUTO_TEST_CASE(answers_200_for_garbage_and_for_a_second_revocation) {
  const std::string token = accessToken();
  BOOST_TEST(revoke(token).status == 200);
  BOOST_TEST(revoke(token).status == 200);
  BOOST_TEST(revoke("garbage").status == 200);
}

BOOST_AUTO_TEST_CASE(refuses_to_revoke_another_systems_token) {
  const std::string token = accessToken("rs384-client");
  const Response r = b.post("/revoke", formEncode({{"token", token},
                                                   {"client_assertion_type", kJwtBearer},
                                                   {"client_assertion", assertion("resource-server", b.baseUrl() + "/revoke")}}));
  BOOST_TEST(r.status == 400);
  BOOST_TEST(r.json()->getValue<std::string>("error") == "unauthorized_client");
  BOOST_TEST(active(token));
}

BOOST_AUTO_TEST_CASE(refuses_an_unauthenticated_revocation) {
  const Response r = b.post("/revoke", formEncode({{"token", accessToken()}}));
  BOOST_TEST(r.status == 401);
}

BOOST_AUTO_TEST_CASE(keeps_revocations_across_a_restart) {
  const std::string token = accessToken();
  BOOST_TEST(revoke(token).status == 200);
  BOOST_TEST(b.stop() == 0);
  b.start();
  expectInactiveExactly(introspect(token));
}

BOOST_AUTO_TEST_CASE(never_reports_a_revoked_token_active_under_concurrent_load) {
  std::vector<std::string> tokens;
  for (int i = 0; i < 20; ++i) {
    tokens.push_back(accessToken());
  }
  using Clock = std::chrono::steady_clock;
  std::vector<std::atomic<Clock::rep>> revokedAt(tokens.size());
  for (auto& t : revokedAt) {
    t = Clock::time_point::max().time_since_epoch().count();
  }
  std::atomic<bool> done{false};
  std::atomic<int> violations{0};
  std::atomic<int> checks{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&, r] {
      for (std::size_t i = static_cast<std::size_t>(r); !done; i = (i + 1) % tokens.size()) {
        const auto started = Clock::now().time_since_epoch().count();
        const Response resp = introspect(tokens[i]);
        ++checks;
        if (resp.status == 200 && resp.body != "{\"active\":false}" && started > revokedAt[i].load()) {
          ++violations;
        }
      }
    });
  }
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    BOOST_TEST(revoke(tokens[i]).status == 200);
    revokedAt[i] = Clock::now().time_since_epoch().count();
  }
  done = true;
  for (auto& t : readers) {
    t.join();
  }
  BOOST_TEST(violations.load() == 0);
  BOOST_TEST(checks.load() > 20);
  for (const std::string& t : tokens) {
    BOOST_TEST(!active(t));
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(system_admin, Fixture)

BOOST_AUTO_TEST_CASE(suspending_a_system_refuses_it_and_deactivates_its_tokens) {
  const std::string token = accessToken();
  BOOST_TEST(admin("suspend rs384-client") == 0);
  BOOST_TEST(becomesInactive(token));
  const Response refused = b.post("/token", tokenForm(assertion("rs384-client", b.tokenUrl())));
  BOOST_TEST(refused.status == 401);
  BOOST_TEST(b.log().find("reason=client_suspended") != std::string::npos);
  BOOST_TEST(admin("resume rs384-client") == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  BOOST_TEST(active(token));
  BOOST_TEST(b.post("/token", tokenForm(assertion("rs384-client", b.tokenUrl()))).status == 200);
}

BOOST_AUTO_TEST_CASE(revoking_all_tokens_of_a_system_spares_later_ones) {
  const std::string before = accessToken();
  BOOST_TEST(admin("revoke-tokens rs384-client") == 0);
  BOOST_TEST(becomesInactive(before));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  BOOST_TEST(active(accessToken()));
}

BOOST_AUTO_TEST_CASE(lists_recent_tokens_without_the_tokens) {
  const std::string token = accessToken();
  const Json claimsOf = jose().call(object({{"op", "decode"}, {"token", token}}))->getObject("payload");
  std::string out;
  BOOST_TEST(admin("tokens rs384-client", &out) == 0);
  BOOST_TEST(out.find(claimsOf->getValue<std::string>("jti")) != std::string::npos);
  BOOST_TEST(out.find("system/*.rs") != std::string::npos);
  BOOST_TEST(out.find(token.substr(token.rfind('.') + 1)) == std::string::npos);
}

BOOST_AUTO_TEST_CASE(refuses_an_unknown_system) {
  std::string out;
  BOOST_TEST(admin("suspend nobody", &out) == 1);
  BOOST_TEST(out.find("no system nobody") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(introspection_scope_name)

// server.introspection_scope renames the permission: the configured name is granted and honoured, the default
// name is then an ordinary (unparseable, never granted) scope.
BOOST_AUTO_TEST_CASE(honours_the_configured_introspection_scope_and_only_it) {
  Broker::Options o;
  o.server_extra = "  introspection_scope: acme:introspect\n";
  o.systems =
      "\n  - client_id: rs384-client\n    algorithms: [RS384]\n    scopes: [system/*.rs]\n"
      "    jwks_file: @DATA@/keys/rs384-client.jwks.json\n"
      "  - client_id: resource-server\n    algorithms: [RS384]\n    scopes: [acme:introspect]\n"
      "    jwks_file: @DATA@/keys/other-client.jwks.json\n";
  Broker b(o);
  const auto sign = [&](const std::string& clientId, const std::string& key) {
    Json header = object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}});
    return jose().sign("RS384", keyFile(key), header, claims(clientId, b.tokenUrl()));
  };
  const Response oldName = b.post("/token", tokenForm(sign("resource-server", "other-client"), "smart-broker:introspect"));
  BOOST_TEST(oldName.status == 400, oldName.body);
  BOOST_TEST(oldName.json()->getValue<std::string>("error") == "invalid_scope");
  const Response notPreauthorized = b.post("/token", tokenForm(sign("rs384-client", "rs384-client"), "acme:introspect"));
  BOOST_TEST(notPreauthorized.status == 400, notPreauthorized.body);

  const Response caller = b.post("/token", tokenForm(sign("resource-server", "other-client"), "acme:introspect"));
  BOOST_TEST_REQUIRE(caller.status == 200, caller.body);
  BOOST_TEST(caller.json()->getValue<std::string>("scope") == "acme:introspect");
  const Response subject = b.post("/token", tokenForm(sign("rs384-client", "rs384-client"), "system/*.rs"));
  BOOST_TEST_REQUIRE(subject.status == 200, subject.body);
  const Response r = b.request("POST", "/introspect",
                               formEncode({{"token", subject.json()->getValue<std::string>("access_token")}}),
                               "application/x-www-form-urlencoded",
                               {{"Authorization", "Bearer " + caller.json()->getValue<std::string>("access_token")}});
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  BOOST_TEST(r.json()->getValue<bool>("active"));
}

// A permission withdrawn from a registration by a reload stops working at once, also for the bearer tokens that
// carry it: the token's scope is necessary, not sufficient.
BOOST_AUTO_TEST_CASE(a_permission_withdrawn_by_a_reload_stops_live_bearer_tokens_that_carry_it) {
  Broker b;
  const auto sign = [&](const std::string& clientId, const std::string& key) {
    Json header = object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}});
    return jose().sign("RS384", keyFile(key), header, claims(clientId, b.tokenUrl()));
  };
  const Response caller = b.post("/token", tokenForm(sign("resource-server", "other-client"), "smart-broker:introspect"));
  BOOST_TEST_REQUIRE(caller.status == 200, caller.body);
  const Response subject = b.post("/token", tokenForm(sign("rs384-client", "rs384-client"), "system/*.rs"));
  BOOST_TEST_REQUIRE(subject.status == 200, subject.body);
  const auto introspect = [&] {
    return b.request("POST", "/introspect",
                     formEncode({{"token", subject.json()->getValue<std::string>("access_token")}}),
                     "application/x-www-form-urlencoded",
                     {{"Authorization", "Bearer " + caller.json()->getValue<std::string>("access_token")}});
  };
  BOOST_TEST_REQUIRE(introspect().status == 200);

  std::string text;
  {
    std::ifstream in(b.configPath());
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const std::string granted = "    scopes: [smart-broker:introspect]\n";
  BOOST_TEST_REQUIRE(text.find(granted) != std::string::npos);
  text.replace(text.find(granted), granted.size(), "    scopes: [system/Patient.rs]\n");
  std::ofstream(b.configPath()) << text;
  b.signal(SIGHUP);
  BOOST_TEST_REQUIRE(b.waitForLog("event=reloaded"));
  const Response refused = introspect();
  BOOST_TEST(refused.status == 403, refused.body);
  BOOST_TEST(refused.json()->getValue<std::string>("error") == "insufficient_scope");
}

BOOST_AUTO_TEST_SUITE_END()
