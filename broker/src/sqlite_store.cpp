// SQLite (WAL) implementation of StateStore with a group-committing writer thread.
#include <Poco/Data/SQLite/Connector.h>
#include <Poco/Data/Session.h>
#include <Poco/Data/Statement.h>
#include <Poco/Exception.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "smartbroker/broker/store.hpp"

namespace smartbroker::broker {
namespace {

using Poco::Data::Keywords::now;
using Poco::Data::Keywords::use;

/// Migrations, applied in order, each once; the same SQL is meant to serve PostgreSQL.
const char* const kMigrations[] = {
    "CREATE TABLE IF NOT EXISTS replay ("
    " iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at BIGINT NOT NULL,"
    " PRIMARY KEY (iss, jti))",
    "CREATE INDEX IF NOT EXISTS replay_expires_at ON replay (expires_at)",
};

/// First use wins; a row whose assertion has expired may be taken over by a new assertion with that jti
/// (SPEC: "not seen before within the assertion lifetime"). One row changed = Recorded, none = Replayed.
constexpr const char* kRecordJti =
    "INSERT INTO replay (iss, jti, expires_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (iss, jti) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE replay.expires_at < $4";

class SqliteStore final : public StateStore {
 public:
  SqliteStore(const SqliteOptions& options, const Clock& clock)
      : options_(options), clock_(clock), session_("SQLite", options.path) {
    // WAL lets readers (other tools, a later introspection path) proceed while the writer commits.
    session_ << "PRAGMA journal_mode=WAL", now;
    session_ << (options.fsync_commits ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"), now;
    session_ << "PRAGMA busy_timeout=5000", now;
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

  std::expected<JtiOutcome, StoreError> recordJti(std::string_view iss, std::string_view jti,
                                                  std::int64_t expiresAt) override {
    Pending request;
    request.iss = iss;
    request.jti = jti;
    request.expires_at = expiresAt;
    std::unique_lock lock(mutex_);
    if (stopping_) {
      return std::unexpected(StoreError{"store is shutting down"});
    }
    queue_.push_back(&request);
    wake_.notify_one();
    done_.wait(lock, [&] { return request.done; });
    if (!request.error.empty()) {
      return std::unexpected(StoreError{request.error});
    }
    return request.outcome;
  }

  bool healthy() const override { return healthy_.load(std::memory_order_relaxed); }

 private:
  struct Pending {
    std::string iss;
    std::string jti;
    std::int64_t expires_at = 0;
    JtiOutcome outcome = JtiOutcome::Replayed;
    std::string error;
    bool done = false;
  };

  void migrate() {
    session_ << "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", now;
    int version = 0;
    session_ << "SELECT COALESCE(MAX(version), 0) FROM schema_version", Poco::Data::Keywords::into(version), now;
    const int target = static_cast<int>(std::size(kMigrations));
    for (int v = version; v < target; ++v) {
      session_.begin();
      session_ << kMigrations[v], now;
      int next = v + 1;
      session_ << "INSERT INTO schema_version (version) VALUES ($1)", use(next), now;
      session_.commit();
    }
  }

  /// The writer: takes every waiting request, commits them in one transaction, wakes their threads.
  void run() {
    std::string iss;
    std::string jti;
    Poco::Int64 expiresAt = 0;
    Poco::Int64 nowSeconds = 0;
    Poco::Data::Statement insert(session_);
    insert << kRecordJti, use(iss), use(jti), use(expiresAt), use(nowSeconds);
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
          iss = batch[i]->iss;
          jti = batch[i]->jti;
          expiresAt = batch[i]->expires_at;
          const std::size_t changed = insert.execute();
          outcomes[i] = changed == 1 ? JtiOutcome::Recorded : JtiOutcome::Replayed;
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
        try {
          if (session_.isTransaction()) {
            session_.rollback();
          }
        } catch (const Poco::Exception&) {
        }
      }
      {
        std::lock_guard lock(mutex_);
        for (std::size_t i = 0; i < batch.size(); ++i) {
          batch[i]->outcome = outcomes[i];
          batch[i]->error = error;
          batch[i]->done = true;
        }
      }
      done_.notify_all();
      if (nowSeconds - lastPrune >= options_.prune_interval_seconds) {
        prune(nowSeconds);
        lastPrune = nowSeconds;
      }
    }
  }

  void prune(Poco::Int64 nowSeconds) {
    try {
      session_ << "DELETE FROM replay WHERE expires_at < $1", use(nowSeconds), now;
    } catch (const Poco::Exception&) {
      // Pruning is housekeeping; the next round tries again.
    }
  }

  SqliteOptions options_;
  const Clock& clock_;
  Poco::Data::Session session_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
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
