// The keyring on PostgreSQL: several managers on one database, one writer at a time, sealed keys only, outages.
//
// Needs SMARTBROKER_TEST_PG (scripts/test starts a private cluster and sets it); without it each case passes after
// printing why it did not run. Each case gets its own database; the outage case closes that database to connections
// (ALLOW_CONNECTIONS false, its sessions terminated), which disturbs no other case.
#define BOOST_TEST_MODULE keyring_pg
#include <boost/test/unit_test.hpp>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <latch>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "smartbroker/broker/postgres_keyring.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/jwks/base64url.hpp"
#include "smartbroker/jwks/jwk.hpp"
#include "smartbroker/keyring/keyring_storage.hpp"
#include "smartbroker/keyring/manager.hpp"

namespace {

namespace fs = std::filesystem;
namespace jw = smartbroker::jwks;
namespace kr = smartbroker::keyring;
namespace sb = smartbroker::broker;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;

constexpr std::int64_t kT0 = 1'700'000'000;

/// Rotate every 100 s, publish 20 s (plus the shared keyring's 2 s propagation delay) ahead, cache 10 s: the
/// successor is staged at kT0+77 and signs from kT0+100.
kr::Policy smallPolicy() {
  kr::Policy p;
  p.rotation_period = 100;
  p.lead_time = 20;
  p.jwks_max_age = 10;
  p.max_token_lifetime = 30;
  p.clock_skew = 5;
  p.retirement_grace = 7;
  p.propagation_delay = kr::kSharedPropagationDelay;
  return p;
}

std::string kek(char c) { return std::string(32, c); }

std::string randomSuffix() {
  std::random_device rd;
  std::mt19937_64 rng(rd());
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (int i = 0; i < 12; ++i) {
    s += kAlphabet[rng() % (sizeof kAlphabet - 1)];
  }
  return s;
}

const char* pgEnv() { return std::getenv("SMARTBROKER_TEST_PG"); }

bool skipWithoutPostgres() {
  if (pgEnv() == nullptr || *pgEnv() == '\0') {
    std::cout << "SKIPPED: SMARTBROKER_TEST_PG is unset (scripts/test sets it; see tests/pg/pg-cluster)\n";
    return true;
  }
  return false;
}

/// A fresh database, dropped afterwards; `admin()` is a session on the server's maintenance database.
class TestDatabase {
 public:
  TestDatabase() : admin_(pgEnv()), name_("sb_keyring_" + randomSuffix()) {
    Poco::Data::PostgreSQL::Connector::registerConnector();
    Poco::Data::Session session("PostgreSQL", admin_);
    session << "CREATE DATABASE " + name_, now;
  }
  ~TestDatabase() {
    try {
      Poco::Data::Session session("PostgreSQL", admin_);
      session << "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)", now;
    } catch (const Poco::Exception&) {
    }
  }
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  /// libpq takes the last value of a repeated keyword, so appending dbname selects the new database.
  std::string connection() const { return admin_ + " dbname=" + name_; }
  Poco::Data::Session session() const { return Poco::Data::Session("PostgreSQL", connection()); }

  /// The database refuses new connections and its open ones are terminated: to the broker it is gone.
  void takeDown() const {
    Poco::Data::Session session("PostgreSQL", admin_);
    session << "ALTER DATABASE " + name_ + " ALLOW_CONNECTIONS false", now;
    int terminated = 0;
    session << "SELECT CAST(COUNT(pg_terminate_backend(pid)) AS INTEGER) FROM pg_stat_activity WHERE datname = '" +
                   name_ + "'",
        into(terminated), now;
  }
  void bringUp() const {
    Poco::Data::Session session("PostgreSQL", admin_);
    session << "ALTER DATABASE " + name_ + " ALLOW_CONNECTIONS true", now;
  }

 private:
  std::string admin_;
  std::string name_;
};

class TempDir {
 public:
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "sb-keyring-pg-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

struct FakeClock {
  std::atomic<std::int64_t> t{kT0};
};

std::shared_ptr<kr::KeyringStorage> pgStorage(const TestDatabase& db, const std::string& instance) {
  sb::PostgresOptions o;
  o.connection = db.connection();
  return sb::openPostgresKeyring(o, instance, true);
}

kr::KeyringOptions pgOptions(const TestDatabase& db, FakeClock& clock, const std::string& instance,
                             std::string key = kek('k')) {
  kr::KeyringOptions o;
  o.policy = smallPolicy();
  o.kek = std::move(key);
  o.now = [&clock] { return clock.t.load(); };
  o.storage = pgStorage(db, instance);
  o.instance = instance;
  return o;
}

std::unique_ptr<kr::KeyringManager> openManager(kr::KeyringOptions o) {
  auto m = kr::KeyringManager::open(std::move(o));
  BOOST_REQUIRE_MESSAGE(m.has_value(), m.error());
  return std::move(*m);
}

std::set<std::string> publishedKids(const kr::KeySet& set) {
  std::set<std::string> out;
  for (const auto& k : set.published) {
    out.insert(k.kid);
  }
  return out;
}

bool hasEvent(const std::vector<kr::Event>& events, const std::string& name) {
  return std::ranges::any_of(events, [&](const kr::Event& e) { return e.name == name; });
}

/// A signature by `signer` verifies against the JWKS `set` serves (what a resource server does with it).
bool verifies(const kr::SigningKey& signer, const kr::KeySet& set) {
  const std::string token = signer.signCompact("at+jwt", "{}");
  const auto parsed = jw::parseJwkSet(set.jwksJson);
  if (!parsed) {
    return false;
  }
  const auto dot = token.rfind('.');
  for (const auto& k : parsed->set.keys) {
    if (k.kid == signer.kid()) {
      return jw::verifySignature(k, signer.alg(), token.substr(0, dot),
                                 jw::base64urlDecode(token.substr(dot + 1)).value_or(""));
    }
  }
  return false;
}

kr::KeyringManager::Tick tickOk(kr::KeyringManager& m) {
  auto t = m.tick();
  BOOST_TEST_REQUIRE(!t.error.has_value(), t.error.value_or(""));
  return t;
}

std::string toHex(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    out += kDigits[static_cast<unsigned char>(c) >> 4];
    out += kDigits[static_cast<unsigned char>(c) & 0x0f];
  }
  return out;
}

/// Every keyring table as text, the way a database dump or a curious operator would see it.
std::string dumpKeyringTables(const TestDatabase& db) {
  Poco::Data::Session session = db.session();
  std::string dump;
  for (const char* table : {"keyring_state", "keyring_keys", "keyring_secrets", "keyring_brokers"}) {
    std::vector<std::string> rows;
    session << std::string("SELECT row_to_json(t)::text FROM ") + table + " t", into(rows), now;
    for (const auto& r : rows) {
      dump += r + "\n";
    }
  }
  return dump;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(postgres_keyring)

BOOST_AUTO_TEST_CASE(two_managers_ticking_concurrently_perform_each_rotation_exactly_once) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const auto a = openManager(pgOptions(db, clock, "a"));
  const auto b = openManager(pgOptions(db, clock, "b"));
  BOOST_TEST(hasEvent(a->startupEvents(), "key_activated"));
  BOOST_TEST(!hasEvent(b->startupEvents(), "key_activated"));
  BOOST_TEST(b->current()->active->kid() == a->current()->active->kid());

  std::map<std::string, int> created;
  std::map<std::string, int> activated;
  std::map<std::string, std::set<std::string>> activatedBy;
  for (std::int64_t t = kT0 + 1; t <= kT0 + 320; ++t) {
    clock.t = t;
    // Both tick at the same moment, as two instances whose seconds line up.
    std::latch start(2);
    kr::KeyringManager::Tick ta;
    kr::KeyringManager::Tick tb;
    std::thread ra([&] {
      start.arrive_and_wait();
      ta = a->tick();
    });
    std::thread rb([&] {
      start.arrive_and_wait();
      tb = b->tick();
    });
    ra.join();
    rb.join();
    BOOST_TEST_REQUIRE(!ta.error.has_value(), ta.error.value_or(""));
    BOOST_TEST_REQUIRE(!tb.error.has_value(), tb.error.value_or(""));
    for (const auto& [name, tick] : {std::pair{"a", &ta}, std::pair{"b", &tb}}) {
      for (const kr::Event& e : tick->events) {
        if (e.name == "key_created") {
          ++created[e.kid];
        } else if (e.name == "key_activated") {
          ++activated[e.kid];
          activatedBy[e.kid].insert(name);
        }
      }
    }
  }
  // Rotations at kT0+100, +200 and +300, each by one of the two.
  BOOST_TEST(created.size() == 3U);
  BOOST_TEST(activated.size() == 3U);
  for (const auto& [kid, n] : created) {
    BOOST_TEST(n == 1, kid << " created " << n << " times");
  }
  for (const auto& [kid, n] : activated) {
    BOOST_TEST(n == 1, kid << " activated " << n << " times");
    BOOST_TEST(activatedBy[kid].size() == 1U);
  }
  tickOk(*a);
  tickOk(*b);
  BOOST_TEST(a->current()->active->kid() == b->current()->active->kid());
  BOOST_TEST(publishedKids(*a->current()) == publishedKids(*b->current()));
  BOOST_TEST(verifies(*a->current()->active, *b->current()));
  BOOST_TEST(verifies(*b->current()->active, *a->current()));
}

BOOST_AUTO_TEST_CASE(a_second_manager_follows_a_rotation_at_its_next_tick) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const auto a = openManager(pgOptions(db, clock, "a"));
  const auto b = openManager(pgOptions(db, clock, "b"));
  const std::string first = a->current()->active->kid();

  // The schedule: A stages the successor; B publishes it at its next tick, before it signs.
  clock.t = kT0 + 77;
  const auto staged = tickOk(*a);
  BOOST_TEST(hasEvent(staged.events, "key_created"));
  const auto followed = tickOk(*b);
  BOOST_REQUIRE(followed.published);
  BOOST_TEST(publishedKids(*followed.published) == publishedKids(*a->current()));
  BOOST_TEST(hasEvent(followed.events, "keyring_loaded"));
  BOOST_TEST(!hasEvent(followed.events, "key_created"));

  clock.t = kT0 + 101;
  const auto rotated = tickOk(*a);
  BOOST_TEST(hasEvent(rotated.events, "key_activated"));
  const std::string second = a->current()->active->kid();
  BOOST_TEST(second != first);
  const auto seen = tickOk(*b);
  BOOST_REQUIRE(seen.published);
  BOOST_TEST(seen.published->active->kid() == second);
  BOOST_TEST(!hasEvent(seen.events, "key_activated"));
  // B signs with the key A activated, with the private key it loaded from the database.
  BOOST_TEST(verifies(*b->current()->active, *a->current()));

  // An operator's `keys rotate --now` through the database: whoever ticks next makes the key, the other follows.
  auto admin = kr::KeyringAdmin::open(pgStorage(db, "keys"), smallPolicy(), [&clock] { return clock.t.load(); });
  BOOST_REQUIRE_MESSAGE(admin.has_value(), admin.error());
  BOOST_TEST(admin->brokerRunning());
  auto outcome = admin->rotate(true);
  BOOST_REQUIRE_MESSAGE(outcome.has_value(), outcome.error());
  BOOST_TEST(outcome->needs_broker);
  const auto byB = tickOk(*b);
  BOOST_TEST(hasEvent(byB.events, "key_activated"));
  const std::string third = b->current()->active->kid();
  BOOST_TEST(third != second);
  const auto byA = tickOk(*a);
  BOOST_REQUIRE(byA.published);
  BOOST_TEST(byA.published->active->kid() == third);
  BOOST_TEST(!hasEvent(byA.events, "key_activated"));
  auto listed = admin->read();
  BOOST_REQUIRE_MESSAGE(listed.has_value(), listed.error());
  BOOST_TEST(!listed->rotation_request.has_value());
  BOOST_TEST(listed->active()->kid == third);
  auto exported = admin->exportJwks();
  BOOST_REQUIRE_MESSAGE(exported.has_value(), exported.error());
  BOOST_TEST(*exported == a->current()->jwksJson);

  // `keys revoke` of the retired key: both instances stop publishing it at their next tick.
  auto revoked = admin->revoke(second, false);
  BOOST_REQUIRE_MESSAGE(revoked.has_value(), revoked.error());
  tickOk(*a);
  tickOk(*b);
  BOOST_TEST(!publishedKids(*a->current()).contains(second));
  BOOST_TEST(!publishedKids(*b->current()).contains(second));
}

BOOST_AUTO_TEST_CASE(the_tables_hold_no_private_key_material_in_clear) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const auto a = openManager(pgOptions(db, clock, "a"));
  clock.t = kT0 + 77;  // a pending key too: two private keys stored
  tickOk(*a);
  const std::string pem = a->current()->active->privatePem();
  BOOST_REQUIRE(pem.starts_with("-----BEGIN PRIVATE KEY-----"));

  Poco::Data::Session session = db.session();
  std::vector<std::string> kids;
  std::vector<std::string> sealed;
  session << "SELECT kid, encode(sealed, 'hex') FROM keyring_secrets ORDER BY kid", into(kids), into(sealed), now;
  BOOST_TEST(kids.size() == 2U);
  for (const auto& s : sealed) {
    BOOST_TEST(s.starts_with(toHex("SBKEYv1\n")));  // the sealed format: magic, nonce, AES-256-GCM, tag
  }

  const std::string dump = dumpKeyringTables(db);
  BOOST_TEST(dump.find("PRIVATE") == std::string::npos);
  BOOST_TEST(dump.find("BEGIN") == std::string::npos);
  BOOST_TEST(dump.find("\"d\"") == std::string::npos);  // no private JWK member in the public keys
  // Neither the PEM's base64 lines nor the DER they encode, in any form the dump shows bytes.
  std::string body;
  std::size_t lines = 0;
  for (std::size_t at = pem.find('\n') + 1; at < pem.size();) {
    const std::size_t end = pem.find('\n', at);
    const std::string line = pem.substr(at, end - at);
    at = end + 1;
    if (line.starts_with("-----")) {
      break;
    }
    body += line;
    BOOST_TEST(dump.find(line) == std::string::npos);
    ++lines;
  }
  BOOST_TEST(lines > 0U);
  // PEM is standard base64; as base64url without padding it decodes with the library's decoder.
  std::ranges::replace(body, '+', '-');
  std::ranges::replace(body, '/', '_');
  std::erase(body, '=');
  const auto der = jw::base64urlDecode(body);
  BOOST_REQUIRE(der.has_value());
  const std::string derHex = toHex(*der);
  BOOST_TEST(dump.find(derHex) == std::string::npos);
  BOOST_TEST(dump.find(derHex.substr(derHex.size() - 64)) == std::string::npos);

  // A plain key is refused by the storage, and by the table itself.
  auto storage = pgStorage(db, "raw");
  auto locked = storage->lock(std::chrono::seconds(2));
  BOOST_REQUIRE_MESSAGE(locked.has_value(), locked.error().message);
  kr::StoredPrivateKey plain;
  plain.data = pem;
  auto refused = (*locked)->writePrivateKey("x", plain);
  BOOST_REQUIRE(!refused.has_value());
  BOOST_TEST(refused.error().find("unsealed") != std::string::npos, refused.error());
  locked->reset();
  bool tableRefused = false;
  try {
    session << "INSERT INTO keyring_secrets (kid, created_at, sealed) VALUES ('x', 0,"
               " convert_to('-----BEGIN PRIVATE KEY-----', 'UTF8'))",
        now;
  } catch (const Poco::Exception& e) {
    tableRefused = e.displayText().find("check constraint") != std::string::npos;
    BOOST_TEST_MESSAGE("the table refused a PEM: " << e.displayText());
  }
  BOOST_TEST(tableRefused);
}

BOOST_AUTO_TEST_CASE(refuses_a_wrong_key_encryption_key_and_none) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const auto a = openManager(pgOptions(db, clock, "a", kek('a')));
  auto wrong = kr::KeyringManager::open(pgOptions(db, clock, "b", kek('b')));
  BOOST_REQUIRE(!wrong.has_value());
  BOOST_TEST(wrong.error().find("wrong key-encryption key") != std::string::npos, wrong.error());
  auto none = kr::KeyringManager::open(pgOptions(db, clock, "c", ""));
  BOOST_REQUIRE(!none.has_value());
  BOOST_TEST(none.error().find("none is configured") != std::string::npos, none.error());
  BOOST_TEST(none.error().find("keyring.kek_file") != std::string::npos, none.error());
  auto right = openManager(pgOptions(db, clock, "d", kek('a')));
  BOOST_TEST(right->current()->active->kid() == a->current()->active->kid());
}

BOOST_AUTO_TEST_CASE(keeps_the_last_snapshot_while_the_database_is_down_and_resumes_when_it_returns) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const auto a = openManager(pgOptions(db, clock, "a"));
  const auto b = openManager(pgOptions(db, clock, "b"));
  clock.t = kT0 + 77;
  tickOk(*a);
  tickOk(*b);
  const auto before = a->current();
  const auto beforeB = b->current();
  const std::string first = before->active->kid();

  db.takeDown();
  clock.t = kT0 + 101;  // the successor is due: nobody can write it down
  const auto failed = a->tick();
  BOOST_REQUIRE(failed.error.has_value());
  BOOST_TEST_MESSAGE("while down: " << *failed.error);
  BOOST_TEST(!failed.published);
  for (int i = 0; i < 3; ++i) {
    const auto again = a->tick();
    BOOST_TEST(!again.error.has_value());  // reported once per distinct problem
    BOOST_TEST(!again.published);
    BOOST_TEST(b->tick().published == nullptr);
  }
  // The JWKS and the signing key are served from memory meanwhile.
  BOOST_TEST(a->current() == before);
  BOOST_TEST(b->current() == beforeB);
  BOOST_TEST(a->current()->active->kid() == first);

  db.bringUp();
  const auto since = std::chrono::steady_clock::now();
  bool recovered = false;
  while (!recovered && std::chrono::steady_clock::now() - since < std::chrono::seconds(10)) {
    const auto t = a->tick();
    recovered = hasEvent(t.events, "keyring_recovered");
    if (!recovered) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  BOOST_TEST_REQUIRE(recovered);
  BOOST_TEST_MESSAGE("recovered " << std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count()
                                  << " s after the database returned");
  BOOST_TEST(a->current()->active->kid() != first);  // the rotation that was due happened, once
  bool followed = false;
  for (int i = 0; i < 50 && !followed; ++i) {
    b->tick();
    followed = b->current()->active->kid() == a->current()->active->kid();
    if (!followed) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  BOOST_TEST(followed);
}

BOOST_AUTO_TEST_CASE(adopts_a_file_keyring_once_when_the_database_is_empty) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  FakeClock clock;
  const TempDir files;
  std::string fileActive;
  std::set<std::string> filePublished;
  {
    // A single instance's keyring in files, without a KEK (plain PEMs), with a staged successor.
    kr::KeyringOptions o;
    o.state_directory = files.str();
    o.policy = smallPolicy();
    o.now = [&clock] { return clock.t.load(); };
    const auto single = openManager(std::move(o));
    clock.t = kT0 + 77;
    tickOk(*single);
    fileActive = single->current()->active->kid();
    filePublished = publishedKids(*single->current());
  }
  BOOST_REQUIRE_EQUAL(filePublished.size(), 2U);

  auto options = pgOptions(db, clock, "a");
  options.import_from = kr::fileKeyringStorage(files.str());
  const auto a = openManager(std::move(options));
  BOOST_TEST(hasEvent(a->startupEvents(), "keyring_imported"));
  BOOST_TEST(a->current()->active->kid() == fileActive);
  BOOST_TEST(publishedKids(*a->current()) == filePublished);
  Poco::Data::Session session = db.session();
  int secrets = 0;
  session << "SELECT CAST(COUNT(*) AS INTEGER) FROM keyring_secrets", into(secrets), now;
  BOOST_TEST(secrets == 2);  // both keys that may sign, now sealed
  BOOST_TEST(fs::exists(fs::path(files.str()) / "keys" / (fileActive + ".pem")));  // the files are left alone

  // A second instance with a file keyring of its own: the database keyring wins, and it says so.
  const TempDir other;
  {
    kr::KeyringOptions o;
    o.state_directory = other.str();
    o.policy = smallPolicy();
    o.now = [&clock] { return clock.t.load(); };
    openManager(std::move(o));
  }
  auto second = pgOptions(db, clock, "b");
  second.import_from = kr::fileKeyringStorage(other.str());
  const auto b = openManager(std::move(second));
  BOOST_TEST(!hasEvent(b->startupEvents(), "keyring_imported"));
  BOOST_TEST(hasEvent(b->startupEvents(), "keyring_files_ignored"));
  BOOST_TEST(b->current()->active->kid() == fileActive);

  // The schedule the files had goes on in the database.
  clock.t = kT0 + 101;
  const auto rotated = tickOk(*a);
  BOOST_TEST(hasEvent(rotated.events, "key_activated"));
  BOOST_TEST(a->current()->active->kid() != fileActive);
}

BOOST_AUTO_TEST_CASE(commands_refuse_a_database_without_a_keyring) {
  if (skipWithoutPostgres()) {
    return;
  }
  const TestDatabase db;
  sb::PostgresOptions o;
  o.connection = db.connection();
  auto admin = kr::KeyringAdmin::open(sb::openPostgresKeyring(o, "keys", false), smallPolicy());
  BOOST_REQUIRE(!admin.has_value());
  BOOST_TEST(admin.error().find("no keyring in postgresql") != std::string::npos, admin.error());
  BOOST_TEST(sb::describeConnection("host=db port=5432 dbname=x user=u password=secret") ==
             "postgresql host=db port=5432 dbname=x");
  BOOST_TEST(sb::describeConnection("postgresql://u:secret@db/x").find("secret") == std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
