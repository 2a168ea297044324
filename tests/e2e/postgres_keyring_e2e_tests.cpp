// End-to-end: one keyring in PostgreSQL for two smart-broker processes that share no keys directory.
//
// Needs SMARTBROKER_TEST_PG (scripts/test starts a private cluster and sets it); without it each case passes after
// printing why it did not run. Each case creates its own database and gives each instance its own state directory;
// both instances read one key-encryption key file and share one public_base_url (as behind a load balancer).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/test/unit_test.hpp>

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Parser.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"

using namespace e2e;

namespace {

namespace fs = std::filesystem;

const std::string kBase = "https://auth.example.org/smart";
const std::string kAudience = "https://fhir.example.org/r4";

bool skipWithoutPostgres() {
  const char* pg = std::getenv("SMARTBROKER_TEST_PG");
  if (pg == nullptr || *pg == '\0') {
    std::cout << "SKIPPED: SMARTBROKER_TEST_PG is unset (scripts/test sets it; see tests/pg/pg-cluster)\n";
    return true;
  }
  return false;
}

std::string randomName(const std::string& prefix) {
  std::random_device rd;
  std::mt19937_64 rng(rd());
  std::string s = prefix;
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

/// `smart-broker keys ARGS --config <the broker's config>`.
Run keys(const Broker& b, const std::string& args) {
  return runBroker("keys " + args + " --config " + b.configPath());
}

/// A temporary directory, removed at the end.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/smart-broker-pgkeys-e2e-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

/// A fresh database (CREATE DATABASE through psql), dropped at the end.
class Database {
 public:
  Database() : admin_(std::getenv("SMARTBROKER_TEST_PG")), name_(randomName("sb_keys_e2e_")) {
    sh("psql -q -v ON_ERROR_STOP=1 '" + admin_ + "' -c 'CREATE DATABASE " + name_ + "' >/dev/null");
  }
  ~Database() {
    (void)std::system(
        ("psql -q '" + admin_ + "' -c 'DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)' >/dev/null 2>&1").c_str());
  }
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;
  std::string connection() const { return admin_ + " dbname=" + name_; }
  /// One value from psql (unaligned, tuples only).
  std::string query(const std::string& sql) const {
    const Run r = runCommand("psql -qAt '" + connection() + "' -c \"" + sql + "\"");
    BOOST_REQUIRE_MESSAGE(r.status == 0, r.output);
    return r.output;
  }

 private:
  std::string admin_;
  std::string name_;
};

/// A key-encryption key file (64 hexadecimal characters, mode 0600) that every instance of the deployment reads.
std::string writeKek(const std::string& dir, char seed) {
  const std::string path = dir + "/keyring-" + seed + ".kek";
  std::ofstream(path) << std::string(64, seed) << "\n";
  ::chmod(path.c_str(), 0600);
  return path;
}

/// The `server:` lines for the shared database, then a top-level `keyring:` section (`extraKeyring` lines, indented
/// by two spaces) with the key-encryption key file.
std::string pgConfig(const Database& db, const std::string& kekFile, const std::string& extraKeyring = "") {
  std::string keyring = extraKeyring;
  if (!kekFile.empty()) {
    keyring += "  kek_file: " + kekFile + "\n";
  }
  return "  storage: postgresql\n  postgresql:\n    connection: \"" + db.connection() + "\"\n    pool_size: 4\n" +
         (keyring.empty() ? std::string() : "keyring:\n" + keyring);
}

/// Rotation every 8 s: published 2 s (plus the 2 s propagation delay of a shared keyring) before it signs, the
/// successor staged 3 s after an activation, JWKS cached for 1 s.
const std::string kFastRotation =
    "  rotation_period: 8\n"
    "  lead_time: 2\n"
    "  jwks_max_age: 1\n"
    "  retirement_grace: 1\n";

Broker::Options instance(const std::string& stateDir, const std::string& config) {
  Broker::Options o;
  o.state_dir = stateDir;
  o.server_extra = config;
  return o;
}

std::string assertion(const std::string& clientId, const std::string& aud) {
  Json header = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  return jose().sign("RS384", keyFile("rs384-client"), header, claims(clientId, aud));
}

std::string accessToken(const Broker& b) {
  const Response r = b.post("/token", tokenForm(assertion("rs384-client", kBase + "/token")));
  BOOST_TEST_REQUIRE(r.status == 200, r.body);
  return r.json()->getValue<std::string>("access_token");
}

Json parse(const std::string& json) {
  Poco::JSON::Parser parser;
  return parser.parse(json).extract<Json>();
}

std::set<std::string> kidsIn(const std::string& jwksJson) {
  std::set<std::string> out;
  const auto keysArray = parse(jwksJson)->getArray("keys");
  for (std::size_t i = 0; i < keysArray->size(); ++i) {
    out.insert(keysArray->getObject(static_cast<unsigned>(i))->getValue<std::string>("kid"));
  }
  return out;
}

std::set<std::string> publishedKids(const Broker& b) { return kidsIn(b.get("/jwks.json").body); }

std::string kidOf(const std::string& token) {
  const Json decoded = jose().call(object({{"op", "decode"}, {"token", token}}));
  return decoded->getObject("header")->getValue<std::string>("kid");
}

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

/// kid → how many times `event` names it in `log`.
std::map<std::string, int> eventKids(const std::string& log, const std::string& event) {
  std::map<std::string, int> out;
  const std::regex re("event=" + event + " kid=([A-Za-z0-9_-]+)");
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it) {
    ++out[(*it)[1]];
  }
  return out;
}

/// A resource server in front of one instance: it caches that instance's JWKS as Cache-Control allows and
/// verifies each token with the copy it holds at that moment (fetched before the token was issued).
class ResourceServer {
 public:
  explicit ResourceServer(const Broker& jwksFrom) : broker_(jwksFrom) {}

  Json verify(const std::string& token) {
    return jose().call(object({{"op", "verify"},
                               {"token", token},
                               {"jwks", jwks_},
                               {"issuer", kBase},
                               {"audience", kAudience},
                               {"typ", "at+jwt"}}));
  }

  /// Refetches when the cached copy has expired.
  void refresh() {
    if (jwks_ && std::chrono::steady_clock::now() < expires_) {
      return;
    }
    const Response r = broker_.get("/jwks.json");
    BOOST_TEST_REQUIRE(r.status == 200);
    std::smatch m;
    const std::string cc = r.header("cache-control");
    BOOST_REQUIRE_MESSAGE(std::regex_search(cc, m, std::regex("max-age=([0-9]+)")), "Cache-Control: " << cc);
    jwks_ = parse(r.body);
    expires_ = std::chrono::steady_clock::now() + std::chrono::seconds(std::stoi(m[1]));
    ++fetches;
  }

  int fetches = 0;

 private:
  const Broker& broker_;
  Json jwks_;
  std::chrono::steady_clock::time_point expires_{};
};

}  // namespace

BOOST_AUTO_TEST_SUITE(postgres_keyring)

BOOST_AUTO_TEST_CASE(every_token_of_either_instance_verifies_against_either_jwks_while_keys_rotate) {
  if (skipWithoutPostgres()) {
    return;
  }
  const Database db;
  const TempDir secrets;
  const TempDir dirA;
  const TempDir dirB;
  const std::string config = pgConfig(db, writeKek(secrets.str(), 'a'), kFastRotation);
  Broker a(instance(dirA.str(), config), kBase);
  Broker b(instance(dirB.str(), config), kBase);

  // An operator's `keys rotate` early on: the active key has no staged successor yet, so this stages one that takes
  // over as soon as it is safe, ahead of the schedule. Exactly one of the two instances makes it.
  const Run rotate = keys(a, "rotate");
  BOOST_TEST(rotate.status == 0, rotate.output);
  BOOST_TEST(rotate.output.find("smart-broker staged") != std::string::npos, rotate.output);

  ResourceServer atA(a);
  ResourceServer atB(b);
  int issued = 0;
  int verified = 0;
  std::string firstFailure;
  std::map<std::string, std::set<char>> signedBy;  // kid → instances that issued tokens with it
  std::vector<std::string> signingOrder;           // kids in the order they first signed
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < end) {
    for (const auto& [name, broker] : {std::pair{'a', &a}, std::pair{'b', &b}}) {
      atA.refresh();
      atB.refresh();
      const std::string token = accessToken(*broker);
      ++issued;
      bool ok = true;
      for (ResourceServer* rs : {&atA, &atB}) {
        const Json v = rs->verify(token);
        if (!v->optValue<bool>("ok", false)) {
          ok = false;
          if (firstFailure.empty()) {
            firstFailure = std::string("token of ") + name + " (kid " + kidOf(token) + ") against the JWKS of " +
                           (rs == &atA ? "a" : "b") + ": " + v->optValue<std::string>("error", "?");
          }
        }
      }
      if (ok) {
        ++verified;
      }
      const std::string kid = kidOf(token);
      if (!signedBy.contains(kid)) {
        signingOrder.push_back(kid);
      }
      signedBy[kid].insert(name);
    }
  }
  std::cout << "postgres keyring e2e: issued=" << issued << " verified=" << verified
            << " signing_keys=" << signedBy.size() << " jwks_fetches=" << atA.fetches + atB.fetches << std::endl;
  BOOST_TEST(verified == issued, firstFailure);
  BOOST_TEST(issued > 100);
  // The first key, the one `keys rotate` staged, and at least one from the schedule.
  BOOST_TEST(signedBy.size() >= 3U);
  // Both instances sign with each key (the newest may have begun just before the end).
  for (std::size_t i = 0; i + 1 < signingOrder.size(); ++i) {
    BOOST_TEST(signedBy[signingOrder[i]].size() == 2U, signingOrder[i] << " signed on one instance only");
  }

  // Exactly one instance made and activated each key; the other only loaded it.
  const std::string logA = a.log();
  const std::string logB = b.log();
  std::map<std::string, int> created = eventKids(logA, "key_created");
  std::map<std::string, int> activated = eventKids(logA, "key_activated");
  for (const auto& [kid, n] : eventKids(logB, "key_created")) {
    created[kid] += n;
  }
  for (const auto& [kid, n] : eventKids(logB, "key_activated")) {
    activated[kid] += n;
  }
  BOOST_TEST(activated.size() >= signedBy.size());
  for (const auto& [kid, n] : activated) {
    BOOST_TEST(n == 1, kid << " activated " << n << " times");
    BOOST_TEST(created[kid] == 1, kid << " created " << created[kid] << " times");
  }
  for (const auto& [kid, by] : signedBy) {
    BOOST_TEST(activated.contains(kid), kid << " signed but was never activated");
  }
  BOOST_TEST(logB.find("event=keyring_loaded") != std::string::npos);
  BOOST_TEST(logA.find("event=keyring_error") == std::string::npos, logA);
  BOOST_TEST(logB.find("event=keyring_error") == std::string::npos, logB);
  BOOST_TEST(logA.find("level=warning") == std::string::npos, logA);
  BOOST_TEST(logB.find("level=warning") == std::string::npos, logB);
  // No key file anywhere: the keyring is the database's, private keys sealed there.
  BOOST_TEST(!fs::exists(dirA.str() + "/state/keys"));
  BOOST_TEST(!fs::exists(dirB.str() + "/state/keys"));
  BOOST_TEST(db.query("SELECT COUNT(*) FROM keyring_secrets WHERE position(convert_to('PRIVATE', 'UTF8') in sealed) "
                      "> 0 OR position(convert_to('SBKEYv1', 'UTF8') in sealed) <> 1") == "0\n");
}

BOOST_AUTO_TEST_CASE(key_commands_work_against_the_database_with_either_instances_config) {
  if (skipWithoutPostgres()) {
    return;
  }
  const Database db;
  const TempDir secrets;
  const TempDir dirA;
  const TempDir dirB;
  const std::string config = pgConfig(db, writeKek(secrets.str(), 'b'));
  Broker a(instance(dirA.str(), config), kBase);
  Broker b(instance(dirB.str(), config), kBase);
  const std::string first = kidOf(accessToken(a));
  BOOST_TEST(kidOf(accessToken(b)) == first);

  const Run list = keys(b, "list");
  BOOST_TEST(list.status == 0, list.output);
  BOOST_TEST(list.output.find("keyring postgresql host=") != std::string::npos, list.output);
  BOOST_TEST(list.output.find("smart-broker running: yes") != std::string::npos, list.output);
  BOOST_TEST(list.output.find(first) != std::string::npos, list.output);

  const Run rotate = keys(a, "rotate");
  BOOST_TEST(rotate.status == 0, rotate.output);
  BOOST_TEST(rotate.output.find("smart-broker staged") != std::string::npos, rotate.output);
  const Json listed = parse(keys(b, "list --json").output);
  std::string staged;
  const auto records = listed->getArray("keys");
  for (std::size_t i = 0; i < records->size(); ++i) {
    const auto k = records->getObject(static_cast<unsigned>(i));
    if (k->getValue<std::string>("state") == "pending") {
      staged = k->getValue<std::string>("kid");
    }
  }
  BOOST_REQUIRE(!staged.empty());
  // Both instances publish the staged key within a second; the signing key stays.
  BOOST_TEST(eventually([&] { return publishedKids(a).contains(staged) && publishedKids(b).contains(staged); }, 1500));
  BOOST_TEST(kidOf(accessToken(b)) == first);
  const Run exported = keys(b, "export-jwks");
  BOOST_TEST(exported.status == 0, exported.output);
  BOOST_TEST(kidsIn(exported.output) == publishedKids(a));

  const Run refused = keys(b, "revoke " + first);
  BOOST_TEST(refused.status == 1, refused.output);
  BOOST_TEST(refused.output.find("is the active signing key") != std::string::npos, refused.output);

  const Run retire = keys(b, "retire " + staged);
  BOOST_TEST(retire.status == 0, retire.output);
  BOOST_TEST(retire.output.find("withdrew the staged key") != std::string::npos, retire.output);
  BOOST_TEST(eventually([&] { return !publishedKids(a).contains(staged) && !publishedKids(b).contains(staged); },
                        1500));
  BOOST_TEST(db.query("SELECT COUNT(*) FROM keyring_secrets") == "1\n");  // the withdrawn key's secret is gone
}

BOOST_AUTO_TEST_CASE(refuses_to_start_without_the_key_encryption_key_or_with_another_one) {
  if (skipWithoutPostgres()) {
    return;
  }
  const Database db;
  const TempDir secrets;
  const TempDir dirA;
  const TempDir dirB;
  const TempDir dirC;
  BOOST_CHECK_EXCEPTION(Broker(instance(dirA.str(), pgConfig(db, "")), kBase), std::runtime_error,
                        [](const std::runtime_error& e) {
                          const std::string what = e.what();
                          BOOST_TEST(what.find("storage postgresql keeps the signing keys in the database, "
                                               "sealed") != std::string::npos,
                                     what);
                          return true;
                        });
  Broker a(instance(dirB.str(), pgConfig(db, writeKek(secrets.str(), 'c'))), kBase);
  BOOST_CHECK_EXCEPTION(Broker(instance(dirC.str(), pgConfig(db, writeKek(secrets.str(), 'd'))), kBase),
                        std::runtime_error, [](const std::runtime_error& e) {
                          const std::string what = e.what();
                          BOOST_TEST(what.find("event=startup_failed reason=keyring") != std::string::npos, what);
                          BOOST_TEST(what.find("wrong key-encryption key") != std::string::npos, what);
                          return true;
                        });
}

BOOST_AUTO_TEST_CASE(an_instance_moved_to_postgresql_brings_its_file_keyring_along) {
  if (skipWithoutPostgres()) {
    return;
  }
  const Database db;
  const TempDir secrets;
  const TempDir dirA;
  const TempDir dirB;
  std::string kid;
  {
    // Before: one instance, SQLite, keys in files.
    Broker single(instance(dirA.str(), ""));
    const Response r = single.post("/token", tokenForm(assertion("rs384-client", single.tokenUrl())));
    BOOST_TEST_REQUIRE(r.status == 200, r.body);
    kid = kidOf(r.json()->getValue<std::string>("access_token"));
  }
  const std::string config = pgConfig(db, writeKek(secrets.str(), 'e'));
  Broker a(instance(dirA.str(), config), kBase);
  BOOST_TEST(a.log().find("event=keyring_imported") != std::string::npos, a.log());
  BOOST_TEST(kidOf(accessToken(a)) == kid);  // tokens issued before the move keep verifying: same key
  Broker b(instance(dirB.str(), config), kBase);
  BOOST_TEST(kidOf(accessToken(b)) == kid);
  BOOST_TEST(b.log().find("event=keyring_imported") == std::string::npos, b.log());
  BOOST_TEST(publishedKids(a) == publishedKids(b));
  // Restarting the first instance does not import again: the database keyring is in use, the files are ignored.
  a.stop();
  a.start();
  BOOST_TEST(a.waitForLog("event=keyring_files_ignored"));
  BOOST_TEST(kidOf(accessToken(a)) == kid);
}

BOOST_AUTO_TEST_SUITE_END()
