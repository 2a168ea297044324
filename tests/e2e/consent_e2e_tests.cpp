// End-to-end: consent-aware issuance and introspection, the local consent endpoint, a remote FHIR consent source
// and withdrawal notifications, against the real binary and a node FHIR server / consent platform (fhir_server.mjs).
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>

#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace e2e;
using namespace std::chrono_literals;

namespace {

const std::string kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// node tests/e2e/fhir_server.mjs: the FHIR server holding Consents and the consent platform's receiver.
class FhirServer {
 public:
  FhirServer() : node_("fhir_server.mjs") {
    Poco::JSON::Parser parser;
    port_ = static_cast<std::uint16_t>(parser.parse(node_.readLine()).extract<Json>()->getValue<int>("port"));
  }
  FhirServer(const FhirServer&) = delete;
  FhirServer& operator=(const FhirServer&) = delete;

  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }

  Json call(const std::string& method, const std::string& path, const std::string& body = {}) const {
    Poco::Net::HTTPClientSession session("127.0.0.1", port_);
    Poco::Net::HTTPRequest request(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setContentType("application/json");
    request.setContentLength64(static_cast<Poco::Int64>(body.size()));
    session.sendRequest(request) << body;
    Poco::Net::HTTPResponse response;
    std::ostringstream text;
    Poco::StreamCopier::copyStream(session.receiveResponse(response), text);
    if (response.getStatus() != Poco::Net::HTTPResponse::HTTP_OK) {
      throw std::runtime_error("fhir_server " + path + ": " + text.str());
    }
    Poco::JSON::Parser parser;
    return parser.parse(text.str()).extract<Json>();
  }
  void putConsent(const std::string& resource) const { call("POST", "/_admin/consent", resource); }
  void setStatus(const std::string& id, const std::string& status) const {
    call("POST", "/_admin/status", R"({"id":")" + id + R"(","status":")" + status + R"("})");
  }
  void receiver(const std::string& mode) const { call("POST", "/_admin/receiver", R"({"mode":")" + mode + R"("})"); }
  Poco::JSON::Array::Ptr received() const { return call("GET", "/_admin/notifications")->getArray("received"); }
  int attempts() const { return call("GET", "/_admin/notifications")->getValue<int>("attempts"); }

 private:
  NodeProcess node_;  ///< the server ends when its stdin closes
  std::uint16_t port_ = 0;
};

/// A real FHIR R4 Consent naming `grantee` as information recipient (IRCP), by client-id identifier.
std::string consentResource(const std::string& id, const std::string& status, const std::string& grantee,
                            const std::vector<std::string>& permittedScopes = {}) {
  std::string extensions;
  for (const std::string& scope : permittedScopes) {
    extensions += extensions.empty() ? "" : ",";
    extensions += R"({"url":"urn:smart-broker:fhir:permitted-scope","valueString":")" + scope + R"("})";
  }
  return R"({"resourceType":"Consent","id":")" + id + R"(","meta":{"versionId":"1"},)" +
         (extensions.empty() ? "" : R"("extension":[)" + extensions + "],") + R"("status":")" + status + R"(",)" +
         R"("scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},)"
         R"("category":[{"coding":[{"system":"http://loinc.org","code":"59284-0","display":"Patient Consent"}]}],)"
         R"("patient":{"reference":"Patient/example"},"dateTime":"2025-06-01T10:00:00Z",)"
         R"("performer":[{"reference":"Patient/example"}],)"
         R"("policyRule":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"OPTIN"}]},)"
         R"("provision":{"type":"permit","period":{"start":"2025-01-01"},"actor":[{"role":{"coding":[)"
         R"({"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},)"
         R"("reference":{"identifier":{"system":"urn:smart-broker:client-id","value":")" +
         grantee + R"("},"display":"Backend system"}}]}})";
}

std::string systemsYaml(bool withRule) {
  std::string out = R"(
  - client_id: exporter
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
    consent: {required: true, references: [c-e2e]}
  - client_id: free-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
  - client_id: consent-platform
    algorithms: [RS384]
    scopes: [smart-broker:consent-admin]
    jwks_file: @DATA@/keys/other-client.jwks.json
  - client_id: resource-server
    algorithms: [RS384]
    scopes: [smart-broker:introspect]
    jwks_file: @DATA@/keys/other-client.jwks.json
)";
  if (withRule) {
    out += R"(  - client_id: rule-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
    consent: {required: true, rule: grantee}
)";
  }
  return out;
}

/// consent: settings for the harness (top-level YAML after the server lines).
std::string consentYaml(const std::string& lines) { return "consent:\n  allow_http_loopback: true\n" + lines; }

struct Client {
  explicit Client(Broker& broker) : b(broker) {}
  Broker& b;

  std::string assertion(const std::string& clientId, const std::string& aud) const {
    const bool admin = clientId == "consent-platform" || clientId == "resource-server";
    const std::string key = admin ? "other-client" : "rs384-client";
    return jose().sign("RS384", keyFile(key), object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}}),
                       claims(clientId, aud));
  }
  Response tokenRequest(const std::string& clientId, const std::string& scope = "system/*.rs") const {
    return b.post("/token", tokenForm(assertion(clientId, b.tokenUrl()), scope));
  }
  std::string accessToken(const std::string& clientId, const std::string& scope = "system/*.rs") const {
    const Response r = tokenRequest(clientId, scope);
    BOOST_TEST_REQUIRE(r.status == 200, r.body);
    return r.json()->getValue<std::string>("access_token");
  }
  Response introspect(const std::string& token) const {
    const std::string proof = assertion("resource-server", b.baseUrl() + "/introspect");
    return b.post("/introspect",
                  formEncode({{"token", token}, {"client_assertion_type", kJwtBearer}, {"client_assertion", proof}}));
  }
  bool active(const std::string& token) const {
    const Response r = introspect(token);
    BOOST_TEST_REQUIRE(r.status == 200, r.body);
    return r.json()->getValue<bool>("active");
  }
  /// As the consent platform, with a bearer token carrying smart-broker:consent-admin.
  Response consentCall(const std::string& method, const std::string& id, const std::string& body = {}) const {
    const std::string bearer = accessToken("consent-platform", "smart-broker:consent-admin");
    return b.request(method, "/consents/" + id, body, body.empty() ? "" : "application/fhir+json",
                     {{"Authorization", "Bearer " + bearer}});
  }
  std::string jtiOf(const std::string& token) const {
    return jose().call(object({{"op", "decode"}, {"token", token}}))->getObject("payload")->getValue<std::string>("jti");
  }
};

std::vector<std::string> strings(const Poco::JSON::Array::Ptr& array) {
  std::vector<std::string> out;
  for (std::size_t i = 0; array && i < array->size(); ++i) {
    out.push_back(array->getElement<std::string>(static_cast<unsigned>(i)));
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds within) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) {
      return true;
    }
    std::this_thread::sleep_for(100ms);
  }
  return condition();
}

/// Options by name: the harness's Options gains members over time.
Broker::Options options(const std::string& consent, bool withRule) {
  Broker::Options o;
  o.server_extra = consent;
  o.systems = systemsYaml(withRule);
  return o;
}

/// A broker with the local consent source.
struct LocalFixture {
  Broker b{options(consentYaml("  cache_seconds: 1\n  max_resource_bytes: 4096\n"), true)};
  Client c{b};
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(consent_local, LocalFixture)

BOOST_AUTO_TEST_CASE(issuance_is_refused_with_unauthorized_client_without_an_active_consent) {
  const Response refused = c.tokenRequest("exporter");
  BOOST_TEST(refused.status == 400);
  BOOST_TEST(refused.body ==
             R"({"error":"unauthorized_client","error_description":"No active consent authorizes this client"})");
  BOOST_TEST(refused.header("cache-control") == "no-store");
  BOOST_TEST(b.waitForLog("reason=consent_required"));
  // A system whose registration requires no consent is unaffected.
  BOOST_TEST(c.tokenRequest("free-client").status == 200);
  // A consent that names another system, or is not active, does not help.
  BOOST_TEST(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "free-client")).status == 201);
  BOOST_TEST(c.tokenRequest("exporter").status == 400);
  BOOST_TEST(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "proposed", "exporter")).status == 200);
  BOOST_TEST(c.tokenRequest("exporter").status == 400);
}

BOOST_AUTO_TEST_CASE(an_active_consent_issues_a_token_that_carries_and_introspects_its_consent) {
  const Response put = c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter"));
  BOOST_TEST_REQUIRE(put.status == 201, put.body);
  BOOST_TEST(put.body == R"({"id":"c-e2e","status":"active","active":true,"revoked_token_ids":[]})");
  const std::string token = c.accessToken("exporter");
  const Json payload = jose().call(object({{"op", "decode"}, {"token", token}}))->getObject("payload");
  BOOST_TEST(strings(payload->getArray("consent")) == std::vector<std::string>{"c-e2e"}, boost::test_tools::per_element());
  const Response r = c.introspect(token);
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  BOOST_TEST(r.json()->getValue<bool>("active"));
  BOOST_TEST(strings(r.json()->getArray("consent")) == std::vector<std::string>{"c-e2e"},
             boost::test_tools::per_element());
  // A token of a system without consent requirements has no consent claim.
  BOOST_TEST(!c.introspect(c.accessToken("free-client")).json()->has("consent"));
}

BOOST_AUTO_TEST_CASE(scopes_are_limited_to_what_the_consent_permits) {
  BOOST_TEST_REQUIRE(
      c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter", {"system/Observation.rs"})).status ==
      201);
  const Response wide = c.tokenRequest("exporter", "system/*.rs");
  BOOST_TEST_REQUIRE(wide.status == 200, wide.body);
  BOOST_TEST(wide.json()->getValue<std::string>("scope") == "system/Observation.rs");
  const Response outside = c.tokenRequest("exporter", "system/Patient.rs");
  BOOST_TEST(outside.status == 400);
  BOOST_TEST(outside.body ==
             R"({"error":"invalid_scope","error_description":"The active consent permits none of the requested scopes"})");
}

BOOST_AUTO_TEST_CASE(delete_revokes_every_live_linked_token_within_the_same_round_trip) {
  BOOST_TEST_REQUIRE(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter")).status == 201);
  const std::string first = c.accessToken("exporter");
  const std::string second = c.accessToken("exporter");
  const std::string unrelated = c.accessToken("free-client");
  BOOST_TEST_REQUIRE(c.active(first));

  const Response deleted = c.consentCall("DELETE", "c-e2e");
  BOOST_TEST_REQUIRE(deleted.status == 200, deleted.body);
  BOOST_TEST(strings(deleted.json()->getArray("revoked_token_ids")) ==
                 (std::vector<std::string>{std::min(c.jtiOf(first), c.jtiOf(second)),
                                           std::max(c.jtiOf(first), c.jtiOf(second))}),
             boost::test_tools::per_element());
  // The very next request sees it: no waiting for the once-a-second mirror.
  const Response r = c.introspect(first);
  BOOST_TEST(r.body == R"({"active":false})");
  BOOST_TEST(!c.active(second));
  BOOST_TEST(c.active(unrelated));
  BOOST_TEST(c.tokenRequest("exporter").status == 400);
  BOOST_TEST(c.consentCall("DELETE", "c-e2e").status == 404);
}

BOOST_AUTO_TEST_CASE(a_status_change_to_inactive_revokes_live_tokens) {
  BOOST_TEST_REQUIRE(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter")).status == 201);
  const std::string token = c.accessToken("exporter");
  const Response put = c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "inactive", "exporter"));
  BOOST_TEST_REQUIRE(put.status == 200, put.body);
  BOOST_TEST(put.json()->getValue<bool>("active") == false);
  BOOST_TEST(strings(put.json()->getArray("revoked_token_ids")) == std::vector<std::string>{c.jtiOf(token)},
             boost::test_tools::per_element());
  BOOST_TEST(!c.active(token));
}

BOOST_AUTO_TEST_CASE(the_grantee_rule_accepts_any_active_consent_naming_the_system) {
  BOOST_TEST(c.tokenRequest("rule-client").status == 400);
  BOOST_TEST_REQUIRE(c.consentCall("PUT", "c-rule", consentResource("c-rule", "active", "rule-client")).status == 201);
  const std::string token = c.accessToken("rule-client");
  BOOST_TEST(strings(c.introspect(token).json()->getArray("consent")) == std::vector<std::string>{"c-rule"},
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(the_consent_endpoint_requires_authentication_and_the_consent_admin_permission) {
  const std::string resource = consentResource("c-e2e", "active", "exporter");
  const Response anonymous = b.request("PUT", "/consents/c-e2e", resource, "application/fhir+json");
  BOOST_TEST(anonymous.status == 401);
  BOOST_TEST(anonymous.header("www-authenticate") == "Bearer realm=\"smart-broker\"");

  const std::string noPermission = c.accessToken("free-client");
  const Response forbidden = b.request("PUT", "/consents/c-e2e", resource, "application/fhir+json",
                                       {{"Authorization", "Bearer " + noPermission}});
  BOOST_TEST(forbidden.status == 403);
  BOOST_TEST(forbidden.json()->getValue<std::string>("error") == "insufficient_scope");

  // private_key_jwt: the assertion travels in Authorization: Client-Assertion, aud = {base}/consents.
  const std::string assertion = c.assertion("consent-platform", b.baseUrl() + "/consents");
  const Response viaAssertion = b.request("PUT", "/consents/c-e2e", resource, "application/fhir+json",
                                          {{"Authorization", "Client-Assertion " + assertion}});
  BOOST_TEST(viaAssertion.status == 201, viaAssertion.body);
  const Response replayed = b.request("PUT", "/consents/c-e2e", resource, "application/fhir+json",
                                      {{"Authorization", "Client-Assertion " + assertion}});
  BOOST_TEST(replayed.status == 401);
  const std::string notAdmin = c.assertion("exporter", b.baseUrl() + "/consents");
  const Response wrongSystem =
      b.request("DELETE", "/consents/c-e2e", "", "", {{"Authorization", "Client-Assertion " + notAdmin}});
  BOOST_TEST(wrongSystem.status == 403);
  BOOST_TEST(wrongSystem.json()->getValue<std::string>("error") == "unauthorized_client");
}

BOOST_AUTO_TEST_CASE(the_consent_endpoint_validates_the_fhir_resource) {
  const Response other = c.consentCall("PUT", "c-e2e", consentResource("c-other", "active", "exporter"));
  BOOST_TEST(other.status == 400);
  BOOST_TEST(other.json()->getValue<std::string>("error_description") == "The resource id must equal the id in the URL");
  const Response patient = c.consentCall("PUT", "c-e2e", R"({"resourceType":"Patient","id":"c-e2e"})");
  BOOST_TEST(patient.status == 400);
  BOOST_TEST(patient.json()->getValue<std::string>("error_description") == "resourceType must be Consent");
  std::string unknownStatus = consentResource("c-e2e", "withdrawn", "exporter");
  BOOST_TEST(c.consentCall("PUT", "c-e2e", unknownStatus).status == 400);
  BOOST_TEST(c.consentCall("PUT", "bad%2Fid", consentResource("c-e2e", "active", "exporter")).status == 400);
  const std::string bearer = c.accessToken("consent-platform", "smart-broker:consent-admin");
  const Response text = b.request("PUT", "/consents/c-e2e", consentResource("c-e2e", "active", "exporter"), "text/plain",
                                  {{"Authorization", "Bearer " + bearer}});
  BOOST_TEST(text.status == 415);
  const Response get = b.request("GET", "/consents/c-e2e", "", "", {{"Authorization", "Bearer " + bearer}});
  BOOST_TEST(get.status == 405);
  BOOST_TEST(get.header("allow") == "PUT, DELETE");
  // Just over the limit (as the token endpoint's 413 test): the body is refused unread and the connection closed.
  const Response huge = c.consentCall("PUT", "c-e2e", std::string(5000, ' '));
  BOOST_TEST(huge.status == 413);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(consent_remote)

BOOST_AUTO_TEST_CASE(a_remote_consent_seen_inactive_deactivates_and_revokes_tokens_within_the_cache_time) {
  FhirServer fhir;
  fhir.putConsent(consentResource("c-e2e", "active", "exporter", {"system/Observation.rs"}));
  Broker b(options(consentYaml("  source: fhir\n  fhir_base_url: " + fhir.url("") +
                                       "\n  cache_seconds: 1\n  notification_url: " + fhir.url("/notifications") +
                                       "\n  retry: {initial_backoff: 1, max_backoff: 1}\n"), false));
  Client c(b);
  const Response issued = c.tokenRequest("exporter", "system/*.rs");
  BOOST_TEST_REQUIRE(issued.status == 200, issued.body);
  BOOST_TEST(issued.json()->getValue<std::string>("scope") == "system/Observation.rs");
  const std::string token = issued.json()->getValue<std::string>("access_token");
  BOOST_TEST(c.active(token));
  // No local store with the FHIR source.
  BOOST_TEST(c.consentCall("DELETE", "c-e2e").status == 404);

  fhir.setStatus("c-e2e", "inactive");
  const auto changed = std::chrono::steady_clock::now();
  BOOST_TEST(eventually([&] { return !c.active(token); }, 2500ms));
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - changed);
  BOOST_TEST(elapsed.count() < 2500);  // cache_seconds (1) plus request time
  BOOST_TEST(c.tokenRequest("exporter").status == 400);

  BOOST_TEST_REQUIRE(eventually([&] { return fhir.received()->size() == 1; }, 5000ms));
  const Json notification = fhir.received()->getObject(0)->getObject("body");
  BOOST_TEST(notification->getValue<std::string>("consent_id") == "c-e2e");
  BOOST_TEST(strings(notification->getArray("revoked_token_ids")) == std::vector<std::string>{c.jtiOf(token)},
             boost::test_tools::per_element());
  BOOST_TEST(notification->getValue<std::string>("time").ends_with("Z"));
  BOOST_TEST(fhir.received()->getObject(0)->getValue<std::string>("content_type") == "application/json");

  // Active again: tokens are issued again (the withdrawal is remembered per state, not for ever).
  fhir.setStatus("c-e2e", "active");
  BOOST_TEST(eventually([&] { return c.tokenRequest("exporter").status == 200; }, 2500ms));
}

BOOST_AUTO_TEST_CASE(an_unreachable_fhir_server_fails_closed) {
  std::uint16_t closed = 0;
  {
    Poco::Net::ServerSocket probe(Poco::Net::SocketAddress("127.0.0.1", 0));
    closed = probe.address().port();
  }
  Broker b(options(
      consentYaml("  source: fhir\n  fhir_base_url: http://127.0.0.1:" + std::to_string(closed) + "/fhir\n"), false));
  Client c(b);
  const Response r = c.tokenRequest("exporter");
  BOOST_TEST(r.status == 503);
  BOOST_TEST(r.json()->getValue<std::string>("error") == "temporarily_unavailable");
  BOOST_TEST(b.waitForLog("reason=consent_unavailable"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(consent_notifications)

BOOST_AUTO_TEST_CASE(a_notification_is_delivered_after_the_receiver_comes_back_from_an_outage) {
  FhirServer platform;
  platform.receiver("fail");
  Broker b(options(consentYaml("  notification_url: " + platform.url("/notifications") +
                                       "\n  retry: {initial_backoff: 1, max_backoff: 1}\n"), false));
  Client c(b);
  BOOST_TEST_REQUIRE(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter")).status == 201);
  const std::string token = c.accessToken("exporter");
  BOOST_TEST_REQUIRE(c.consentCall("DELETE", "c-e2e").status == 200);
  BOOST_TEST(eventually([&] { return platform.attempts() >= 2; }, 5000ms));
  BOOST_TEST(platform.received()->size() == 0U);
  BOOST_TEST(b.waitForLog("event=consent_notification_retry"));

  platform.receiver("ok");
  BOOST_TEST_REQUIRE(eventually([&] { return platform.received()->size() == 1; }, 5000ms));
  const Json body = platform.received()->getObject(0)->getObject("body");
  BOOST_TEST(body->getValue<std::string>("consent_id") == "c-e2e");
  BOOST_TEST(strings(body->getArray("revoked_token_ids")) == std::vector<std::string>{c.jtiOf(token)},
             boost::test_tools::per_element());
  std::this_thread::sleep_for(1500ms);
  BOOST_TEST(platform.received()->size() == 1U);  // delivered, so not sent again
}

BOOST_AUTO_TEST_CASE(an_undelivered_notification_survives_a_broker_restart) {
  FhirServer platform;
  platform.receiver("reset");
  Broker b(options(consentYaml("  notification_url: " + platform.url("/notifications") +
                                       "\n  retry: {initial_backoff: 1, max_backoff: 1}\n"), false));
  Client c(b);
  BOOST_TEST_REQUIRE(c.consentCall("PUT", "c-e2e", consentResource("c-e2e", "active", "exporter")).status == 201);
  const std::string token = c.accessToken("exporter");
  BOOST_TEST_REQUIRE(c.consentCall("DELETE", "c-e2e").status == 200);
  BOOST_TEST(eventually([&] { return platform.attempts() >= 1; }, 5000ms));
  BOOST_TEST(b.stop() == 0);

  platform.receiver("ok");
  b.start();
  BOOST_TEST_REQUIRE(eventually([&] { return platform.received()->size() == 1; }, 5000ms));
  BOOST_TEST(strings(platform.received()->getObject(0)->getObject("body")->getArray("revoked_token_ids")) ==
                 std::vector<std::string>{c.jtiOf(token)},
             boost::test_tools::per_element());
  // The revocation survived the restart too.
  BOOST_TEST(!c.active(token));
}

BOOST_AUTO_TEST_SUITE_END()
