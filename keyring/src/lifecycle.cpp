// The signing-key lifecycle as a pure state machine: what is due at `now`, and what an operator may change.
#include "smartbroker/keyring/lifecycle.hpp"

#include <algorithm>
#include <array>
#include <ctime>
#include <functional>
#include <set>

namespace smartbroker::keyring {
namespace {

/// Revoked and removed records kept for `keys list`; older tombstones are dropped.
constexpr std::size_t kMaxTombstones = 50;

std::string algText(jwks::Alg alg) { return std::string(jwks::algName(alg)); }

/// The oldest pending key that may activate (its private key is usable), or null. A template for the const and
/// non-const RingState alike.
template <class Ring>
auto* oldestUsablePending(Ring& state, const std::set<std::string>& unusable) {
  decltype(&state.keys.front()) best = nullptr;
  for (auto& k : state.keys) {
    if (k.state == KeyState::Pending && !unusable.contains(k.kid) &&
        (best == nullptr || k.created_at < best->created_at)) {
      best = &k;
    }
  }
  return best;
}

bool hasPending(const RingState& state) {
  return std::ranges::any_of(state.keys, [](const KeyRecord& k) { return k.state == KeyState::Pending; });
}

bool isReady(const KeyRecord& key, const Policy& policy, std::int64_t now) {
  const auto ready = readyAt(key, policy);
  return ready && now >= *ready;
}

/// Makes `next` the signing key and retires `previous` (when there is one) at the same instant, so that there is
/// never a moment with two signing keys or with none.
void activate(KeyRecord& next, KeyRecord* previous, const Policy& policy, std::int64_t now,
              std::vector<Event>& events) {
  if (previous != nullptr) {
    previous->state = KeyState::Retired;
    previous->retired_at = now;
  }
  next.state = KeyState::Active;
  next.activated_at = now;
  next.activate_after = 0;
  events.push_back({"key_activated", next.kid, "now signs access tokens (" + algText(next.alg) + ")", false});
  if (previous != nullptr) {
    events.push_back({"key_retired", previous->kid,
                      "no longer signs; stays published until " + formatTime(now + policy.retention()), false});
  }
}

std::string unpublishedWarning(const KeyRecord& key, const Policy& policy, std::int64_t now) {
  const std::int64_t age = key.published_at ? std::max<std::int64_t>(0, now - *key.published_at) : 0;
  const std::string published = key.published_at ? "was published only " + formatDuration(age) + " ago (lead time " +
                                                       formatDuration(policy.lead_time) + ")"
                                                 : "has not been published by a running broker yet";
  return key.kid + " " + published + ": resource servers that cached the JWKS before it appeared (for up to " +
         formatDuration(policy.jwks_max_age) + ") reject tokens it signs until they refetch the JWKS";
}

std::string immediateKeyWarning(const Policy& policy) {
  return "the new key signs at once, before any resource server can have seen it: resource servers caching the "
         "old JWKS (Cache-Control max-age " +
         formatDuration(policy.jwks_max_age) +
         ") reject the new tokens until they refetch it; prefer `keys rotate` without --now unless the current key "
         "must stop signing now";
}

std::expected<CommandOutcome, std::string> refuse(std::string why) { return std::unexpected(std::move(why)); }

std::string unknownKid(std::string_view kid) {
  return "no key " + std::string(kid) + " in the keyring (see `smart-broker keys list`)";
}

}  // namespace

std::string_view keyStateName(KeyState state) {
  switch (state) {
    case KeyState::Pending:
      return "pending";
    case KeyState::Active:
      return "active";
    case KeyState::Retired:
      return "retired";
    case KeyState::Revoked:
      return "revoked";
    case KeyState::Removed:
      return "removed";
  }
  return "unknown";
}

std::optional<KeyState> keyStateFromName(std::string_view name) {
  for (const KeyState s :
       {KeyState::Pending, KeyState::Active, KeyState::Retired, KeyState::Revoked, KeyState::Removed}) {
    if (keyStateName(s) == name) {
      return s;
    }
  }
  return std::nullopt;
}

bool KeyRecord::published() const {
  return state == KeyState::Pending || state == KeyState::Active || state == KeyState::Retired;
}

bool KeyRecord::hasPrivateKey() const { return state == KeyState::Pending || state == KeyState::Active; }

const KeyRecord* RingState::find(std::string_view kid) const {
  const auto it = std::ranges::find(keys, kid, &KeyRecord::kid);
  return it == keys.end() ? nullptr : &*it;
}

KeyRecord* RingState::find(std::string_view kid) {
  const auto it = std::ranges::find(keys, kid, &KeyRecord::kid);
  return it == keys.end() ? nullptr : &*it;
}

const KeyRecord* RingState::active() const {
  const auto it = std::ranges::find(keys, KeyState::Active, &KeyRecord::state);
  return it == keys.end() ? nullptr : &*it;
}

KeyRecord* RingState::active() {
  const auto it = std::ranges::find(keys, KeyState::Active, &KeyRecord::state);
  return it == keys.end() ? nullptr : &*it;
}

const KeyRecord* RingState::nextPending() const { return oldestUsablePending(*this, {}); }

KeyRecord* RingState::nextPending() { return oldestUsablePending(*this, {}); }

std::int64_t Policy::retention() const {
  return max_token_lifetime + clock_skew + retirement_grace + kPropagationMargin;
}

std::optional<std::string> Policy::problem() const {
  if (lead_time < 1) {
    return "the lead time must be at least 1 second";
  }
  if (jwks_max_age < 1) {
    return "the JWKS max-age must be at least 1 second";
  }
  // Why (Hydra #2535): a key that signs before every cached copy of the JWKS has expired breaks resource servers.
  if (lead_time < jwks_max_age) {
    return "the lead time (" + std::to_string(lead_time) + "s) must be at least the JWKS max-age (" +
           std::to_string(jwks_max_age) + "s): a key would sign before cached JWKS copies that lack it expire";
  }
  if (rotation_period != 0 && rotation_period <= lead_time) {
    return "the rotation period (" + std::to_string(rotation_period) + "s) must be longer than the lead time (" +
           std::to_string(lead_time) + "s)";
  }
  if (max_token_lifetime < 1 || clock_skew < 0 || retirement_grace < 0 || propagation_delay < 0) {
    return "token lifetime, clock skew, retirement grace and propagation delay must not be negative";
  }
  return std::nullopt;
}

std::optional<std::int64_t> readyAt(const KeyRecord& key, const Policy& policy) {
  if (!key.published_at) {
    return std::nullopt;
  }
  // +1: published_at is the second in which the key was first served, so it may have been served up to a second
  // later than that; requiring strictly more than the lead time keeps the rule exact.
  // + propagation_delay: the other instances of a shared keyring serve the key that much later at most.
  return *key.published_at + policy.lead_time + 1 + policy.propagation_delay;
}

std::optional<std::int64_t> activationAt(const KeyRecord& key, const Policy& policy) {
  const auto ready = readyAt(key, policy);
  if (!ready) {
    return std::nullopt;
  }
  return std::max(*ready, key.activate_after);
}

std::optional<std::int64_t> removalAt(const KeyRecord& key, const Policy& policy) {
  if (key.state != KeyState::Retired || !key.retired_at) {
    return std::nullopt;
  }
  return *key.retired_at + policy.retention();
}

std::expected<PolicyResult, std::string> applyPolicy(RingState& state, const Policy& policy, std::int64_t now,
                                                     const MintKey& mint, const std::set<std::string>& unusable) {
  if (auto problem = invariantProblem(state)) {
    return std::unexpected(*problem);
  }
  PolicyResult result;
  auto& events = result.events;

  // The caller serves every published key right after this call, so "published" starts now.
  for (KeyRecord& k : state.keys) {
    if (k.state == KeyState::Pending && !k.published_at) {
      k.published_at = now;
      result.changed = true;
      events.push_back({"key_published", k.kid,
                        "in the JWKS from now; it may sign from " + formatTime(*readyAt(k, policy)), false});
    }
  }

  for (KeyRecord& k : state.keys) {
    if (const auto at = removalAt(k, policy); at && now >= *at) {
      k.state = KeyState::Removed;
      k.ended_at = now;
      result.changed = true;
      events.push_back({"key_removed", k.kid, "every token it signed has expired; left the JWKS", false});
    }
  }

  // A pending key of an algorithm no longer configured never signed: withdraw it and stage one of the new alg.
  for (KeyRecord& k : state.keys) {
    if (k.state == KeyState::Pending && k.alg != policy.algorithm) {
      k.state = KeyState::Removed;
      k.ended_at = now;
      result.changed = true;
      events.push_back({"key_withdrawn", k.kid,
                        "staged for " + algText(k.alg) + ", but the configured algorithm is now " +
                            algText(policy.algorithm),
                        false});
    }
  }

  auto mintKey = [&](std::int64_t activateAfter) -> std::expected<KeyRecord*, std::string> {
    auto made = mint(policy.algorithm, now);
    if (!made) {
      return std::unexpected("cannot make a new " + algText(policy.algorithm) + " key: " + made.error());
    }
    made->state = KeyState::Pending;
    made->created_at = now;
    made->published_at = now;
    made->activate_after = activateAfter;
    state.keys.push_back(std::move(*made));
    result.changed = true;
    KeyRecord& k = state.keys.back();
    events.push_back({"key_created", k.kid, algText(k.alg) + " key staged and published", false});
    return &k;
  };

  KeyRecord* active = state.active();
  if (active == nullptr) {
    // First start, or the active key was revoked with --force: tokens cannot be issued without a signing key, so
    // one activates at once. A staged key has at least been published for a while; prefer it to a brand-new one.
    const bool firstKey = state.keys.empty();
    KeyRecord* next = oldestUsablePending(state, unusable);
    if (next == nullptr) {
      auto made = mintKey(0);
      if (!made) {
        return std::unexpected(made.error());
      }
      next = *made;
    }
    const bool ready = isReady(*next, policy, now);
    activate(*next, nullptr, policy, now, events);
    if (!firstKey && !ready) {
      events.push_back({"key_activated_early", next->kid,
                        "no key was active, so it signs at once; " + unpublishedWarning(*next, policy, now), true});
    }
    state.rotation_request.reset();
    result.changed = true;
  } else {
    if (state.rotation_request) {
      const RotationRequest request = *state.rotation_request;
      state.rotation_request.reset();
      result.changed = true;
      KeyRecord* pending = oldestUsablePending(state, unusable);
      if (pending == nullptr) {
        auto made = mintKey(0);
        if (!made) {
          return std::unexpected(made.error());
        }
        pending = *made;
        active = state.active();  // push_back may have moved the records
      }
      if (request.immediate) {
        const bool ready = isReady(*pending, policy, now);
        activate(*pending, active, policy, now, events);
        if (!ready) {
          events.push_back({"key_activated_early", pending->kid,
                            "activated at once by `keys rotate --now`: " + immediateKeyWarning(policy), true});
        }
        active = state.active();
      } else {
        pending->activate_after = 0;
      }
    }

    // Stage the successor so that it has been published for the whole lead time when the period ends; a change of
    // the configured algorithm stages one at once.
    const bool algChanged = active->alg != policy.algorithm;
    const std::int64_t rotateAt =
        policy.rotation_period > 0 ? active->activated_at.value_or(now) + policy.rotation_period : 0;
    const bool dueSoon =
        policy.rotation_period > 0 && now >= rotateAt - policy.lead_time - 1 - policy.propagation_delay;
    if ((algChanged || dueSoon) && !hasPending(state)) {
      auto made = mintKey(algChanged ? 0 : rotateAt);
      if (!made) {
        return std::unexpected(made.error());
      }
      active = state.active();
    }

    KeyRecord* next = oldestUsablePending(state, unusable);
    if (next != nullptr) {
      if (const auto at = activationAt(*next, policy); at && now >= *at) {
        activate(*next, active, policy, now, events);
        result.changed = true;
      }
    }
  }

  // Tombstones are for `keys list` only; keep the newest.
  std::vector<const KeyRecord*> tombstones;
  for (const KeyRecord& k : state.keys) {
    if (!k.published()) {
      tombstones.push_back(&k);
    }
  }
  if (tombstones.size() > kMaxTombstones) {
    std::ranges::stable_sort(tombstones, std::greater<>(), [](const KeyRecord* k) { return k->ended_at.value_or(0); });
    std::set<std::string> dropped;
    for (std::size_t i = kMaxTombstones; i < tombstones.size(); ++i) {
      dropped.insert(tombstones[i]->kid);
    }
    std::erase_if(state.keys, [&](const KeyRecord& k) { return dropped.contains(k.kid); });
    result.changed = true;
  }
  return result;
}

std::expected<CommandOutcome, std::string> rotateKeys(RingState& state, const Policy& policy, std::int64_t now,
                                                      bool immediate) {
  if (auto problem = invariantProblem(state)) {
    return refuse("the keyring state is inconsistent: " + *problem);
  }
  CommandOutcome out;
  KeyRecord* pending = state.nextPending();
  if (!immediate) {
    if (pending != nullptr) {
      if (pending->activate_after != 0) {
        pending->activate_after = 0;
        out.changed = true;
      }
      if (const auto at = readyAt(*pending, policy)) {
        out.summary = pending->kid + " is already staged; it becomes the active key " +
                      (now >= *at ? std::string("at the broker's next tick") : "at " + formatTime(*at)) +
                      ", once it has been published for the lead time (" + formatDuration(policy.lead_time) + ")";
      } else {
        out.summary = pending->kid + " is already staged; it becomes the active key " +
                      formatDuration(policy.lead_time) + " after a running smart-broker first publishes it";
        out.needs_broker = true;
      }
      return out;
    }
    if (state.rotation_request) {
      out.summary = "a rotation was already requested at " + formatTime(state.rotation_request->requested_at) +
                    "; smart-broker stages the new key at its next tick";
      out.needs_broker = true;
      return out;
    }
    state.rotation_request = RotationRequest{now, false};
    out.changed = true;
    out.needs_broker = true;
    out.summary = "rotation requested: smart-broker stages and publishes a new " + algText(policy.algorithm) +
                  " key at its next tick; it becomes the active key " + formatDuration(policy.lead_time) +
                  " later (the lead time), when every cached copy of the JWKS has it";
    return out;
  }

  KeyRecord* active = state.active();
  if (pending != nullptr) {
    const bool ready = isReady(*pending, policy, now);
    const std::string previous = active != nullptr ? active->kid : std::string();
    std::vector<Event> ignored;
    activate(*pending, active, policy, now, ignored);
    state.rotation_request.reset();
    out.changed = true;
    out.summary = pending->kid + " is now the active signing key";
    if (!previous.empty()) {
      out.summary += "; " + previous + " is retired and stays published until " + formatTime(now + policy.retention());
    }
    if (!ready) {
      out.warnings.push_back(unpublishedWarning(*pending, policy, now));
    }
    return out;
  }
  state.rotation_request = RotationRequest{now, true};
  out.changed = true;
  out.needs_broker = true;
  out.summary = "immediate rotation requested: smart-broker makes a new " + algText(policy.algorithm) +
                " key and activates it at its next tick" +
                (active != nullptr ? "; " + active->kid + " is then retired" : std::string());
  out.warnings.push_back(immediateKeyWarning(policy));
  return out;
}

std::expected<CommandOutcome, std::string> retireKey(RingState& state, const Policy& policy, std::string_view kid,
                                                     std::int64_t now) {
  if (auto problem = invariantProblem(state)) {
    return refuse("the keyring state is inconsistent: " + *problem);
  }
  KeyRecord* key = state.find(kid);
  if (key == nullptr) {
    return refuse(unknownKid(kid));
  }
  CommandOutcome out;
  switch (key->state) {
    case KeyState::Pending:
      // It never signed, so nothing can depend on it: it leaves the JWKS at once.
      key->state = KeyState::Removed;
      key->ended_at = now;
      out.changed = true;
      out.summary = "withdrew the staged key " + key->kid + " (it never signed); it left the JWKS";
      if (policy.rotation_period > 0) {
        out.summary += "; smart-broker stages another when the schedule needs one";
      }
      return out;
    case KeyState::Active: {
      KeyRecord* next = state.nextPending();
      if (next != nullptr && isReady(*next, policy, now)) {
        const std::string retired = key->kid;
        std::vector<Event> ignored;
        activate(*next, key, policy, now, ignored);
        out.changed = true;
        out.summary = retired + " is retired (stays published until " + formatTime(now + policy.retention()) +
                      "); " + next->kid + " is now the active signing key";
        return out;
      }
      std::string why = key->kid + " is the active signing key and no successor is ready to take over";
      if (next != nullptr) {
        const auto at = readyAt(*next, policy);
        why += ": the staged key " + next->kid +
               (at ? " is ready at " + formatTime(*at) : std::string(" has not been published yet")) +
               " (run `keys rotate` to have it take over as soon as it is safe)";
      } else {
        why += ": run `keys rotate` to stage one (it takes over after the lead time, " +
               formatDuration(policy.lead_time) + "), or `keys rotate --now` if the key must stop signing at once";
      }
      return refuse(why);
    }
    case KeyState::Retired:
      return refuse(key->kid + " is already retired; it leaves the JWKS at " +
                    formatTime(removalAt(*key, policy).value_or(now)) + " (`keys revoke` withdraws it now)");
    case KeyState::Revoked:
      return refuse(key->kid + " was already revoked at " + formatTime(key->ended_at.value_or(0)));
    case KeyState::Removed:
      return refuse(key->kid + " was already removed at " + formatTime(key->ended_at.value_or(0)));
  }
  return refuse("unknown key state");
}

std::expected<CommandOutcome, std::string> revokeKey(RingState& state, const Policy& policy, std::string_view kid,
                                                     std::int64_t now, bool force) {
  if (auto problem = invariantProblem(state)) {
    return refuse("the keyring state is inconsistent: " + *problem);
  }
  KeyRecord* key = state.find(kid);
  if (key == nullptr) {
    return refuse(unknownKid(kid));
  }
  const std::string refetch = "as soon as resource servers refetch the JWKS (Cache-Control max-age " +
                              formatDuration(policy.jwks_max_age) + ")";
  CommandOutcome out;
  switch (key->state) {
    case KeyState::Revoked:
      return refuse(key->kid + " was already revoked at " + formatTime(key->ended_at.value_or(0)));
    case KeyState::Removed:
      return refuse(key->kid + " was already removed at " + formatTime(key->ended_at.value_or(0)) +
                    "; it is not in the JWKS");
    case KeyState::Pending:
      key->state = KeyState::Revoked;
      key->ended_at = now;
      out.changed = true;
      out.summary = "revoked the staged key " + key->kid + " (it never signed); it left the JWKS";
      return out;
    case KeyState::Retired: {
      const std::int64_t lastSigned = key->retired_at.value_or(now);
      key->state = KeyState::Revoked;
      key->ended_at = now;
      out.changed = true;
      out.summary = "revoked " + key->kid + ": removed from the JWKS at once";
      if (now < lastSigned + policy.max_token_lifetime + policy.clock_skew + kPropagationMargin) {
        out.warnings.push_back("tokens " + key->kid + " signed up to " + formatTime(lastSigned) +
                               " that are still valid stop verifying " + refetch);
      }
      return out;
    }
    case KeyState::Active:
      break;
  }

  if (!force) {
    return refuse(key->kid + " is the active signing key. Revoking it removes it from the JWKS at once: every token "
                  "it signed in the last " + formatDuration(policy.max_token_lifetime) +
                  " stops verifying, and its replacement signs before resource servers have seen it. If the key is "
                  "compromised, rerun with --force; for a routine change use `keys rotate`, then `keys retire`.");
  }
  const std::string revoked = key->kid;
  key->state = KeyState::Revoked;
  key->retired_at = now;
  key->ended_at = now;
  out.changed = true;
  out.summary = "revoked the active key " + revoked + ": removed from the JWKS at once";
  out.warnings.push_back("every token " + revoked + " signed stops verifying " + refetch +
                         "; clients must request new tokens");
  state.rotation_request.reset();
  if (KeyRecord* next = state.nextPending(); next != nullptr) {
    const bool ready = isReady(*next, policy, now);
    std::vector<Event> ignored;
    activate(*next, nullptr, policy, now, ignored);
    out.summary += "; the staged key " + next->kid + " is now the active signing key";
    if (!ready) {
      out.warnings.push_back(unpublishedWarning(*next, policy, now));
    }
  } else {
    out.needs_broker = true;
    out.summary += "; smart-broker makes and activates a new key at its next tick (no token can be issued until then)";
    out.warnings.push_back(immediateKeyWarning(policy));
  }
  return out;
}

std::optional<std::string> invariantProblem(const RingState& state) {
  std::set<std::string_view> kids;
  std::size_t active = 0;
  for (const KeyRecord& k : state.keys) {
    if (k.kid.empty()) {
      return "a key has no kid";
    }
    if (!kids.insert(k.kid).second) {
      return "the kid " + k.kid + " appears twice";
    }
    if (k.published() && k.public_jwk.empty()) {
      return k.kid + " has no public key";
    }
    switch (k.state) {
      case KeyState::Active:
        ++active;
        if (!k.activated_at) {
          return k.kid + " is active but has no activation time";
        }
        break;
      case KeyState::Retired:
        if (!k.retired_at) {
          return k.kid + " is retired but has no retirement time";
        }
        break;
      case KeyState::Revoked:
      case KeyState::Removed:
        if (!k.ended_at) {
          return k.kid + " is " + std::string(keyStateName(k.state)) + " but has no end time";
        }
        break;
      case KeyState::Pending:
        break;
    }
  }
  // Exactly one key signs: two would let a resource server see tokens from a key it has not been told is current.
  if (active > 1) {
    return std::to_string(active) + " keys are active (at most one may be)";
  }
  return std::nullopt;
}

std::string formatTime(std::int64_t epochSeconds) {
  const auto t = static_cast<std::time_t>(epochSeconds);
  std::tm tm{};
  if (::gmtime_r(&t, &tm) == nullptr) {
    return std::to_string(epochSeconds);
  }
  std::array<char, 32> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::string(buf.data(), n);
}

std::string formatDuration(std::int64_t seconds) {
  if (seconds < 0) {
    return "-" + formatDuration(-seconds);
  }
  if (seconds < 120) {
    return std::to_string(seconds) + "s";
  }
  struct Unit {
    std::int64_t size;
    const char* name;
  };
  constexpr std::array<Unit, 4> kUnits{{{86400, "d"}, {3600, "h"}, {60, "m"}, {1, "s"}}};
  std::string out;
  int parts = 0;
  for (const Unit& u : kUnits) {
    if (seconds >= u.size && parts < 2) {
      out += std::to_string(seconds / u.size) + u.name;
      seconds %= u.size;
      ++parts;
    } else if (parts > 0) {
      break;
    }
  }
  return out;
}

}  // namespace smartbroker::keyring
