// The one storage interface for state that must survive a restart or be shared between instances.
#pragma once

#include <cstdint>
#include <expected>
#include <map>
#include <memory>
#include <optional>
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
  /// (iss, jti) is recorded (spent), but a locally stored consent that `issued` is linked to is no longer active
  /// when the links are written: a withdrawal committed between the consent check and this transaction. No token
  /// record or link is written; the caller must not hand out the token.
  ConsentWithdrawn,
};

/// An issued access token as the store keeps it: never the token itself.
struct IssuedToken {
  std::string jti;
  std::string client_id;
  std::string scope;
  std::int64_t iat = 0;
  std::int64_t exp = 0;
  std::string kid;
  std::vector<std::string> consent_ids{};  ///< consents the token is linked to (token_consents); may be empty
  /// The consent_ids are locally stored consents (source local): recordJti re-checks, in the transaction that
  /// links them and serialised with consent changes, that each still exists with status active.
  bool consents_local = false;
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

/// A locally stored consent (README "Consent"): the FHIR resource as received plus what lookups need.
struct StoredConsent {
  std::string id;
  std::string status;                  ///< FHIR Consent.status code
  std::string resource;                ///< the FHIR R4 Consent JSON, as PUT
  std::vector<std::string> grantees;   ///< client_ids (consent_grantees), for `rule: grantee` lookups
  std::int64_t updated_at = 0;
};

/// One consent change, applied in one transaction together with the revocations and the notification it causes.
struct ConsentChange {
  enum class Record : std::uint8_t {
    Keep,    ///< the record is not local (FHIR source): only revoke and notify
    Upsert,  ///< insert or replace `record` and its grantees
    Delete,  ///< delete the record and its grantees
  };
  std::string consent_id;
  Record action = Record::Keep;
  StoredConsent record;                ///< with Upsert
  /// Revoke every unexpired, unrevoked token linked to the consent. When false, only linked tokens whose
  /// client_id is not in `keep_clients` are revoked (a grantee was removed).
  bool revoke_all = false;
  std::vector<std::string> keep_clients;
  /// Enqueue a notification (consent_outbox): when `notify_always`, or when this change revoked any token.
  bool notify = false;
  bool notify_always = false;
};

/// What a consent change did.
struct ConsentChangeResult {
  std::vector<Revocation> revoked;     ///< tokens revoked by this change (not those revoked before)
  std::int64_t notification_id = 0;    ///< the outbox entry written, 0 when none
};

/// A withdrawal notification waiting in the outbox (README "Consent": notification format, retry semantics).
struct ConsentNotification {
  std::int64_t id = 0;
  std::string consent_id;
  std::vector<std::string> revoked_token_ids;
  std::int64_t time = 0;               ///< when the withdrawal was processed (NumericDate)
  int attempts = 0;                    ///< failed delivery attempts so far
};

/// Durable state. Implementations: SQLite (embedded default, one machine) and PostgreSQL (several instances).
/// Every write returns only once it is durable.
class StateStore {
 public:
  virtual ~StateStore() = default;

  /// Records (iss, jti) until `expiresAt` (NumericDate) and, when it is the first use and `issued` is given,
  /// the token issued for it, in one transaction (or ConsentWithdrawn, see there). Atomic: of any number of concurrent calls with the same pair,
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

  // Consent (README "Consent"). recordJti also writes one token_consents row per IssuedToken::consent_ids entry.

  /// The locally stored consent `id`, nullopt when there is none.
  virtual std::expected<std::optional<StoredConsent>, StoreError> findConsent(std::string_view id) = 0;
  /// Every locally stored consent that names `clientId` as grantee (`rule: grantee`).
  virtual std::expected<std::vector<StoredConsent>, StoreError> consentsForGrantee(std::string_view clientId) = 0;
  /// Applies `change` at `now` in one transaction: the record, the revocations of linked tokens (revocations
  /// table, so mirrors follow) and, when asked, the outbox entry listing the tokens revoked. Changes applied
  /// concurrently (threads or instances) behave as if applied one after the other: a token is reported revoked,
  /// and listed in a notification, by exactly one of them.
  virtual std::expected<ConsentChangeResult, StoreError> applyConsentChange(const ConsentChange& change,
                                                                           std::int64_t now) = 0;
  /// Undelivered notifications whose next attempt is due at `now`, oldest first, at most `limit`. A store shared
  /// by several instances (PostgreSQL) leases what it returns: those are not due again for a while unless
  /// notificationFailed reschedules them, so that two instances do not send one notification at the same time
  /// (delivery stays at least once: a lease that runs out is handed out again).
  virtual std::expected<std::vector<ConsentNotification>, StoreError> dueNotifications(std::int64_t now,
                                                                                      std::size_t limit) = 0;
  /// Marks notification `id` delivered (it is never sent again).
  virtual std::expected<void, StoreError> notificationDelivered(std::int64_t id, std::int64_t now) = 0;
  /// Records a failed attempt: attempts + 1, next attempt at `nextAttemptAt`, the error for operators.
  virtual std::expected<void, StoreError> notificationFailed(std::int64_t id, std::int64_t nextAttemptAt,
                                                             std::string_view error) = 0;

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

struct PostgresOptions {
  /// libpq key=value connection string, e.g. "host=127.0.0.1 port=5432 dbname=smartbroker user=smartbroker".
  /// A connect_timeout is added when absent, so that an unreachable server fails a request instead of hanging it.
  std::string connection;
  unsigned pool_size = 8;                     ///< connections: one for the writer, the rest for readers
  std::int64_t connect_timeout_seconds = 3;   ///< used when `connection` names no connect_timeout
  /// PostgreSQL statement_timeout of every connection (readers, writer, migration), set when each connection opens
  /// and overriding one in `connection`. A statement that runs longer (typically one waiting on a lock another
  /// session holds) is cancelled and the call returns StoreError. Must be positive (0 would mean no limit):
  /// opening throws std::invalid_argument otherwise.
  std::int64_t statement_timeout_ms = 5000;
  std::int64_t prune_interval_seconds = 60;
};

/// PostgreSQL, shared by any number of broker instances. Opening applies pending schema migrations under a
/// transaction-scoped advisory lock, so concurrent instances migrate once. Writes are group-committed by one
/// writer thread as in SQLite; a database that goes away makes calls return StoreError (healthy() false) and
/// service resumes, without reopening, once it answers again. Throws std::runtime_error when the database cannot
/// be reached or migrated at open.
std::unique_ptr<StateStore> openPostgresStore(const PostgresOptions& options, const Clock& clock);

/// Applies pending migrations and returns the schema version now in place (`smart-broker migrate`).
std::int64_t migratePostgres(const PostgresOptions& options);

}  // namespace smartbroker::broker
