// End-to-end: signing-key rotation as resource servers see it, operator key commands against the running service,
// refusals of tampered key files, and the operator's script and systemd unit.
#include <sys/stat.h>

#include <boost/test/unit_test.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"

using namespace e2e;
namespace fs = std::filesystem;

namespace {

const std::string kJwtBearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A fast rotation policy: a new key every 3 s, published 2 s before it signs, JWKS cached for 1 s. Written after the
/// server lines, at column 0, it is the top-level `keyring:` section.
const std::string kFastRotation =
    "keyring:\n"
    "  rotation_period: 3\n"
    "  lead_time: 2\n"
    "  jwks_max_age: 1\n"
    "  retirement_grace: 1\n";

/// `smart-broker keys ARGS --config <the broker's config>`.
Run keys(const Broker& b, const std::string& args) {
  return runBroker("keys " + args + " --config " + b.configPath());
}

bool onPath(const std::string& tool) { return runCommand("command -v " + tool + " >/dev/null").status == 0; }

std::string assertion(const std::string& clientId, const std::string& aud) {
  const std::string key = clientId == "resource-server" ? "other-client" : "rs384-client";
  Json header = object({{"alg", "RS384"}, {"kid", key}, {"typ", "JWT"}});
  return jose().sign("RS384", keyFile(key), header, claims(clientId, aud));
}

std::string accessToken(const Broker& b) {
  const Response r = b.post("/token", tokenForm(assertion("rs384-client", b.tokenUrl())));
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  return r.json()->getValue<std::string>("access_token");
}

std::string kidOf(const std::string& token) {
  const Json decoded = jose().call(object({{"op", "decode"}, {"token", token}}));
  return decoded->getObject("header")->getValue<std::string>("kid");
}

std::set<std::string> kidsIn(const std::string& jwksJson) {
  Poco::JSON::Parser parser;
  const auto set = parser.parse(jwksJson).extract<Json>();
  std::set<std::string> out;
  const auto keysArray = set->getArray("keys");
  for (std::size_t i = 0; i < keysArray->size(); ++i) {
    out.insert(keysArray->getObject(static_cast<unsigned>(i))->getValue<std::string>("kid"));
  }
  return out;
}

std::set<std::string> publishedKids(const Broker& b) { return kidsIn(b.get("/jwks.json").body); }

/// Waits up to `ms` for `condition`.
template <class F>
bool eventually(F condition, int ms = 4000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

int maxAgeOf(const Response& r) {
  std::smatch m;
  const std::string cc = r.header("cache-control");
  BOOST_REQUIRE_MESSAGE(std::regex_search(cc, m, std::regex("max-age=([0-9]+)")), "Cache-Control: " << cc);
  return std::stoi(m[1]);
}

Json verifyWith(const Json& jwks, const Broker& b, const std::string& token) {
  return jose().call(object({{"op", "verify"},
                             {"token", token},
                             {"jwks", jwks},
                             {"issuer", b.baseUrl()},
                             {"audience", std::string("https://fhir.example.org/r4")},
                             {"typ", "at+jwt"}}));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(key_rotation)

BOOST_AUTO_TEST_CASE(every_token_verifies_against_the_jwks_a_resource_server_cached_before_it_while_keys_rotate) {
  Broker b(Broker::Options{kFastRotation, "", ""});
  // A resource server that honours Cache-Control: it refetches the JWKS only when its copy has expired, and verifies
  // each token with the copy it holds at that moment (fetched before the token was issued).
  Json cached;
  auto expires = std::chrono::steady_clock::time_point{};
  int issued = 0;
  int verified = 0;
  int failed = 0;
  int fetches = 0;
  std::set<std::string> signingKids;
  std::string firstFailure;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(14);
  while (std::chrono::steady_clock::now() < end) {
    if (std::chrono::steady_clock::now() >= expires) {
      const Response r = b.get("/jwks.json");
      BOOST_TEST_REQUIRE(r.status == 200);
      Poco::JSON::Parser parser;
      cached = parser.parse(r.body).extract<Json>();
      expires = std::chrono::steady_clock::now() + std::chrono::seconds(maxAgeOf(r));
      ++fetches;
    }
    const std::string token = accessToken(b);
    ++issued;
    const Json v = verifyWith(cached, b, token);
    if (v->optValue<bool>("ok", false)) {
      ++verified;
      signingKids.insert(v->getObject("header")->getValue<std::string>("kid"));
    } else {
      ++failed;
      if (firstFailure.empty()) {
        firstFailure = v->optValue<std::string>("error", "?");
      }
    }
  }
  BOOST_TEST_MESSAGE("rotation: issued=" << issued << " verified=" << verified << " failed=" << failed
                                         << " signing_keys=" << signingKids.size() << " jwks_fetches=" << fetches);
  std::cout << "keyring rotation e2e: issued=" << issued << " verified=" << verified << " failed=" << failed
            << " signing_keys=" << signingKids.size() << " jwks_fetches=" << fetches << std::endl;
  BOOST_TEST(failed == 0, firstFailure);
  BOOST_TEST(verified == issued);
  BOOST_TEST(issued > 50);
  BOOST_TEST(signingKids.size() >= 4U);  // several rotations happened while tokens were issued
  BOOST_TEST(b.log().find("event=key_activated") != std::string::npos);
  BOOST_TEST(b.log().find("level=warning") == std::string::npos, b.log());
}

BOOST_AUTO_TEST_CASE(jwks_is_served_with_the_configured_max_age) {
  Broker b(Broker::Options{kFastRotation, "", ""});
  const Response r = b.get("/jwks.json");
  BOOST_TEST(r.status == 200);
  BOOST_TEST(r.header("cache-control") == "public, max-age=1");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(key_commands)

BOOST_AUTO_TEST_CASE(emergency_revoke_removes_the_key_from_the_jwks_at_once_and_its_tokens_stop_verifying) {
  Broker b;
  const std::string token = accessToken(b);
  const std::string kid = kidOf(token);
  BOOST_REQUIRE(publishedKids(b).contains(kid));

  const Run refused = keys(b, "revoke " + kid);
  BOOST_TEST(refused.status == 1, refused.output);
  BOOST_TEST(refused.output.find("is the active signing key") != std::string::npos, refused.output);
  BOOST_TEST(refused.output.find("--force") != std::string::npos, refused.output);
  BOOST_TEST(publishedKids(b).contains(kid));

  const auto started = std::chrono::steady_clock::now();
  const Run forced = keys(b, "revoke " + kid + " --force");
  BOOST_TEST(forced.status == 0, forced.output);
  BOOST_TEST(forced.output.find("WARNING: every token " + kid + " signed stops verifying") != std::string::npos,
             forced.output);
  BOOST_TEST(forced.output.find("is now the active signing key") != std::string::npos, forced.output);
  BOOST_TEST(eventually([&] { return !publishedKids(b).contains(kid); }, 2000));
  const auto took =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  BOOST_TEST_MESSAGE("revoked key left /jwks.json " << took << " ms after the command started");

  // A resource server that refetches the JWKS no longer accepts the token; a new token is signed by a new key.
  const Json old = jose().verify(token, b.baseUrl() + "/jwks.json", b.baseUrl(), "https://fhir.example.org/r4");
  BOOST_TEST(!old->optValue<bool>("ok", false));
  const std::string fresh = accessToken(b);
  BOOST_TEST(kidOf(fresh) != kid);
  const Json ok = jose().verify(fresh, b.baseUrl() + "/jwks.json", b.baseUrl(), "https://fhir.example.org/r4");
  BOOST_TEST(ok->optValue<bool>("ok", false), ok->optValue<std::string>("error", ""));
  BOOST_TEST(b.log().find("event=key_activated_early") != std::string::npos);

  // Introspection, where the broker has it, finds the token inactive too: its key is gone.
  const Response introspected = b.post(
      "/introspect", formEncode({{"token", token},
                                 {"client_assertion_type", kJwtBearer},
                                 {"client_assertion", assertion("resource-server", b.baseUrl() + "/introspect")}}));
  if (introspected.status == 200) {
    BOOST_TEST(introspected.json()->getValue<bool>("active") == false, introspected.body);
  } else {
    BOOST_TEST_MESSAGE("no introspection endpoint (HTTP " << introspected.status << "); the JWKS was checked");
  }
  BOOST_TEST(keys(b, "revoke " + kid).output.find("already revoked") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(commands_change_the_running_service_without_a_restart) {
  Broker b;
  const std::string first = kidOf(accessToken(b));

  const Run list = keys(b, "list");
  BOOST_TEST(list.status == 0, list.output);
  BOOST_TEST(list.output.find("smart-broker running: yes") != std::string::npos, list.output);
  BOOST_TEST(list.output.find(first) != std::string::npos, list.output);
  BOOST_TEST(list.output.find("active") != std::string::npos, list.output);

  // rotate: the broker stages a key, publishes it, and keeps signing with the current one (lead time: 1 day).
  const Run rotate = keys(b, "rotate");
  BOOST_TEST(rotate.status == 0, rotate.output);
  BOOST_TEST(rotate.output.find("smart-broker staged") != std::string::npos, rotate.output);
  BOOST_TEST(eventually([&] { return publishedKids(b).size() == 2U; }));
  BOOST_TEST(kidOf(accessToken(b)) == first);
  std::string staged;
  for (const auto& k : publishedKids(b)) {
    if (k != first) {
      staged = k;
    }
  }
  BOOST_REQUIRE(!staged.empty());

  // export-jwks prints what the broker serves.
  const Run exported = runBroker("keys export-jwks --config " + b.configPath());
  BOOST_TEST(exported.status == 0, exported.output);
  BOOST_TEST(kidsIn(exported.output) == publishedKids(b));

  // The active key cannot be retired before its successor is ready; the staged one can be withdrawn.
  const Run early = keys(b, "retire " + first);
  BOOST_TEST(early.status == 1, early.output);
  BOOST_TEST(early.output.find("no successor is ready") != std::string::npos, early.output);
  const Run withdraw = keys(b, "retire " + staged);
  BOOST_TEST(withdraw.status == 0, withdraw.output);
  BOOST_TEST(eventually([&] { return publishedKids(b) == std::set<std::string>{first}; }));

  // rotate --now: a new key signs at once, with the warning; the old one stays published (retired).
  const Run now = keys(b, "rotate --now");
  BOOST_TEST(now.status == 0, now.output);
  BOOST_TEST(now.output.find("WARNING:") != std::string::npos, now.output);
  BOOST_TEST(now.output.find("resource servers caching the old JWKS") != std::string::npos, now.output);
  BOOST_TEST(eventually([&] { return kidOf(accessToken(b)) != first; }));
  BOOST_TEST(publishedKids(b).contains(first));
  BOOST_TEST(keys(b, "list").output.find("retired") != std::string::npos);

  BOOST_TEST(keys(b, "retire no-such-kid").status == 1);
  // A base64url thumbprint may begin with '-': it is taken as the kid, not refused as an unknown option.
  const Run dash = keys(b, "retire -no-such-kid");
  BOOST_TEST(dash.status == 1, dash.output);
  BOOST_TEST(dash.output.find("-no-such-kid") != std::string::npos, dash.output);
  BOOST_TEST(keys(b, "revoke -- -no-such-kid").status == 1);
  BOOST_TEST(keys(b, "frobnicate").status == 2);
  BOOST_TEST(b.log().find("event=keyring_error") == std::string::npos, b.log());
}

BOOST_AUTO_TEST_CASE(a_rotation_requested_while_the_broker_is_stopped_is_applied_when_it_starts) {
  Broker b;
  const std::string first = kidOf(accessToken(b));
  BOOST_REQUIRE(b.stop() == 0);
  const Run rotate = keys(b, "rotate");
  BOOST_TEST(rotate.status == 0, rotate.output);
  BOOST_TEST(rotate.output.find("not running") != std::string::npos, rotate.output);
  BOOST_TEST(keys(b, "list").output.find("smart-broker running: no") != std::string::npos);
  b.start();
  BOOST_TEST(publishedKids(b).size() == 2U);
  BOOST_TEST(kidOf(accessToken(b)) == first);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(key_files)

BOOST_AUTO_TEST_CASE(a_key_file_or_directory_with_loose_permissions_is_refused_at_start_and_reported_while_running) {
  char tmpl[] = "/tmp/smart-broker-keyring-e2e-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(tmpl) != nullptr);
  const fs::path dir = tmpl;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  const Broker::Options opts{"", "", dir.string()};
  std::string kid;
  {
    Broker b(opts);
    kid = kidOf(accessToken(b));
    const fs::path keyFilePath = dir / "state" / "keys" / (kid + ".pem");
    BOOST_REQUIRE(fs::exists(keyFilePath));
    // Tampered while running: reported, and the keys in memory keep serving.
    fs::permissions(keyFilePath, static_cast<fs::perms>(0644));
    BOOST_TEST(b.waitForLog("event=keyring_error", 4000), b.log());
    BOOST_TEST(b.log().find("too open") != std::string::npos);
    BOOST_TEST(kidOf(accessToken(b)) == kid);
    BOOST_TEST(keys(b, "list").status == 0);
    BOOST_REQUIRE(b.stop() == 0);
  }
  auto refusedStart = [&](const std::string& expected) {
    try {
      Broker b(opts);
      BOOST_ERROR("the broker started with " << expected);
    } catch (const std::runtime_error& e) {
      const std::string log = e.what();
      BOOST_TEST(log.find("event=startup_failed reason=keyring") != std::string::npos, log);
      BOOST_TEST(log.find(expected) != std::string::npos, log);
    }
  };
  refusedStart(kid + ".pem: permissions 644 are too open");
  fs::permissions(dir / "state" / "keys" / (kid + ".pem"), static_cast<fs::perms>(0600));
  fs::permissions(dir / "state" / "keys", static_cast<fs::perms>(0755));
  refusedStart("keys: permissions 755 are too open");
  fs::permissions(dir / "state" / "keys", static_cast<fs::perms>(0700));
  Broker again(opts);
  BOOST_TEST(kidOf(accessToken(again)) == kid);
}

BOOST_AUTO_TEST_CASE(private_keys_are_sealed_with_a_kek_file_and_a_wrong_kek_is_refused) {
  char tmpl[] = "/tmp/smart-broker-keyring-e2e-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(tmpl) != nullptr);
  const fs::path dir = tmpl;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  const fs::path kekPath = dir / "keyring.kek";
  auto writeKek = [&](char fill) {
    std::ofstream(kekPath, std::ios::trunc) << std::string(64, fill) << "\n";
    fs::permissions(kekPath, static_cast<fs::perms>(0600));
  };
  writeKek('a');
  const Broker::Options opts{"keyring:\n  kek_file: " + kekPath.string() + "\n", "", dir.string()};
  std::string kid;
  {
    Broker b(opts);
    kid = kidOf(accessToken(b));
    BOOST_TEST(fs::exists(dir / "state" / "keys" / (kid + ".pem.sealed")));
    BOOST_TEST(!fs::exists(dir / "state" / "keys" / (kid + ".pem")));
    BOOST_REQUIRE(b.stop() == 0);
  }
  writeKek('b');
  try {
    Broker b(opts);
    BOOST_ERROR("the broker started with a wrong key-encryption key");
  } catch (const std::runtime_error& e) {
    BOOST_TEST(std::string(e.what()).find("wrong key-encryption key") != std::string::npos, e.what());
  }
  writeKek('a');
  Broker b(opts);
  BOOST_TEST(kidOf(accessToken(b)) == kid);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(operations_files)

BOOST_AUTO_TEST_CASE(the_keys_script_passes_bash_n_and_shellcheck) {
  const std::string script = std::string(SMARTBROKER_SOURCE_DIR) + "/scripts/smart-broker-keys";
  const Run syntax = runCommand("bash -n " + script);
  BOOST_TEST(syntax.status == 0, syntax.output);
  if (!onPath("shellcheck")) {
    BOOST_TEST_MESSAGE("SKIPPED shellcheck: not installed");
    std::cout << "SKIPPED shellcheck of scripts/smart-broker-keys: shellcheck is not installed" << std::endl;
    return;
  }
  const Run lint = runCommand("shellcheck " + script);
  BOOST_TEST(lint.status == 0, lint.output);
}

BOOST_AUTO_TEST_CASE(the_keys_script_runs_the_binary_with_the_arguments) {
  Broker b;
  const std::string script = std::string(SMARTBROKER_SOURCE_DIR) + "/scripts/smart-broker-keys";
  const Run list = runCommand("SMART_BROKER_USER= SMART_BROKER_BIN=" + std::string(SMARTBROKER_BINARY) + " " +
                              script + " --config " + b.configPath() + " list");
  BOOST_TEST(list.status == 0, list.output);
  BOOST_TEST(list.output.find("smart-broker running: yes") != std::string::npos, list.output);
  const Run help = runCommand(script + " --help");
  BOOST_TEST(help.status == 0, help.output);
  BOOST_TEST(help.output.find("revoke KID") != std::string::npos, help.output);
}

BOOST_AUTO_TEST_CASE(the_systemd_units_pass_systemd_analyze_verify) {
  if (!onPath("systemd-analyze")) {
    BOOST_TEST_MESSAGE("SKIPPED: systemd-analyze is not installed");
    std::cout << "SKIPPED systemd-analyze verify: systemd-analyze is not installed" << std::endl;
    return;
  }
  char tmpl[] = "/tmp/smart-broker-unit-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(tmpl) != nullptr);
  const fs::path dir = tmpl;
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  // verify checks that ExecStart= exists: point the unit at the binary under test.
  std::ifstream in(std::string(SMARTBROKER_SOURCE_DIR) + "/systemd/smart-broker.service");
  std::stringstream text;
  text << in.rdbuf();
  const std::string unit = std::regex_replace(text.str(), std::regex("/usr/sbin/smart-broker"), SMARTBROKER_BINARY);
  std::ofstream(dir / "smart-broker.service") << unit;
  const Run verify = runCommand("systemd-analyze verify " + (dir / "smart-broker.service").string());
  if (verify.output.find("Failed to initialize") != std::string::npos ||
      verify.output.find("System has not been booted with systemd") != std::string::npos) {
    BOOST_TEST_MESSAGE("SKIPPED: systemd-analyze cannot run here: " << verify.output);
    std::cout << "SKIPPED systemd-analyze verify: " << verify.output << std::endl;
    return;
  }
  BOOST_TEST(verify.status == 0, verify.output);
  // Only warnings about this unit matter (the host's own units may have unrelated ones).
  BOOST_TEST(verify.output.find("smart-broker.service:") == std::string::npos, verify.output);
  const Run security =
      runCommand("systemd-analyze security --offline=true --no-pager " + (dir / "smart-broker.service").string());
  std::smatch m;
  if (std::regex_search(security.output, m, std::regex("Overall exposure level for [^:]*: ([0-9.]+)"))) {
    std::cout << "systemd-analyze security exposure: " << m[1] << std::endl;
    BOOST_TEST(std::stod(m[1]) <= 2.0, security.output);
  } else {
    BOOST_TEST_MESSAGE("systemd-analyze security gave no score: " << security.output);
  }
}

BOOST_AUTO_TEST_SUITE_END()
