// End-to-end: two smart-broker processes sharing one PostgreSQL database, as behind a load balancer.
//
// Needs SMARTBROKER_TEST_PG (scripts/test starts a private cluster and sets it); without it each case passes after
// printing why it did not run. Each case creates its own database. Both instances share one public_base_url (as
// behind a load balancer) and the keyring in that database (one key-encryption key file; no keys directory is
// shared: postgres_keyring_e2e_tests.cpp). The outage case starts a cluster of its own so that stopping it disturbs
// no other case. The consent case uses tests/e2e/fhir_server.mjs as the consent platform's notification receiver.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace e2e;

namespace {

namespace fs = std::filesystem;

const std::string kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const std::string kBase = "https://auth.example.org/smart";

bool skipWithoutPostgres() {
  const char* pg = std::getenv("SMARTBROKER_TEST_PG");
  if (pg == nullptr || *pg == '\0') {
    std::cout << "SKIPPED: SMARTBROKER_TEST_PG is unset (scripts/test sets it; see tests/pg/pg-cluster)\n";
    return true;
  }
  return false;
}

std::string randomName() {
  std::random_device rd;
  std::mt19937_64 rng(rd());
  std::string s = "sb_e2e_";
  for (int i = 0; i < 12; ++i) {
    s += "abcdefghijklmnopqrstuvwxyz0123456789"[rng() % 36];
  }
  return s;
}

void sh(const std::string& command) {
  if (std::system(command.c_str()) != 0) {
    throw std::runtime_error("failed: " + command);
  }
}

std::string makeTempDir() {
  char tmpl[] = "/tmp/smart-broker-pg-e2e-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    throw std::runtime_error("mkdtemp failed");
  }
  return tmpl;
}

/// A fresh database (CREATE DATABASE through psql), dropped at the end.
class Database {
 public:
  explicit Database(std::string admin) : admin_(std::move(admin)), name_(randomName()) {
    sh("psql -q -v ON_ERROR_STOP=1 '" + admin_ + "' -c 'CREATE DATABASE " + name_ + "' >/dev/null");
  }
  ~Database() {
    (void)std::system(
        ("psql -q '" + admin_ + "' -c 'DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)' >/dev/null 2>&1").c_str());
  }
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  std::string connection() const { return admin_ + " dbname=" + name_; }

 private:
  std::string admin_;
  std::string name_;
};

/// A key-encryption key file in `dir` (mode 0600): with storage postgresql the keyring requires one.
std::string writeKek(const std::string& dir) {
  const std::string path = dir + "/keyring.kek";
  std::ofstream(path) << std::string(64, 'a') << "\n";
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  return path;
}

/// Two brokers on two ports: one database (and the keyring in it), one public base URL. `topLevel` is YAML placed
/// after the server section (e.g. `consent:`); `systems` replaces the standard test systems when not empty.
struct Pair {
  std::unique_ptr<Database> db;
  std::string dirA;
  std::string dirB;
  std::string topLevel;
  std::string systems;
  std::string kek;
  std::unique_ptr<Broker> a;
  std::unique_ptr<Broker> b;

  explicit Pair(const std::string& adminConnection, std::string topLevelYaml = {}, std::string systemsYaml = {})
      : topLevel(std::move(topLevelYaml)), systems(std::move(systemsYaml)) {
    db = std::make_unique<Database>(adminConnection);
    dirA = makeTempDir();
    dirB = makeTempDir();
    kek = writeKek(dirA);
    a = std::make_unique<Broker>(options(dirA), kBase);
    b = std::make_unique<Broker>(options(dirB), kBase);
  }
  ~Pair() {
    a.reset();
    b.reset();
    std::error_code ec;
    fs::remove_all(dirA, ec);
    fs::remove_all(dirB, ec);
  }
  Pair(const Pair&) = delete;
  Pair& operator=(const Pair&) = delete;

  Broker::Options options(const std::string& dir) const {
    Broker::Options o;
    o.state_dir = dir;
    o.server_extra = "  storage: postgresql\n  postgresql:\n    connection: \"" + db->connection() +
                     "\"\n    pool_size: 4\nkeyring:\n  kek_file: " + kek + "\n" + topLevel;
    o.systems = systems;
    return o;
  }
};

std::string assertion(const std::string& clientId, const std::string& aud) {
  const bool rs = clientId == "resource-server";
  const std::string key = rs ? "other-client" : "rs384-client";
  Json header = object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}});
  return jose().sign("RS384", keyFile(key), header, claims(clientId, aud));
}

std::string tokenAssertion() { return assertion("rs384-client", kBase + "/token"); }

std::string accessToken(const Broker& broker) {
  const Response r = broker.post("/token", tokenForm(tokenAssertion()));
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  return r.json()->getValue<std::string>("access_token");
}

bool active(const Broker& broker, const std::string& token) {
  const Response r = broker.post(
      "/introspect", formEncode({{"token", token},
                                 {"client_assertion_type", kJwtBearer},
                                 {"client_assertion", assertion("resource-server", kBase + "/introspect")}}));
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  return r.json()->getValue<bool>("active");
}

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

const char* adminConnection() { return std::getenv("SMARTBROKER_TEST_PG"); }

/// node tests/e2e/fhir_server.mjs as the consent platform's notification receiver (POST /notifications).
class Receiver {
 public:
  Receiver() {
    int in[2];
    int out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) {
      throw std::runtime_error("pipe failed");
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::close(in[1]);
      ::close(out[0]);
      const std::string script = std::string(SMARTBROKER_E2E_DIR) + "/fhir_server.mjs";
      ::execlp("node", "node", script.c_str(), nullptr);
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    std::string line;
    while (line.find('\n') == std::string::npos) {
      pollfd pfd{out[0], POLLIN, 0};
      char chunk[256];
      const ssize_t n = ::poll(&pfd, 1, 20000) > 0 ? ::read(out[0], chunk, sizeof chunk) : -1;
      if (n <= 0) {
        ::close(out[0]);
        throw std::runtime_error("fhir_server.mjs did not start (is node installed?)");
      }
      line.append(chunk, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    Poco::JSON::Parser parser;
    port_ = static_cast<std::uint16_t>(
        parser.parse(line.substr(0, line.find('\n'))).extract<Json>()->getValue<int>("port"));
  }
  ~Receiver() {
    ::close(stdin_);  // the script exits when its stdin closes
    int status = 0;
    for (int i = 0; i < 300 && ::waitpid(pid_, &status, WNOHANG) != pid_; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (i == 200) {
        ::kill(pid_, SIGTERM);
      }
    }
  }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/notifications"; }
  /// {"received": [{"content_type", "body"}…], "attempts": n}: every POST seen, and those accepted.
  Json notifications() const {
    Poco::Net::HTTPClientSession session("127.0.0.1", port_);
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, "/_admin/notifications",
                                   Poco::Net::HTTPMessage::HTTP_1_1);
    session.sendRequest(request);
    Poco::Net::HTTPResponse response;
    std::ostringstream text;
    Poco::StreamCopier::copyStream(session.receiveResponse(response), text);
    Poco::JSON::Parser parser;
    return parser.parse(text.str()).extract<Json>();
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  std::uint16_t port_ = 0;
};

/// A FHIR R4 Consent (active, permit) naming `grantee` as information recipient by client-id identifier.
std::string consentResource(const std::string& id, const std::string& grantee) {
  return R"({"resourceType":"Consent","id":")" + id + R"(","status":"active",)"
         R"("scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},)"
         R"("category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],)"
         R"("patient":{"reference":"Patient/example"},"dateTime":"2025-06-01T10:00:00Z",)"
         R"("provision":{"type":"permit","actor":[{"role":{"coding":[)"
         R"({"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},)"
         R"("reference":{"identifier":{"system":"urn:smart-broker:client-id","value":")" +
         grantee + R"("}}}]}})";
}

/// exporter needs consent c-pg; consent-platform feeds consents; resource-server introspects.
const char* const kConsentSystems = R"(
  - client_id: exporter
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
    consent: {required: true, references: [c-pg]}
  - client_id: consent-platform
    algorithms: [RS384]
    scopes: [smart-broker:consent-admin]
    jwks_file: @DATA@/keys/other-client.jwks.json
  - client_id: resource-server
    algorithms: [RS384]
    scopes: [smart-broker:introspect]
    jwks_file: @DATA@/keys/other-client.jwks.json
)";

/// A token request assertion of `clientId` (rs384-client's key; other-client's for the two admin systems).
std::string tokenAssertionOf(const std::string& clientId) {
  const bool admin = clientId == "consent-platform" || clientId == "resource-server";
  const std::string key = admin ? "other-client" : "rs384-client";
  return jose().sign("RS384", keyFile(key), object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}}),
                     claims(clientId, kBase + "/token"));
}

std::string tokenFor(const Broker& broker, const std::string& clientId, const std::string& scope) {
  const Response r = broker.post("/token", tokenForm(tokenAssertionOf(clientId), scope));
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  return r.json()->getValue<std::string>("access_token");
}

/// PUT or DELETE /consents/{id} on `broker` as the consent platform (bearer token with consent-admin).
Response consentCall(const Broker& broker, const std::string& method, const std::string& id,
                     const std::string& body = {}) {
  const std::string bearer = tokenFor(broker, "consent-platform", "smart-broker:consent-admin");
  return broker.request(method, "/consents/" + id, body, body.empty() ? "" : "application/fhir+json",
                        {{"Authorization", "Bearer " + bearer}});
}

}  // namespace

BOOST_AUTO_TEST_SUITE(postgres_instances)

BOOST_AUTO_TEST_CASE(refuses_on_one_instance_an_assertion_used_on_the_other) {
  if (skipWithoutPostgres()) {
    return;
  }
  Pair pair(adminConnection());
  const std::string form = tokenForm(tokenAssertion());
  BOOST_TEST(pair.a->post("/token", form).status == 200);
  const Response replay = pair.b->post("/token", form);
  BOOST_TEST(replay.status == 401);
  BOOST_TEST(replay.json()->getValue<std::string>("error") == "invalid_client");
  BOOST_TEST(pair.b->waitForLog("reason=jti_replayed"));
}

BOOST_AUTO_TEST_CASE(issues_exactly_one_token_for_100_concurrent_submissions_over_two_instances) {
  if (skipWithoutPostgres()) {
    return;
  }
  Pair pair(adminConnection());
  const std::string form = tokenForm(tokenAssertion());
  std::atomic<int> ok{0};
  std::atomic<int> refused{0};
  std::atomic<int> other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 100; ++i) {
    threads.emplace_back([&, i] {
      const Response r = (i % 2 == 0 ? pair.a : pair.b)->post("/token", form);
      if (r.status == 200) {
        ++ok;
      } else if (r.status == 401) {
        ++refused;
      } else {
        ++other;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(ok.load() == 1);
  BOOST_TEST(refused.load() == 99);
  BOOST_TEST(other.load() == 0);
}

BOOST_AUTO_TEST_CASE(a_token_revoked_on_one_instance_is_inactive_on_the_other_within_a_second) {
  if (skipWithoutPostgres()) {
    return;
  }
  Pair pair(adminConnection());
  const std::string token = accessToken(*pair.a);
  BOOST_TEST(active(*pair.b, token));
  const Response revoked = pair.a->post(
      "/revoke", formEncode({{"token", token},
                             {"client_assertion_type", kJwtBearer},
                             {"client_assertion", assertion("rs384-client", kBase + "/revoke")}}));
  BOOST_TEST_REQUIRE(revoked.status == 200, revoked.body);
  const auto start = Clock::now();
  while (active(*pair.b, token) && secondsSince(start) < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double took = secondsSince(start);
  BOOST_TEST_MESSAGE("revocation seen on the other instance after " << took << " s");
  // The mirror polls every second; the bound allows for one poll plus the introspection round trips.
  BOOST_TEST(took <= 1.3);
  BOOST_TEST(!active(*pair.a, token));
}

BOOST_AUTO_TEST_CASE(a_system_suspended_through_one_instances_config_is_refused_by_the_other) {
  if (skipWithoutPostgres()) {
    return;
  }
  Pair pair(adminConnection());
  BOOST_TEST(pair.a->post("/token", tokenForm(tokenAssertion())).status == 200);
  BOOST_TEST_REQUIRE(runBroker("systems suspend rs384-client --config " + pair.b->configPath()).status == 0);
  const auto start = Clock::now();
  int status = 200;
  while (secondsSince(start) < 3) {
    status = pair.a->post("/token", tokenForm(tokenAssertion())).status;
    if (status != 200) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  BOOST_TEST(status == 401);
  BOOST_TEST(secondsSince(start) <= 1.5);
  BOOST_TEST(pair.a->waitForLog("reason=client_suspended"));
}

BOOST_AUTO_TEST_CASE(keeps_serving_on_one_instance_when_the_other_is_killed_under_load) {
  if (skipWithoutPostgres()) {
    return;
  }
  Pair pair(adminConnection());
  std::vector<std::string> forms;
  for (int i = 0; i < 120; ++i) {
    forms.push_back(tokenForm(tokenAssertion()));
  }
  std::atomic<int> okB{0};
  std::atomic<int> badB{0};
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (std::size_t i = next++; i < forms.size(); i = next++) {
        if (i % 2 == 0 || ::kill(pair.a->pid(), 0) != 0) {
          const Response r = pair.b->post("/token", forms[i]);
          (r.status == 200 ? okB : badB)++;
        } else {
          try {
            (void)pair.a->post("/token", forms[i]);
          } catch (const std::exception&) {
            // A dies mid-request: that request is lost with it, never half-recorded as a token elsewhere.
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  pair.a->signal(SIGKILL);
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(badB.load() == 0);
  BOOST_TEST(okB.load() >= 60);
  // B is still healthy and still refuses replays of what A recorded before it died.
  BOOST_TEST(pair.b->get("/healthz").status == 200);
  BOOST_TEST(pair.b->post("/token", forms[0]).status == 401);
}

BOOST_AUTO_TEST_CASE(a_consent_deleted_on_one_instance_revokes_on_the_other_a_token_it_issued_and_notifies_once) {
  if (skipWithoutPostgres()) {
    return;
  }
  Receiver receiver;
  // cache_seconds stays at its default (10 s): B's answer below changes within a second because the revocation
  // reaches it through the database, not because its consent cache expired.
  Pair pair(adminConnection(),
            "consent:\n  allow_http_loopback: true\n  notification_url: " + receiver.url() +
                "\n  retry: {initial_backoff: 1, max_backoff: 1}\n",
            kConsentSystems);
  const Response put = consentCall(*pair.a, "PUT", "c-pg", consentResource("c-pg", "exporter"));
  BOOST_TEST_REQUIRE(put.status == 201, put.body);

  // B issues under the consent A stored; the link to it is in the shared token_consents table.
  const std::string token = tokenFor(*pair.b, "exporter", "system/*.rs");
  const std::string jti =
      jose().call(object({{"op", "decode"}, {"token", token}}))->getObject("payload")->getValue<std::string>("jti");
  BOOST_TEST_REQUIRE(active(*pair.b, token));

  const Response deleted = consentCall(*pair.a, "DELETE", "c-pg");
  BOOST_TEST_REQUIRE(deleted.status == 200, deleted.body);
  BOOST_TEST(deleted.body == R"({"id":"c-pg","status":"withdrawn","revoked_token_ids":[")" + jti + R"("]})");
  const auto start = Clock::now();
  while (active(*pair.b, token) && secondsSince(start) < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double took = secondsSince(start);
  BOOST_TEST_MESSAGE("consent withdrawal seen on the other instance after " << took << " s");
  BOOST_TEST(took <= 1.3);  // one mirror poll plus the introspection round trips, as for POST /revoke
  BOOST_TEST(!active(*pair.a, token));
  // Issuance on B reads the shared store itself: the consent is gone there at once.
  BOOST_TEST(pair.b->post("/token", tokenForm(tokenAssertionOf("exporter"))).status == 400);

  // Both instances run a notifier on the shared outbox; the receiver gets the notification exactly once.
  Poco::JSON::Array::Ptr received;
  const auto waiting = Clock::now();
  while (secondsSince(waiting) < 5) {
    received = receiver.notifications()->getArray("received");
    if (received->size() > 0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  BOOST_TEST_REQUIRE(received->size() == 1U);
  const Json body = received->getObject(0)->getObject("body");
  BOOST_TEST(body->getValue<std::string>("consent_id") == "c-pg");
  BOOST_TEST_REQUIRE(body->getArray("revoked_token_ids")->size() == 1U);
  BOOST_TEST(body->getArray("revoked_token_ids")->getElement<std::string>(0) == jti);
  // Long enough for each instance's notifier to poll the outbox twice more.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  const Json finally = receiver.notifications();
  BOOST_TEST(finally->getArray("received")->size() == 1U);
  BOOST_TEST(finally->getValue<int>("attempts") == 1);
  const bool byA = pair.a->log().find("event=consent_notification_delivered") != std::string::npos;
  const bool byB = pair.b->log().find("event=consent_notification_delivered") != std::string::npos;
  BOOST_TEST(byA != byB);
}

BOOST_AUTO_TEST_CASE(answers_503_while_the_database_is_down_and_recovers_without_a_restart) {
  if (skipWithoutPostgres()) {
    return;
  }
  const std::string dir = makeTempDir();
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  std::uint16_t port = 0;
  {
    Poco::Net::ServerSocket probe(Poco::Net::SocketAddress("127.0.0.1", 0));
    port = probe.address().port();
  }
  const std::string cluster = std::string(SMARTBROKER_SOURCE_DIR) + "/tests/pg/pg-cluster";
  const std::string start = cluster + " start " + dir + "/pg " + std::to_string(port) + " >/dev/null";
  const std::string stop = cluster + " stop " + dir + "/pg >/dev/null";
  sh(start);
  {
    Broker::Options o;
    o.server_extra = "  storage: postgresql\n  postgresql:\n    connection: \"host=127.0.0.1 port=" +
                     std::to_string(port) + " dbname=postgres user=smartbroker\"\nkeyring:\n  kek_file: " +
                     writeKek(dir) + "\n";
    Broker broker(o);
    BOOST_TEST(broker.post("/token", tokenForm(assertion("rs384-client", broker.tokenUrl()))).status == 200);
    // A bearer caller and a token to ask about, obtained while the database is up.
    const Response callerReply =
        broker.post("/token", tokenForm(assertion("resource-server", broker.tokenUrl()), "smart-broker:introspect"));
    BOOST_TEST_REQUIRE(callerReply.status == 200, callerReply.body);
    const std::string callerToken = callerReply.json()->getValue<std::string>("access_token");
    const Response subjectReply = broker.post("/token", tokenForm(assertion("rs384-client", broker.tokenUrl())));
    BOOST_TEST_REQUIRE(subjectReply.status == 200, subjectReply.body);
    const std::string subject = subjectReply.json()->getValue<std::string>("access_token");
    const auto introspectWithBearer = [&] {
      return broker.request("POST", "/introspect", formEncode({{"token", subject}}),
                            "application/x-www-form-urlencoded", {{"Authorization", "Bearer " + callerToken}});
    };
    const Response before = introspectWithBearer();
    BOOST_TEST_REQUIRE(before.status == 200, before.body);
    BOOST_TEST(before.json()->getValue<bool>("active"));

    sh(stop);
    const auto stopped = Clock::now();
    int unavailable = 0;
    for (int i = 0; i < 10; ++i) {
      const Response r = broker.post("/token", tokenForm(assertion("rs384-client", broker.tokenUrl())));
      if (r.status == 503) {
        ++unavailable;
        BOOST_TEST(r.json()->getValue<std::string>("error") == "temporarily_unavailable");
        BOOST_TEST(!r.header("retry-after").empty());
      }
    }
    BOOST_TEST(unavailable == 10);
    // Introspection answers from memory, but a mirror that cannot follow the database could miss a revocation
    // made on another instance: within its staleness bound (1 s after the last sync that began before the stop)
    // it fails closed too, for bearer callers (no store write) as for assertion callers. Until then a live token
    // may still be reported live: the view is at most that old.
    Response bearerDuringOutage = introspectWithBearer();
    while (bearerDuringOutage.status == 200 && secondsSince(stopped) < 5) {
      BOOST_TEST(bearerDuringOutage.json()->getValue<bool>("active"));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      bearerDuringOutage = introspectWithBearer();
    }
    BOOST_TEST_MESSAGE("bearer introspection failed closed " << secondsSince(stopped) << " s after the stop");
    BOOST_TEST(secondsSince(stopped) < 2.0);
    BOOST_TEST(bearerDuringOutage.status == 503, bearerDuringOutage.body);
    BOOST_TEST(!bearerDuringOutage.header("retry-after").empty());
    BOOST_TEST(bearerDuringOutage.body.find("\"active\"") == std::string::npos);
    const Response assertionDuringOutage = broker.post(
        "/introspect", formEncode({{"token", subject},
                                   {"client_assertion_type", kJwtBearer},
                                   {"client_assertion", assertion("resource-server", broker.baseUrl() + "/introspect")}}));
    BOOST_TEST(assertionDuringOutage.status == 503, assertionDuringOutage.body);
    const Response revokeDuringOutage = broker.post(
        "/revoke", formEncode({{"token", subject},
                               {"client_assertion_type", kJwtBearer},
                               {"client_assertion", assertion("rs384-client", broker.baseUrl() + "/revoke")}}));
    BOOST_TEST(revokeDuringOutage.status == 503, revokeDuringOutage.body);
    BOOST_TEST(!revokeDuringOutage.header("retry-after").empty());
    // Discovery and the JWKS keep serving from memory; the health check says the store is gone.
    BOOST_TEST(broker.get("/jwks.json").status == 200);
    BOOST_TEST(broker.get("/.well-known/smart-configuration").status == 200);
    BOOST_TEST(broker.get("/healthz").status == 503);

    sh(start);
    const auto since = Clock::now();
    int status = 0;
    while (secondsSince(since) < 10) {
      status = broker.post("/token", tokenForm(assertion("rs384-client", broker.tokenUrl()))).status;
      if (status == 200) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    BOOST_TEST(status == 200);
    BOOST_TEST_MESSAGE("recovered " << secondsSince(since) << " s after the database came back");
    // The mirror caught up: the same bearer caller is answered again, and the token is still live.
    Response after = introspectWithBearer();
    for (int i = 0; i < 20 && after.status != 200; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      after = introspectWithBearer();
    }
    BOOST_TEST_REQUIRE(after.status == 200, after.body);
    BOOST_TEST(after.json()->getValue<bool>("active"));
    BOOST_TEST(broker.get("/healthz").status == 200);
    BOOST_TEST(broker.waitForLog("reason=store_unavailable"));
  }
  (void)std::system(stop.c_str());
  std::error_code ec;
  fs::remove_all(dir, ec);
}

BOOST_AUTO_TEST_SUITE_END()
