// The one storage interface for state that must survive a restart or be shared between instances.
#pragma once

#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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

/// An issued access token as the store keeps it: never the token itself.
struct IssuedToken {
  std::string jti;
  std::string client_id;
  std::string scope;
  std::int64_t iat = 0;
  std::int64_t exp = 0;
  std::string kid;
};

/// Per-system state an operator changes at run time.
struct SystemState {
  bool suspended = false;
  std::int64_t revoked_before = 0;  ///< tokens of this system issued at or before this time are revoked
};

/// A token revocation, with a monotonic id so that mirrors can follow the table incrementally.
struct Revocation {
  std::int64_t id = 0;
  std::string jti;
  std::string client_id;
  std::int64_t exp = 0;
};

/// What changed since a cursor: the revocations after it (still unexpired) and the whole system state table.
struct StateChanges {
  std::vector<Revocation> revocations;
  std::int64_t cursor = 0;                    ///< pass back next time
  std::map<std::string, SystemState> systems;
};

/// Durable state. Implementations: SQLite (embedded default) and, in a later issue, PostgreSQL.
/// Every write returns only once it is durable.
class StateStore {
 public:
  virtual ~StateStore() = default;

  /// Records (iss, jti) until `expiresAt` (NumericDate) and, when it is the first use and `issued` is given,
  /// the token issued for it, in one transaction. Atomic: of any number of concurrent calls with the same pair,
  /// across threads or instances sharing the store, exactly one returns Recorded.
  virtual std::expected<JtiOutcome, StoreError> recordJti(std::string_view iss, std::string_view jti,
                                                           std::int64_t expiresAt, const IssuedToken* issued) = 0;
  std::expected<JtiOutcome, StoreError> recordJti(std::string_view iss, std::string_view jti, std::int64_t expiresAt) {
    return recordJti(iss, jti, expiresAt, nullptr);
  }

  /// Records that access token `jti` of `clientId` is revoked until `exp`. Idempotent.
  virtual std::expected<void, StoreError> revokeToken(std::string_view jti, std::string_view clientId,
                                                      std::int64_t exp) = 0;
  virtual std::expected<void, StoreError> setSuspended(std::string_view clientId, bool suspended) = 0;
  /// Revokes every token of `clientId` issued at or before `before`.
  virtual std::expected<void, StoreError> revokeAllTokens(std::string_view clientId, std::int64_t before) = 0;
  /// The most recent tokens of `clientId` that have not expired at `now`, newest first.
  virtual std::expected<std::vector<IssuedToken>, StoreError> recentTokens(std::string_view clientId,
                                                                           std::size_t limit, std::int64_t now) = 0;
  virtual std::expected<StateChanges, StoreError> changesSince(std::int64_t cursor, std::int64_t now) = 0;

  /// True when the store answers (for /healthz and the watchdog).
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
