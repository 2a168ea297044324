// SQLite (WAL) implementation of StateStore with a group-committing writer thread.
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/SQLite/Utility.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include <linux/futex.h>
#include <sqlite3.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "smartbroker/broker/store.hpp"

namespace smartbroker::broker {
namespace {

using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;
using Poco::Data::Keywords::useRef;

/// Migrations, applied in order, each once. The SQL is meant to serve PostgreSQL as well, except where noted.
const char* const kMigrations[] = {
    "CREATE TABLE IF NOT EXISTS replay ("
    " iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (iss, jti))",
    "CREATE INDEX IF NOT EXISTS replay_expires_at ON replay (expires_at)",
    "CREATE TABLE IF NOT EXISTS tokens ("
    " jti TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,"
    " iat BIGINT NOT NULL, exp BIGINT NOT NULL, kid TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tokens_client_iat ON tokens (client_id, iat)",
    // AUTOINCREMENT (PostgreSQL: an identity column): ids never repeat, so mirrors can follow by cursor.
    "CREATE TABLE IF NOT EXISTS revocations ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL, exp BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS system_state ("
    " client_id TEXT PRIMARY KEY, suspended INTEGER NOT NULL DEFAULT 0, revoked_before BIGINT NOT NULL DEFAULT 0)",
    // Consent (README "Consent"): local records, their grantees, token links and the notification outbox.
    "CREATE TABLE IF NOT EXISTS consents ("
    " id TEXT PRIMARY KEY, status TEXT NOT NULL, resource TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS consent_grantees ("
    " consent_id TEXT NOT NULL, client_id TEXT NOT NULL, PRIMARY KEY (consent_id, client_id))",
    "CREATE INDEX IF NOT EXISTS consent_grantees_client ON consent_grantees (client_id)",
    "CREATE TABLE IF NOT EXISTS token_consents ("
    " consent_id TEXT NOT NULL, jti TEXT NOT NULL, client_id TEXT NOT NULL, exp BIGINT NOT NULL,"
    " PRIMARY KEY (consent_id, jti))",
    "CREATE INDEX IF NOT EXISTS token_consents_exp ON token_consents (exp)",
    // token_ids: the revoked jtis, space-separated (jtis are base64url). PostgreSQL: an identity column for id.
    "CREATE TABLE IF NOT EXISTS consent_outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, consent_id TEXT NOT NULL, token_ids TEXT NOT NULL,"
    " event_time BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,"
    " delivered_at BIGINT NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS consent_outbox_due ON consent_outbox (delivered_at, next_attempt_at)",
    // SQLite only (PostgreSQL has no rowid): the two tables every token writes become clustered on their primary
    // key (WITHOUT ROWID), one b-tree each instead of a rowid table plus a key index, which halves the pages a
    // group commit writes; tokens gets an exp index so that pruning is not a full scan. One statement per step.
    "CREATE TABLE replay_v2 ("
    " iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (iss, jti)) WITHOUT ROWID",
    "INSERT INTO replay_v2 (iss, jti, expires_at) SELECT iss, jti, expires_at FROM replay",
    "DROP TABLE replay",
    "ALTER TABLE replay_v2 RENAME TO replay",
    "CREATE INDEX replay_expires_at ON replay (expires_at)",
    "CREATE TABLE tokens_v2 ("
    " jti TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,"
    " iat BIGINT NOT NULL, exp BIGINT NOT NULL, kid TEXT NOT NULL) WITHOUT ROWID",
    "INSERT INTO tokens_v2 (jti, client_id, scope, iat, exp, kid) SELECT jti, client_id, scope, iat, exp, kid FROM tokens",
    "DROP TABLE tokens",
    "ALTER TABLE tokens_v2 RENAME TO tokens",
    "CREATE INDEX tokens_client_iat ON tokens (client_id, iat)",
    "CREATE INDEX tokens_exp ON tokens (exp)",
};

/// First use wins; a row whose assertion has expired may be taken over by a new assertion with that jti
/// (SPEC: "not seen before within the assertion lifetime"). One row changed = Recorded, none = Replayed.
constexpr const char* kRecordJti =
    "INSERT INTO replay (iss, jti, expires_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (iss, jti) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE replay.expires_at < $4";
constexpr const char* kRecordToken =
    "INSERT INTO tokens (jti, client_id, scope, iat, exp, kid) VALUES ($1, $2, $3, $4, $5, $6)";

constexpr std::size_t kOpenTimeoutSeconds = 1;
/// Delivered notifications are kept this long, for audit.
constexpr std::int64_t kOutboxRetentionSeconds = 7 * 24 * 3600;

std::vector<std::string> splitSpaces(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = std::min(text.find(' ', start), text.size());
    if (end > start) {
      out.push_back(text.substr(start, end - start));
    }
    start = end + 1;
  }
  return out;
}
/// Token records are kept this long after they expire, for audit and `tokens` listings.
constexpr std::int64_t kTokenRetentionSeconds = 24 * 3600;

/// A statement compiled once and re-run with new bindings. POCO's Statement recompiles its SQL on every
/// execute(), which cost the writer a sqlite3_prepare per replay record; the two hot inserts use the
/// connection's handle directly instead.
class Prepared {
 public:
  Prepared(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK) {
      throw std::runtime_error(std::string("prepare failed: ") + sqlite3_errmsg(db));
    }
  }
  ~Prepared() { sqlite3_finalize(stmt_); }
  Prepared(const Prepared&) = delete;
  Prepared& operator=(const Prepared&) = delete;

  Prepared& text(int index, const std::string& value) {
    check(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_STATIC));
    return *this;
  }
  Prepared& integer(int index, std::int64_t value) {
    check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }
  /// Runs the statement; returns the number of rows it changed.
  int run() {
    const int rc = sqlite3_step(stmt_);
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
    if (rc != SQLITE_DONE) {
      throw std::runtime_error(std::string("statement failed: ") + sqlite3_errmsg(db_));
    }
    return sqlite3_changes(db_);
  }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) {
      throw std::runtime_error(std::string("bind failed: ") + sqlite3_errmsg(db_));
    }
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

enum class Op : std::uint8_t {
  RecordJti,
  RevokeToken,
  SetSuspended,
  RevokeAll,
  ConsentChange,
  NotificationDelivered,
  NotificationFailed,
};

/// Wakes exactly the one thread waiting for one write. A condition variable shared by all waiters woke every
/// request thread on every commit (most to go back to sleep, each re-taking the queue mutex); this is one futex
/// word per request, and the writer never takes the queue mutex to hand results back.
class Completion {
 public:
  /// Blocks until signal(); everything the writer stored before signal() is visible afterwards.
  void wait() noexcept {
    while (state_.load(std::memory_order_acquire) == 0) {
      // Returns at once if state_ is no longer 0; EINTR and spurious wake-ups just loop.
      syscall(SYS_futex, &state_, FUTEX_WAIT_PRIVATE, 0U, nullptr, nullptr, 0);
    }
  }
  /// The waiter may return, and its Pending (with this object) go out of scope, as soon as the store is seen;
  /// the wake only names the address and never touches the object, so a late wake is at worst spurious.
  void signal() noexcept {
    auto* const address = &state_;
    state_.store(1, std::memory_order_release);
    syscall(SYS_futex, address, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }

 private:
  static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t), "futex word");
  std::atomic<std::uint32_t> state_{0};
};

/// One write waiting for the writer thread. Lives on the caller's stack until `completion` is signalled.
struct Pending {
  Op op = Op::RecordJti;
  std::string a;   ///< iss / jti / client_id
  std::string b;   ///< jti / client_id
  std::int64_t n = 0;  ///< expires_at / exp / suspended / before
  const IssuedToken* issued = nullptr;
  std::int64_t m = 0;  ///< notification: delivered_at / next_attempt_at
  const ConsentChange* consent = nullptr;
  ConsentChangeResult consentResult;
  JtiOutcome outcome = JtiOutcome::Replayed;
  std::string error;
  Completion completion;
};

class SqliteStore final : public StateStore {
 public:
  SqliteStore(const SqliteOptions& options, const Clock& clock)
      // POCO retries a failed open every 10 ms until the login timeout (default 60 s); a local file that
      // cannot be opened will not become openable, so fail after one second instead of stalling startup.
      : options_(options),
        clock_(clock),
        session_("SQLite", options.path, kOpenTimeoutSeconds),
        reader_("SQLite", options.path, kOpenTimeoutSeconds) {
    // WAL lets the reader session (and admin commands in other processes) read while the writer commits.
    session_ << "PRAGMA journal_mode=WAL", now;
    session_ << (options.fsync_commits ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"), now;
    session_ << "PRAGMA busy_timeout=5000", now;
    reader_ << "PRAGMA busy_timeout=5000", now;
    migrate();
    writer_ = std::thread([this] { run(); });
  }

  ~SqliteStore() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    writer_.join();
  }

  std::expected<JtiOutcome, StoreError> recordJti(std::string_view iss, std::string_view jti, std::int64_t expiresAt,
                                                  const IssuedToken* issued) override {
    Pending p;
    p.op = Op::RecordJti;
    p.a = iss;
    p.b = jti;
    p.n = expiresAt;
    p.issued = issued;
    if (auto ok = submit(p); !ok) {
      return std::unexpected(ok.error());
    }
    return p.outcome;
  }

  std::expected<void, StoreError> revokeToken(std::string_view jti, std::string_view clientId,
                                              std::int64_t exp) override {
    Pending p;
    p.op = Op::RevokeToken;
    p.a = jti;
    p.b = clientId;
    p.n = exp;
    return submit(p);
  }

  std::expected<void, StoreError> setSuspended(std::string_view clientId, bool suspended) override {
    Pending p;
    p.op = Op::SetSuspended;
    p.a = clientId;
    p.n = suspended ? 1 : 0;
    return submit(p);
  }

  std::expected<void, StoreError> revokeAllTokens(std::string_view clientId, std::int64_t before) override {
    Pending p;
    p.op = Op::RevokeAll;
    p.a = clientId;
    p.n = before;
    return submit(p);
  }

  std::expected<std::vector<IssuedToken>, StoreError> recentTokens(std::string_view clientId, std::size_t limit,
                                                                   std::int64_t nowSeconds) override {
    std::vector<std::string> jtis;
    std::vector<std::string> scopes;
    std::vector<Poco::Int64> iats;
    std::vector<Poco::Int64> exps;
    std::vector<std::string> kids;
    std::string client(clientId);
    Poco::Int64 at = nowSeconds;
    auto max = static_cast<Poco::Int64>(limit);
    try {
      std::lock_guard lock(readerMutex_);
      reader_ << "SELECT jti, scope, iat, exp, kid FROM tokens WHERE client_id = $1 AND exp > $2"
                 " ORDER BY iat DESC LIMIT $3",
          into(jtis), into(scopes), into(iats), into(exps), into(kids), use(client), use(at), use(max), now;
    } catch (const Poco::Exception& e) {
      return std::unexpected(StoreError{e.displayText()});
    }
    std::vector<IssuedToken> out;
    for (std::size_t i = 0; i < jtis.size(); ++i) {
      out.push_back({jtis[i], client, scopes[i], iats[i], exps[i], kids[i]});
    }
    return out;
  }

  std::expected<StateChanges, StoreError> changesSince(std::int64_t cursor, std::int64_t nowSeconds) override {
    StateChanges changes;
    changes.cursor = cursor;
    std::vector<Poco::Int64> ids;
    std::vector<std::string> jtis;
    std::vector<std::string> clients;
    std::vector<Poco::Int64> exps;
    std::vector<std::string> stateClients;
    std::vector<int> suspended;
    std::vector<Poco::Int64> before;
    Poco::Int64 from = cursor;
    Poco::Int64 at = nowSeconds;
    try {
      std::lock_guard lock(readerMutex_);
      reader_ << "SELECT id, jti, client_id, exp FROM revocations WHERE id > $1 AND exp >= $2 ORDER BY id",
          into(ids), into(jtis), into(clients), into(exps), use(from), use(at), now;
      reader_ << "SELECT client_id, suspended, revoked_before FROM system_state", into(stateClients),
          into(suspended), into(before), now;
    } catch (const Poco::Exception& e) {
      return std::unexpected(StoreError{e.displayText()});
    }
    for (std::size_t i = 0; i < ids.size(); ++i) {
      changes.revocations.push_back({ids[i], jtis[i], clients[i], exps[i]});
      changes.cursor = std::max<std::int64_t>(changes.cursor, ids[i]);
    }
    for (std::size_t i = 0; i < stateClients.size(); ++i) {
      changes.systems[stateClients[i]] = SystemState{suspended[i] != 0, before[i]};
    }
    return changes;
  }

  std::expected<std::optional<StoredConsent>, StoreError> findConsent(std::string_view id) override {
    std::vector<std::string> statuses;
    std::vector<std::string> resources;
    std::vector<Poco::Int64> updated;
    std::vector<std::string> grantees;
    std::string key(id);
    try {
      std::lock_guard lock(readerMutex_);
      reader_ << "SELECT status, resource, updated_at FROM consents WHERE id = $1", into(statuses), into(resources),
          into(updated), use(key), now;
      if (statuses.empty()) {
        return std::optional<StoredConsent>();
      }
      reader_ << "SELECT client_id FROM consent_grantees WHERE consent_id = $1 ORDER BY client_id", into(grantees),
          use(key), now;
    } catch (const Poco::Exception& e) {
      return std::unexpected(StoreError{e.displayText()});
    }
    return std::optional<StoredConsent>(StoredConsent{key, statuses[0], resources[0], grantees, updated[0]});
  }

  std::expected<std::vector<StoredConsent>, StoreError> consentsForGrantee(std::string_view clientId) override {
    std::vector<std::string> ids;
    std::string client(clientId);
    try {
      std::lock_guard lock(readerMutex_);
      reader_ << "SELECT consent_id FROM consent_grantees WHERE client_id = $1 ORDER BY consent_id", into(ids),
          use(client), now;
    } catch (const Poco::Exception& e) {
      return std::unexpected(StoreError{e.displayText()});
    }
    std::vector<StoredConsent> out;
    for (const std::string& id : ids) {
      auto found = findConsent(id);
      if (!found) {
        return std::unexpected(found.error());
      }
      if (*found) {
        out.push_back(std::move(**found));
      }
    }
    return out;
  }

  std::expected<ConsentChangeResult, StoreError> applyConsentChange(const ConsentChange& change,
                                                                   std::int64_t nowSeconds) override {
    Pending p;
    p.op = Op::ConsentChange;
    p.consent = &change;
    p.n = nowSeconds;
    if (auto ok = submit(p); !ok) {
      return std::unexpected(ok.error());
    }
    return std::move(p.consentResult);
  }

  std::expected<std::vector<ConsentNotification>, StoreError> dueNotifications(std::int64_t nowSeconds,
                                                                              std::size_t limit) override {
    std::vector<Poco::Int64> ids;
    std::vector<std::string> consents;
    std::vector<std::string> tokens;
    std::vector<Poco::Int64> times;
    std::vector<int> attempts;
    Poco::Int64 at = nowSeconds;
    auto max = static_cast<Poco::Int64>(limit);
    try {
      std::lock_guard lock(readerMutex_);
      reader_ << "SELECT id, consent_id, token_ids, event_time, attempts FROM consent_outbox"
                 " WHERE delivered_at = 0 AND next_attempt_at <= $1 ORDER BY id LIMIT $2",
          into(ids), into(consents), into(tokens), into(times), into(attempts), use(at), use(max), now;
    } catch (const Poco::Exception& e) {
      return std::unexpected(StoreError{e.displayText()});
    }
    std::vector<ConsentNotification> out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      out.push_back({ids[i], consents[i], splitSpaces(tokens[i]), times[i], attempts[i]});
    }
    return out;
  }

  std::expected<void, StoreError> notificationDelivered(std::int64_t id, std::int64_t nowSeconds) override {
    Pending p;
    p.op = Op::NotificationDelivered;
    p.n = id;
    p.m = nowSeconds;
    return submit(p);
  }

  std::expected<void, StoreError> notificationFailed(std::int64_t id, std::int64_t nextAttemptAt,
                                                     std::string_view error) override {
    Pending p;
    p.op = Op::NotificationFailed;
    p.n = id;
    p.m = nextAttemptAt;
    p.a = error.substr(0, 512);
    return submit(p);
  }

  bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }

 private:
  std::expected<void, StoreError> submit(Pending& p) {
    std::unique_lock lock(mutex_);
    if (stopping_) {
      return std::unexpected(StoreError{"store is shutting down"});
    }
    queue_.push_back(&p);
    lock.unlock();
    wake_.notify_one();
    // Returns only once the writer has committed (or failed) the transaction holding this write.
    p.completion.wait();
    if (!p.error.empty()) {
      return std::unexpected(StoreError{p.error});
    }
    return {};
  }

  void migrate() {
    session_ << "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", now;
    int version = 0;
    session_ << "SELECT COALESCE(MAX(version), 0) FROM schema_version", into(version), now;
    const int target = static_cast<int>(std::size(kMigrations));
    for (int v = version; v < target; ++v) {
      session_.begin();
      session_ << kMigrations[v], now;
      int next = v + 1;
      session_ << "INSERT INTO schema_version (version) VALUES ($1)", use(next), now;
      session_.commit();
    }
  }

  /// True when every one of `ids` is a stored consent with status active (inside the writer's transaction).
  bool consentsStillActive(const std::vector<std::string>& ids) {
    for (const std::string& id : ids) {
      int active = 0;
      session_ << "SELECT count(*) FROM consents WHERE id = $1 AND status = 'active'", into(active), useRef(id), now;
      if (active == 0) {
        return false;
      }
    }
    return true;
  }

  /// The writer: takes every waiting request, commits them in one transaction, wakes their threads.
  void run() {
    Poco::Int64 nowSeconds = 0;
    sqlite3* db = Poco::Data::SQLite::Utility::dbHandle(session_);
    Prepared insert(db, kRecordJti);
    Prepared insertToken(db, kRecordToken);
    std::int64_t lastPrune = 0;

    std::vector<Pending*> batch;
    for (;;) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty() && stopping_) {
          return;
        }
        batch.assign(queue_.begin(), queue_.end());
        queue_.clear();
      }
      std::string error;
      std::vector<JtiOutcome> outcomes(batch.size(), JtiOutcome::Replayed);
      try {
        nowSeconds = clock_.now();
        session_.begin();
        for (std::size_t i = 0; i < batch.size(); ++i) {
          Pending& p = *batch[i];
          switch (p.op) {
            case Op::RecordJti:
              outcomes[i] = insert.text(1, p.a).text(2, p.b).integer(3, p.n).integer(4, nowSeconds).run() == 1
                                ? JtiOutcome::Recorded
                                : JtiOutcome::Replayed;
              if (outcomes[i] == JtiOutcome::Recorded && p.issued != nullptr && p.issued->consents_local &&
                  !consentsStillActive(p.issued->consent_ids)) {
                // Withdrawn after the issuance check: consent changes go through this same writer, so either the
                // withdrawal came first (seen here) or it comes later and finds the links written below.
                outcomes[i] = JtiOutcome::ConsentWithdrawn;
              }
              if (outcomes[i] == JtiOutcome::Recorded && p.issued != nullptr) {
                const IssuedToken& t = *p.issued;
                insertToken.text(1, t.jti).text(2, t.client_id).text(3, t.scope).integer(4, t.iat).integer(5, t.exp)
                    .text(6, t.kid)
                    .run();
                // The consent links go into the same transaction: a withdrawal always finds every token issued.
                for (const std::string& consentId : t.consent_ids) {
                  session_ << "INSERT INTO token_consents (consent_id, jti, client_id, exp) VALUES ($1, $2, $3, $4)"
                              " ON CONFLICT (consent_id, jti) DO NOTHING",
                      useRef(consentId), useRef(t.jti), useRef(t.client_id), useRef(t.exp), now;
                }
              }
              break;
            case Op::RevokeToken:
              session_ << "INSERT INTO revocations (jti, client_id, exp) VALUES ($1, $2, $3)"
                          " ON CONFLICT (jti) DO NOTHING",
                  use(p.a), use(p.b), use(p.n), now;
              break;
            case Op::SetSuspended:
              session_ << "INSERT INTO system_state (client_id, suspended, revoked_before) VALUES ($1, $2, 0)"
                          " ON CONFLICT (client_id) DO UPDATE SET suspended = excluded.suspended",
                  use(p.a), use(p.n), now;
              break;
            case Op::ConsentChange:
              applyConsent(p, nowSeconds);
              break;
            case Op::NotificationDelivered:
              session_ << "UPDATE consent_outbox SET delivered_at = $1 WHERE id = $2", use(p.m), use(p.n), now;
              break;
            case Op::NotificationFailed:
              session_ << "UPDATE consent_outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2"
                          " WHERE id = $3",
                  use(p.m), use(p.a), use(p.n), now;
              break;
            case Op::RevokeAll:
              session_ << "INSERT INTO system_state (client_id, suspended, revoked_before) VALUES ($1, 0, $2)"
                          " ON CONFLICT (client_id) DO UPDATE SET revoked_before = excluded.revoked_before"
                          " WHERE system_state.revoked_before < excluded.revoked_before",
                  use(p.a), use(p.n), now;
              break;
          }
        }
        session_.commit();
        healthy_.store(true, std::memory_order_relaxed);
      } catch (const Poco::Exception& e) {
        error = e.displayText();
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (!error.empty()) {
        healthy_.store(false, std::memory_order_relaxed);
        rollbackQuietly();
      }
      // After signal() a Pending may be gone: nothing of it is touched past its own signal.
      for (std::size_t i = 0; i < batch.size(); ++i) {
        batch[i]->outcome = outcomes[i];
        batch[i]->error = error;
        batch[i]->completion.signal();
      }
      batch.clear();
      if (nowSeconds - lastPrune >= options_.prune_interval_seconds) {
        prune(nowSeconds);
        lastPrune = nowSeconds;
      }
    }
  }

  /// One consent change inside the writer's transaction (StateStore::applyConsentChange).
  void applyConsent(Pending& p, Poco::Int64 nowSeconds) {
    const ConsentChange& c = *p.consent;
    ConsentChangeResult result;
    std::string id = c.consent_id;
    if (c.action == ConsentChange::Record::Upsert) {
      std::string status = c.record.status;
      std::string resource = c.record.resource;
      Poco::Int64 updated = c.record.updated_at;
      session_ << "INSERT INTO consents (id, status, resource, updated_at) VALUES ($1, $2, $3, $4)"
                  " ON CONFLICT (id) DO UPDATE SET status = excluded.status, resource = excluded.resource,"
                  " updated_at = excluded.updated_at",
          use(id), use(status), use(resource), use(updated), now;
    }
    if (c.action != ConsentChange::Record::Keep) {
      session_ << "DELETE FROM consent_grantees WHERE consent_id = $1", use(id), now;
    }
    if (c.action == ConsentChange::Record::Upsert) {
      for (const std::string& grantee : c.record.grantees) {
        session_ << "INSERT INTO consent_grantees (consent_id, client_id) VALUES ($1, $2)"
                    " ON CONFLICT (consent_id, client_id) DO NOTHING",
            use(id), useRef(grantee), now;
      }
    } else if (c.action == ConsentChange::Record::Delete) {
      session_ << "DELETE FROM consents WHERE id = $1", use(id), now;
    }

    std::vector<std::string> jtis;
    std::vector<std::string> clients;
    std::vector<Poco::Int64> exps;
    Poco::Int64 at = nowSeconds;
    session_ << "SELECT tc.jti, tc.client_id, tc.exp FROM token_consents tc"
                " WHERE tc.consent_id = $1 AND tc.exp > $2"
                " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.jti = tc.jti) ORDER BY tc.jti",
        into(jtis), into(clients), into(exps), use(id), use(at), now;
    for (std::size_t i = 0; i < jtis.size(); ++i) {
      const bool kept = std::find(c.keep_clients.begin(), c.keep_clients.end(), clients[i]) != c.keep_clients.end();
      if (!c.revoke_all && kept) {
        continue;
      }
      session_ << "INSERT INTO revocations (jti, client_id, exp) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
          use(jtis[i]), use(clients[i]), use(exps[i]), now;
      result.revoked.push_back({0, jtis[i], clients[i], exps[i]});
    }

    if (c.notify && (c.notify_always || !result.revoked.empty())) {
      std::string tokens;
      for (const Revocation& r : result.revoked) {
        tokens += tokens.empty() ? "" : " ";
        tokens += r.jti;
      }
      Poco::Int64 outboxId = 0;
      // Written with the revocations: a crash after the commit still delivers, before it nothing happened.
      session_ << "INSERT INTO consent_outbox (consent_id, token_ids, event_time, attempts, next_attempt_at,"
                  " delivered_at, last_error) VALUES ($1, $2, $3, 0, $3, 0, '') RETURNING id",
          into(outboxId), use(id), use(tokens), use(at), now;
      result.notification_id = outboxId;
    }
    p.consentResult = std::move(result);
  }

  /// Ends a failed transaction of the writer's session, if one is open; a failing rollback leaves nothing to do.
  void rollbackQuietly() {
    try {
      if (session_.isTransaction()) {
        session_.rollback();
      }
    } catch (const Poco::Exception&) {
    }
  }

  void prune(Poco::Int64 nowSeconds) {
    try {
      // One transaction (one fsync) for the whole round, each DELETE served by an index on its expiry column.
      session_.begin();
      Poco::Int64 tokensBefore = nowSeconds - kTokenRetentionSeconds;
      session_ << "DELETE FROM replay WHERE expires_at < $1", use(nowSeconds), now;
      session_ << "DELETE FROM revocations WHERE exp < $1", use(nowSeconds), now;
      session_ << "DELETE FROM tokens WHERE exp < $1", use(tokensBefore), now;
      Poco::Int64 deliveredBefore = nowSeconds - kOutboxRetentionSeconds;
      session_ << "DELETE FROM token_consents WHERE exp < $1", use(nowSeconds), now;
      session_ << "DELETE FROM consent_outbox WHERE delivered_at > 0 AND delivered_at < $1", use(deliveredBefore), now;
      session_.commit();
    } catch (const Poco::Exception&) {
      // Pruning is housekeeping; the next round tries again.
      rollbackQuietly();
    }
  }

  SqliteOptions options_;
  const Clock& clock_;
  Poco::Data::Session session_;
  Poco::Data::Session reader_;
  std::mutex readerMutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Pending*> queue_;
  bool stopping_ = false;
  std::atomic<bool> healthy_{true};
  std::thread writer_;
};

}  // namespace

std::unique_ptr<StateStore> openSqliteStore(const SqliteOptions& options, const Clock& clock) {
  static const bool registered = [] {
    Poco::Data::SQLite::Connector::registerConnector();
    return true;
  }();
  (void)registered;
  try {
    return std::make_unique<SqliteStore>(options, clock);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error(options.path + ": " + e.displayText());
  }
}

}  // namespace smartbroker::broker
