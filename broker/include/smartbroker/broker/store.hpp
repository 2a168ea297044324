// The one storage interface for state that must survive a restart or be shared between instances.
#pragma once

#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <string_view>

#include "smartbroker/broker/clock.hpp"

namespace smartbroker::broker {

/// The storage could not answer (I/O error, database gone). Callers fail closed.
struct StoreError {
  std::string detail;
};

enum class JtiOutcome : std::uint8_t {
  Recorded,  ///< first use of (iss, jti): the request may proceed
  Replayed,  ///< (iss, jti) was recorded before and has not expired
};

/// Durable state. Implementations: SQLite (embedded default) and, in a later issue, PostgreSQL.
class StateStore {
 public:
  virtual ~StateStore() = default;

  /// Records (iss, jti) until `expiresAt` (NumericDate). Atomic: of any number of concurrent calls with the
  /// same pair, across threads or instances sharing the store, exactly one returns Recorded. Returns only
  /// once the record is durable, so that a restart cannot reopen a replay window.
  virtual std::expected<JtiOutcome, StoreError> recordJti(std::string_view iss, std::string_view jti,
                                                           std::int64_t expiresAt) = 0;

  /// True when the store answers (for /healthz).
  virtual bool healthy() const = 0;
};

struct SqliteOptions {
  std::string path;                 ///< database file; its directory must exist
  /// fsync each commit (PRAGMA synchronous=FULL): durable across power loss, not only process crashes.
  bool fsync_commits = true;
  std::int64_t prune_interval_seconds = 60;
};

/// SQLite in WAL mode. Writes go through one writer thread that commits whatever requests are waiting in
/// one transaction (group commit): requests never serialise on a lock, and one fsync covers many of them.
std::unique_ptr<StateStore> openSqliteStore(const SqliteOptions& options, const Clock& clock);

}  // namespace smartbroker::broker
