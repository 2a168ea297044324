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

#include "smartbroker/broker/store.hpp"

namespace smartbroker::broker {
namespace {

using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;

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

std::string withConnectTimeout(const PostgresOptions& options) {
  if (options.connection.find("connect_timeout") != std::string::npos) {
    return options.connection;
  }
  return options.connection + " connect_timeout=" + std::to_string(options.connect_timeout_seconds);
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

enum class Op : std::uint8_t { RecordJti, RevokeToken, SetSuspended, RevokeAll };

/// One write waiting for the writer thread. Lives on the caller's stack until `done`.
struct Pending {
  Op op = Op::RecordJti;
  std::string a;       ///< iss / jti / client_id
  std::string b;       ///< jti / client_id
  std::int64_t n = 0;  ///< expires_at / exp / suspended / before
  const IssuedToken* issued = nullptr;
  JtiOutcome outcome = JtiOutcome::Replayed;
  std::string error;
  bool done = false;
};

class PostgresStore final : public StateStore {
 public:
  PostgresStore(const PostgresOptions& options, const Clock& clock)
      : options_(options),
        clock_(clock),
        pool_("PostgreSQL", withConnectTimeout(options), 1, static_cast<int>(std::max(2U, options.pool_size)), 60) {
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

  bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }

 private:
  /// Runs a read on a pooled session. A session whose connection died (database restarted) fails once and is
  /// dropped by the pool when returned disconnected; the read is retried once on a fresh session, so a database
  /// that has come back answers on the first call.
  template <typename F>
  std::expected<void, StoreError> read(F&& body) {
    std::string error;
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        Poco::Data::Session session = pool_.get();
        body(session);
        healthy_.store(true, std::memory_order_relaxed);
        return {};
      } catch (const Poco::Exception& e) {
        error = e.displayText();
      } catch (const std::exception& e) {
        error = e.what();
      }
    }
    healthy_.store(false, std::memory_order_relaxed);
    return std::unexpected(StoreError{error});
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

  /// Writes one batch in one transaction. Rows are locked in one global order (replay rows by key, then the
  /// revocation lock, then system rows by client) so that two instances' batches cannot deadlock each other.
  void writeBatch(Poco::Data::Session& session, const std::vector<Pending*>& batch, Poco::Int64 nowSeconds,
                  std::vector<JtiOutcome>& outcomes, bool& committing) {
    // Identical (iss, jti) pairs in one batch: the first in arrival order is the candidate, the others are
    // replays by construction (PostgreSQL also refuses a multi-row upsert that touches one row twice).
    std::map<std::pair<std::string_view, std::string_view>, std::size_t> candidates;
    std::vector<std::size_t> revocations;
    std::vector<std::size_t> systems;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Pending& p = *batch[i];
      outcomes[i] = JtiOutcome::Replayed;
      if (p.op == Op::RecordJti) {
        candidates.try_emplace({p.a, p.b}, i);
      } else if (p.op == Op::RevokeToken) {
        revocations.push_back(i);
      } else {
        systems.push_back(i);
      }
    }
    session.begin();
    if (!candidates.empty()) {
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
        outcomes[it->second] = JtiOutcome::Recorded;
        if (batch[it->second]->issued != nullptr) {
          tokens.push_back(it->second);
        }
      }
      for (const std::size_t i : tokens) {
        const IssuedToken& t = *batch[i]->issued;
        std::string jti = t.jti;
        std::string client = t.client_id;
        std::string scope = t.scope;
        Poco::Int64 iat = t.iat;
        Poco::Int64 exp = t.exp;
        std::string kid = t.kid;
        session << "INSERT INTO tokens (jti, client_id, scope, iat, exp, kid) VALUES ($1, $2, $3, $4, $5, $6)",
            use(jti), use(client), use(scope), use(iat), use(exp), use(kid), now;
      }
    }
    if (!revocations.empty()) {
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
    committing = true;
    session.commit();
  }

  /// The writer: takes every waiting request, commits them in one transaction, wakes their threads.
  void run() {
    std::optional<Poco::Data::Session> session;
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
      const Poco::Int64 nowSeconds = clock_.now();
      std::string error;
      std::vector<JtiOutcome> outcomes(batch.size(), JtiOutcome::Replayed);
      // A connection that died since the last batch (database restarted) fails before commit; that batch is
      // retried once on a fresh connection. A failure during commit is never retried: the commit may have
      // happened, and a retry would report the winner of a jti as a replay.
      for (int attempt = 0; attempt < 2; ++attempt) {
        bool committing = false;
        error.clear();
        try {
          if (!session || !session->isConnected()) {
            session.reset();
            session.emplace(pool_.get());
          }
          writeBatch(*session, batch, nowSeconds, outcomes, committing);
          break;
        } catch (const Poco::Exception& e) {
          error = e.displayText();
        } catch (const std::exception& e) {
          error = e.what();
        }
        std::ranges::fill(outcomes, JtiOutcome::Replayed);
        discard(session);
        if (committing) {
          break;
        }
      }
      healthy_.store(error.empty(), std::memory_order_relaxed);
      {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          batch[i]->outcome = outcomes[i];
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
    } catch (const Poco::Exception&) {
      // Pruning is housekeeping; the next round tries again (and a dead connection fails the next batch once).
    }
  }

  PostgresOptions options_;
  const Clock& clock_;
  Poco::Data::SessionPool pool_;
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
  registerConnector();
  try {
    return std::make_unique<PostgresStore>(options, clock);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("postgresql: " + e.displayText());
  }
}

std::int64_t migratePostgres(const PostgresOptions& options) {
  registerConnector();
  try {
    Poco::Data::Session session("PostgreSQL", withConnectTimeout(options));
    return migrate(session);
  } catch (const Poco::Exception& e) {
    throw std::runtime_error("postgresql: " + e.displayText());
  }
}

}  // namespace smartbroker::broker
