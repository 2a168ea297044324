// End-to-end: the process as an operator sees it — --check-config, signals, reload, port conflicts.
#include <signal.h>
#include <sys/wait.h>

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "harness.hpp"

using namespace e2e;
namespace fs = std::filesystem;

namespace {

std::string firstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string assertionFor(const Broker& b, const std::string& clientId) {
  Json header = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  return jose().sign("RS384", keyFile("rs384-client"), header, claims(clientId, b.tokenUrl()));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(check_config)

BOOST_AUTO_TEST_CASE(accepts_the_demo_configuration) {
  const Run run = runBroker("--check-config " + std::string(SMARTBROKER_SOURCE_DIR) + "/config/demo/smart-broker.yaml");
  BOOST_TEST(run.status == 0, run.output);
}

BOOST_AUTO_TEST_CASE(reports_each_broken_configuration_as_file_line_key_problem) {
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(dataDir() + "/configs")) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("bad-")) {
      continue;
    }
    const std::string path = entry.path().string();
    std::string expect = firstLine(path);
    BOOST_TEST_REQUIRE(expect.starts_with("# expect: "), name);
    expect = expect.substr(10);
    const std::size_t at = expect.find("{file}");
    if (at != std::string::npos) {
      expect.replace(at, 6, path);
    }
    const Run run = runBroker("--check-config " + path);
    BOOST_TEST(run.status == 1, name);
    BOOST_TEST(run.output.find(expect) != std::string::npos, name << ": expected «" << expect << "» in «" << run.output << "»");
    ++checked;
  }
  BOOST_TEST(checked >= 8);
}

BOOST_AUTO_TEST_CASE(refuses_to_start_with_a_broken_configuration) {
  const std::string dir = fs::temp_directory_path() / ("sb-bad-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir + "/c.yaml") << "server:\n  port: 99999\n";
  const Run run = runBroker("--config " + dir + "/c.yaml");
  BOOST_TEST(run.status == 1);
  BOOST_TEST(run.output.find("event=startup_failed") != std::string::npos);
  fs::remove_all(dir);
}

BOOST_AUTO_TEST_CASE(prints_usage_for_unknown_arguments) {
  const Run run = runBroker("--frobnicate");
  BOOST_TEST(run.status == 2);
  BOOST_TEST(run.output.find("usage:") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(process)

BOOST_AUTO_TEST_CASE(exits_zero_on_sigterm) {
  Broker b;
  BOOST_TEST(b.stop() == 0);
  BOOST_TEST(b.log().find("event=stopped") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(exits_zero_on_sigterm_right_after_start) {
  // The window POCO's ServerApplication leaves open (POCO-NOTES.md): a SIGTERM at once must still be clean.
  for (int i = 0; i < 5; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::freopen("/dev/null", "w", stdout);
      ::execl(SMARTBROKER_BINARY, SMARTBROKER_BINARY, "--help", nullptr);
      ::_exit(127);
    }
    ::waitpid(pid, nullptr, 0);
  }
  Broker b;
  b.signal(SIGTERM);
  BOOST_TEST(b.stop() == 0);
}

BOOST_AUTO_TEST_CASE(survives_sighup_and_reloads_the_registry) {
  Broker b;
  BOOST_TEST(b.post("/token", tokenForm(assertionFor(b, "rs384-client"))).status == 200);
  // Disable rs384-client in the configuration, then SIGHUP.
  std::string text;
  {
    std::ifstream in(b.configPath());
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  const std::string marker = "  - client_id: rs384-client\n";
  text.replace(text.find(marker), marker.size(), marker + "    enabled: false\n");
  std::ofstream(b.configPath()) << text;
  b.signal(SIGHUP);
  BOOST_TEST_REQUIRE(b.waitForLog("event=reloaded"));
  const Response r = b.post("/token", tokenForm(assertionFor(b, "rs384-client")));
  BOOST_TEST(r.status == 401);
  BOOST_TEST(b.log().find("reason=client_disabled") != std::string::npos);
  // Other clients are unaffected, and the process is still the same one.
  Json header = object({{"alg", "ES384"}, {"kid", "es384-client"}, {"typ", "JWT"}});
  const std::string es = jose().sign("ES384", keyFile("es384-client"), header, claims("es384-client", b.tokenUrl()));
  BOOST_TEST(b.post("/token", tokenForm(es)).status == 200);
}

BOOST_AUTO_TEST_CASE(drops_no_request_while_reloading) {
  Broker b;
  std::vector<std::string> assertions;
  for (int i = 0; i < 120; ++i) {
    assertions.push_back(assertionFor(b, "rs384-client"));
  }
  std::atomic<std::size_t> next{0};
  std::atomic<int> ok{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&] {
      for (std::size_t i = next++; i < assertions.size(); i = next++) {
        try {
          (b.post("/token", tokenForm(assertions[i])).status == 200 ? ok : failed)++;
        } catch (const std::exception&) {
          ++failed;
        }
      }
    });
  }
  for (int i = 0; i < 5; ++i) {
    b.signal(SIGHUP);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& c : clients) {
    c.join();
  }
  BOOST_TEST(ok.load() == 120);
  BOOST_TEST(failed.load() == 0);
  BOOST_TEST(b.waitForLog("event=reloaded"));
}

BOOST_AUTO_TEST_CASE(keeps_the_previous_registry_when_a_reload_is_invalid) {
  Broker b;
  std::ofstream(b.configPath(), std::ios::app) << "  - client_id: [broken\n";
  b.signal(SIGHUP);
  BOOST_TEST_REQUIRE(b.waitForLog("event=reload_failed"));
  BOOST_TEST(b.post("/token", tokenForm(assertionFor(b, "rs384-client"))).status == 200);
}

BOOST_AUTO_TEST_CASE(refuses_to_start_when_the_port_is_taken) {
  Broker a;
  const Run run = runBroker("--config " + a.configPath());
  BOOST_TEST(run.status == 1);
  BOOST_TEST(run.output.find("already in use") != std::string::npos, run.output);
  // The first instance is unaffected.
  BOOST_TEST(a.get("/healthz").status == 200);
}

BOOST_AUTO_TEST_CASE(creates_private_key_files_under_a_private_directory) {
  Broker b;
  const fs::path keys = fs::path(b.stateDir()) / "state" / "keys";
  BOOST_TEST(((fs::status(keys).permissions() & fs::perms::all) == fs::perms::owner_all));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(keys)) {
    BOOST_TEST(((fs::status(entry).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write)));
    // Besides the private key: the keyring's state file and lock files (README "Signing keys and rotation").
    files += entry.path().extension() == ".pem" ? 1 : 0;
  }
  BOOST_TEST(files >= 1);
}

BOOST_AUTO_TEST_CASE(keeps_its_signing_key_across_restarts) {
  Broker b;
  const std::string before = b.get("/jwks.json").body;
  BOOST_TEST(b.stop() == 0);
  b.start();
  BOOST_TEST(b.get("/jwks.json").body == before);
}

BOOST_AUTO_TEST_CASE(refuses_a_key_directory_readable_by_others) {
  Broker b;
  BOOST_TEST(b.stop() == 0);
  fs::permissions(fs::path(b.stateDir()) / "state" / "keys", fs::perms::owner_all | fs::perms::group_read |
                                                                  fs::perms::group_exec);
  BOOST_CHECK_THROW(b.start(), std::runtime_error);
  BOOST_TEST(b.log().find("too open") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
