// The signing-key lifecycle as a pure state machine over key records: policy ticks and operator commands.
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::keyring {

/// pending (published, not signing) → active (the one signing key) → retired (published, not signing) → removed
/// once every token it signed has expired. revoked: withdrawn from the JWKS at once by an operator (emergency).
/// Only pending and active keys have a private key on disk; revoked and removed records are tombstones kept for
/// `keys list`.
enum class KeyState : std::uint8_t { Pending, Active, Retired, Revoked, Removed };

std::string_view keyStateName(KeyState state);
std::optional<KeyState> keyStateFromName(std::string_view name);

/// One key as recorded in the keyring state file. Times are seconds since the Unix epoch.
struct KeyRecord {
  std::string kid;                          ///< RFC 7638 thumbprint of the public key
  jwks::Alg alg = jwks::Alg::ES256;
  KeyState state = KeyState::Pending;
  std::string public_jwk;                   ///< the public JWK JSON (public members only)
  std::int64_t created_at = 0;
  std::optional<std::int64_t> published_at;  ///< when a broker first served it in /jwks.json
  std::optional<std::int64_t> activated_at;  ///< when it started signing
  std::optional<std::int64_t> retired_at;    ///< when it stopped signing (retired, or revoked while active)
  std::optional<std::int64_t> ended_at;      ///< when it left the JWKS (revoked or removed)
  std::int64_t activate_after = 0;           ///< scheduled earliest activation of a pending key; 0 = when safe

  /// Pending, active and retired keys are in the JWKS.
  bool published() const;
  /// Pending and active keys keep their private key; every other state has none.
  bool hasPrivateKey() const;
};

/// An operator's `keys rotate` that the broker fulfils at its next tick, since only the broker makes keys.
struct RotationRequest {
  std::int64_t requested_at = 0;
  bool immediate = false;  ///< `--now`: activate the new key at once instead of after the lead time
};

/// Everything the state file holds.
struct RingState {
  std::vector<KeyRecord> keys;
  std::optional<RotationRequest> rotation_request;

  const KeyRecord* find(std::string_view kid) const;
  KeyRecord* find(std::string_view kid);
  const KeyRecord* active() const;
  KeyRecord* active();
  /// The pending key that activates next (oldest first), or null.
  const KeyRecord* nextPending() const;
  KeyRecord* nextPending();
};

/// The rotation schedule and the token-lifetime facts it depends on. All durations in seconds.
struct Policy {
  jwks::Alg algorithm = jwks::Alg::ES256;
  std::int64_t rotation_period = 30 * 86400;  ///< age at which the active key is replaced; 0 = only by command
  std::int64_t lead_time = 86400;             ///< a key is published at least this long before it signs
  std::int64_t jwks_max_age = 3600;           ///< Cache-Control max-age of /jwks.json; must not exceed lead_time
  std::int64_t max_token_lifetime = 300;      ///< longest access token the broker issues
  std::int64_t clock_skew = 30;               ///< resource servers' tolerance on exp
  std::int64_t retirement_grace = 3600;       ///< extra time a retired key stays published
  /// How much later than the instance that published a key the other instances may start serving it: 0 with one
  /// instance; kSharedPropagationDelay when several share a keyring (each follows within a tick). A key signs only
  /// once every instance's JWKS has had it for the whole lead time.
  std::int64_t propagation_delay = 0;

  /// How long a retired key stays published after its last possible signature: max token lifetime + skew +
  /// grace + the propagation margin (every broker picks up a change within a tick, and signs with the old key
  /// until then).
  std::int64_t retention() const;
  /// nullopt when the durations are consistent; otherwise what is wrong (e.g. lead time below the max-age).
  std::optional<std::string> problem() const;
};

/// The propagation margin: how long after a change on disk a running broker may still act on the old state.
inline constexpr std::int64_t kPropagationMargin = 2;
/// Policy::propagation_delay of a keyring shared by several instances (PostgreSQL): one tick to notice a change
/// plus a tick's own duration, rounded up.
inline constexpr std::int64_t kSharedPropagationDelay = 2;

/// The earliest second at which a pending key may sign: strictly more than `lead_time` (plus the propagation delay)
/// after it was first published (the published time is truncated to whole seconds). nullopt while no broker has
/// published it.
std::optional<std::int64_t> readyAt(const KeyRecord& key, const Policy& policy);
/// When a pending key will actually activate: readyAt, but not before its scheduled activate_after.
std::optional<std::int64_t> activationAt(const KeyRecord& key, const Policy& policy);
/// When a retired key leaves the JWKS.
std::optional<std::int64_t> removalAt(const KeyRecord& key, const Policy& policy);

/// Something that happened, for the log (broker) or the operator (command).
struct Event {
  std::string name;     ///< key_created, key_published, key_activated, key_retired, key_removed, ...
  std::string kid;
  std::string detail;   ///< one human sentence; never key material
  bool warning = false;
};

/// Makes a new key of `alg` with its private key stored, returning its record (state pending, created now).
/// The lifecycle never touches key material: the caller (KeyringManager) generates and stores it.
using MintKey = std::function<std::expected<KeyRecord, std::string>(jwks::Alg alg, std::int64_t now)>;

struct PolicyResult {
  bool changed = false;
  std::vector<Event> events;
};

/// One tick of the running broker, which is about to serve every published key: marks unpublished pending keys
/// published now, stages a successor in time for the schedule (or for a rotation request, or because the
/// configured algorithm changed), activates a pending key once it has been published for longer than the lead
/// time and its scheduled time has come, retires the previous key at that moment, removes retired keys after
/// their retention, withdraws pending keys of another algorithm, and, when there is no active key at all (first
/// start, or after `keys revoke --force`), activates one at once. Keys in `unusable` (private key unreadable)
/// are never activated. Fails only when a key cannot be made or the state breaks an invariant.
std::expected<PolicyResult, std::string> applyPolicy(RingState& state, const Policy& policy, std::int64_t now,
                                                     const MintKey& mint, const std::set<std::string>& unusable = {});

/// The result of an operator command: what was done, and the risks the operator must know about.
struct CommandOutcome {
  std::string summary;
  std::vector<std::string> warnings;
  bool changed = false;
  bool needs_broker = false;  ///< the broker must act (make a key) before the command has its full effect
};

/// `keys rotate [--now]`. Without --now: a staged key is asked to activate as soon as it is safe, or the broker
/// is asked to stage one. With --now: the staged key activates at once (a warning unless it is already ready),
/// or the broker is asked to make and activate a key at once (always a warning: resource servers caching the
/// old JWKS reject its tokens until they refetch).
std::expected<CommandOutcome, std::string> rotateKeys(RingState& state, const Policy& policy, std::int64_t now,
                                                      bool immediate);
/// `keys retire KID`: a pending key is withdrawn (it never signed); the active key is retired only when a staged
/// successor is ready, which then activates. Refuses retired, revoked, removed and unknown keys.
std::expected<CommandOutcome, std::string> retireKey(RingState& state, const Policy& policy, std::string_view kid,
                                                     std::int64_t now);
/// `keys revoke KID [--force]`: removes a key from the JWKS at once, so tokens it signed no longer verify.
/// Refuses the active key unless `force`; forced, the oldest staged key activates (or the broker makes one at
/// its next tick) and the outcome warns about the tokens that stop verifying.
std::expected<CommandOutcome, std::string> revokeKey(RingState& state, const Policy& policy, std::string_view kid,
                                                     std::int64_t now, bool force);

/// nullopt when `state` is consistent: unique kids, at most one active key, times present for each state.
std::optional<std::string> invariantProblem(const RingState& state);

/// ISO 8601 UTC, e.g. 2025-01-31T12:00:00Z.
std::string formatTime(std::int64_t epochSeconds);
/// A duration for people: 45s, 5m, 2h30m, 30d.
std::string formatDuration(std::int64_t seconds);

}  // namespace smartbroker::keyring
