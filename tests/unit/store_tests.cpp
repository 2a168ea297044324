// Unit tests for the SQLite StateStore: replay decisions, atomicity under threads, expiry and durability.
#include <boost/test/unit_test.hpp>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/store.hpp"

#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace sb = smartbroker::broker;

/// The store's writer thread reads the clock, so `now` is atomic.
class StoreClock final : public sb::Clock {
 public:
  explicit StoreClock(std::int64_t start) : now_(start) {}
  std::int64_t now() const override { return now_.load(); }
  void set(std::int64_t t) { now_.store(t); }

 private:
  std::atomic<std::int64_t> now_;
};

constexpr std::int64_t kNow = 1'700'000'000;

class StoreDir {
 public:
  StoreDir() {
    std::string templ = (fs::temp_directory_path() / "sb-store-XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    path_ = templ;
  }
  ~StoreDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  StoreDir(const StoreDir&) = delete;
  StoreDir& operator=(const StoreDir&) = delete;
  std::string db() const { return (path_ / "state.db").string(); }

 private:
  fs::path path_;
};

std::unique_ptr<sb::StateStore> openStore(const std::string& path, const sb::Clock& clock) {
  sb::SqliteOptions options;
  options.path = path;
  return sb::openSqliteStore(options, clock);
}

sb::JtiOutcome record(sb::StateStore& store, std::string_view iss, std::string_view jti, std::int64_t expiresAt) {
  auto outcome = store.recordJti(iss, jti, expiresAt);
  BOOST_REQUIRE_MESSAGE(outcome.has_value(), outcome.error().detail);
  return *outcome;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sqlite_store)

BOOST_AUTO_TEST_CASE(records_first_use_and_reports_the_second_as_replayed) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_TEST(store->healthy());
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "app", "jti-1", kNow + 999) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "app", "jti-2", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST(store->healthy());
}

BOOST_AUTO_TEST_CASE(records_the_same_jti_separately_for_each_issuer) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_TEST((record(*store, "app", "shared", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "other", "shared", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "other", "shared", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(treats_iss_and_jti_as_exact_binary_strings) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_TEST((record(*store, "app", "Jti", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti ", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "App", "jti", kNow + 300) == sb::JtiOutcome::Recorded));
  // Quotes and SQL metacharacters are data, not SQL.
  BOOST_TEST((record(*store, "app", "x'); DROP TABLE replay; --", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "jti", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(admits_exactly_one_of_32_threads_racing_the_same_jti) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  for (int round = 0; round < 5; ++round) {
    constexpr int kThreads = 32;
    std::latch start(kThreads);
    std::atomic<int> recorded{0};
    std::atomic<int> replayed{0};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    const std::string jti = "race-" + std::to_string(round);
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&] {
        start.arrive_and_wait();
        auto outcome = store->recordJti("app", jti, kNow + 300);
        if (!outcome) {
          ++errors;
        } else if (*outcome == sb::JtiOutcome::Recorded) {
          ++recorded;
        } else {
          ++replayed;
        }
      });
    }
    for (auto& t : threads) {
      t.join();
    }
    BOOST_TEST_CONTEXT("round " << round) {
      BOOST_TEST(errors.load() == 0);
      BOOST_TEST(recorded.load() == 1);
      BOOST_TEST(replayed.load() == kThreads - 1);
    }
  }
}

BOOST_AUTO_TEST_CASE(records_2000_distinct_jtis_from_16_threads) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  constexpr int kThreads = 16;
  constexpr int kPerThread = 125;
  std::latch start(kThreads);
  std::atomic<int> recorded{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        auto outcome = store->recordJti("app", "t" + std::to_string(t) + "-" + std::to_string(i), kNow + 300);
        if (outcome && *outcome == sb::JtiOutcome::Recorded) {
          ++recorded;
        }
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(recorded.load() == kThreads * kPerThread);
  // And every one of them is now a replay.
  BOOST_TEST((record(*store, "app", "t0-0", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "app", "t15-124", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(allows_a_jti_again_only_after_its_record_has_expired) {
  const StoreDir dir;
  StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_TEST((record(*store, "app", "jti", kNow + 60) == sb::JtiOutcome::Recorded));
  clock.set(kNow + 59);
  BOOST_TEST((record(*store, "app", "jti", kNow + 400) == sb::JtiOutcome::Replayed));
  // At expires_at itself the record still holds.
  clock.set(kNow + 60);
  BOOST_TEST((record(*store, "app", "jti", kNow + 400) == sb::JtiOutcome::Replayed));
  clock.set(kNow + 61);
  BOOST_TEST((record(*store, "app", "jti", kNow + 400) == sb::JtiOutcome::Recorded));
  // The takeover recorded the new expiry: still a replay until then.
  clock.set(kNow + 399);
  BOOST_TEST((record(*store, "app", "jti", kNow + 900) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(expired_rows_are_pruned_and_can_be_recorded_again_after_pruning) {
  const StoreDir dir;
  StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_TEST((record(*store, "app", "a", kNow + 10) == sb::JtiOutcome::Recorded));
  // A write far in the future triggers the periodic prune; "a" must be recordable afterwards either way.
  clock.set(kNow + 1000);
  BOOST_TEST((record(*store, "app", "b", kNow + 1300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "a", kNow + 1300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "app", "b", kNow + 1300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(a_recorded_jti_survives_closing_and_reopening_the_store) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  {
    auto store = openStore(dir.db(), clock);
    BOOST_TEST((record(*store, "app", "durable", kNow + 300) == sb::JtiOutcome::Recorded));
  }
  auto reopened = openStore(dir.db(), clock);
  BOOST_TEST((record(*reopened, "app", "durable", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(reopening_an_existing_database_migrates_idempotently) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  {
    auto store = openStore(dir.db(), clock);
    BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Recorded));
  }
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST_CONTEXT("reopen " << i) {
      std::unique_ptr<sb::StateStore> store;
      BOOST_REQUIRE_NO_THROW(store = openStore(dir.db(), clock));
      BOOST_TEST(store->healthy());
      BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Replayed));
      BOOST_TEST((record(*store, "app", "after-" + std::to_string(i), kNow + 300) == sb::JtiOutcome::Recorded));
    }
  }
}

BOOST_AUTO_TEST_CASE(a_database_of_the_rowid_schema_is_migrated_with_its_rows) {
  // A state.db written before replay and tokens became WITHOUT ROWID tables (schema version 13): the migration
  // rebuilds both and keeps every row, so a jti spent before the upgrade stays spent after it.
  const StoreDir dir;
  const StoreClock clock(kNow);
  { auto created = openStore(dir.db(), clock); }
  {
    Poco::Data::Session old("SQLite", dir.db());
    using Poco::Data::Keywords::now;
    old << "DROP TABLE replay", now;
    old << "DROP TABLE tokens", now;
    old << "CREATE TABLE replay (iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
           " PRIMARY KEY (iss, jti))", now;
    old << "CREATE INDEX replay_expires_at ON replay (expires_at)", now;
    old << "CREATE TABLE tokens (jti TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,"
           " iat BIGINT NOT NULL, exp BIGINT NOT NULL, kid TEXT NOT NULL)", now;
    old << "CREATE INDEX tokens_client_iat ON tokens (client_id, iat)", now;
    old << "DELETE FROM schema_version WHERE version > 13", now;
    old << "INSERT INTO replay (iss, jti, expires_at) VALUES ('app', 'spent-before', " << kNow + 300 << ")", now;
    old << "INSERT INTO tokens (jti, client_id, scope, iat, exp, kid) VALUES ('tok-old', 'app',"
           " 'system/Patient.rs', " << kNow << ", " << kNow + 300 << ", 'kid-1')", now;
  }
  auto store = openStore(dir.db(), clock);
  BOOST_TEST((record(*store, "app", "spent-before", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*store, "app", "fresh", kNow + 300) == sb::JtiOutcome::Recorded));
  auto recent = store->recentTokens("app", 10, kNow);
  BOOST_REQUIRE(recent.has_value());
  BOOST_REQUIRE_EQUAL(recent->size(), 1U);
  BOOST_TEST(recent->front().jti == "tok-old");
  BOOST_TEST(recent->front().scope == "system/Patient.rs");

  Poco::Data::Session check("SQLite", dir.db());
  std::vector<std::string> ddl;
  check << "SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ('replay', 'tokens') ORDER BY name",
      Poco::Data::Keywords::into(ddl), Poco::Data::Keywords::now;
  BOOST_REQUIRE_EQUAL(ddl.size(), 2U);
  for (const std::string& sql : ddl) {
    BOOST_TEST(sql.find("WITHOUT ROWID") != std::string::npos, sql);
  }
  int exists = 0;
  check << "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'tokens_exp'",
      Poco::Data::Keywords::into(exists), Poco::Data::Keywords::now;
  BOOST_TEST(exists == 1);
}

BOOST_AUTO_TEST_CASE(two_stores_on_one_file_admit_a_jti_once) {
  // Two broker instances sharing the database: the primary key, not the process, decides.
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto a = openStore(dir.db(), clock);
  auto b = openStore(dir.db(), clock);
  BOOST_TEST((record(*a, "app", "shared", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*b, "app", "shared", kNow + 300) == sb::JtiOutcome::Replayed));
  BOOST_TEST((record(*b, "app", "only-b", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*a, "app", "only-b", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_AUTO_TEST_CASE(records_the_issued_token_only_with_the_first_use_of_a_jti) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  const sb::IssuedToken first{"tok-1", "app", "system/Observation.rs", kNow, kNow + 300, "kid-1"};
  const sb::IssuedToken second{"tok-2", "app", "system/Observation.rs", kNow + 1, kNow + 301, "kid-1"};
  auto recorded = store->recordJti("app", "assertion-1", kNow + 300, &first);
  BOOST_REQUIRE(recorded.has_value());
  BOOST_TEST((*recorded == sb::JtiOutcome::Recorded));
  // A replay is refused and leaves no token behind.
  auto replayed = store->recordJti("app", "assertion-1", kNow + 300, &second);
  BOOST_REQUIRE(replayed.has_value());
  BOOST_TEST((*replayed == sb::JtiOutcome::Replayed));
  auto tokens = store->recentTokens("app", 10, kNow);
  BOOST_REQUIRE(tokens.has_value());
  BOOST_REQUIRE_EQUAL(tokens->size(), 1U);
  BOOST_TEST(tokens->at(0).jti == "tok-1");
  BOOST_TEST(tokens->at(0).client_id == "app");
  BOOST_TEST(tokens->at(0).scope == "system/Observation.rs");
  BOOST_TEST(tokens->at(0).iat == kNow);
  BOOST_TEST(tokens->at(0).exp == kNow + 300);
  BOOST_TEST(tokens->at(0).kid == "kid-1");
}

BOOST_AUTO_TEST_CASE(recent_tokens_lists_only_live_tokens_of_the_client_newest_first) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  for (int i = 0; i < 5; ++i) {
    const sb::IssuedToken t{"app-" + std::to_string(i), "app", "s", kNow + i, kNow + 100 + i, "k"};
    BOOST_REQUIRE(store->recordJti("app", "a-" + std::to_string(i), kNow + 300, &t).has_value());
  }
  const sb::IssuedToken other{"other-0", "other", "s", kNow, kNow + 100, "k"};
  BOOST_REQUIRE(store->recordJti("other", "a-0", kNow + 300, &other).has_value());
  auto tokens = store->recentTokens("app", 3, kNow);
  BOOST_REQUIRE(tokens.has_value());
  BOOST_REQUIRE_EQUAL(tokens->size(), 3U);
  BOOST_TEST(tokens->at(0).jti == "app-4");
  BOOST_TEST(tokens->at(1).jti == "app-3");
  BOOST_TEST(tokens->at(2).jti == "app-2");
  // At kNow + 102 the tokens with exp <= now are gone from the listing.
  auto later = store->recentTokens("app", 10, kNow + 102);
  BOOST_REQUIRE(later.has_value());
  BOOST_TEST(later->size() == 2U);
}

BOOST_AUTO_TEST_CASE(revocations_and_suspensions_are_reported_by_changes_since_its_cursor) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  auto store = openStore(dir.db(), clock);
  BOOST_REQUIRE(store->revokeToken("tok-1", "app", kNow + 300).has_value());
  BOOST_REQUIRE(store->revokeToken("tok-1", "app", kNow + 300).has_value());  // idempotent
  BOOST_REQUIRE(store->setSuspended("app", true).has_value());
  auto changes = store->changesSince(0, kNow);
  BOOST_REQUIRE(changes.has_value());
  BOOST_REQUIRE_EQUAL(changes->revocations.size(), 1U);
  BOOST_TEST(changes->revocations[0].jti == "tok-1");
  BOOST_TEST(changes->revocations[0].client_id == "app");
  BOOST_TEST(changes->cursor == changes->revocations[0].id);
  BOOST_REQUIRE(changes->systems.count("app") == 1U);
  BOOST_TEST(changes->systems.at("app").suspended);

  BOOST_REQUIRE(store->revokeToken("tok-2", "app", kNow + 10).has_value());
  auto next = store->changesSince(changes->cursor, kNow);
  BOOST_REQUIRE(next.has_value());
  BOOST_REQUIRE_EQUAL(next->revocations.size(), 1U);
  BOOST_TEST(next->revocations[0].jti == "tok-2");
  BOOST_TEST(next->cursor > changes->cursor);
  // A revocation of a token that has expired is of no interest any more.
  auto expired = store->changesSince(0, kNow + 11);
  BOOST_REQUIRE(expired.has_value());
  BOOST_TEST(expired->revocations.size() == 1U);

  BOOST_REQUIRE(store->setSuspended("app", false).has_value());
  BOOST_REQUIRE(store->revokeAllTokens("app", kNow).has_value());
  BOOST_REQUIRE(store->revokeAllTokens("app", kNow - 100).has_value());  // never moves back
  auto systems = store->changesSince(next->cursor, kNow);
  BOOST_REQUIRE(systems.has_value());
  BOOST_TEST(!systems->systems.at("app").suspended);
  BOOST_TEST(systems->systems.at("app").revoked_before == kNow);
}

BOOST_AUTO_TEST_CASE(opening_a_database_in_a_missing_directory_throws) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  const std::string path = (fs::path(dir.db()).parent_path() / "no-such-dir" / "state.db").string();
  const auto start = std::chrono::steady_clock::now();
  BOOST_CHECK_THROW(openStore(path, clock), std::runtime_error);
  // POCO's open retries for its login timeout (60 s by default); a broker must not stall that long on a typo.
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  BOOST_TEST(elapsed.count() < 10'000);
}

BOOST_AUTO_TEST_SUITE_END()
