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

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <latch>
#include <memory>
#include <random>
#include <set>
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

STORE_CONTRACT_CASE(records_every_issued_token_of_a_concurrent_batch_with_its_own_fields) {
  // 48 threads at once: batches carry many first uses, each with its own token (PostgreSQL writes them with one
  // multi-row INSERT), and every field lands in its own row, replays adding none.
  auto store = backend.open();
  constexpr int kThreads = 48;
  std::vector<sb::IssuedToken> issued;
  for (int i = 0; i < kThreads; ++i) {
    sb::IssuedToken t = token("batch-at-" + std::to_string(i), "app", kNow + i, kNow + 300 + i);
    t.scope = "system/Patient.rs system/Observation.rs?code=" + std::to_string(i);
    t.kid = "kid-" + std::to_string(i % 3);
    issued.push_back(t);
  }
  std::latch start(2 * kThreads);
  std::atomic<int> recorded{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2 * kThreads; ++i) {
    threads.emplace_back([&, i] {
      const int n = i % kThreads;  // every assertion twice: one first use, one replay
      start.arrive_and_wait();
      auto outcome = store->recordJti("app", "batch-" + std::to_string(n), kNow + 300, &issued[static_cast<std::size_t>(n)]);
      if (!outcome) {
        ++errors;
      } else if (*outcome == sb::JtiOutcome::Recorded) {
        ++recorded;
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(errors.load() == 0);
  BOOST_TEST(recorded.load() == kThreads);
  auto tokens = store->recentTokens("app", 100, kNow);
  BOOST_REQUIRE(tokens.has_value());
  BOOST_REQUIRE_EQUAL(tokens->size(), static_cast<std::size_t>(kThreads));
  for (const sb::IssuedToken& t : *tokens) {
    BOOST_TEST_CONTEXT(t.jti) {
      const std::size_t n = std::stoul(t.jti.substr(std::string("batch-at-").size()));
      BOOST_REQUIRE(n < issued.size());
      BOOST_TEST(t.client_id == "app");
      BOOST_TEST(t.scope == issued[n].scope);
      BOOST_TEST(t.iat == issued[n].iat);
      BOOST_TEST(t.exp == issued[n].exp);
      BOOST_TEST(t.kid == issued[n].kid);
    }
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

// Consent (README "Consent"): records, grantees, token links, withdrawals and the outbox.
namespace {

/// A token of `client` linked to `consents`, recorded with the first use of assertion "assertion-<jti>".
void issue(sb::StateStore& store, const std::string& jti, const std::string& client,
           std::vector<std::string> consents, std::int64_t exp = kNow + 300) {
  sb::IssuedToken t = token(jti, client, kNow, exp);
  t.consent_ids = std::move(consents);
  BOOST_TEST_REQUIRE((record(store, client, "assertion-" + jti, kNow + 300, &t) == sb::JtiOutcome::Recorded));
}

sb::ConsentChange upsert(const std::string& id, std::vector<std::string> grantees, const std::string& status = "active") {
  sb::ConsentChange change;
  change.consent_id = id;
  change.action = sb::ConsentChange::Record::Upsert;
  change.record = sb::StoredConsent{id, status, R"({"resourceType":"Consent","id":")" + id + R"("})", grantees, kNow};
  change.keep_clients = std::move(grantees);
  return change;
}

sb::ConsentChange withdrawal(const std::string& id, sb::ConsentChange::Record action = sb::ConsentChange::Record::Delete) {
  sb::ConsentChange change;
  change.consent_id = id;
  change.action = action;
  change.revoke_all = true;
  change.notify = true;
  return change;
}

sb::ConsentChangeResult apply(sb::StateStore& store, const sb::ConsentChange& change) {
  auto result = store.applyConsentChange(change, kNow);
  BOOST_TEST_REQUIRE(result.has_value(), (result ? "" : result.error().detail));
  return *result;
}

std::vector<std::string> jtisOf(const std::vector<sb::Revocation>& revocations) {
  std::vector<std::string> out;
  for (const sb::Revocation& r : revocations) {
    out.push_back(r.jti);
  }
  std::ranges::sort(out);
  return out;
}

std::vector<sb::ConsentNotification> due(sb::StateStore& store, std::int64_t at) {
  auto found = store.dueNotifications(at, 10);
  BOOST_TEST_REQUIRE(found.has_value(), (found ? "" : found.error().detail));
  return *found;
}

}  // namespace

STORE_CONTRACT_CASE(stores_a_consent_with_its_grantees_and_finds_it_by_grantee) {
  auto store = backend.open();
  const auto none = store->findConsent("c1");
  BOOST_TEST_REQUIRE(none.has_value());
  BOOST_TEST(!none->has_value());
  apply(*store, upsert("c1", {"b", "a"}));
  apply(*store, upsert("c2", {"b"}, "proposed"));
  const auto found = store->findConsent("c1");
  BOOST_TEST_REQUIRE(found.has_value());
  BOOST_TEST_REQUIRE(found->has_value());
  BOOST_TEST((*found)->id == "c1");
  BOOST_TEST((*found)->status == "active");
  BOOST_TEST((*found)->resource == R"({"resourceType":"Consent","id":"c1"})");
  BOOST_TEST((*found)->updated_at == kNow);
  BOOST_TEST((*found)->grantees == (std::vector<std::string>{"a", "b"}), boost::test_tools::per_element());
  const auto forB = store->consentsForGrantee("b");
  BOOST_TEST_REQUIRE(forB.has_value());
  BOOST_TEST_REQUIRE(forB->size() == 2U);
  BOOST_TEST((*forB)[0].id == "c1");
  BOOST_TEST((*forB)[0].grantees == (std::vector<std::string>{"a", "b"}), boost::test_tools::per_element());
  BOOST_TEST((*forB)[1].id == "c2");
  BOOST_TEST((*forB)[1].status == "proposed");
  BOOST_TEST(store->consentsForGrantee("c")->empty());
  BOOST_TEST(!store->findConsent("c3")->has_value());

  // An update replaces the grantees; a delete removes the record and its grantees.
  apply(*store, upsert("c1", {"c"}));
  BOOST_TEST((*store->findConsent("c1"))->grantees == std::vector<std::string>{"c"}, boost::test_tools::per_element());
  BOOST_TEST(store->consentsForGrantee("a")->empty());
  BOOST_TEST(store->consentsForGrantee("c")->size() == 1U);
  sb::ConsentChange remove = withdrawal("c1");
  remove.notify = false;
  const sb::ConsentChangeResult removed = apply(*store, remove);
  BOOST_TEST(removed.notification_id == 0);
  BOOST_TEST(!store->findConsent("c1")->has_value());
  BOOST_TEST(store->consentsForGrantee("c")->empty());
  BOOST_TEST(store->consentsForGrantee("b")->size() == 1U);
}

// The issuance check reads the consent before the jti is spent; a withdrawal that commits in between must not let
// the token through unlinked: recordJti re-checks local consents where it writes the links.
STORE_CONTRACT_CASE(a_token_linked_to_a_local_consent_withdrawn_since_the_check_is_not_recorded) {
  auto store = backend.open();
  apply(*store, upsert("live", {"a"}));
  apply(*store, upsert("gone", {"a"}));
  apply(*store, upsert("paused", {"a"}));
  apply(*store, withdrawal("gone"));
  apply(*store, upsert("paused", {"a"}, "inactive"));

  const auto linked = [&](const std::string& jti, std::vector<std::string> consents, bool local) {
    sb::IssuedToken t = token(jti, "a", kNow, kNow + 300);
    t.consent_ids = std::move(consents);
    t.consents_local = local;
    return record(*store, "a", "assertion-" + jti, kNow + 300, &t);
  };
  BOOST_TEST((linked("t-live", {"live"}, true) == sb::JtiOutcome::Recorded));
  BOOST_TEST((linked("t-gone", {"live", "gone"}, true) == sb::JtiOutcome::ConsentWithdrawn));
  BOOST_TEST((linked("t-paused", {"paused"}, true) == sb::JtiOutcome::ConsentWithdrawn));
  // Consents read from a FHIR server are not stored here: nothing to re-check.
  BOOST_TEST((linked("t-remote", {"gone"}, false) == sb::JtiOutcome::Recorded));

  // The refused token left no record and no link (a later withdrawal does not report it); its jti is spent.
  const auto tokens = store->recentTokens("a", 10, kNow);
  BOOST_TEST_REQUIRE(tokens.has_value());
  std::vector<std::string> jtis;
  for (const sb::IssuedToken& t : *tokens) {
    jtis.push_back(t.jti);
  }
  std::ranges::sort(jtis);
  BOOST_TEST(jtis == (std::vector<std::string>{"t-live", "t-remote"}), boost::test_tools::per_element());
  BOOST_TEST((record(*store, "a", "assertion-t-gone", kNow + 300) == sb::JtiOutcome::Replayed));
  const sb::ConsentChangeResult live = apply(*store, withdrawal("live"));
  BOOST_TEST(jtisOf(live.revoked) == (std::vector<std::string>{"t-live"}), boost::test_tools::per_element());
}

// Issuance racing a withdrawal, on two stores of one database (two instances): every token that was recorded
// is revoked by the withdrawal; after it, issuance is refused. Nothing escapes unlinked.
STORE_CONTRACT_CASE(no_token_escapes_a_withdrawal_that_races_its_issuance) {
  auto issuer = backend.open();
  auto withdrawer = backend.open();
  apply(*withdrawer, upsert("c", {"a"}));
  struct Outcomes {
    std::vector<std::string> recorded;
    bool refusedAfterWithdrawal = false;
    std::string error;
  };
  std::vector<Outcomes> outcomes(4);
  std::atomic<int> issuedSoFar{0};
  {
    std::vector<std::jthread> threads;
    for (std::size_t w = 0; w < outcomes.size(); ++w) {
      threads.emplace_back([&, w] {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
        for (int i = 0; std::chrono::steady_clock::now() < deadline; ++i) {
          const std::string jti = "race-" + std::to_string(w) + "-" + std::to_string(i);
          sb::IssuedToken t = token(jti, "a", kNow, kNow + 300);
          t.consent_ids = {"c"};
          t.consents_local = true;
          const auto outcome = issuer->recordJti("a", "assertion-" + jti, kNow + 300, &t);
          if (!outcome) {
            outcomes[w].error = outcome.error().detail;
            return;
          }
          if (*outcome == sb::JtiOutcome::Recorded) {
            outcomes[w].recorded.push_back(jti);
            issuedSoFar.fetch_add(1);
          } else if (*outcome == sb::JtiOutcome::ConsentWithdrawn) {
            outcomes[w].refusedAfterWithdrawal = true;
            return;
          }
        }
      });
    }
    // Withdraw while issuance is in full flow.
    const auto waitUntil = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (issuedSoFar.load() < 8 && std::chrono::steady_clock::now() < waitUntil) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    apply(*withdrawer, withdrawal("c"));
  }
  const auto changes = withdrawer->changesSince(0, kNow);
  BOOST_TEST_REQUIRE(changes.has_value());
  std::set<std::string> revoked;
  for (const sb::Revocation& r : changes->revocations) {
    revoked.insert(r.jti);
  }
  std::size_t total = 0;
  for (const Outcomes& o : outcomes) {
    BOOST_TEST(o.error.empty(), o.error);
    BOOST_TEST(o.refusedAfterWithdrawal);
    for (const std::string& jti : o.recorded) {
      BOOST_TEST(revoked.contains(jti), jti << " was issued and escaped the withdrawal");
    }
    total += o.recorded.size();
  }
  BOOST_TEST_MESSAGE(backend.kName << ": " << total << " tokens issued before the withdrawal, all revoked");
  BOOST_TEST(total > 0U);
}

STORE_CONTRACT_CASE(withdrawal_revokes_linked_tokens_once_and_queues_one_notification) {
  auto store = backend.open();
  issue(*store, "t1", "a", {"c1"});
  issue(*store, "t2", "b", {"c1", "c2"});
  issue(*store, "t3", "a", {"c2"});
  const sb::ConsentChangeResult first = apply(*store, withdrawal("c1"));
  BOOST_TEST(jtisOf(first.revoked) == (std::vector<std::string>{"t1", "t2"}), boost::test_tools::per_element());
  BOOST_TEST(first.notification_id > 0);
  const sb::ConsentChangeResult again = apply(*store, withdrawal("c1"));
  BOOST_TEST(again.revoked.empty());
  BOOST_TEST(again.notification_id == 0);  // nothing new revoked, not notify_always

  // The revocations go through the revocations table: mirrors following by cursor see them.
  const auto changes = store->changesSince(0, kNow);
  BOOST_TEST_REQUIRE(changes.has_value());
  BOOST_TEST(jtisOf(changes->revocations) == (std::vector<std::string>{"t1", "t2"}), boost::test_tools::per_element());
  BOOST_TEST(changes->revocations[0].exp == kNow + 300);
  const auto queued = due(*store, kNow);
  BOOST_TEST_REQUIRE(queued.size() == 1U);
  BOOST_TEST(queued.front().id == first.notification_id);
  BOOST_TEST(queued.front().consent_id == "c1");
  BOOST_TEST(queued.front().time == kNow);
  BOOST_TEST(queued.front().attempts == 0);
  BOOST_TEST(queued.front().revoked_token_ids == (std::vector<std::string>{"t1", "t2"}),
             boost::test_tools::per_element());

  BOOST_TEST_REQUIRE(store->notificationFailed(queued.front().id, kNow + 5, "HTTP 503").has_value());
  BOOST_TEST(due(*store, kNow).empty());
  const auto later = due(*store, kNow + 5);
  BOOST_TEST_REQUIRE(later.size() == 1U);
  BOOST_TEST(later.front().attempts == 1);
  BOOST_TEST_REQUIRE(store->notificationDelivered(later.front().id, kNow + 5).has_value());
  BOOST_TEST(due(*store, kNow + 3600).empty());
}

STORE_CONTRACT_CASE(an_update_that_drops_a_grantee_revokes_only_that_systems_tokens) {
  auto store = backend.open();
  issue(*store, "t1", "a", {"c1"});
  issue(*store, "t2", "b", {"c1"});
  sb::ConsentChange update = upsert("c1", {"a"});
  update.notify = true;
  const sb::ConsentChangeResult done = apply(*store, update);
  BOOST_TEST_REQUIRE(done.revoked.size() == 1U);
  BOOST_TEST(done.revoked.front().jti == "t2");
  BOOST_TEST(done.revoked.front().client_id == "b");
  BOOST_TEST(done.notification_id > 0);  // it revoked a token
  BOOST_TEST(due(*store, kNow).front().revoked_token_ids == std::vector<std::string>{"t2"},
             boost::test_tools::per_element());
}

STORE_CONTRACT_CASE(notify_always_queues_a_notification_even_without_live_tokens) {
  auto store = backend.open();
  sb::ConsentChange change = withdrawal("c9", sb::ConsentChange::Record::Keep);
  change.notify_always = true;
  const sb::ConsentChangeResult done = apply(*store, change);
  BOOST_TEST(done.revoked.empty());
  BOOST_TEST(done.notification_id > 0);
  const auto queued = due(*store, kNow);
  BOOST_TEST_REQUIRE(queued.size() == 1U);
  BOOST_TEST(queued.front().consent_id == "c9");
  BOOST_TEST(queued.front().revoked_token_ids.empty());
  // Without notify nothing is queued, whatever notify_always says.
  change.notify = false;
  BOOST_TEST(apply(*store, change).notification_id == 0);
}

STORE_CONTRACT_CASE(a_withdrawal_skips_expired_and_already_revoked_tokens) {
  auto store = backend.open();
  issue(*store, "live", "a", {"c1"});
  issue(*store, "expired", "a", {"c1"}, kNow);  // exp == now: already expired
  issue(*store, "revoked", "a", {"c1"});
  BOOST_REQUIRE(store->revokeToken("revoked", "a", kNow + 300).has_value());
  const sb::ConsentChangeResult done = apply(*store, withdrawal("c1"));
  BOOST_TEST(jtisOf(done.revoked) == std::vector<std::string>{"live"}, boost::test_tools::per_element());
}

STORE_CONTRACT_CASE(links_a_token_to_its_consents_only_with_the_first_use_of_its_assertion) {
  auto store = backend.open();
  sb::IssuedToken first = token("t1", "a", kNow, kNow + 300);
  first.consent_ids = {"c1"};
  sb::IssuedToken replayed = token("t2", "a", kNow, kNow + 300);
  replayed.consent_ids = {"c1"};
  BOOST_TEST((record(*store, "a", "one-assertion", kNow + 300, &first) == sb::JtiOutcome::Recorded));
  BOOST_TEST((record(*store, "a", "one-assertion", kNow + 300, &replayed) == sb::JtiOutcome::Replayed));
  const sb::ConsentChangeResult done = apply(*store, withdrawal("c1"));
  BOOST_TEST(jtisOf(done.revoked) == std::vector<std::string>{"t1"}, boost::test_tools::per_element());
}

STORE_CONTRACT_CASE(keeps_consents_links_and_the_outbox_across_a_reopen) {
  std::int64_t notification = 0;
  {
    auto store = backend.open();
    apply(*store, upsert("c1", {"a"}));
    issue(*store, "t1", "a", {"c1"});
    issue(*store, "t2", "a", {"c2"});
    notification = apply(*store, withdrawal("c1")).notification_id;
  }
  auto store = backend.open();
  BOOST_TEST(!store->findConsent("c1")->has_value());
  const auto queued = due(*store, kNow);
  BOOST_TEST_REQUIRE(queued.size() == 1U);
  BOOST_TEST(queued.front().id == notification);
  BOOST_TEST(queued.front().revoked_token_ids == std::vector<std::string>{"t1"}, boost::test_tools::per_element());
  // The link of t2, written before the reopen, is still found.
  BOOST_TEST(jtisOf(apply(*store, withdrawal("c2")).revoked) == std::vector<std::string>{"t2"},
             boost::test_tools::per_element());
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

BOOST_FIXTURE_TEST_CASE(two_instances_withdrawing_one_consent_at_once_revoke_and_notify_each_token_once,
                        PostgresBackend) {
  if (skip()) {
    return;
  }
  auto a = open();
  auto b = open();
  for (int round = 0; round < 5; ++round) {
    const std::string consent = "c-" + std::to_string(round);
    for (int i = 0; i < 20; ++i) {
      issue(i % 2 == 0 ? *a : *b, consent + "-t" + std::to_string(i), "app", {consent});
    }
    constexpr int kThreads = 8;
    std::latch start(kThreads);
    std::atomic<int> failed{0};
    std::atomic<int> notifications{0};
    std::vector<std::vector<sb::Revocation>> revoked(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        const sb::ConsentChange change = withdrawal(consent);
        start.arrive_and_wait();
        auto done = (t % 2 == 0 ? a : b)->applyConsentChange(change, kNow);
        if (!done) {
          ++failed;
          return;
        }
        revoked[static_cast<std::size_t>(t)] = done->revoked;
        notifications += done->notification_id != 0 ? 1 : 0;
      });
    }
    for (auto& t : threads) {
      t.join();
    }
    BOOST_TEST(failed.load() == 0);
    std::vector<sb::Revocation> all;
    for (const auto& r : revoked) {
      all.insert(all.end(), r.begin(), r.end());
    }
    BOOST_TEST(all.size() == 20U);  // each token reported by exactly one of the eight changes
    BOOST_TEST(notifications.load() == 1);
  }
  const auto queued = due(*a, kNow);
  BOOST_TEST(queued.size() == 5U);
  for (const sb::ConsentNotification& n : queued) {
    BOOST_TEST(n.revoked_token_ids.size() == 20U);
  }
}

BOOST_FIXTURE_TEST_CASE(a_mirror_never_sees_a_revocation_before_an_earlier_one_has_committed, PostgresBackend) {
  if (skip()) {
    return;
  }
  auto a = open();
  auto b = open();
  issue(*a, "t1", "app", {"c1"});
  Poco::Data::Session observer("PostgreSQL", db->connection());
  const auto waitForLockWaiters = [&](int count) {
    int waiting = 0;
    for (int i = 0; i < 300 && waiting < count; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      observer << "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
                  " AND wait_event_type = 'Lock'",
          Poco::Data::Keywords::into(waiting), now;
    }
    return waiting;
  };
  // A's withdrawal takes revocation id 1 for t1, then stalls before its commit (its outbox insert waits on a
  // lock held here). B's POST /revoke of t2, which would take id 2, must wait for it: were it to commit first, a
  // mirror would read id 2, move its cursor past 1, and never see t1.
  Poco::Data::Session blocker("PostgreSQL", db->connection());
  blocker.begin();
  blocker << "LOCK TABLE consent_outbox IN EXCLUSIVE MODE", now;
  std::expected<sb::ConsentChangeResult, sb::StoreError> withdrawn;
  std::thread first([&] { withdrawn = a->applyConsentChange(withdrawal("c1"), kNow); });
  BOOST_TEST(waitForLockWaiters(1) == 1);
  std::expected<void, sb::StoreError> revoked;
  std::thread second([&] { revoked = b->revokeToken("t2", "app", kNow + 300); });
  BOOST_TEST(waitForLockWaiters(2) == 2);  // B waits too (on the revocation lock)
  const auto during = b->changesSince(0, kNow);
  BOOST_REQUIRE(during.has_value());
  BOOST_TEST(during->revocations.empty());
  blocker.rollback();
  first.join();
  second.join();
  BOOST_REQUIRE(withdrawn.has_value());
  BOOST_REQUIRE(revoked.has_value());
  const auto after = b->changesSince(during->cursor, kNow);
  BOOST_REQUIRE(after.has_value());
  BOOST_TEST(jtisOf(after->revocations) == (std::vector<std::string>{"t1", "t2"}), boost::test_tools::per_element());
}

BOOST_FIXTURE_TEST_CASE(hands_a_due_notification_to_one_instance_at_a_time, PostgresBackend) {
  if (skip()) {
    return;
  }
  auto a = open();
  auto b = open();
  issue(*a, "t1", "app", {"c1"});
  const std::int64_t id = apply(*a, withdrawal("c1")).notification_id;
  // Both poll at once, repeatedly: the notification goes to one of them.
  std::atomic<int> handedOut{0};
  std::latch start(8);
  std::vector<std::thread> pollers;
  for (int i = 0; i < 8; ++i) {
    pollers.emplace_back([&, i] {
      start.arrive_and_wait();
      if (auto found = (i % 2 == 0 ? a : b)->dueNotifications(kNow, 10)) {
        handedOut += static_cast<int>(found->size());
      }
    });
  }
  for (auto& t : pollers) {
    t.join();
  }
  BOOST_TEST(handedOut.load() == 1);
  BOOST_TEST(due(*b, kNow + 60).empty());
  // An instance that took it and died: once its lease has run out, another instance gets it (at least once).
  const auto again = due(*b, kNow + 120);
  BOOST_TEST_REQUIRE(again.size() == 1U);
  BOOST_TEST(again.front().id == id);
  BOOST_TEST(again.front().attempts == 0);
  // A failure reschedules it at the time the notifier asks for, lease or not.
  // An error text that is not storable as it is (not UTF-8, a NUL) is still recorded.
  std::string error = "HTTP 503 ";
  error += '\xff';
  error += '\0';
  BOOST_REQUIRE(b->notificationFailed(id, kNow + 121, error).has_value());
  BOOST_TEST(due(*a, kNow + 121).size() == 1U);
  BOOST_REQUIRE(a->notificationDelivered(id, kNow + 121).has_value());
  BOOST_TEST(due(*b, kNow + 3600).empty());
}

BOOST_FIXTURE_TEST_CASE(fails_within_the_statement_timeout_behind_another_sessions_lock_and_keeps_answering,
                        PostgresBackend) {
  if (skip()) {
    return;
  }
  sb::PostgresOptions options;
  // A statement_timeout of 0 (no limit) given in the connection string must not win over the store's.
  options.connection = db->connection() + " options=-cstatement_timeout=0";
  options.pool_size = 3;
  options.statement_timeout_ms = 1000;
  auto store = sb::openPostgresStore(options, clock);
  BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Recorded));
  apply(*store, upsert("c1", {"a"}));

  using Steady = std::chrono::steady_clock;
  const auto expectTimeout = [&](const char* what, auto&& call) {
    const auto start = Steady::now();
    const auto result = call();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - start).count();
    BOOST_TEST_MESSAGE(what << " failed after " << ms << " ms");
    BOOST_TEST_REQUIRE(!result.has_value(), what);
    BOOST_TEST(result.error().detail.find("statement timeout") != std::string::npos, result.error().detail);
    BOOST_TEST(ms >= 950, what);   // it did wait for the lock
    BOOST_TEST(ms < 1800, what);   // once: a timed-out statement is not retried (that would take 2000 ms)
    BOOST_TEST(!store->healthy());
  };
  {
    // Another session (an operator's psql, a migration) holds locks and does not let go.
    Poco::Data::Session blocker("PostgreSQL", db->connection());
    blocker.begin();
    blocker << "LOCK TABLE replay, consents IN ACCESS EXCLUSIVE MODE", now;
    blocker << "SELECT pg_advisory_xact_lock(8314333642183633765)", now;  // kRevocationLock ("sbrevoke")
    expectTimeout("recordJti (writer)", [&] { return store->recordJti("app", "during", kNow + 300); });
    expectTimeout("findConsent (reader)", [&] { return store->findConsent("c1"); });
    expectTimeout("revokeToken (revocation lock)", [&] { return store->revokeToken("at-1", "app", kNow + 300); });
    expectTimeout("applyConsentChange (revocation lock)", [&] { return store->applyConsentChange(withdrawal("c1"), kNow); });
    blocker.rollback();
  }
  // The same store answers again at once, and the timed-out writes left nothing behind.
  BOOST_TEST((record(*store, "app", "during", kNow + 300) == sb::JtiOutcome::Recorded));
  BOOST_TEST(store->healthy());
  BOOST_TEST(store->findConsent("c1")->has_value());
  BOOST_TEST(store->changesSince(0, kNow)->revocations.empty());
  BOOST_TEST((record(*store, "app", "before", kNow + 300) == sb::JtiOutcome::Replayed));
}

BOOST_FIXTURE_TEST_CASE(refuses_consent_text_postgresql_cannot_store_without_failing_other_writes, PostgresBackend) {
  if (skip()) {
    return;
  }
  auto store = open();
  for (const std::string& bad : {std::string("{\"x\":\"\xff\"}"), std::string("{\"x\":\"\xc0\xaf\"}"),
                                std::string("{\"x\":\"\xed\xa0\x80\"}"), std::string("{}\0", 3)}) {
    sb::ConsentChange change = upsert("c1", {"a"});
    change.record.resource = bad;
    const auto refused = store->applyConsentChange(change, kNow);
    BOOST_TEST(!refused.has_value());
  }
  sb::ConsentChange badGrantee = upsert("c1", {std::string("a\xff")});
  BOOST_TEST(!store->applyConsentChange(badGrantee, kNow).has_value());
  BOOST_TEST(store->healthy());
  BOOST_TEST(!store->findConsent("c1")->has_value());
  // Valid UTF-8 beyond ASCII is stored as it is.
  sb::ConsentChange good = upsert("c1", {"a"});
  good.record.resource = "{\"display\":\"J\xc3\xbcrgen \xe2\x9c\x93 \xf0\x9f\x98\x80\"}";
  apply(*store, good);
  BOOST_TEST((*store->findConsent("c1"))->resource == good.record.resource);
  BOOST_TEST((record(*store, "app", "after", kNow + 300) == sb::JtiOutcome::Recorded));
}

BOOST_AUTO_TEST_CASE(refuses_a_statement_timeout_that_is_not_positive) {
  TestClock clock;
  sb::PostgresOptions options;
  options.connection = "host=127.0.0.1 port=1";
  options.statement_timeout_ms = 0;
  BOOST_CHECK_THROW((void)sb::openPostgresStore(options, clock), std::invalid_argument);
  BOOST_CHECK_THROW((void)sb::migratePostgres(options), std::invalid_argument);
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
