// The keyring in PostgreSQL: lifecycle records and sealed private keys, changed under a transaction-scoped advisory
// lock so that one instance at a time writes, read in consistent snapshots by the others.
#include "smartbroker/broker/postgres_keyring.hpp"

#include "postgres_session.hpp"

#include <Poco/Data/PostgreSQL/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

namespace smartbroker::broker {
namespace {

namespace kr = smartbroker::keyring;
using Poco::Data::Keywords::into;
using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;

/// The advisory lock every keyring change holds ("sbkeyrin" in ASCII; postgres_store.cpp has the others).
constexpr Poco::Int64 kKeyringLock = 0x73626b657972696e;
/// How often a waiting change retries the lock.
constexpr std::chrono::milliseconds kLockRetry{20};
/// After a failed connection attempt, the next waits this long (libpq leaks ~36 KB per failed attempt).
constexpr std::chrono::seconds kReconnectPause{2};
/// A heartbeat younger than this means a broker is running (brokers tick every second).
constexpr int kHeartbeatSeconds = 5;
/// Heartbeats of instances gone this long are deleted.
constexpr int kHeartbeatRetentionSeconds = 86400;
/// NULL times travel as this value (times are never negative; writeState refuses them).
constexpr Poco::Int64 kNoTime = -1;

/// The database's clock, so that heartbeats compare across machines whose clocks differ.
constexpr const char* kDbNow = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS BIGINT)";

void registerConnector() {
  static const bool registered = [] {
    Poco::Data::PostgreSQL::Connector::registerConnector();
    return true;
  }();
  (void)registered;
}

std::string withConnectTimeout(const PostgresOptions& options) {
  if (options.connection.find("connect_timeout") != std::string::npos) {
    return options.connection;
  }
  return options.connection + " connect_timeout=" + std::to_string(options.connect_timeout_seconds);
}

std::string toHex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += kDigits[b >> 4];
    out += kDigits[b & 0x0f];
  }
  return out;
}

int hexDigit(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

std::optional<std::string> fromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hexDigit(hex[i]);
    const int lo = hexDigit(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      return std::nullopt;
    }
    out += static_cast<char>(hi * 16 + lo);
  }
  return out;
}

Poco::Int64 timeOrNone(const std::optional<std::int64_t>& t) { return t ? *t : kNoTime; }
std::optional<std::int64_t> timeFrom(Poco::Int64 v) {
  return v == kNoTime ? std::nullopt : std::optional<std::int64_t>(v);
}

class PostgresKeyring;

/// One transaction on one connection; rolled back unless committed. The connection goes back to the storage when
/// the session ends, unless it failed.
class PostgresSession final : public kr::KeyringSession {
 public:
  PostgresSession(PostgresKeyring& owner, Poco::Data::Session session, bool exclusive)
      : owner_(owner), session_(std::move(session)), exclusive_(exclusive) {}
  ~PostgresSession() override;
  PostgresSession(const PostgresSession&) = delete;
  PostgresSession& operator=(const PostgresSession&) = delete;

  std::expected<std::optional<std::int64_t>, std::string> generation() override {
    return guarded<std::optional<std::int64_t>>([&] {
      std::vector<Poco::Int64> rows;
      session_ << "SELECT generation FROM keyring_state WHERE id = 1", into(rows), now;
      // No row yet: nothing was ever written; 0 is a generation no write produces.
      return std::optional<std::int64_t>(rows.empty() ? 0 : rows.front());
    });
  }

  std::expected<std::optional<kr::RingState>, std::string> readState() override {
    return guarded<std::optional<kr::RingState>>([&]() -> std::optional<kr::RingState> {
      std::vector<Poco::Int64> requestedAt;
      std::vector<int> immediate;
      session_ << "SELECT COALESCE(rotation_requested_at, -1), rotation_immediate FROM keyring_state WHERE id = 1",
          into(requestedAt), into(immediate), now;
      if (requestedAt.empty()) {
        return std::nullopt;
      }
      kr::RingState state;
      if (requestedAt.front() != kNoTime) {
        state.rotation_request = kr::RotationRequest{requestedAt.front(), immediate.front() != 0};
      }
      std::vector<std::string> kids;
      std::vector<std::string> algs;
      std::vector<std::string> states;
      std::vector<std::string> jwks;
      std::vector<Poco::Int64> created;
      std::vector<Poco::Int64> published;
      std::vector<Poco::Int64> activated;
      std::vector<Poco::Int64> retired;
      std::vector<Poco::Int64> ended;
      std::vector<Poco::Int64> after;
      session_ << "SELECT kid, alg, state, public_jwk, created_at, COALESCE(published_at, -1),"
                  " COALESCE(activated_at, -1), COALESCE(retired_at, -1), COALESCE(ended_at, -1), activate_after"
                  " FROM keyring_keys ORDER BY position",
          into(kids), into(algs), into(states), into(jwks), into(created), into(published), into(activated),
          into(retired), into(ended), into(after), now;
      for (std::size_t i = 0; i < kids.size(); ++i) {
        kr::KeyRecord k;
        k.kid = kids[i];
        const auto alg = jwks::algFromName(algs[i]);
        const auto keyState = kr::keyStateFromName(states[i]);
        if (!alg || !keyState) {
          throw std::runtime_error("keyring_keys row " + kids[i] + ": unknown alg or state");
        }
        k.alg = *alg;
        k.state = *keyState;
        k.public_jwk = jwks[i];
        k.created_at = created[i];
        k.published_at = timeFrom(published[i]);
        k.activated_at = timeFrom(activated[i]);
        k.retired_at = timeFrom(retired[i]);
        k.ended_at = timeFrom(ended[i]);
        k.activate_after = after[i];
        state.keys.push_back(std::move(k));
      }
      return state;
    });
  }

  std::expected<void, std::string> writeState(const kr::RingState& state) override;

  std::expected<std::optional<kr::StoredPrivateKey>, std::string> readPrivateKey(const std::string& kid) override {
    return guarded<std::optional<kr::StoredPrivateKey>>([&]() -> std::optional<kr::StoredPrivateKey> {
      std::string k = kid;
      std::vector<std::string> rows;
      session_ << "SELECT encode(sealed, 'hex') FROM keyring_secrets WHERE kid = $1", into(rows), use(k), now;
      if (rows.empty()) {
        return std::nullopt;
      }
      auto bytes = fromHex(rows.front());
      if (!bytes) {
        throw std::runtime_error("keyring_secrets row " + kid + ": not hexadecimal");
      }
      std::optional<kr::StoredPrivateKey> out(std::in_place);
      out->data = std::move(*bytes);
      out->sealed = true;
      return out;
    });
  }

  std::expected<void, std::string> writePrivateKey(const std::string& kid, const kr::StoredPrivateKey& key) override {
    // Why: the database is reachable from every instance and lands in backups; a PEM must never enter it.
    if (!key.sealed) {
      return std::unexpected("refused to store the private key of " + kid + " unsealed in the database");
    }
    if (!exclusive_) {
      return std::unexpected("a read-only keyring session cannot store a private key");
    }
    auto stored = guardedVoid([&] {
             std::string k = kid;
             std::string hex = toHex(key.data);
             session_ << std::string("INSERT INTO keyring_secrets (kid, sealed, created_at) VALUES ($1, decode($2, "
                                     "'hex'), ") +
                             kDbNow + ") ON CONFLICT (kid) DO UPDATE SET sealed = excluded.sealed",
                 use(k), use(hex), now;
           });
    if (!stored) {
      // PostgreSQL's DETAIL of a failed INSERT quotes the row: never pass it on next to key material.
      return std::unexpected("could not store the sealed private key of " + kid + " in the database");
    }
    return stored;
  }

  std::expected<void, std::string> checkPrivateKey(const std::string& kid) override {
    (void)kid;  // rows have no permissions of their own; the database's access control covers the table
    return {};
  }

  std::expected<void, std::string> removeStaleKeys(const kr::RingState& state) override {
    if (!exclusive_) {
      return std::unexpected("a read-only keyring session cannot remove keys");
    }
    return guardedVoid([&] {
             std::vector<std::string> stored;
             session_ << "SELECT kid FROM keyring_secrets", into(stored), now;
             for (std::string& kid : stored) {
               const kr::KeyRecord* record = state.find(kid);
               // Only pending and active keys may sign again; any other private key is only a liability.
               if (record == nullptr || !record->hasPrivateKey()) {
                 session_ << "DELETE FROM keyring_secrets WHERE kid = $1", use(kid), now;
               }
             }
           });
  }

  std::expected<std::vector<kr::LegacyKey>, std::string> legacyKeys(jwks::Alg preferred) override {
    (void)preferred;  // the earlier files-only layout exists only in files (imported through import_from)
    return std::vector<kr::LegacyKey>{};
  }

  std::string keyLocation(const std::string& kid) const override;

  std::expected<void, std::string> commit() override {
    return guardedVoid([&] {
             session_.commit();
             committed_ = true;
           });
  }

 private:
  /// Runs `body`, turning a database error into a message (and the connection into one not to reuse).
  template <typename T, typename F>
  std::expected<T, std::string> guarded(F&& body);
  template <typename F>
  std::expected<void, std::string> guardedVoid(F&& body) {
    auto done = guarded<bool>([&] {
      body();
      return true;
    });
    if (!done) {
      return std::unexpected(done.error());
    }
    return {};
  }

  PostgresKeyring& owner_;
  Poco::Data::Session session_;
  bool exclusive_;
  bool committed_ = false;
  bool failed_ = false;
};

class PostgresKeyring final : public kr::KeyringStorage {
 public:
  PostgresKeyring(const PostgresOptions& options, std::string instance, bool migrate)
      : connection_(withConnectTimeout(options)),
        location_(describeConnection(options.connection)),
        instance_(std::move(instance)),
        migrate_(migrate),
        options_(options) {}

  std::string location() const override { return location_; }
  bool requiresSealing() const override { return true; }

  std::expected<void, std::string> checkCreated() override {
    auto conn = acquire();
    if (!conn) {
      return std::unexpected(conn.error());
    }
    try {
      int tables = 0;
      *conn << "SELECT CASE WHEN to_regclass('keyring_state') IS NULL THEN 0 ELSE 1 END", into(tables), now;
      int rows = 0;
      if (tables != 0) {
        *conn << "SELECT CAST(COUNT(*) AS INTEGER) FROM keyring_state", into(rows), now;
      }
      release(std::move(*conn));
      if (rows == 0) {
        return std::unexpected("no keyring in " + location_ +
                               " (smart-broker creates it at its first start with storage: postgresql; is this the "
                               "right --config?)");
      }
      return {};
    } catch (const Poco::Exception& e) {
      return std::unexpected(location_ + ": " + e.displayText());
    }
  }

  std::expected<void, std::string> attachBroker(const std::string& instance) override {
    if (!instance.empty()) {
      const std::lock_guard guard(mutex_);
      instance_ = instance;
    }
    if (migrate_) {
      try {
        migratePostgres(options_);
      } catch (const std::exception& e) {
        return std::unexpected(e.what());
      }
    }
    auto conn = acquire();
    if (!conn) {
      return std::unexpected(conn.error());
    }
    try {
      Poco::Int64 horizon = kHeartbeatRetentionSeconds;
      *conn << std::string("DELETE FROM keyring_brokers WHERE seen_at < ") + kDbNow + " - $1", use(horizon), now;
      release(std::move(*conn));
    } catch (const Poco::Exception& e) {
      return std::unexpected(location_ + ": " + e.displayText());
    }
    brokerAlive();
    return {};
  }

  void brokerAlive() override {
    auto conn = acquire();
    if (!conn) {
      return;  // the tick that follows reports the outage
    }
    try {
      std::string name = instanceName();
      *conn << std::string("INSERT INTO keyring_brokers (instance, seen_at) VALUES ($1, ") + kDbNow +
                   ") ON CONFLICT (instance) DO UPDATE SET seen_at = excluded.seen_at",
          use(name), now;
      release(std::move(*conn));
    } catch (const Poco::Exception&) {
      // Best effort: a dead connection is dropped here and the tick reconnects.
    }
  }

  bool brokerRunning() override {
    auto conn = acquire();
    if (!conn) {
      return false;
    }
    try {
      int alive = 0;
      Poco::Int64 window = kHeartbeatSeconds;
      *conn << std::string("SELECT CAST(COUNT(*) AS INTEGER) FROM keyring_brokers WHERE seen_at >= ") + kDbNow +
                   " - $1",
          into(alive), use(window), now;
      release(std::move(*conn));
      return alive > 0;
    } catch (const Poco::Exception&) {
      return false;
    }
  }

  std::expected<std::unique_ptr<kr::KeyringSession>, LockError> lock(std::chrono::milliseconds wait) override {
    return begin(true, wait);
  }

  std::expected<std::unique_ptr<kr::KeyringSession>, LockError> read(std::chrono::milliseconds wait) override {
    return begin(false, wait);
  }

  /// A connection that has served a session cleanly goes back for the next one (one idle connection is kept).
  void release(Poco::Data::Session session) {
    const std::lock_guard guard(mutex_);
    if (!idle_) {
      idle_.emplace(std::move(session));
    }
  }

  std::string instanceName() const {
    const std::lock_guard guard(mutex_);
    return instance_;
  }

  const std::string& locationText() const { return location_; }

 private:
  /// The idle connection, or a new one. A failed attempt makes the next wait kReconnectPause.
  std::expected<Poco::Data::Session, std::string> acquire() {
    {
      const std::lock_guard guard(mutex_);
      if (idle_) {
        Poco::Data::Session session = std::move(*idle_);
        idle_.reset();
        return session;
      }
      if (lastFailure_ && std::chrono::steady_clock::now() - *lastFailure_ < kReconnectPause) {
        return std::unexpected(location_ + ": " + lastError_);  // the same problem, reported once
      }
    }
    try {
      registerConnector();
      Poco::Data::Session session("PostgreSQL", connection_);
      // The same limits as the state store's connections (postgres_store.cpp): a tick never hangs on a lock, and
      // an abandoned transaction does not hold the keyring lock for hours.
      applyStatementTimeout(session, options_.statement_timeout_ms);
      return session;
    } catch (const Poco::Exception& e) {
      const std::lock_guard guard(mutex_);
      lastFailure_ = std::chrono::steady_clock::now();
      lastError_ = e.displayText();
      return std::unexpected(location_ + ": " + lastError_);
    }
  }

  /// Opens a transaction: exclusive ones take the keyring lock (retrying until `wait` has passed), read-only ones
  /// a REPEATABLE READ snapshot. A reused connection that turns out dead (the database restarted) is replaced once.
  std::expected<std::unique_ptr<kr::KeyringSession>, LockError> begin(bool exclusive, std::chrono::milliseconds wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    std::string error;
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto conn = acquire();
      if (!conn) {
        return std::unexpected(LockError{false, conn.error()});
      }
      try {
        conn->begin();
        if (!exclusive) {
          // One snapshot for every read of the session: records and private keys of the same keyring.
          *conn << "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", now;
          return std::make_unique<PostgresSession>(*this, std::move(*conn), false);
        }
        // READ COMMITTED: every statement after the lock sees what the previous holder committed.
        for (;;) {
          int locked = 0;
          Poco::Int64 key = kKeyringLock;
          *conn << "SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 1 ELSE 0 END", into(locked), use(key), now;
          if (locked == 1) {
            return std::make_unique<PostgresSession>(*this, std::move(*conn), true);
          }
          if (std::chrono::steady_clock::now() >= deadline) {
            conn->rollback();
            release(std::move(*conn));
            return std::unexpected(
                LockError{true, "the keyring in " + location_ + " is locked by another instance or command"});
          }
          std::this_thread::sleep_for(kLockRetry);
        }
      } catch (const Poco::Exception& e) {
        error = e.displayText();
        try {
          conn->close();
        } catch (const Poco::Exception&) {
        }
      }
    }
    return std::unexpected(LockError{false, location_ + ": " + error});
  }

  std::string connection_;
  std::string location_;
  std::string instance_;
  bool migrate_;
  PostgresOptions options_;
  mutable std::mutex mutex_;
  std::optional<Poco::Data::Session> idle_;
  std::optional<std::chrono::steady_clock::time_point> lastFailure_;
  std::string lastError_;
};

PostgresSession::~PostgresSession() {
  if (!committed_ && !failed_) {
    try {
      session_.rollback();
    } catch (const Poco::Exception&) {
      failed_ = true;
    }
  }
  if (failed_) {
    try {
      session_.close();
    } catch (const Poco::Exception&) {
    }
    return;
  }
  owner_.release(std::move(session_));
}

template <typename T, typename F>
std::expected<T, std::string> PostgresSession::guarded(F&& body) {
  if (failed_) {
    return std::unexpected(owner_.locationText() + ": the transaction failed earlier");
  }
  try {
    return body();
  } catch (const Poco::Exception& e) {
    failed_ = true;
    return std::unexpected(owner_.locationText() + ": " + e.displayText());
  } catch (const std::exception& e) {
    failed_ = true;
    return std::unexpected(owner_.locationText() + ": " + e.what());
  }
}

std::expected<void, std::string> PostgresSession::writeState(const kr::RingState& state) {
  if (!exclusive_) {
    return std::unexpected("a read-only keyring session cannot write");
  }
  for (const kr::KeyRecord& k : state.keys) {
    for (const auto& t : {std::optional<std::int64_t>(k.created_at), k.published_at, k.activated_at, k.retired_at,
                          k.ended_at, std::optional<std::int64_t>(k.activate_after)}) {
      if (t && *t < 0) {
        return std::unexpected(k.kid + ": a negative time cannot be stored");
      }
    }
  }
  return guardedVoid([&] {
           // The records are few (live keys and at most 50 tombstones): replacing them all keeps the table
           // exactly the state, in its order, within this transaction.
           session_ << "DELETE FROM keyring_keys", now;
           int position = 0;
           for (const kr::KeyRecord& k : state.keys) {
             std::string kid = k.kid;
             std::string alg(jwks::algName(k.alg));
             std::string keyState(kr::keyStateName(k.state));
             // Tombstones keep no key material at all, not even the public half (as in the state file).
             std::string jwk = k.published() ? k.public_jwk : std::string();
             Poco::Int64 created = k.created_at;
             Poco::Int64 published = timeOrNone(k.published_at);
             Poco::Int64 activated = timeOrNone(k.activated_at);
             Poco::Int64 retired = timeOrNone(k.retired_at);
             Poco::Int64 ended = timeOrNone(k.ended_at);
             Poco::Int64 after = k.activate_after;
             session_ << "INSERT INTO keyring_keys (kid, position, alg, state, public_jwk, created_at, published_at,"
                         " activated_at, retired_at, ended_at, activate_after) VALUES ($1, $2, $3, $4, $5, $6,"
                         " NULLIF($7::BIGINT, -1), NULLIF($8::BIGINT, -1), NULLIF($9::BIGINT, -1),"
                         " NULLIF($10::BIGINT, -1), $11)",
                 use(kid), use(position), use(alg), use(keyState), use(jwk), use(created), use(published),
                 use(activated), use(retired), use(ended), use(after), now;
             ++position;
           }
           Poco::Int64 requested = state.rotation_request ? state.rotation_request->requested_at : kNoTime;
           int immediate = state.rotation_request && state.rotation_request->immediate ? 1 : 0;
           std::string by = owner_.instanceName();
           session_ << std::string("INSERT INTO keyring_state (id, generation, rotation_requested_at,"
                                   " rotation_immediate, updated_at, updated_by) VALUES (1, 1,"
                                   " NULLIF($1::BIGINT, -1), $2, ") +
                           kDbNow +
                           ", $3) ON CONFLICT (id) DO UPDATE SET generation = keyring_state.generation + 1,"
                           " rotation_requested_at = excluded.rotation_requested_at,"
                           " rotation_immediate = excluded.rotation_immediate, updated_at = excluded.updated_at,"
                           " updated_by = excluded.updated_by",
               use(requested), use(immediate), use(by), now;
         });
}

std::string PostgresSession::keyLocation(const std::string& kid) const {
  return "keyring_secrets row " + kid + " in " + owner_.locationText();
}

}  // namespace

std::string describeConnection(const std::string& connection) {
  if (connection.starts_with("postgresql://") || connection.starts_with("postgres://")) {
    return "postgresql (connection URI)";  // user and password may be inside: say nothing more
  }
  // libpq takes the last value of a repeated keyword; so does this.
  std::map<std::string, std::string> where;
  std::istringstream in(connection);
  std::string token;
  while (in >> token) {
    const auto eq = token.find('=');
    if (eq != std::string::npos) {
      where[token.substr(0, eq)] = token.substr(eq + 1);
    }
  }
  std::string out = "postgresql";
  for (const char* name : {"host", "hostaddr", "port", "dbname"}) {
    if (const auto it = where.find(name); it != where.end()) {
      out += " " + it->first + "=" + it->second;
    }
  }
  return out;
}

std::shared_ptr<keyring::KeyringStorage> openPostgresKeyring(const PostgresOptions& options, std::string instance,
                                                             bool migrate) {
  return std::make_shared<PostgresKeyring>(options, std::move(instance), migrate);
}

}  // namespace smartbroker::broker
