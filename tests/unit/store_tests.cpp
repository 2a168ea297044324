// Unit tests for the SQLite StateStore: replay decisions, atomicity under threads, expiry and durability.
#include <boost/test/unit_test.hpp>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/store.hpp"

#include <atomic>
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

BOOST_AUTO_TEST_CASE(opening_a_database_in_a_missing_directory_throws) {
  const StoreDir dir;
  const StoreClock clock(kNow);
  const std::string path = (fs::path(dir.db()).parent_path() / "no-such-dir" / "state.db").string();
  BOOST_CHECK_THROW(openStore(path, clock), std::runtime_error);
}

BOOST_AUTO_TEST_SUITE_END()
