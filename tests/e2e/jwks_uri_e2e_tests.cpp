// End-to-end: client keys by jwks_uri, served by a scriptable node server (jwks_server.mjs) to the real binary.
#include <unistd.h>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/StreamCopier.h>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace e2e;
using namespace std::chrono_literals;

namespace {

/// node tests/e2e/jwks_server.mjs: the client's key server. Its admin API sets routes and counts requests.
class JwksServer {
 public:
  explicit JwksServer(bool tls = false) {
    if (tls) {
      char tmpl[] = "/tmp/smart-broker-jwks-tls-XXXXXX";
      const char* dir = ::mkdtemp(tmpl);
      if (dir == nullptr) {
        throw std::runtime_error("mkdtemp failed");
      }
      tlsDir_ = dir;
    }
    std::vector<std::string> args{dataDir() + "/keys"};
    if (!tlsDir_.empty()) {
      args.insert(args.end(), {"--tls", tlsDir_});
    }
    node_ = std::make_unique<NodeProcess>("jwks_server.mjs", args);
    Poco::JSON::Parser parser;
    const Json hello = parser.parse(node_->readLine()).extract<Json>();
    port_ = static_cast<std::uint16_t>(hello->getValue<int>("port"));
    if (!tlsDir_.empty()) {
      tlsPort_ = static_cast<std::uint16_t>(hello->getValue<int>("tls_port"));
      caFile_ = hello->getValue<std::string>("ca");
    }
  }

  ~JwksServer() {
    node_->stop();  // the server ends when its stdin closes; it must be gone before its TLS directory goes
    if (!tlsDir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(tlsDir_, ec);
    }
  }
  JwksServer(const JwksServer&) = delete;
  JwksServer& operator=(const JwksServer&) = delete;

  std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::string tlsUrl(const std::string& host, const std::string& path) const {
    return "https://" + host + ":" + std::to_string(tlsPort_) + path;
  }
  const std::string& caFile() const { return caFile_; }

  /// Sets what `path` answers (see jwks_server.mjs for the members of `spec`).
  void route(const std::string& path, Json spec) const {
    spec->set("path", path);
    std::ostringstream body;
    Poco::JSON::Stringifier::stringify(spec, body);
    const auto [status, text] = call("POST", "/_admin/route", body.str());
    if (status != 200) {
      throw std::runtime_error("jwks_server route: " + text);
    }
  }

  /// `path` serves a JWK Set of the named TEST-ONLY keys with this Cache-Control.
  void keys(const std::string& path, const std::vector<std::string>& names, const std::string& cacheControl) const {
    Poco::JSON::Array::Ptr list = new Poco::JSON::Array;
    for (const std::string& name : names) {
      list->add(name);
    }
    route(path, object({{"keys", list}, {"headers", object({{"Cache-Control", cacheControl}})}}));
  }

  /// Requests the server received for `path`.
  int count(const std::string& path) const {
    const auto [status, text] = call("GET", "/_admin/count?path=" + path, "");
    Poco::JSON::Parser parser;
    return parser.parse(text).extract<Json>()->getValue<int>("count");
  }

 private:
  std::pair<int, std::string> call(const std::string& method, const std::string& target, const std::string& body) const {
    Poco::Net::HTTPClientSession session("127.0.0.1", port_);
    session.setTimeout(Poco::Timespan(10, 0));
    Poco::Net::HTTPRequest request(method, target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setContentType("application/json");
    request.setContentLength64(static_cast<Poco::Int64>(body.size()));
    session.sendRequest(request) << body;
    Poco::Net::HTTPResponse response;
    std::istream& in = session.receiveResponse(response);
    std::ostringstream text;
    Poco::StreamCopier::copyStream(in, text);
    return {static_cast<int>(response.getStatus()), text.str()};
  }

  std::unique_ptr<NodeProcess> node_;
  std::uint16_t port_ = 0;
  std::uint16_t tlsPort_ = 0;
  std::string caFile_;
  std::string tlsDir_;
};

/// A loopback port nothing listens on (bound, read, closed).
std::uint16_t deadPort() {
  Poco::Net::ServerSocket probe(Poco::Net::SocketAddress("127.0.0.1", 0));
  const std::uint16_t port = probe.address().port();
  probe.close();
  return port;
}

struct Settings {
  int cooldown = 1;
  int readTimeout = 1;
  std::string extra;  ///< more lines under jwks_fetch (indented by four spaces)
};

/// A jwks_server and a broker registering clients by its URLs:
///   uri-client  (RS384, ES384)  /uri-client.json      uri-other (RS384)  /uri-other.json
///   dead-client (RS384)         a port nobody listens on
///   tls-client  (RS384)         https://localhost/tls.json      tls-ip-client  https://127.0.0.1/tls.json
///   rs384-client                inline keys (jwks_file)
/// Sets SSL_CERT_FILE to the server's test CA (or leaves the system store) for the broker about to start: the
/// broker inherits the environment, and OpenSSL's default verify paths honour the variable.
struct CaTrust {
  CaTrust(const JwksServer& server, bool trust) {
    if (trust) {
      ::setenv("SSL_CERT_FILE", server.caFile().c_str(), 1);
    } else {
      ::unsetenv("SSL_CERT_FILE");
    }
  }
};

struct Env {
  explicit Env(Settings settings = {}, bool tls = false, bool trustTestCa = false)
      : server(tls), trust(server, trustTestCa), broker(options(settings, tls)) {}

  Broker::Options options(const Settings& s, bool tls) const {
    Broker::Options o;
    o.server_extra = "  jwks_fetch:\n"
                     "    allow_http_loopback: true\n"
                     "    read_timeout: " + std::to_string(s.readTimeout) + "\n" +
                     "    kid_miss_cooldown: " + std::to_string(s.cooldown) + "\n" + s.extra;
    o.systems = R"(
  - client_id: uri-client
    algorithms: [RS384, ES384]
    scopes: [system/*.rs]
    jwks_uri: )" + server.url("/uri-client.json") + R"(
  - client_id: uri-other
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_uri: )" + server.url("/uri-other.json") + R"(
  - client_id: dead-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_uri: http://127.0.0.1:)" + std::to_string(deadPort()) + R"(/jwks.json
  - client_id: rs384-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
)";
    if (tls) {
      o.systems += "  - client_id: tls-client\n    algorithms: [RS384]\n    scopes: [system/*.rs]\n    jwks_uri: " +
                   server.tlsUrl("localhost", "/tls.json") + "\n";
      o.systems += "  - client_id: tls-ip-client\n    algorithms: [RS384]\n    scopes: [system/*.rs]\n    jwks_uri: " +
                   server.tlsUrl("127.0.0.1", "/tls.json") + "\n";
    }
    return o;
  }

  /// An assertion for `clientId` signed by jose's SignJWT with the TEST-ONLY key `key` (kid = the key's name).
  std::string signedBy(const std::string& clientId, const std::string& key) const {
    return jose().joseSign(algOf(key), keyFile(key), key, claims(clientId, broker.tokenUrl()));
  }

  /// The same with a `jku` header (node:crypto signing, which takes any header).
  std::string signedWithJku(const std::string& clientId, const std::string& key, const std::string& jku) const {
    const Json header = object({{"alg", algOf(key)}, {"kid", key}, {"typ", "JWT"}, {"jku", jku}});
    return jose().sign(algOf(key), keyFile(key), header, claims(clientId, broker.tokenUrl()));
  }

  static std::string algOf(const std::string& key) { return key.starts_with("es384") ? "ES384" : "RS384"; }

  Response token(const std::string& jwt) const { return broker.post("/token", tokenForm(jwt)); }

  void expectIssued(const std::string& jwt) const {
    const Response r = token(jwt);
    BOOST_TEST(r.status == 200, r.body);
  }

  /// 401 invalid_client on the wire; the log line names `reason` (and the fetch reason as `detail`).
  void expectDenied(const std::string& jwt, const std::string& reason, const std::string& detail = {}) const {
    const std::size_t before = broker.log().size();
    const Response r = token(jwt);
    BOOST_TEST(r.status == 401, r.body);
    BOOST_TEST(r.json()->getValue<std::string>("error") == "invalid_client");
    const std::string expected = "reason=" + reason + (detail.empty() ? "" : " detail=" + detail);
    BOOST_TEST(broker.waitForLog(expected), "log has " << expected);
    BOOST_TEST(broker.log().find(expected, before) != std::string::npos, "new log line has " << expected);
  }

  JwksServer server;
  CaTrust trust;  // between the two: after the server made its CA, before the broker starts
  Broker broker;
};

std::int64_t millisSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(jwks_uri_keys)

BOOST_AUTO_TEST_CASE(issues_a_token_with_a_key_fetched_from_the_jwks_uri) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client", "es384-client"}, "max-age=300");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  env.expectIssued(env.signedBy("uri-client", "es384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 1);  // the second request used the cached set
  const std::string fetched = "event=jwks_fetched client_id=uri-client uri=" + env.server.url("/uri-client.json") +
                              " trigger=first_use status=200";
  BOOST_TEST(env.broker.log().find(fetched) != std::string::npos, env.broker.log());
}

BOOST_AUTO_TEST_CASE(accepts_a_new_kid_on_first_use_after_rotation_under_max_age) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  // The client publishes a second key and starts using it at once (rotation by new kid).
  env.server.keys("/uri-client.json", {"rs384-client", "es384-client"}, "max-age=300");
  std::this_thread::sleep_for(1100ms);  // past the kid-miss cooldown of 1 s since the first fetch
  env.expectIssued(env.signedBy("uri-client", "es384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 2);
  BOOST_TEST(env.broker.log().find("trigger=kid_miss") != std::string::npos);
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  env.expectIssued(env.signedBy("uri-client", "es384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 2);
}

BOOST_AUTO_TEST_CASE(fetches_for_every_use_and_sees_rotation_at_once_under_no_store) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "no-store");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 2);
  env.server.keys("/uri-client.json", {"rs384-client", "es384-client"}, "no-store");
  env.expectIssued(env.signedBy("uri-client", "es384-client"));  // no cooldown to wait for: nothing was kept
  BOOST_TEST(env.server.count("/uri-client.json") == 3);
}

BOOST_AUTO_TEST_CASE(stops_accepting_a_removed_key_once_the_cache_lets_go_of_it) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client", "es384-client"}, "max-age=3");
  env.expectIssued(env.signedBy("uri-client", "es384-client"));
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=3");
  env.expectIssued(env.signedBy("uri-client", "es384-client"));  // still within the 3 s the response allowed
  std::this_thread::sleep_for(3100ms);
  env.expectDenied(env.signedBy("uri-client", "es384-client"), "no_key_for_kid");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  // One refetch at expiry; the miss right after it did not cause another.
  BOOST_TEST(env.server.count("/uri-client.json") == 2);
}

BOOST_AUTO_TEST_CASE(refetches_for_unknown_kids_at_most_once_per_cooldown) {
  Settings settings;
  settings.cooldown = 2;
  Env env(settings);
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 1);
  std::this_thread::sleep_for(2100ms);
  for (int i = 0; i < 5; ++i) {
    env.expectDenied(env.signedBy("uri-client", "wrong"), "no_key_for_kid");
  }
  BOOST_TEST(env.server.count("/uri-client.json") == 2);  // five unknown kids, one refetch
  std::this_thread::sleep_for(2100ms);
  env.expectDenied(env.signedBy("uri-client", "wrong"), "no_key_for_kid");
  env.expectDenied(env.signedBy("uri-client", "wrong"), "no_key_for_kid");
  BOOST_TEST(env.server.count("/uri-client.json") == 3);
  // An unknown issuer never causes a fetch.
  env.expectDenied(env.signedBy("no-such-client", "wrong"), "unknown_client");
  BOOST_TEST(env.server.count("/uri-client.json") == 3);
}

BOOST_AUTO_TEST_CASE(fifty_concurrent_kid_misses_share_one_fetch) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  // The rotated set is served slowly, so that the misses pile up on the fetch in flight.
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  names->add("es384-client");
  env.server.route("/uri-client.json",
                   object({{"keys", names}, {"delay_ms", 300}, {"headers", object({{"Cache-Control", "max-age=300"}})}}));
  std::vector<std::string> assertions;
  for (int i = 0; i < 50; ++i) {
    assertions.push_back(env.signedBy("uri-client", "es384-client"));
  }
  std::this_thread::sleep_for(1100ms);  // past the cooldown
  const int before = env.server.count("/uri-client.json");
  std::atomic<int> issued{0};
  std::latch start(50);
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      if (env.token(assertions[static_cast<std::size_t>(i)]).status == 200) {
        ++issued;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  const int fetches = env.server.count("/uri-client.json") - before;
  BOOST_TEST_MESSAGE("fetches for 50 concurrent kid misses: " << fetches);
  std::printf("jwks_uri e2e: 50 concurrent kid misses -> %d fetch(es), %d tokens issued\n", fetches, issued.load());
  BOOST_TEST(fetches == 1);
  BOOST_TEST(issued.load() == 50);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(jwks_uri_fetch_failures)

BOOST_AUTO_TEST_CASE(gives_up_on_a_slow_server_at_the_read_timeout) {
  Env env;
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  env.server.route("/uri-client.json", object({{"keys", names}, {"delay_ms", 4000}}));
  const auto start = std::chrono::steady_clock::now();
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "timeout");
  BOOST_TEST(millisSince(start) < 3000);
  BOOST_TEST(env.broker.log().find("event=jwks_fetch_failed client_id=uri-client") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(cuts_off_a_server_that_trickles_its_body_at_the_deadline) {
  Env env;
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  // One byte every 200 ms: no single read waits long, but the whole body would take minutes.
  env.server.route("/uri-client.json", object({{"keys", names}, {"drip_ms", 200}}));
  const auto start = std::chrono::steady_clock::now();
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "timeout");
  BOOST_TEST(millisSince(start) < 3000);
}

BOOST_AUTO_TEST_CASE(refuses_an_oversized_body_by_content_length_and_by_stream) {
  Env env;
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  env.server.route("/uri-client.json", object({{"keys", names}, {"pad_to", 70000}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "too_large");
  env.server.route("/uri-other.json", object({{"keys", names}, {"pad_to", 70000}, {"chunked", true}}));
  env.expectDenied(env.signedBy("uri-other", "rs384-client"), "keys_unavailable", "too_large");
  BOOST_TEST(env.broker.log().find("reason=too_large detail=\"body over 65536 bytes\"") != std::string::npos,
             env.broker.log());
}

BOOST_AUTO_TEST_CASE(does_not_follow_a_redirect) {
  Env env;
  env.server.keys("/moved.json", {"rs384-client"}, "max-age=300");
  env.server.route("/uri-client.json", object({{"status", 302}, {"headers", object({{"Location", env.server.url("/moved.json")}})}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "redirect");
  BOOST_TEST(env.server.count("/uri-client.json") == 1);
  BOOST_TEST(env.server.count("/moved.json") == 0);
}

BOOST_AUTO_TEST_CASE(refuses_a_body_that_is_not_json_by_content_type) {
  Env env;
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  env.server.route("/uri-client.json",
                   object({{"keys", names}, {"headers", object({{"Content-Type", "text/html; charset=utf-8"}})}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "content_type");
}

BOOST_AUTO_TEST_CASE(refuses_a_server_error) {
  Env env;
  env.server.route("/uri-client.json", object({{"status", 500}, {"body", "{}"}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "http_status");
  BOOST_TEST(env.broker.log().find("reason=http_status detail=\"HTTP 500\" status=500") != std::string::npos,
             env.broker.log());
}

BOOST_AUTO_TEST_CASE(refuses_json_that_is_not_a_jwk_set_and_a_set_without_usable_keys) {
  Env env;
  env.server.route("/uri-client.json", object({{"body", "{\"keys\": 5}"}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "invalid_jwk_set");
  Poco::JSON::Array::Ptr weak = new Poco::JSON::Array;
  weak->add("rsa1024");
  env.server.route("/uri-other.json", object({{"keys", weak}}));
  env.expectDenied(env.signedBy("uri-other", "rs384-client"), "keys_unavailable", "no_usable_keys");
}

BOOST_AUTO_TEST_CASE(refuses_an_unreachable_url) {
  Env env;
  env.expectDenied(env.signedBy("dead-client", "rs384-client"), "keys_unavailable", "connect");
}

BOOST_AUTO_TEST_CASE(remembers_a_failure_for_the_cooldown_then_recovers) {
  Env env;
  env.server.route("/uri-client.json", object({{"status", 503}, {"body", "{}"}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "http_status");
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "http_status");
  BOOST_TEST(env.server.count("/uri-client.json") == 1);  // the second request did not fetch
  std::this_thread::sleep_for(1100ms);
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  BOOST_TEST(env.server.count("/uri-client.json") == 2);
}

BOOST_AUTO_TEST_CASE(serves_the_last_set_within_the_stale_window_only_while_unreachable) {
  Settings settings;
  settings.extra = "    serve_stale: 60\n";
  Env env(settings);
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=1");
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));
  env.server.route("/uri-client.json", object({{"status", 503}, {"body", "{}"}}));
  std::this_thread::sleep_for(1100ms);
  env.expectIssued(env.signedBy("uri-client", "rs384-client"));  // 503: unreachable, stale set served
  BOOST_TEST(env.broker.log().find("served_stale=true") != std::string::npos);
  std::this_thread::sleep_for(1100ms);  // past the failure memory
  env.server.route("/uri-client.json", object({{"status", 404}, {"body", "{}"}}));
  env.expectDenied(env.signedBy("uri-client", "rs384-client"), "keys_unavailable", "http_status");  // 404 is final
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(jwks_uri_jku)

BOOST_AUTO_TEST_CASE(accepts_jku_equal_to_the_registered_jwks_uri) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectIssued(env.signedWithJku("uri-client", "rs384-client", env.server.url("/uri-client.json")));
}

BOOST_AUTO_TEST_CASE(refuses_an_unregistered_jku_without_fetching_it) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.server.keys("/attacker.json", {"wrong"}, "max-age=300");
  env.expectDenied(env.signedWithJku("uri-client", "wrong", env.server.url("/attacker.json")), "jku_mismatch");
  BOOST_TEST(env.server.count("/attacker.json") == 0);
  BOOST_TEST(env.server.count("/uri-client.json") == 0);  // refused before any key lookup
}

BOOST_AUTO_TEST_CASE(refuses_the_jwks_uri_of_another_client_as_jku) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.server.keys("/uri-other.json", {"other-client"}, "max-age=300");
  env.expectDenied(env.signedWithJku("uri-client", "other-client", env.server.url("/uri-other.json")), "jku_mismatch");
  BOOST_TEST(env.server.count("/uri-other.json") == 0);
}

BOOST_AUTO_TEST_CASE(refuses_jku_on_a_client_with_inline_keys) {
  Env env;
  env.server.keys("/uri-client.json", {"rs384-client"}, "max-age=300");
  env.expectDenied(env.signedWithJku("rs384-client", "rs384-client", env.server.url("/uri-client.json")),
                   "jku_not_registered");
  BOOST_TEST(env.server.count("/uri-client.json") == 0);
  env.expectIssued(env.signedBy("rs384-client", "rs384-client"));  // inline keys still work without jku
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(jwks_uri_tls)

BOOST_AUTO_TEST_CASE(refuses_a_certificate_from_an_untrusted_ca) {
  Env env({}, true);
  env.server.keys("/tls.json", {"rs384-client"}, "max-age=300");
  env.expectDenied(env.signedBy("tls-client", "rs384-client"), "keys_unavailable", "tls");
}

BOOST_AUTO_TEST_CASE(fetches_over_https_when_the_ca_is_trusted) {
  Env env({}, true, true);
  env.server.keys("/tls.json", {"rs384-client"}, "max-age=300");
  env.expectIssued(env.signedBy("tls-client", "rs384-client"));
}

BOOST_AUTO_TEST_CASE(cuts_off_a_trickling_https_server_at_the_deadline) {
  Env env({}, true, true);
  Poco::JSON::Array::Ptr names = new Poco::JSON::Array;
  names->add("rs384-client");
  env.server.route("/tls.json", object({{"keys", names}, {"drip_ms", 200}}));
  const auto start = std::chrono::steady_clock::now();
  env.expectDenied(env.signedBy("tls-client", "rs384-client"), "keys_unavailable", "timeout");
  BOOST_TEST(millisSince(start) < 3000);
}

BOOST_AUTO_TEST_CASE(refuses_a_trusted_certificate_for_another_host_name) {
  Env env({}, true, true);
  env.server.keys("/tls.json", {"rs384-client"}, "max-age=300");
  // The certificate names DNS:localhost only; the URL says 127.0.0.1.
  env.expectDenied(env.signedBy("tls-ip-client", "rs384-client"), "keys_unavailable", "tls");
}

BOOST_AUTO_TEST_SUITE_END()
