// PostgreSQL implementation of StateStore, shared by several broker instances, with a group-committing writer.
#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/SessionPool.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include "postgres_session.hpp"
#include "smartbroker/broker/store.hpp"

namespace smartbroker::broker {
namespace {

using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;
using Poco::Data::Keywords::useRef;

/// Migrations, applied in order, each once; the same tables and the same SQL as the SQLite store
/// (sqlite_store.cpp), except for the identity column.
const char* const kMigrations[] = {
    "CREATE TABLE IF NOT EXISTS replay ("
    " iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (iss, jti))",
    "CREATE INDEX IF NOT EXISTS replay_expires_at ON replay (expires_at)",
    "CREATE TABLE IF NOT EXISTS tokens ("
    " jti TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,"
    " iat BIGINT NOT NULL, exp BIGINT NOT NULL, kid TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tokens_client_iat ON tokens (client_id, iat)",
    // An identity column: ids never repeat, so mirrors can follow by cursor (see kRevocationLock for ordering).
    "CREATE TABLE IF NOT EXISTS revocations ("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, jti TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL,"
    " exp BIGINT NOT NULL)",
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
    // token_ids: the revoked jtis, space-separated (jtis are base64url).
    "CREATE TABLE IF NOT EXISTS consent_outbox ("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, consent_id TEXT NOT NULL, token_ids TEXT NOT NULL,"
    " event_time BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,"
    " delivered_at BIGINT NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS consent_outbox_due ON consent_outbox (delivered_at, next_attempt_at)",
    // The keyring shared by every instance (postgres_keyring.cpp; README "Running several instances"). One row of
    // state whose generation moves with every change, so that instances notice a change with one small read.
    "CREATE TABLE IF NOT EXISTS keyring_state ("
    " id INTEGER PRIMARY KEY CHECK (id = 1), generation BIGINT NOT NULL,"
    " rotation_requested_at BIGINT, rotation_immediate INTEGER NOT NULL DEFAULT 0,"
    " updated_at BIGINT NOT NULL, updated_by TEXT NOT NULL)",
    // The lifecycle records, public keys only; `position` keeps the records' order.
    "CREATE TABLE IF NOT EXISTS keyring_keys ("
    " kid TEXT PRIMARY KEY, position INTEGER NOT NULL, alg TEXT NOT NULL, state TEXT NOT NULL,"
    " public_jwk TEXT NOT NULL, created_at BIGINT NOT NULL, published_at BIGINT, activated_at BIGINT,"
    " retired_at BIGINT, ended_at BIGINT, activate_after BIGINT NOT NULL DEFAULT 0)",
    // Private keys of pending and active keys, only ever sealed with the key-encryption key: the check refuses
    // anything that does not start with the sealed-key magic "SBKEYv1\n" (or is too short for nonce and tag), so
    // not even a bug can put a PEM here.
    "CREATE TABLE IF NOT EXISTS keyring_secrets ("
    " kid TEXT PRIMARY KEY, created_at BIGINT NOT NULL, sealed BYTEA NOT NULL"
    " CHECK (substring(sealed FROM 1 FOR 8) = '\\x53424b455976310a'::bytea AND octet_length(sealed) > 36))",
    // Heartbeats of running brokers (database clock), for `smart-broker keys` to tell whether one will act.
    "CREATE TABLE IF NOT EXISTS keyring_brokers (instance TEXT PRIMARY KEY, seen_at BIGINT NOT NULL)",
};

/// Advisory lock keys (one 64-bit space per database; the values are "sbmigrat" and "sbrevoke" in ASCII; the keyring
/// takes "sbkeyrin", postgres_keyring.cpp).
constexpr Poco::Int64 kMigrationLock = 0x73626d6967726174;
/// Revocation ids come from a sequence, and a sequence hands out ids in call order, not commit order: without
/// this lock a mirror could read id 6, move its cursor past 5, and then never see 5 commit. Holding a
/// transaction-scoped lock from before the id is taken until commit makes ids visible in order. Revocations
/// are rare, so serialising them costs nothing that matters.
constexpr Poco::Int64 kRevocationLock = 0x73627265766f6b65;

/// Token records are kept this long after they expire, for audit and `tokens` listings (as in SQLite).
constexpr std::int64_t kTokenRetentionSeconds = 24 * 3600;
/// Delivered notifications are kept this long, for audit (as in SQLite).
constexpr std::int64_t kOutboxRetentionSeconds = 7 * 24 * 3600;
/// dueNotifications hands a notification to one instance for this long: enough for one delivery attempt at the
/// longest consent timeouts (connect 60 s + read 60 s); an instance that dies holding it delays it this long.
constexpr std::int64_t kNotificationLeaseSeconds = 120;
/// notificationFailed keeps this much of the delivery error, for operators.
constexpr std::size_t kMaxErrorBytes = 512;

std::string withConnectTimeout(const PostgresOptions& options) {
  if (options.connection.find("connect_timeout") != std::string::npos) {
    return options.connection;
  }
  return options.connection + " connect_timeout=" + std::to_string(options.connect_timeout_seconds);
}

void checkOptions(const PostgresOptions& options) {
  if (options.statement_timeout_ms <= 0) {
    throw std::invalid_argument("postgresql: statement_timeout must be positive (0 would mean no limit)");
  }
}


/// A session pool whose every connection has the statement timeout. SessionPool calls customizeSession once for
/// each connection it opens (also those replacing dead ones), and POCO's PostgreSQL session reset() on the way
/// back into the pool does nothing, so the setting holds for the connection's life.
class StatementTimeoutPool final : public Poco::Data::SessionPool {
 public:
  StatementTimeoutPool(const std::string& connection, int maxSessions, std::int64_t statementTimeoutMs)
      : SessionPool("PostgreSQL", connection, 1, maxSessions, 60), statementTimeoutMs_(statementTimeoutMs) {}

 protected:
  void customizeSession(Poco::Data::Session& session) override {
    applyStatementTimeout(session, statementTimeoutMs_);
  }

 private:
  std::int64_t statementTimeoutMs_;
};

/// PostgreSQL refuses TEXT that is not UTF-8 (or holds NUL), and a refused statement fails the writer's whole
/// batch; such values are refused before they reach it (SQLite stores any bytes).
bool storableText(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == 0) {
      return false;
    }
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t length = 0;
    std::uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
      length = 2;
      cp = c & 0x1FU;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      cp = c & 0x0FU;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      cp = c & 0x07U;
    } else {
      return false;
    }
    if (i + length > text.size()) {
      return false;
    }
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) {
        return false;
      }
      cp = (cp << 6) | (next & 0x3FU);
    }
    static constexpr std::uint32_t kMinimum[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinimum[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += length;
  }
  return true;
}

/// The delivery error as kept for operators: bounded, and printable ASCII so that it is always storable.
std::string storableError(std::string_view error) {
  std::string out(error.substr(0, kMaxErrorBytes));
  for (char& c : out) {
    if (c < 0x20 || c > 0x7E) {
      c = '?';
    }
  }
  return out;
}

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

void registerConnector() {
  static const bool registered = [] {
    Poco::Data::PostgreSQL::Connector::registerConnector();
    return true;
  }();
  (void)registered;
}

/// Applies pending migrations on `session`; concurrent callers (instances starting together) serialise on the
/// advisory lock, and the loser finds the work done.
Poco::Int64 migrate(Poco::Data::Session& session) {
  session.begin();
  try {
    int locked = 0;
    Poco::Int64 key = kMigrationLock;
    session << "SELECT 1 FROM pg_advisory_xact_lock($1)", into(locked), use(key), now;
    // libpq prints NOTICEs ("already exists, skipping") to stderr; they are expected here.
    session << "SET LOCAL client_min_messages = warning", now;
    session << "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", now;
    int version = 0;
    session << "SELECT COALESCE(MAX(version), 0) FROM schema_version", into(version), now;
    const int target = static_cast<int>(std::size(kMigrations));
    for (int v = version; v < target; ++v) {
      session << kMigrations[v], now;
      int next = v + 1;
      session << "INSERT INTO schema_version (version) VALUES ($1)", use(next), now;
    }
    session.commit();
    return std::max(version, target);
  } catch (...) {
    try {
      session.rollback();
    } catch (const Poco::Exception&) {
    }
    throw;
  }
}

enum class Op : std::uint8_t {
  RecordJti,
  RevokeToken,
  SetSuspended,
  RevokeAll,
  ConsentChange,
  NotificationDelivered,
  NotificationFailed,
};

/// One write waiting for the writer thread. Lives on the caller's stack until `done`.
struct Pending {
  Op op = Op::RecordJti;
  std::string a;       ///< iss / jti / client_id / notification error
  std::string b;       ///< jti / client_id
  std::int64_t n = 0;  ///< expires_at / exp / suspended / before / now (consent) / notification id
  std::int64_t m = 0;  ///< notification: delivered_at / next_attempt_at
  const IssuedToken* issued = nullptr;
  const ConsentChange* consent = nullptr;
  ConsentChangeResult consentResult;
  JtiOutcome outcome = JtiOutcome::Replayed;
  std::string error;
  bool done = false;
};

/// What one attempt at a batch decided, handed to the callers only once it has committed.
struct BatchResults {
  std::vector<JtiOutcome> outcomes;
  std::vector<ConsentChangeResult> consents;
  void reset(std::size_t size) {
    outcomes.assign(size, JtiOutcome::Replayed);
    consents.assign(size, ConsentChangeResult{});
  }
};

class PostgresStore final : public StateStore {
 public:
  PostgresStore(const PostgresOptions& options, const Clock& clock)
      : options_(options),
        clock_(clock),
        pool_(withConnectTimeout(options), static_cast<int>(std::max(2U, options.pool_size)),
              options.statement_timeout_ms) {
    Poco::Data::Session session = pool_.get();
    migrate(session);
    writer_ = std::thread([this] { run(); });
  }

  ~PostgresStore() override {
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
    std::vector<IssuedToken> out;
    const std::string client(clientId);
    auto done = read([&](Poco::Data::Session& session) {
      std::vector<std::string> jtis;
      std::vector<std::string> scopes;
      std::vector<Poco::Int64> iats;
      std::vector<Poco::Int64> exps;
      std::vector<std::string> kids;
      std::string c = client;
      Poco::Int64 at = nowSeconds;
      auto max = static_cast<Poco::Int64>(limit);
      session << "SELECT jti, scope, iat, exp, kid FROM tokens WHERE client_id = $1 AND exp > $2"
                 " ORDER BY iat DESC, jti LIMIT $3",
          into(jtis), into(scopes), into(iats), into(exps), into(kids), use(c), use(at), use(max), now;
      out.clear();
      for (std::size_t i = 0; i < jtis.size(); ++i) {
        IssuedToken t;
        t.jti = jtis[i];
        t.client_id = client;
        t.scope = scopes[i];
        t.iat = iats[i];
        t.exp = exps[i];
        t.kid = kids[i];
        out.push_back(std::move(t));
      }
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    return out;
  }

  std::expected<StateChanges, StoreError> changesSince(std::int64_t cursor, std::int64_t nowSeconds) override {
    StateChanges changes;
    auto done = read([&](Poco::Data::Session& session) {
      std::vector<Poco::Int64> ids;
      std::vector<std::string> jtis;
      std::vector<std::string> clients;
      std::vector<Poco::Int64> exps;
      std::vector<std::string> stateClients;
      std::vector<int> suspended;
      std::vector<Poco::Int64> before;
      Poco::Int64 from = cursor;
      Poco::Int64 at = nowSeconds;
      session << "SELECT id, jti, client_id, exp FROM revocations WHERE id > $1 AND exp >= $2 ORDER BY id",
          into(ids), into(jtis), into(clients), into(exps), use(from), use(at), now;
      session << "SELECT client_id, suspended, revoked_before FROM system_state", into(stateClients),
          into(suspended), into(before), now;
      changes = StateChanges{};
      changes.cursor = cursor;
      for (std::size_t i = 0; i < ids.size(); ++i) {
        changes.revocations.push_back({ids[i], jtis[i], clients[i], exps[i]});
        changes.cursor = std::max<std::int64_t>(changes.cursor, ids[i]);
      }
      for (std::size_t i = 0; i < stateClients.size(); ++i) {
        changes.systems[stateClients[i]] = SystemState{suspended[i] != 0, before[i]};
      }
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    return changes;
  }

  std::expected<std::optional<StoredConsent>, StoreError> findConsent(std::string_view id) override {
    std::optional<StoredConsent> found;
    const std::string key(id);
    auto done = read([&](Poco::Data::Session& session) {
      std::vector<std::string> statuses;
      std::vector<std::string> resources;
      std::vector<Poco::Int64> updated;
      std::vector<std::string> grantees;
      std::string k = key;
      found.reset();
      session << "SELECT status, resource, updated_at FROM consents WHERE id = $1", into(statuses), into(resources),
          into(updated), use(k), now;
      if (statuses.empty()) {
        return;
      }
      session << "SELECT client_id FROM consent_grantees WHERE consent_id = $1 ORDER BY client_id", into(grantees),
          use(k), now;
      found = StoredConsent{key, statuses[0], resources[0], std::move(grantees), updated[0]};
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    return found;
  }

  std::expected<std::vector<StoredConsent>, StoreError> consentsForGrantee(std::string_view clientId) override {
    std::vector<StoredConsent> out;
    const std::string client(clientId);
    auto done = read([&](Poco::Data::Session& session) {
      std::vector<std::string> ids;
      std::vector<std::string> statuses;
      std::vector<std::string> resources;
      std::vector<Poco::Int64> updated;
      std::vector<std::string> grantedIds;
      std::vector<std::string> grantees;
      std::string c = client;
      session << "SELECT c.id, c.status, c.resource, c.updated_at FROM consents c"
                 " JOIN consent_grantees g ON g.consent_id = c.id WHERE g.client_id = $1 ORDER BY c.id",
          into(ids), into(statuses), into(resources), into(updated), use(c), now;
      // Two statements, two snapshots: a grantee list may be a moment newer than its record. Callers use the
      // ids and look each one up again (ConsentService::checkIssuance), so that is harmless.
      session << "SELECT consent_id, client_id FROM consent_grantees WHERE consent_id IN"
                 " (SELECT consent_id FROM consent_grantees WHERE client_id = $1) ORDER BY consent_id, client_id",
          into(grantedIds), into(grantees), use(c), now;
      out.clear();
      std::map<std::string, std::vector<std::string>> byConsent;
      for (std::size_t i = 0; i < grantedIds.size(); ++i) {
        byConsent[grantedIds[i]].push_back(grantees[i]);
      }
      for (std::size_t i = 0; i < ids.size(); ++i) {
        out.push_back(StoredConsent{ids[i], statuses[i], resources[i], std::move(byConsent[ids[i]]), updated[i]});
      }
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    return out;
  }

  std::expected<ConsentChangeResult, StoreError> applyConsentChange(const ConsentChange& change,
                                                                   std::int64_t nowSeconds) override {
    if (change.action == ConsentChange::Record::Upsert) {
      const bool storable = storableText(change.record.status) && storableText(change.record.resource) &&
                            std::ranges::all_of(change.record.grantees, storableText);
      if (!storable) {
        return std::unexpected(StoreError{"consent record is not valid UTF-8 text"});
      }
    }
    if (!storableText(change.consent_id) || !std::ranges::all_of(change.keep_clients, storableText)) {
      return std::unexpected(StoreError{"consent change is not valid UTF-8 text"});
    }
    Pending p;
    p.op = Op::ConsentChange;
    p.consent = &change;
    p.n = nowSeconds;
    if (auto ok = submit(p); !ok) {
      return std::unexpected(ok.error());
    }
    return std::move(p.consentResult);
  }

  /// Leases what it returns (StateStore::dueNotifications): one statement, committed on return, moves the next
  /// attempt of each row it hands out kNotificationLeaseSeconds ahead. SKIP LOCKED lets two instances polling
  /// at once take disjoint rows instead of waiting on each other. Not through the writer: it runs once a second
  /// per instance off the request path, and a statement that matches nothing writes nothing.
  std::expected<std::vector<ConsentNotification>, StoreError> dueNotifications(std::int64_t nowSeconds,
                                                                              std::size_t limit) override {
    std::vector<ConsentNotification> out;
    auto done = read([&](Poco::Data::Session& session) {
      std::vector<Poco::Int64> ids;
      std::vector<std::string> consents;
      std::vector<std::string> tokens;
      std::vector<Poco::Int64> times;
      std::vector<int> attempts;
      Poco::Int64 at = nowSeconds;
      Poco::Int64 leasedUntil = nowSeconds + kNotificationLeaseSeconds;
      auto max = static_cast<Poco::Int64>(limit);
      session << "WITH due AS (SELECT id FROM consent_outbox WHERE delivered_at = 0 AND next_attempt_at <= $1"
                 " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
                 " UPDATE consent_outbox o SET next_attempt_at = $3 FROM due WHERE o.id = due.id"
                 " RETURNING o.id, o.consent_id, o.token_ids, o.event_time, o.attempts",
          into(ids), into(consents), into(tokens), into(times), into(attempts), use(at), use(max), use(leasedUntil),
          now;
      out.clear();
      for (std::size_t i = 0; i < ids.size(); ++i) {
        out.push_back({ids[i], consents[i], splitSpaces(tokens[i]), times[i], attempts[i]});
      }
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    // RETURNING follows no ORDER BY: oldest first, as promised.
    std::ranges::sort(out, {}, &ConsentNotification::id);
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
    p.a = storableError(error);
    return submit(p);
  }

  bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }

 private:
  /// Runs a read on a pooled session. A session whose connection died (database restarted) fails once and is
  /// dropped by the pool when returned disconnected; the read is retried once on a fresh session, so a database
  /// that has come back answers on the first call. A statement that failed on a live connection (statement
  /// timeout, an error of the statement itself) is not retried: it would only wait or fail again.
  template <typename F>
  std::expected<void, StoreError> read(F&& body) {
    std::string error;
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::optional<Poco::Data::Session> session;
      try {
        session.emplace(pool_.get());
        body(*session);
        healthy_.store(true, std::memory_order_relaxed);
        return {};
      } catch (const Poco::Exception& e) {
        error = e.displayText();
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (session && connected(*session)) {
        break;
      }
    }
    healthy_.store(false, std::memory_order_relaxed);
    return std::unexpected(StoreError{error});
  }

  static bool connected(Poco::Data::Session& session) {
    try {
      return session.isConnected();
    } catch (const Poco::Exception&) {
      return false;
    }
  }

  std::expected<void, StoreError> submit(Pending& p) {
    std::unique_lock lock(mutex_);
    if (stopping_) {
      return std::unexpected(StoreError{"store is shutting down"});
    }
    queue_.push_back(&p);
    wake_.notify_one();
    done_.wait(lock, [&] { return p.done; });
    if (!p.error.empty()) {
      return std::unexpected(StoreError{p.error});
    }
    return {};
  }

  /// Writes one batch in one transaction. Rows are locked in one global order so that two instances' batches
  /// cannot deadlock each other: replay rows by key (with the tokens and token_consents rows they admit), then
  /// the revocation lock, under which revocations and every consent change are written, then system rows by
  /// client, then outbox rows by id.
  void writeBatch(Poco::Data::Session& session, const std::vector<Pending*>& batch, Poco::Int64 nowSeconds,
                  BatchResults& results, bool& committing) {
    // Identical (iss, jti) pairs in one batch: the first in arrival order is the candidate, the others are
    // replays by construction (PostgreSQL also refuses a multi-row upsert that touches one row twice).
    std::map<std::pair<std::string_view, std::string_view>, std::size_t> candidates;
    std::vector<std::size_t> revocations;
    std::vector<std::size_t> consents;
    std::vector<std::size_t> systems;
    std::vector<std::size_t> outbox;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Pending& p = *batch[i];
      switch (p.op) {
        case Op::RecordJti:
          candidates.try_emplace({p.a, p.b}, i);
          break;
        case Op::RevokeToken:
          revocations.push_back(i);
          break;
        case Op::ConsentChange:
          consents.push_back(i);
          break;
        case Op::SetSuspended:
        case Op::RevokeAll:
          systems.push_back(i);
          break;
        case Op::NotificationDelivered:
        case Op::NotificationFailed:
          outbox.push_back(i);
          break;
      }
    }
    session.begin();
    const bool changesConsentsOrRevocations = !revocations.empty() || !consents.empty();
    if (!candidates.empty()) {
      recordJtis(session, batch, candidates, nowSeconds, results, changesConsentsOrRevocations);
    }
    if (!revocations.empty() || !consents.empty()) {
      // Consent changes take the lock too, and before they read the linked tokens: two instances withdrawing
      // one consent at once then run one after the other, and the second finds the tokens already revoked
      // (so a token is reported, and notified, once). Their record and grantee rows are only ever written
      // under this lock, so they need no order of their own.
      int locked = 0;
      Poco::Int64 key = kRevocationLock;
      session << "SELECT 1 FROM pg_advisory_xact_lock($1)", into(locked), use(key), now;
      std::ranges::sort(revocations, {}, [&](std::size_t i) { return std::string_view(batch[i]->a); });
      for (const std::size_t i : revocations) {
        Pending& p = *batch[i];
        Poco::Int64 exp = p.n;
        session << "INSERT INTO revocations (jti, client_id, exp) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
            use(p.a), use(p.b), use(exp), now;
      }
      // In arrival order: a later change to one consent sees what an earlier one in the batch did.
      for (const std::size_t i : consents) {
        results.consents[i] = applyConsent(session, *batch[i]->consent, batch[i]->n);
      }
    }
    // Stable: two changes to one system in a batch apply in arrival order.
    std::ranges::stable_sort(systems, {}, [&](std::size_t i) { return std::string_view(batch[i]->a); });
    for (const std::size_t i : systems) {
      Pending& p = *batch[i];
      Poco::Int64 n = p.n;
      if (p.op == Op::SetSuspended) {
        int suspended = static_cast<int>(n);
        session << "INSERT INTO system_state (client_id, suspended, revoked_before) VALUES ($1, $2, 0)"
                   " ON CONFLICT (client_id) DO UPDATE SET suspended = excluded.suspended",
            use(p.a), use(suspended), now;
      } else {
        session << "INSERT INTO system_state (client_id, suspended, revoked_before) VALUES ($1, 0, $2)"
                   " ON CONFLICT (client_id) DO UPDATE SET revoked_before = excluded.revoked_before"
                   " WHERE system_state.revoked_before < excluded.revoked_before",
            use(p.a), use(n), now;
      }
    }
    std::ranges::stable_sort(outbox, {}, [&](std::size_t i) { return batch[i]->n; });
    for (const std::size_t i : outbox) {
      Pending& p = *batch[i];
      Poco::Int64 id = p.n;
      Poco::Int64 at = p.m;
      if (p.op == Op::NotificationDelivered) {
        session << "UPDATE consent_outbox SET delivered_at = $1 WHERE id = $2", use(at), use(id), now;
      } else {
        session << "UPDATE consent_outbox SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2"
                   " WHERE id = $3",
            use(at), use(p.a), use(id), now;
      }
    }
    committing = true;
    session.commit();
  }

  /// The replay records of a batch, and for those that are first uses the issued token and its consent links.
  static void recordJtis(Poco::Data::Session& session, const std::vector<Pending*>& batch,
                         const std::map<std::pair<std::string_view, std::string_view>, std::size_t>& candidates,
                         Poco::Int64 nowSeconds, BatchResults& results, bool batchTakesRevocationLock) {
    // One multi-row upsert, in key order; RETURNING names the rows it inserted or took over = Recorded.
    std::string sql = "INSERT INTO replay (iss, jti, expires_at) VALUES ";
    std::vector<Poco::Int64> expiries;
    expiries.reserve(candidates.size());
    Poco::Data::Statement insert(session);
    int param = 1;
    for (const auto& [key, index] : candidates) {
      sql += param == 1 ? "" : ",";
      sql += "($" + std::to_string(param) + ",$" + std::to_string(param + 1) + ",$" + std::to_string(param + 2) +
             ")";
      param += 3;
      expiries.push_back(batch[index]->n);
    }
    sql += " ON CONFLICT (iss, jti) DO UPDATE SET expires_at = excluded.expires_at WHERE replay.expires_at < $" +
           std::to_string(param) + " RETURNING iss, jti";
    insert << sql;
    std::size_t e = 0;
    for (const auto& [key, index] : candidates) {
      insert.addBind(use(batch[index]->a));
      insert.addBind(use(batch[index]->b));
      insert.addBind(use(expiries[e++]));
    }
    Poco::Int64 at = nowSeconds;
    insert.addBind(use(at));
    std::vector<std::string> wonIss;
    std::vector<std::string> wonJti;
    insert, into(wonIss), into(wonJti);
    insert.execute();
    std::vector<std::size_t> tokens;
    for (std::size_t i = 0; i < wonIss.size(); ++i) {
      const auto it = candidates.find({wonIss[i], wonJti[i]});
      if (it == candidates.end()) {
        throw std::runtime_error("replay upsert returned a row that was not asked for");
      }
      results.outcomes[it->second] = JtiOutcome::Recorded;
      if (batch[it->second]->issued != nullptr) {
        tokens.push_back(it->second);
      }
    }
    // Tokens linked to local consents: the links must not race a withdrawal, which selects the linked tokens
    // under the revocation lock. Holding that lock (shared; exclusive when this batch also changes consents or
    // revocations, so that the same session never upgrades) before re-reading the consents means either the
    // withdrawal committed first and is seen here, or it waits for this commit and then finds the links.
    // Order: replay rows, then the lock, as everywhere (writeBatch).
    const bool linksLocal = std::ranges::any_of(tokens, [&](std::size_t i) {
      return batch[i]->issued->consents_local && !batch[i]->issued->consent_ids.empty();
    });
    if (linksLocal) {
      int locked = 0;
      Poco::Int64 key = kRevocationLock;
      if (batchTakesRevocationLock) {
        session << "SELECT 1 FROM pg_advisory_xact_lock($1)", into(locked), use(key), now;
      } else {
        session << "SELECT 1 FROM pg_advisory_xact_lock_shared($1)", into(locked), use(key), now;
      }
      std::erase_if(tokens, [&](std::size_t i) {
        const IssuedToken& t = *batch[i]->issued;
        if (!t.consents_local) {
          return false;
        }
        for (const std::string& consentId : t.consent_ids) {
          std::string id = consentId;
          Poco::Int64 active = 0;
          session << "SELECT count(*) FROM consents WHERE id = $1 AND status = 'active'", into(active), use(id), now;
          if (active == 0) {
            results.outcomes[i] = JtiOutcome::ConsentWithdrawn;
            return true;
          }
        }
        return false;
      });
    }
    if (tokens.empty()) {
      return;
    }
    // The issued tokens in one multi-row INSERT: one round trip for the batch, not one (or, as POCO prepares each
    // statement, two) per token.
    std::string tokenSql = "INSERT INTO tokens (jti, client_id, scope, iat, exp, kid) VALUES ";
    for (std::size_t n = 0; n < tokens.size(); ++n) {
      tokenSql += n == 0 ? "(" : ",(";
      for (int column = 0; column < 6; ++column) {
        tokenSql += (column == 0 ? "$" : ",$") + std::to_string(6 * n + 1 + static_cast<std::size_t>(column));
      }
      tokenSql += ')';
    }
    Poco::Data::Statement tokenInsert(session);
    tokenInsert << tokenSql;
    for (const std::size_t i : tokens) {
      const IssuedToken& t = *batch[i]->issued;
      tokenInsert.addBind(useRef(t.jti));
      tokenInsert.addBind(useRef(t.client_id));
      tokenInsert.addBind(useRef(t.scope));
      tokenInsert.addBind(useRef(t.iat));  // std::int64_t is Poco::Int64
      tokenInsert.addBind(useRef(t.exp));
      tokenInsert.addBind(useRef(t.kid));
    }
    tokenInsert.execute();
    for (const std::size_t i : tokens) {
      const IssuedToken& t = *batch[i]->issued;
      // The consent links go into the same transaction: a withdrawal always finds every token issued.
      for (const std::string& consentId : t.consent_ids) {
        std::string id = consentId;
        std::string jti = t.jti;
        std::string client = t.client_id;
        Poco::Int64 exp = t.exp;
        session << "INSERT INTO token_consents (consent_id, jti, client_id, exp) VALUES ($1, $2, $3, $4)"
                   " ON CONFLICT (consent_id, jti) DO NOTHING",
            use(id), use(jti), use(client), use(exp), now;
      }
    }
  }

  /// One consent change inside the writer's transaction, under the revocation lock (applyConsentChange).
  static ConsentChangeResult applyConsent(Poco::Data::Session& session, const ConsentChange& c,
                                          Poco::Int64 nowSeconds) {
    ConsentChangeResult result;
    std::string id = c.consent_id;
    if (c.action == ConsentChange::Record::Upsert) {
      std::string status = c.record.status;
      std::string resource = c.record.resource;
      Poco::Int64 updated = c.record.updated_at;
      session << "INSERT INTO consents (id, status, resource, updated_at) VALUES ($1, $2, $3, $4)"
                 " ON CONFLICT (id) DO UPDATE SET status = excluded.status, resource = excluded.resource,"
                 " updated_at = excluded.updated_at",
          use(id), use(status), use(resource), use(updated), now;
    }
    if (c.action != ConsentChange::Record::Keep) {
      session << "DELETE FROM consent_grantees WHERE consent_id = $1", use(id), now;
    }
    if (c.action == ConsentChange::Record::Upsert) {
      for (const std::string& grantee : c.record.grantees) {
        std::string client = grantee;
        session << "INSERT INTO consent_grantees (consent_id, client_id) VALUES ($1, $2)"
                   " ON CONFLICT (consent_id, client_id) DO NOTHING",
            use(id), use(client), now;
      }
    } else if (c.action == ConsentChange::Record::Delete) {
      session << "DELETE FROM consents WHERE id = $1", use(id), now;
    }

    std::vector<std::string> jtis;
    std::vector<std::string> clients;
    std::vector<Poco::Int64> exps;
    Poco::Int64 at = nowSeconds;
    session << "SELECT tc.jti, tc.client_id, tc.exp FROM token_consents tc"
               " WHERE tc.consent_id = $1 AND tc.exp > $2"
               " AND NOT EXISTS (SELECT 1 FROM revocations r WHERE r.jti = tc.jti) ORDER BY tc.jti",
        into(jtis), into(clients), into(exps), use(id), use(at), now;
    for (std::size_t i = 0; i < jtis.size(); ++i) {
      const bool kept = std::ranges::find(c.keep_clients, clients[i]) != c.keep_clients.end();
      if (!c.revoke_all && kept) {
        continue;
      }
      // RETURNING is empty when the row exists already: only what this change revoked is reported.
      std::vector<Poco::Int64> revocationId;
      session << "INSERT INTO revocations (jti, client_id, exp) VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING"
                 " RETURNING id",
          into(revocationId), use(jtis[i]), use(clients[i]), use(exps[i]), now;
      if (!revocationId.empty()) {
        result.revoked.push_back({revocationId.front(), jtis[i], clients[i], exps[i]});
      }
    }

    if (c.notify && (c.notify_always || !result.revoked.empty())) {
      std::string tokens;
      for (const Revocation& r : result.revoked) {
        tokens += tokens.empty() ? "" : " ";
        tokens += r.jti;
      }
      Poco::Int64 outboxId = 0;
      // Written with the revocations: a crash after the commit still delivers, before it nothing happened.
      session << "INSERT INTO consent_outbox (consent_id, token_ids, event_time, attempts, next_attempt_at,"
                 " delivered_at, last_error) VALUES ($1, $2, $3, 0, $3, 0, '') RETURNING id",
          into(outboxId), use(id), use(tokens), use(at), now;
      result.notification_id = outboxId;
    }
    return result;
  }

  /// The writer: takes every waiting request, commits them in one transaction, wakes their threads.
  void run() {
    std::optional<Poco::Data::Session> session;
    std::int64_t lastPrune = 0;
    std::vector<Pending*> batch;
    BatchResults results;
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
      const Poco::Int64 nowSeconds = clock_.now();
      std::string error;
      // A connection that died since the last batch (database restarted) fails before commit; that batch is
      // retried once on a fresh connection. A failure during commit is never retried: the commit may have
      // happened, and a retry would report the winner of a jti as a replay. Nor is a statement that failed on a
      // live connection (statement timeout): a retry would wait as long again, and the callers fail closed.
      for (int attempt = 0; attempt < 2; ++attempt) {
        bool committing = false;
        error.clear();
        results.reset(batch.size());
        try {
          if (!session || !session->isConnected()) {
            session.reset();
            session.emplace(pool_.get());
          }
          writeBatch(*session, batch, nowSeconds, results, committing);
          break;
        } catch (const Poco::Exception& e) {
          error = e.displayText();
        } catch (const std::exception& e) {
          error = e.what();
        }
        results.reset(batch.size());
        const bool alive = session && connected(*session);
        discard(session);
        if (committing || alive) {
          break;
        }
      }
      healthy_.store(error.empty(), std::memory_order_relaxed);
      {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          batch[i]->outcome = results.outcomes[i];
          batch[i]->consentResult = std::move(results.consents[i]);
          batch[i]->error = error;
          batch[i]->done = true;
        }
      }
      done_.notify_all();
      if (error.empty() && nowSeconds - lastPrune >= options_.prune_interval_seconds) {
        prune(*session, nowSeconds);
        lastPrune = nowSeconds;
      }
    }
  }

  /// Rolls back and gives the session back; a connection in an unknown state is not reused.
  static void discard(std::optional<Poco::Data::Session>& session) {
    if (!session) {
      return;
    }
    try {
      if (session->isConnected() && session->isTransaction()) {
        session->rollback();
      }
    } catch (const Poco::Exception&) {
    }
    try {
      session->close();
    } catch (const Poco::Exception&) {
    }
    session.reset();
  }

  static void prune(Poco::Data::Session& session, Poco::Int64 nowSeconds) {
    try {
      Poco::Int64 at = nowSeconds;
      Poco::Int64 tokensBefore = nowSeconds - kTokenRetentionSeconds;
      session << "DELETE FROM replay WHERE expires_at < $1", use(at), now;
      session << "DELETE FROM revocations WHERE exp < $1", use(at), now;
      session << "DELETE FROM tokens WHERE exp < $1", use(tokensBefore), now;
      Poco::Int64 deliveredBefore = nowSeconds - kOutboxRetentionSeconds;
      session << "DELETE FROM token_consents WHERE exp < $1", use(at), now;
      session << "DELETE FROM consent_outbox WHERE delivered_at > 0 AND delivered_at < $1", use(deliveredBefore), now;
    } catch (const Poco::Exception&) {
      // Pruning is housekeeping; the next round tries again (and a dead connection fails the next batch once).
    }
  }

  PostgresOptions options_;
  const Clock& clock_;
  StatementTimeoutPool pool_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::deque<Pending*> queue_;
  bool stopping_ = false;
  std::atomic<bool> healthy_{true};
  std::thread writer_;
};

}  // namespace

std::unique_ptr<StateStore> openPostgresStore(const PostgresOptions& options, const Clock& clock) {
  checkOptions(options);
  registerConnector();
  try {
    return std::make_unique<PostgresStore>(options, clock);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("postgresql: " + e.displayText());
  }
}

std::int64_t migratePostgres(const PostgresOptions& options) {
  checkOptions(options);
  registerConnector();
  try {
    Poco::Data::Session session("PostgreSQL", withConnectTimeout(options));
    applyStatementTimeout(session, options.statement_timeout_ms);
    return migrate(session);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("postgresql: " + e.displayText());
  }
}

/// Sets the session's statement_timeout. Not in the connection string: POCO splits that string at spaces and
/// cannot carry libpq `options='-c …'`. A plain SET outside a transaction lasts for the connection and overrides
/// one given in the connection string.
void applyStatementTimeout(Poco::Data::Session& session, std::int64_t milliseconds) {
  using Poco::Data::Keywords::now;
  // SET takes no placeholders; the value is an integer formatted here.
  session << "SET statement_timeout = " + std::to_string(milliseconds), now;
  // A client that vanishes mid-transaction (host crash, partition: no FIN) would otherwise leave its backend
  // holding row and advisory locks until TCP gives up, hours later. Our transactions never idle: any that does
  // for this long is abandoned.
  session << "SET idle_in_transaction_session_timeout = " + std::to_string(std::max<std::int64_t>(10'000, 2 * milliseconds)),
      now;
}

}  // namespace smartbroker::broker
