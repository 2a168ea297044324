// Consent-aware issuance and introspection: FHIR R4 Consent mapping, the consent decision, the consent service
// (local store or remote FHIR read, cached) and the withdrawal notifier with its durable outbox.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "smartbroker/broker/access_token.hpp"
#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/errors.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/scopes.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_state.hpp"
#include "smartbroker/config/config.hpp"

namespace smartbroker::broker {

/// FHIR R4 Consent.status (value set consent-state-codes).
enum class ConsentStatus : std::uint8_t { Draft, Proposed, Active, Rejected, Inactive, EnteredInError };
std::optional<ConsentStatus> consentStatusFromCode(std::string_view code);
std::string_view consentStatusCode(ConsentStatus status);

/// The extension (on Consent, repeatable, valueString) listing the `system/` scopes a consent permits.
inline constexpr std::string_view kPermittedScopeExtension = "urn:smart-broker:fhir:permitted-scope";
/// Consent.provision.actor.role coding that marks a grantee: v3 ParticipationType IRCP (information recipient).
inline constexpr std::string_view kParticipationTypeSystem =
    "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
inline constexpr std::string_view kGranteeRoleCode = "IRCP";

/// How FHIR Consent resources map onto broker consent records (README "Consent", FHIR mapping).
struct ConsentMapping {
  /// provision.actor.reference.identifier.system whose identifier.value is a client_id.
  std::string grantee_identifier_system = "urn:smart-broker:client-id";
  std::size_t max_bytes = 64 * 1024;
};

/// A consent as the broker decides with it.
struct ConsentRecord {
  std::string id;
  ConsentStatus status = ConsentStatus::Draft;
  std::optional<std::int64_t> not_before;  ///< provision.period.start (NumericDate)
  std::optional<std::int64_t> not_after;   ///< provision.period.end, exclusive (end of its stated precision)
  bool permit = true;                      ///< provision.type absent or permit; deny never authorizes
  std::vector<std::string> grantees;       ///< client_ids
  std::optional<std::vector<SystemScope>> permitted_scopes;  ///< nullopt: no limit beyond the registration

  /// Status active and `now` within the period.
  bool activeAt(std::int64_t now) const;
  /// Active at `now`, a permit, and `clientId` among the grantees.
  bool authorizes(std::string_view clientId, std::int64_t now) const;
};

/// Parses a FHIR R4 Consent resource (JSON). Refuses: more than `max_bytes`, not a JSON object, resourceType other
/// than Consent, an id that is not a FHIR id, a missing or unknown status, an unparseable period date, nested
/// provisions (exceptions are not evaluated, so a consent carrying them is refused rather than read too broadly),
/// and a permitted-scope extension whose value is not a valid `system/` scope. The error text is safe for the
/// wire (RFC 6749 §5.2 characters) and never quotes the input.
std::expected<ConsentRecord, std::string> parseConsentResource(std::string_view json, const ConsentMapping& mapping);

/// FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or YYYY-MM-DDThh:mm:ss[.f]+zone) to a NumericDate. Partial dates are UTC.
/// With `endOfPeriod`, the result is the first second after the value's precision (2025-12-31 -> 2026-01-01T00:00Z,
/// a full time -> one second later), so that a period end is inclusive.
std::optional<std::int64_t> parseFhirDateTime(std::string_view text, bool endOfPeriod);

/// The result of looking a consent up in a source.
struct ConsentLookup {
  enum class Outcome : std::uint8_t {
    Found,
    NotFound,  ///< no such consent (local: not stored; FHIR: 404)
    Gone,      ///< FHIR 410: deleted at the source, a withdrawal
    Failed,    ///< the source could not answer or answered garbage: no active consent (fail closed)
  };
  std::string id;
  Outcome outcome = Outcome::Failed;
  std::optional<ConsentRecord> record;  ///< with Found
  std::string detail;                   ///< operator-only

  /// Found but no longer active, or Gone: the consent was withdrawn (a failure or a 404 is not).
  bool withdrawnAt(std::int64_t now) const;
};

/// Where consents come from: the local store or a FHIR server. The test seam of the consent service.
class ConsentSource {
 public:
  virtual ~ConsentSource() = default;
  /// Thread-safe; never throws.
  virtual ConsentLookup fetch(const std::string& id) = 0;
};

/// Local consents from the state store.
std::unique_ptr<ConsentSource> makeStoreConsentSource(StateStore& store, ConsentMapping mapping);

/// What issuance may grant under consent.
struct ConsentGrant {
  std::string scope;                     ///< the granted scope, limited by the consents
  std::vector<std::string> consent_ids;  ///< the consents that authorize it: the token's `consent` claim
};

/// The consent decision at issuance. `grantedScope` is what the registration allows (system/ scopes and broker
/// permissions). Authorizing consents: candidates Found that authorize `clientId` at `now`. None: ConsentUnavailable
/// when a candidate could not be read, else ConsentRequired. Otherwise the system/ scopes are limited to the union
/// of what the authorizing consents permit (a consent without the extension permits everything); broker
/// permissions are not FHIR data access and pass unchanged. Nothing left of the system/ scopes that were granted:
/// ConsentScopeNotPermitted.
std::expected<ConsentGrant, Denial> decideIssuance(std::string_view clientId, std::string_view grantedScope,
                                                   const std::vector<ConsentLookup>& candidates, std::int64_t now,
                                                   std::size_t maxScopes);

/// The re-check at introspection: every consent the token is linked to still authorizes its client, and (when all of
/// them limit scopes) every system/ scope of the token is within what they permit now. No linked consent: true.
bool consentsStillAuthorize(std::string_view clientId, std::string_view tokenScope,
                            const std::vector<ConsentLookup>& linked, std::int64_t now);

/// A local consent write, as the endpoint reports it.
struct ConsentWriteResult {
  bool created = false;
  bool active = false;
  std::string status;
  std::vector<std::string> revoked_token_ids;
};

/// Why a local consent write was refused.
struct ConsentWriteError {
  enum class Kind : std::uint8_t { Invalid, NotFound, StoreUnavailable };
  Kind kind = Kind::Invalid;
  std::string description;  ///< safe for the wire
};

struct ConsentOptions {
  config::ConsentSettings settings;
  std::size_t max_scope_count = 64;
  std::size_t cache_capacity = 10000;
  std::size_t max_candidates = 64;  ///< consents looked at per issuance (`rule: grantee` may find many)
};

/// Consent for issuance, introspection and the local consent endpoint. Lookups are cached for cache_seconds
/// (failures for at most one second); issuance with the local source reads the store directly, so a withdrawal
/// made by another instance is seen at once. A withdrawal revokes every live linked token (store first, then this
/// instance's TokenState) and, with a notification_url, writes the notification in the same transaction.
/// Thread-safe.
class ConsentService {
 public:
  /// `source` is the FHIR source; null means the local store (source local).
  ConsentService(ConsentOptions options, std::unique_ptr<ConsentSource> source, StateStore& store, TokenState& state,
                 const Clock& clock, const Log& log);

  bool local() const { return local_; }
  const ConsentMapping& mapping() const { return mapping_; }
  std::size_t maxResourceBytes() const { return mapping_.max_bytes; }

  /// Issuance: for a client whose registration requires consent, the limited grant; otherwise `scope` unchanged.
  std::expected<ConsentGrant, Denial> checkIssuance(const Client& client, std::string_view scope) const;
  /// Introspection: false when a consent the token is linked to no longer authorizes it.
  bool tokenAuthorized(const TokenClaims& claims) const;

  /// PUT /consents/{id} (local source): `body` is a FHIR R4 Consent whose id must equal `id`.
  std::expected<ConsentWriteResult, ConsentWriteError> put(std::string_view id, std::string_view body) const;
  /// DELETE /consents/{id} (local source): withdraws and forgets the consent.
  std::expected<ConsentWriteResult, ConsentWriteError> withdraw(std::string_view id) const;

  /// Called after a notification was written to the outbox (wakes the notifier).
  void onNotificationQueued(std::function<void()> hook) { queued_ = std::move(hook); }

 private:
  struct CacheEntry {
    ConsentLookup lookup;
    std::int64_t fetched_at = 0;
  };
  ConsentLookup lookup(const std::string& id, bool fresh) const;
  void remember(const ConsentLookup& lookup, std::int64_t now) const;
  /// Revokes the consent's live tokens and queues the notification for a withdrawal seen at the source.
  void processRemoteWithdrawal(const std::string& id) const;
  void noteRevocations(const ConsentChangeResult& result, const std::string& consentId) const;

  ConsentOptions options_;
  ConsentMapping mapping_;
  bool local_;
  std::unique_ptr<ConsentSource> source_;
  StateStore& store_;
  TokenState& state_;
  const Clock& clock_;
  const Log& log_;
  std::function<void()> queued_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, CacheEntry> cache_;
  mutable std::set<std::string> withdrawn_;  ///< remote consents whose withdrawal this instance processed
};

/// The notification JSON: {"id", "consent_id", "revoked_token_ids", "time"} with time a FHIR instant (UTC).
std::string notificationBody(const ConsentNotification& notification);
/// Delay before attempt `attempts` + 1 after `attempts` failures: initial * 2^(attempts - 1), at most `max`.
std::int64_t retryDelay(int attempts, std::int64_t initial, std::int64_t max);

/// Delivers the outbox: a background thread takes due notifications from the store, POSTs them, and marks each
/// delivered (2xx) or failed (retried with exponential backoff, without limit). The outbox is the store, so
/// notifications survive a restart; delivery is at least once (the `id` member lets the receiver deduplicate).
class ConsentNotifier {
 public:
  /// Sends one body; a 2xx answer is success, anything else the error text (operator-only).
  using Sender = std::function<std::expected<void, std::string>(const std::string& body)>;
  ConsentNotifier(StateStore& store, Sender sender, std::int64_t initialBackoff, std::int64_t maxBackoff,
                  const Clock& clock, const Log& log);
  ~ConsentNotifier();
  ConsentNotifier(const ConsentNotifier&) = delete;
  ConsentNotifier& operator=(const ConsentNotifier&) = delete;

  void wake();

 private:
  void run(const std::stop_token& stop);
  void deliverDue();

  StateStore& store_;
  Sender sender_;
  std::int64_t initial_;
  std::int64_t max_;
  const Clock& clock_;
  const Log& log_;
  std::mutex mutex_;
  std::condition_variable_any wake_;
  bool woken_ = false;
  std::jthread thread_;  // last: started after every member it uses exists
};

}  // namespace smartbroker::broker
