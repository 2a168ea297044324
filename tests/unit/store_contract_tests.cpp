// The StateStore contract, run unchanged against SQLite and PostgreSQL, plus what only a shared database can show.
//
// PostgreSQL cases need SMARTBROKER_TEST_PG (a libpq connection string to a server where the user may create
// databases; scripts/test starts a private cluster and sets it). Without it they pass after printing why they
// did not run, so that a developer without PostgreSQL can still run ctest; CI always sets it. Each case gets
// its own freshly created database. The outage cases start a second private cluster of their own
// (tests/pg/pg-cluster), so stopping it cannot disturb cases running in parallel.
#define BOOST_TEST_MODULE store_contract
#include <boost/test/unit_test.hpp>

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Exception.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <latch>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/store.hpp"

#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
namespace sb = smartbroker::broker;
using Poco::Data::Keywords::now;

constexpr std::int64_t kNow = test_support::kFixedNow;

using TestClock = test_support::FakeClock<sb::Clock>;  ///< starts at kNow

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

using test_support::TempDir;

/// A fresh database on the server named by `admin` (a connection string), dropped afterwards.
class TestDatabase {
 public:
  explicit TestDatabase(std::string admin) : admin_(std::move(admin)), name_("sb_test_" + randomSuffix()) {
    Poco::Data::PostgreSQL::Connector::registerConnector();
    Poco::Data::Session session("PostgreSQL", admin_);
    session << "CREATE DATABASE " + name_, now;
  }
  ~TestDatabase() {
    try {
      Poco::Data::Session session("PostgreSQL", admin_);
      session << "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)", now;
    } catch (const Poco::Exception&) {
      // The server may be gone (outage cases stop their own cluster); its directory is removed anyway.
    }
  }
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;
  /// libpq takes the last value of a repeated keyword, so appending dbname selects the new database.
  std::string connection() const { return admin_ + " dbname=" + name_; }

 private:
  std::string admin_;
  std::string name_;
};

const char* pgEnv() { return std::getenv("SMARTBROKER_TEST_PG"); }

bool skipWithoutPostgres() {
  if (pgEnv() == nullptr || *pgEnv() == '\0') {
    std::cout << "SKIPPED: SMARTBROKER_TEST_PG is unset (scripts/test sets it; see tests/pg/pg-cluster)\n";
    return true;
  }
  return false;
}

/// A backend under test: opens stores on one database, as often as a case likes (reopen = restart).
struct SqliteBackend {
  static constexpr const char* kName = "sqlite";
  TempDir dir;
  TestClock clock;
  bool skip() const { return false; }
  std::unique_ptr<sb::StateStore> open() {
    sb::SqliteOptions options;
    options.path = (dir.path() / "state.db").string();
    return sb::openSqliteStore(options, clock);
  }
};

struct PostgresBackend {
  static constexpr const char* kName = "postgresql";
  TestClock clock;
  std::unique_ptr<TestDatabase> db;
  PostgresBackend() {
    if (!skipWithoutPostgres()) {
      db = std::make_unique<TestDatabase>(pgEnv());
    }
  }
  bool skip() const { return db == nullptr; }
  std::unique_ptr<sb::StateStore> open() {
    sb::PostgresOptions options;
    options.connection = db->connection();
    options.pool_size = 4;
    return sb::openPostgresStore(options, clock);
  }
};

sb::JtiOutcome record(sb::StateStore& store, std::string_view iss, std::string_view jti, std::int64_t expiresAt,
                      const sb::IssuedToken* issued = nullptr) {
  auto outcome = store.recordJti(iss, jti, expiresAt, issued);
  BOOST_REQUIRE_MESSAGE(outcome.has_value(), outcome.error().detail);
  return *outcome;
}

sb::IssuedToken token(std::string jti, std::string client, std::int64_t iat, std::int64_t exp) {
  sb::IssuedToken t;
  t.jti = std::move(jti);
  t.client_id = std::move(client);
  t.scope = "system/*.rs";
  t.iat = iat;
  t.exp = exp;
  t.kid = "kid-1";
  return t;
}

/// Races `threads` calls of recordJti(iss, jti) over `stores` (round-robin); returns how many were Recorded.
int race(const std::vector<sb::StateStore*>& stores, int threads, const std::string& jti, int& errors) {
  std::latch start(threads);
  std::atomic<int> recorded{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) {
    pool.emplace_back([&, i] {
      start.arrive_and_wait();
      auto outcome = stores[static_cast<std::size_t>(i) % stores.size()]->recordJti("app", jti, kNow + 300);
      if (!outcome) {
        ++failed;
      } else if (*outcome == sb::JtiOutcome::Recorded) {
        ++recorded;
      }
    });
  }
  for (auto& t : pool) {
    t.join();
  }
  errors = failed.load();
  return recorded.load();
}

}  // namespace

// Defines `name` once in suite store_contract_sqlite and once in store_contract_postgresql, with one body.
#define STORE_CONTRACT_CASE(name)                                            \
  template <typename Backend>                                                \
  void name##_body(Backend& backend);                                        \
  BOOST_AUTO_TEST_SUITE(store_contract_sqlite)                               \
  BOOST_FIXTURE_TEST_CASE(name, SqliteBackend) { name##_body(*this); }       \
  BOOST_AUTO_TEST_SUITE_END()                                                \
  BOOST_AUTO_TEST_SUITE(store_contract_postgresql)                           \
  BOOST_FIXTURE_TEST_CASE(name, PostgresBackend) {                           \
    if (!skip()) {                                                           \
      name##_body(*this);                                                    \
    }                                                                        \
  }                                                                          \
  BOOST_AUTO_TEST_SUITE_END()                                                \
  template <typename Backend>                                                \
  void name##_body(Backend& backend)

STORE_CONTRACT_CASE(records_first_use_and_reports_the_second_as_replayed) {
  auto store = backend.open();
  BOOST_TEST(store->healthy());
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 999) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "other", "jti-1", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "x'); DROP TABLE replay; --", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST(store->healthy());
}

STORE_CONTRACT_CASE(admits_exactly_one_of_32_threads_racing_the_same_jti) {
  auto store = backend.open();
  for (int round = 0; round < 5; ++round) {
    int errors = 0;
    const int recorded = race({store.get()}, 32, "race-" + std::to_string(round), errors);
    BOOST_TEST(errors == 0);
    BOOST_TEST(recorded == 1);
  }
}

STORE_CONTRACT_CASE(decides_duplicates_inside_one_batch_and_distinct_jtis_independently) {
  auto store = backend.open();
  // 64 threads over 8 jtis: batches mix duplicates and distinct pairs; each jti is admitted exactly once.
  constexpr int kThreads = 64;
  std::latch start(kThreads);
  std::vector<std::atomic<int>> recorded(8);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      auto outcome = store->recordJti("app", "mixed-" + std::to_string(i % 8), kNow + 300);
      if (!outcome) {
        ++errors;
      } else if (*outcome == sb::JtiOutcome::Recorded) {
        ++recorded[static_cast<std::size_t>(i % 8)];
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(errors.load() == 0);
  for (const auto& r : recorded) {
    BOOST_TEST(r.load() == 1);
  }
}

STORE_CONTRACT_CASE(lets_an_expired_record_be_taken_over_by_a_new_assertion) {
  auto store = backend.open();
  BOOST_TEST((record(*store, "app", "reuse", kNow + 10) == sb::JtiOutcome::Recorded));
  backend.clock.set(kNow + 10);
  BOOST_TEST((record(*store, "app", "reuse", kNow + 310) == sb::JtiOutcome::Replayed));  // not yet expired
  backend.clock.set(kNow + 11);
  BOOST_TEST((record(*store, "app", "reuse", kNow + 311) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "reuse", kNow + 311) == sb::JtiOutcome::Replayed));
}

STORE_CONTRACT_CASE(records_the_issued_token_only_on_first_use) {
  auto store = backend.open();
  const sb::IssuedToken first = token("at-1", "app", kNow, kNow + 300);
  const sb::IssuedToken second = token("at-2", "app", kNow, kNow + 300);
  BOOST_TEST((record(*store, "app", "a-1", kNow + 300, &first) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "a-1", kNow + 300, &second) == sb::JtiOutcome::Replayed));
  auto tokens = store->recentTokens("app", 10, kNow);
  BOOST_REQUIRE(tokens.has_value());
  BOOST_REQUIRE_EQUAL(tokens->size(), 1U);
  BOOST_TEST((*tokens)[0].jti == "at-1");
  BOOST_TEST((*tokens)[0].client_id == "app");
  BOOST_TEST((*tokens)[0].scope == "system/*.rs");
  BOOST_TEST((*tokens)[0].iat == kNow);
  BOOST_TEST((*tokens)[0].exp == kNow + 300);
  BOOST_TEST((*tokens)[0].kid == "kid-1");
}

STORE_CONTRACT_CASE(lists_recent_unexpired_tokens_newest_first_up_to_the_limit) {
  auto store = backend.open();
  for (int i = 0; i < 5; ++i) {
    const sb::IssuedToken t = token("at-" + std::to_string(i), "app", kNow + i, kNow + 100 + i);
    BOOST_TEST((record(*store, "app", "as-" + std::to_string(i), kNow + 300, &t) == sb::JtiOutcome::Recorded));
  }
  const sb::IssuedToken other = token("at-other", "other", kNow + 9, kNow + 300);
  BOOST_TEST((record(*store, "other", "as-x", kNow + 300, &other) == sb::JtiOutcome::Recorded));
  auto three = store->recentTokens("app", 3, kNow);
  BOOST_REQUIRE(three.has_value());
  BOOST_REQUIRE_EQUAL(three->size(), 3U);
  BOOST_TEST((*three)[0].jti == "at-4");
  BOOST_TEST((*three)[1].jti == "at-3");
  BOOST_TEST((*three)[2].jti == "at-2");
  auto live = store->recentTokens("app", 10, kNow + 102);  // at-0..at-2 have expired (exp <= now)
  BOOST_REQUIRE(live.has_value());
  BOOST_REQUIRE_EQUAL(live->size(), 2U);
  BOOST_TEST((*live)[0].jti == "at-4");
  BOOST_TEST((*live)[1].jti == "at-3");
}

STORE_CONTRACT_CASE(follows_revocations_by_cursor) {
  auto store = backend.open();
  auto empty = store->changesSince(0, kNow);
  BOOST_REQUIRE(empty.has_value());
  BOOST_TEST(empty->revocations.empty());
  BOOST_TEST(empty->cursor == 0);
  BOOST_REQUIRE(store->revokeToken("at-1", "app", kNow + 100).has_value());
  BOOST_REQUIRE(store->revokeToken("at-2", "app", kNow + 5).has_value());
  BOOST_REQUIRE(store->revokeToken("at-1", "app", kNow + 100).has_value());  // idempotent
  auto all = store->changesSince(0, kNow);
  BOOST_REQUIRE(all.has_value());
  BOOST_REQUIRE_EQUAL(all->revocations.size(), 2U);
  BOOST_TEST(all->revocations[0].jti == "at-1");
  BOOST_TEST(all->revocations[0].client_id == "app");
  BOOST_TEST(all->revocations[0].exp == kNow + 100);
  BOOST_TEST(all->revocations[1].jti == "at-2");
  BOOST_TEST(all->revocations[0].id < all->revocations[1].id);
  BOOST_TEST(all->cursor == all->revocations[1].id);
  auto none = store->changesSince(all->cursor, kNow);
  BOOST_REQUIRE(none.has_value());
  BOOST_TEST(none->revocations.empty());
  BOOST_TEST(none->cursor == all->cursor);
  BOOST_REQUIRE(store->revokeToken("at-3", "app", kNow + 100).has_value());
  auto next = store->changesSince(all->cursor, kNow);
  BOOST_REQUIRE(next.has_value());
  BOOST_REQUIRE_EQUAL(next->revocations.size(), 1U);
  BOOST_TEST(next->revocations[0].jti == "at-3");
  BOOST_TEST(next->cursor > all->cursor);
  auto later = store->changesSince(0, kNow + 50);  // at-2 expired: no longer reported
  BOOST_REQUIRE(later.has_value());
  BOOST_REQUIRE_EQUAL(later->revocations.size(), 2U);
  BOOST_TEST(later->revocations[0].jti == "at-1");
  BOOST_TEST(later->revocations[1].jti == "at-3");
}

STORE_CONTRACT_CASE(keeps_suspension_and_revoke_all_per_system) {
  auto store = backend.open();
  BOOST_REQUIRE(store->setSuspended("app", true).has_value());
  BOOST_REQUIRE(store->revokeAllTokens("other", kNow).has_value());
  auto changes = store->changesSince(0, kNow);
  BOOST_REQUIRE(changes.has_value());
  BOOST_REQUIRE_EQUAL(changes->systems.size(), 2U);
  BOOST_TEST(changes->systems["app"].suspended);
  BOOST_TEST(changes->systems["app"].revoked_before == 0);
  BOOST_TEST(!changes->systems["other"].suspended);
  BOOST_TEST(changes->systems["other"].revoked_before == kNow);
  BOOST_REQUIRE(store->setSuspended("app", false).has_value());
  BOOST_REQUIRE(store->revokeAllTokens("other", kNow - 100).has_value());  // never moves backwards
  BOOST_REQUIRE(store->revokeAllTokens("app", kNow + 7).has_value());
  changes = store->changesSince(0, kNow);
  BOOST_REQUIRE(changes.has_value());
  BOOST_TEST(!changes->systems["app"].suspended);
  BOOST_TEST(changes->systems["app"].revoked_before == kNow + 7);
  BOOST_TEST(changes->systems["other"].revoked_before == kNow);
}

STORE_CONTRACT_CASE(keeps_every_decision_across_a_reopen) {
  {
    auto store = backend.open();
    const sb::IssuedToken t = token("at-1", "app", kNow, kNow + 300);
    BOOST_TEST((record(*store, "app", "durable", kNow + 300, &t) == sb::JtiOutcome::Recorded));
    BOOST_REQUIRE(store->revokeToken("at-1", "app", kNow + 300).has_value());
    BOOST_REQUIRE(store->setSuspended("app", true).has_value());
  }
  auto store = backend.open();
  BOOST_TEST((record(*store, "app", "durable", kNow + 300) == sb::JtiOutcome::Replayed));
  auto changes = store->changesSince(0, kNow);
  BOOST_REQUIRE(changes.has_value());
  BOOST_REQUIRE_EQUAL(changes->revocations.size(), 1U);
  BOOST_TEST(changes->systems["app"].suspended);
  auto tokens = store->recentTokens("app", 10, kNow);
  BOOST_REQUIRE(tokens.has_value());
  BOOST_TEST(tokens->size() == 1U);
}

// What only a database shared by several instances can show.
BOOST_AUTO_TEST_SUITE(store_contract_postgresql)

BOOST_FIXTURE_TEST_CASE(admits_exactly_one_of_two_instances_racing_the_same_jti, PostgresBackend) {
  if (skip()) {
    return;
  }
  auto a = open();
  auto b = open();
  for (int round = 0; round < 10; ++round) {
    int errors = 0;
    const int recorded = race({a.get(), b.get()}, 32, "two-" + std::to_string(round), errors);
    BOOST_TEST(errors == 0);
    BOOST_TEST(recorded == 1);
  }
  // A revocation written by one instance is what the other reads.
  BOOST_REQUIRE(a->revokeToken("at-shared", "app", kNow + 60).has_value());
  BOOST_REQUIRE(a->setSuspended("app", true).has_value());
  auto seen = b->changesSince(0, kNow);
  BOOST_REQUIRE(seen.has_value());
  BOOST_REQUIRE_EQUAL(seen->revocations.size(), 1U);
  BOOST_TEST(seen->revocations[0].jti == "at-shared");
  BOOST_TEST(seen->systems["app"].suspended);
}

BOOST_FIXTURE_TEST_CASE(migrates_once_when_instances_start_together, PostgresBackend) {
  if (skip()) {
    return;
  }
  constexpr int kInstances = 6;
  std::latch start(kInstances);
  std::atomic<int> failures{0};
  std::vector<std::unique_ptr<sb::StateStore>> stores(kInstances);
  std::vector<std::thread> threads;
  for (int i = 0; i < kInstances; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      try {
        stores[static_cast<std::size_t>(i)] = open();
      } catch (const std::exception& e) {
        std::cout << "open failed: " << e.what() << '\n';
        ++failures;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(failures.load() == 0);
  Poco::Data::Session session("PostgreSQL", db->connection());
  int rows = 0;
  int distinct = 0;
  session << "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_version", Poco::Data::Keywords::into(rows),
      Poco::Data::Keywords::into(distinct), now;
  BOOST_TEST(rows == distinct);
  BOOST_TEST(rows > 0);
  sb::PostgresOptions options;
  options.connection = db->connection();
  BOOST_TEST(sb::migratePostgres(options) == rows);
}

namespace {

/// A free loopback TCP port (bound and released; good enough for a test on one machine).
int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("bind failed");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// A private PostgreSQL cluster of this case alone, which it may stop and start at will.
class PrivateCluster {
 public:
  PrivateCluster() : port_(freePort()) {
    // The cluster's owner (postgres, when running as root) must be able to enter the directory.
    fs::permissions(dir_.path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    run("start " + (dir_.path() / "pg").string() + " " + std::to_string(port_));
  }
  ~PrivateCluster() {
    try {
      stop();
    } catch (const std::exception&) {
    }
  }
  PrivateCluster(const PrivateCluster&) = delete;
  PrivateCluster& operator=(const PrivateCluster&) = delete;
  void stop() { run("stop " + (dir_.path() / "pg").string()); }
  void start() { run("start " + (dir_.path() / "pg").string() + " " + std::to_string(port_)); }
  std::string connection() const {
    return "host=127.0.0.1 port=" + std::to_string(port_) + " dbname=postgres user=smartbroker";
  }

 private:
  static void run(const std::string& args) {
    const std::string command = std::string(SMARTBROKER_SOURCE_DIR) + "/tests/pg/pg-cluster " + args + " >/dev/null";
    if (std::system(command.c_str()) != 0) {
      throw std::runtime_error("failed: " + command);
    }
  }
  TempDir dir_;
  int port_;
};

}  // namespace

BOOST_AUTO_TEST_CASE(fails_closed_while_the_database_is_down_and_recovers_without_reopening) {
  if (skipWithoutPostgres()) {
    return;
  }
  PrivateCluster cluster;
  TestClock clock;
  sb::PostgresOptions options;
  options.connection = cluster.connection();
  options.pool_size = 3;
  auto store = sb::openPostgresStore(options, clock);
  BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST(store->healthy());

  cluster.stop();
  auto during = store->recordJti("app", "during", kNow + 300);
  BOOST_TEST(!during.has_value());
  BOOST_TEST(!store->healthy());
  BOOST_TEST(!store->changesSince(0, kNow).has_value());
  BOOST_TEST(!store->revokeToken("at-1", "app", kNow + 300).has_value());
  BOOST_TEST(!store->healthy());

  cluster.start();
  BOOST_TEST((record(*store, "app", "after", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST(store->healthy());
  BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Replayed));
  // The failed attempt wrote nothing: the same jti is still a first use.
  BOOST_TEST((record(*store, "app", "during", kNow + 300) == sb::JtiOutcome::Recorded));
  auto changes = store->changesSince(0, kNow);
  BOOST_REQUIRE(changes.has_value());
  BOOST_TEST(changes->revocations.empty());
}

BOOST_AUTO_TEST_SUITE_END()
