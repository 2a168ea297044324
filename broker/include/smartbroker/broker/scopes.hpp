// SMART `system/` scopes (v1, v2 and granular): parsing, semantic containment and the grant computation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smartbroker::broker {

/// Permission bits of a SMART v2 scope, in the canonical order c r u d s.
enum Permission : std::uint8_t {
  kCreate = 1U << 0,
  kRead = 1U << 1,
  kUpdate = 1U << 2,
  kDelete = 1U << 3,
  kSearch = 1U << 4,
  kAllPermissions = kCreate | kRead | kUpdate | kDelete | kSearch,
};

/// One parsed `system/` scope. v1 `.read` is stored as r|s, `.write` as c|u|d, `.*` as c|r|u|d|s.
struct SystemScope {
  std::string resource;                                    ///< FHIR resource type, or "*"
  std::uint8_t permissions = 0;                            ///< non-zero
  std::vector<std::pair<std::string, std::string>> constraints;  ///< granular ?k=v&..., sorted, unique
  bool v1 = false;                                         ///< written in v1 syntax

  /// True when every access this scope allows is also allowed by `other` (semantic containment:
  /// `system/*.cruds` contains `system/Observation.rs?category=laboratory`).
  bool containedIn(const SystemScope& other) const;

  /// The scope in canonical syntax: v1 (`system/Observation.read`) when `v1` is set and the permissions are
  /// exactly read, write or *, else v2 (`system/Observation.rs?category=laboratory`).
  std::string str() const;

  bool operator==(const SystemScope&) const = default;
};

/// Parses one scope string. nullopt for anything that is not a well-formed `system/` scope: other contexts
/// (`patient/`, `user/`), `launch`, `openid`, v2 letters out of order, repeated or unknown, empty permissions,
/// v1 with constraints, malformed constraints, resource names that are not `*` or `[A-Z][A-Za-z]*`,
/// characters outside RFC 6749 §3.3 scope-token, or more than 256 bytes.
std::optional<SystemScope> parseSystemScope(std::string_view scope);

/// The outcome of a scope request.
struct ScopeGrant {
  std::vector<SystemScope> granted;   ///< what the token carries, deduplicated, in request order
  std::vector<std::string> permissions;  ///< broker permissions granted, deduplicated, in request order
  std::vector<std::string> dropped;   ///< requested scopes that were not (fully) granted, for the log
  /// Space-separated `granted`, each rendered with str(), then `permissions`: the token's and the response's
  /// `scope`.
  std::string scopeString() const;
};

/// Grants the requested (space-separated) scopes against a system's pre-authorization.
/// Each requested scope contributes its intersection with each pre-authorized scope (downscoping: a
/// request for `system/*.rs` against `system/Observation.rs` yields `system/Observation.rs`; a request for
/// `system/Observation.cruds` against `system/Observation.rs` yields `system/Observation.rs`). Results
/// contained in another granted result are dropped. A result keeps v1 syntax when the request was v1 and
/// the permissions remain expressible in v1. Unparseable requested scopes are dropped, never granted.
/// `maxScopes` bounds the work: further requested scopes are dropped.
ScopeGrant grantScopes(std::string_view requested, const std::vector<SystemScope>& preauthorized,
                       std::size_t maxScopes = 64);

/// The same, with broker permissions: scopes outside SMART's grammar that grant use of the broker's own endpoints
/// (config server.introspection_scope, server.consent_admin_scope). A requested scope equal to one of
/// `preauthorizedPermissions` is granted as it is; nothing else can grant a permission, and a permission that is
/// not pre-authorized is dropped like any unparseable scope. Permissions do not count against `maxScopes`.
ScopeGrant grantScopes(std::string_view requested, const std::vector<SystemScope>& preauthorized,
                       const std::vector<std::string>& preauthorizedPermissions, std::size_t maxScopes);

/// True when the space-separated `scope` contains `word` as a whole scope token.
bool scopeHas(std::string_view scope, std::string_view word);

}  // namespace smartbroker::broker
