// SMART `system/` scopes (v1, v2 and granular): parsing, semantic containment and the grant computation.
#include "smartbroker/broker/scopes.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace smartbroker::broker {
namespace {

using Constraints = std::vector<std::pair<std::string, std::string>>;

constexpr std::size_t kMaxScopeBytes = 256;
constexpr std::size_t kMaxResourceBytes = 64;
constexpr std::string_view kSystemPrefix = "system/";

constexpr std::uint8_t kV1Read = kRead | kSearch;
constexpr std::uint8_t kV1Write = kCreate | kUpdate | kDelete;

/// The v2 letters in canonical order, each with its bit.
constexpr std::array<std::pair<char, std::uint8_t>, 5> kLetters{{
    {'c', kCreate},
    {'r', kRead},
    {'u', kUpdate},
    {'d', kDelete},
    {'s', kSearch},
}};

/// RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), i.e. printable ASCII without space, `"`, `\`.
bool isScopeTokenChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u == 0x21 || (u >= 0x23 && u <= 0x5B) || (u >= 0x5D && u <= 0x7E);
}

bool isUpper(char c) { return c >= 'A' && c <= 'Z'; }
bool isLower(char c) { return c >= 'a' && c <= 'z'; }
bool isDigit(char c) { return c >= '0' && c <= '9'; }

/// `*` or a FHIR resource type name: `[A-Z][A-Za-z]{0,63}`.
bool isResource(std::string_view resource) {
  if (resource == "*") {
    return true;
  }
  if (resource.empty() || resource.size() > kMaxResourceBytes || !isUpper(resource.front())) {
    return false;
  }
  return std::ranges::all_of(resource, [](char c) { return isUpper(c) || isLower(c); });
}

/// A FHIR search parameter name, optionally with a modifier or chain: `[A-Za-z0-9_.:-]+`
/// (`category`, `code:in`, `_security`, `subject.identifier`, `value-quantity`).
bool isConstraintKey(std::string_view key) {
  if (key.empty()) {
    return false;
  }
  return std::ranges::all_of(key, [](char c) {
    return isUpper(c) || isLower(c) || isDigit(c) || c == '_' || c == '.' || c == ':' || c == '-';
  });
}

/// Any non-empty run of scope-token characters other than `&` and `=` (the separators): a value may carry a
/// code system URL and a `|` (`http://terminology.hl7.org/CodeSystem/observation-category|laboratory`).
/// The caller has already checked the scope-token alphabet.
bool isConstraintValue(std::string_view value) {
  return !value.empty() && value.find_first_of("&=") == std::string_view::npos;
}

/// v1 (`read`, `write`, `*`) or v2 (a non-empty subsequence of `cruds`, canonical order, no repeats).
struct ParsedPermissions {
  std::uint8_t bits = 0;
  bool v1 = false;
};

std::optional<ParsedPermissions> parsePermissions(std::string_view text) {
  if (text == "read") {
    return ParsedPermissions{kV1Read, true};
  }
  if (text == "write") {
    return ParsedPermissions{kV1Write, true};
  }
  if (text == "*") {
    return ParsedPermissions{kAllPermissions, true};
  }
  if (text.empty()) {
    return std::nullopt;
  }
  // Walk the canonical sequence once: each letter must appear at or after the previous one's position,
  // which refuses out-of-order (`sr`), repeated (`rr`) and unknown (`x`) letters in one rule.
  std::uint8_t bits = 0;
  std::size_t next = 0;
  for (const char c : text) {
    while (next < kLetters.size() && kLetters[next].first != c) {
      ++next;
    }
    if (next == kLetters.size()) {
      return std::nullopt;
    }
    bits = static_cast<std::uint8_t>(bits | kLetters[next].second);
    ++next;
  }
  return ParsedPermissions{bits, false};
}

/// `k=v(&k=v)*`, every key unique; the result is sorted by key.
std::optional<Constraints> parseConstraints(std::string_view query) {
  Constraints out;
  while (true) {
    const std::size_t amp = query.find('&');
    const std::string_view part = query.substr(0, amp);
    const std::size_t eq = part.find('=');
    if (eq == std::string_view::npos) {
      return std::nullopt;
    }
    const std::string_view key = part.substr(0, eq);
    const std::string_view value = part.substr(eq + 1);
    if (!isConstraintKey(key) || !isConstraintValue(value)) {
      return std::nullopt;
    }
    // A repeated key is refused rather than interpreted: FHIR would AND the two values, and a grant that
    // silently kept only one of them would be broader than what was written.
    if (std::ranges::any_of(out, [key](const auto& kv) { return kv.first == key; })) {
      return std::nullopt;
    }
    out.emplace_back(std::string(key), std::string(value));
    if (amp == std::string_view::npos) {
      break;
    }
    query.remove_prefix(amp + 1);
  }
  std::ranges::sort(out);
  return out;
}

bool v1Expressible(std::uint8_t permissions) {
  return permissions == kV1Read || permissions == kV1Write || permissions == kAllPermissions;
}

bool hasConstraint(const Constraints& constraints, const std::pair<std::string, std::string>& kv) {
  return std::ranges::find(constraints, kv) != constraints.end();
}

/// The conjunction of two constraint sets; nullopt when both constrain one key to different values
/// (the AND of two values is not representable here, so the conservative answer is "nothing").
std::optional<Constraints> mergeConstraints(const Constraints& a, const Constraints& b) {
  Constraints out = a;
  for (const auto& kv : b) {
    const auto it = std::ranges::find_if(out, [&kv](const auto& o) { return o.first == kv.first; });
    if (it == out.end()) {
      out.push_back(kv);
    } else if (it->second != kv.second) {
      return std::nullopt;
    }
  }
  std::ranges::sort(out);
  return out;
}

/// The largest scope contained in both `requested` and `allowed`, or nullopt when they share no access.
std::optional<SystemScope> intersect(const SystemScope& requested, const SystemScope& allowed) {
  SystemScope out;
  if (allowed.resource == "*" || allowed.resource == requested.resource) {
    out.resource = requested.resource;
  } else if (requested.resource == "*") {
    out.resource = allowed.resource;
  } else {
    return std::nullopt;
  }
  out.permissions = static_cast<std::uint8_t>(requested.permissions & allowed.permissions);
  if (out.permissions == 0) {
    return std::nullopt;
  }
  auto constraints = mergeConstraints(requested.constraints, allowed.constraints);
  if (!constraints) {
    return std::nullopt;
  }
  out.constraints = std::move(*constraints);
  // v1 syntax is echoed only where it can say exactly what was granted; otherwise the v2 form is used.
  out.v1 = requested.v1 && out.constraints.empty() && v1Expressible(out.permissions);
  return out;
}

/// True when the union of `parts` (each already contained in `whole`) allows everything `whole` allows.
/// Only a part with the same resource and the same constraints covers any of `whole` fully on those axes;
/// such parts can together cover the permissions (`.r` and `.s` cover `.rs`).
bool covers(const std::vector<SystemScope>& parts, const SystemScope& whole) {
  std::uint8_t bits = 0;
  for (const auto& part : parts) {
    if (part.resource == whole.resource && part.constraints == whole.constraints) {
      bits = static_cast<std::uint8_t>(bits | part.permissions);
    }
  }
  return (whole.permissions & ~bits) == 0;
}

}  // namespace

bool SystemScope::containedIn(const SystemScope& other) const {
  if (other.resource != "*" && other.resource != resource) {
    return false;
  }
  if ((permissions & ~other.permissions) != 0) {
    return false;
  }
  // A constraint narrows: `other` contains this only if this is at least as narrow on every key `other` uses.
  return std::ranges::all_of(other.constraints, [this](const auto& kv) { return hasConstraint(constraints, kv); });
}

std::string SystemScope::str() const {
  std::string out{kSystemPrefix};
  out += resource;
  out += '.';
  // v1 has no syntax for constraints, so a constrained scope is always rendered in v2.
  if (v1 && constraints.empty() && v1Expressible(permissions)) {
    if (permissions == kV1Read) {
      out += "read";
    } else if (permissions == kV1Write) {
      out += "write";
    } else {
      out += '*';
    }
    return out;
  }
  for (const auto& [letter, bit] : kLetters) {
    if ((permissions & bit) != 0) {
      out += letter;
    }
  }
  char sep = '?';
  for (const auto& [key, value] : constraints) {
    out += sep;
    out += key;
    out += '=';
    out += value;
    sep = '&';
  }
  return out;
}

std::optional<SystemScope> parseSystemScope(std::string_view scope) {
  if (scope.empty() || scope.size() > kMaxScopeBytes) {
    return std::nullopt;
  }
  // The alphabet is checked over the whole token first, so every later rule sees only printable ASCII.
  if (!std::ranges::all_of(scope, isScopeTokenChar)) {
    return std::nullopt;
  }
  // Only `system/` scopes exist for client_credentials; `patient/`, `user/`, `launch`, `openid`, ... fail here.
  if (!scope.starts_with(kSystemPrefix)) {
    return std::nullopt;
  }
  std::string_view rest = scope.substr(kSystemPrefix.size());

  std::optional<std::string_view> query;
  if (const std::size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }

  const std::size_t dot = rest.find('.');
  if (dot == std::string_view::npos) {
    return std::nullopt;
  }
  const std::string_view resource = rest.substr(0, dot);
  if (!isResource(resource)) {
    return std::nullopt;
  }
  const auto permissions = parsePermissions(rest.substr(dot + 1));
  if (!permissions) {
    return std::nullopt;
  }

  SystemScope out;
  out.resource = std::string(resource);
  out.permissions = permissions->bits;
  out.v1 = permissions->v1;
  if (query) {
    // Granular scopes are a v2 feature; a v1 scope with a query is malformed, not "v1 plus a filter".
    if (out.v1) {
      return std::nullopt;
    }
    auto constraints = parseConstraints(*query);
    if (!constraints) {
      return std::nullopt;
    }
    out.constraints = std::move(*constraints);
  }
  return out;
}

std::string ScopeGrant::scopeString() const {
  std::string out;
  for (const auto& scope : granted) {
    if (!out.empty()) {
      out += ' ';
    }
    out += scope.str();
  }
  for (const auto& permission : permissions) {
    if (!out.empty()) {
      out += ' ';
    }
    out += permission;
  }
  return out;
}

ScopeGrant grantScopes(std::string_view requested, const std::vector<SystemScope>& preauthorized,
                       std::size_t maxScopes) {
  return grantScopes(requested, preauthorized, {}, maxScopes);
}

ScopeGrant grantScopes(std::string_view requested, const std::vector<SystemScope>& preauthorized,
                       const std::vector<std::string>& preauthorizedPermissions, std::size_t maxScopes) {
  ScopeGrant grant;
  std::vector<SystemScope> candidates;
  std::size_t seen = 0;

  // RFC 6749 §3.3 delimits with single spaces; a run of spaces is tolerated as one separator.
  std::size_t pos = 0;
  while (pos < requested.size()) {
    if (requested[pos] == ' ') {
      ++pos;
      continue;
    }
    const std::size_t end = std::min(requested.find(' ', pos), requested.size());
    const std::string_view text = requested.substr(pos, end - pos);
    pos = end;

    // A broker permission is granted by exact name only: no wildcard, no containment, no downscoping.
    if (std::ranges::find(preauthorizedPermissions, text) != preauthorizedPermissions.end()) {
      if (std::ranges::find(grant.permissions, text) == grant.permissions.end()) {
        grant.permissions.emplace_back(text);
      }
      continue;
    }
    // The work below is bounded by maxScopes x preauthorized.size(); scopes past the bound are not
    // even parsed.
    if (seen++ >= maxScopes) {
      grant.dropped.emplace_back(text);
      continue;
    }
    const auto scope = parseSystemScope(text);
    if (!scope) {
      grant.dropped.emplace_back(text);
      continue;
    }
    // Downscoping: each pre-authorization grants the part of the request it allows, never more.
    std::vector<SystemScope> parts;
    for (const auto& allowed : preauthorized) {
      auto part = intersect(*scope, allowed);
      // A merged constraint set can outgrow the scope-token limit; such a scope could not be parsed back by
      // whoever reads the token, so it is not granted.
      if (part && part->str().size() <= kMaxScopeBytes) {
        parts.push_back(std::move(*part));
      }
    }
    // A request granted only in part is still logged, so an operator can see what was narrowed.
    if (parts.empty() || !covers(parts, *scope)) {
      grant.dropped.emplace_back(text);
    }
    std::ranges::move(parts, std::back_inserter(candidates));
  }

  // Keep a candidate unless another one strictly contains it, or an equivalent one came earlier: the
  // result is the minimal set in request order, independent of anything but the inputs.
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    bool redundant = false;
    for (std::size_t j = 0; j < candidates.size() && !redundant; ++j) {
      if (i == j || !candidates[i].containedIn(candidates[j])) {
        continue;
      }
      const bool equivalent = candidates[j].containedIn(candidates[i]);
      redundant = !equivalent || j < i;
    }
    if (!redundant) {
      grant.granted.push_back(candidates[i]);
    }
  }
  return grant;
}

bool scopeHas(std::string_view scope, std::string_view word) {
  std::size_t start = 0;
  while (start <= scope.size()) {
    std::size_t end = scope.find(' ', start);
    if (end == std::string_view::npos) {
      end = scope.size();
    }
    if (scope.substr(start, end - start) == word) {
      return true;
    }
    start = end + 1;
  }
  return false;
}

}  // namespace smartbroker::broker
