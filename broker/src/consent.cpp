// Consent: FHIR R4 Consent mapping, the issuance and introspection decisions, the cached service and the notifier.
#include "smartbroker/broker/consent.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <ctime>

#include "json_text.hpp"

namespace smartbroker::broker {

namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

/// JSON nesting a Consent needs (provision.actor.reference.identifier, extension values) with room to spare.
constexpr std::size_t kMaxJsonDepth = 32;

std::optional<std::string> stringAt(const Object& obj, const std::string& name) {
  if (!obj.has(name)) {
    return std::nullopt;
  }
  const Poco::Dynamic::Var value = obj.get(name);
  if (!value.isString()) {
    return std::nullopt;
  }
  return value.extract<std::string>();
}

Object::Ptr objectAt(const Object& obj, const std::string& name) {
  return obj.has(name) ? obj.getObject(name) : nullptr;
}
Array::Ptr arrayAt(const Object& obj, const std::string& name) { return obj.has(name) ? obj.getArray(name) : nullptr; }

/// A structural member present with the wrong JSON type: refused rather than read as absent (fail closed).
bool wrongType(const Object& obj, const std::string& name, bool array) {
  return obj.has(name) && !(array ? obj.isArray(name) : obj.isObject(name));
}

bool isFhirId(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::ranges::all_of(id, [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
         });
}

/// Reads exactly `n` digits at `at`.
std::optional<int> digits(std::string_view s, std::size_t at, std::size_t n) {
  if (at + n > s.size()) {
    return std::nullopt;
  }
  int value = 0;
  for (std::size_t i = at; i < at + n; ++i) {
    if (s[i] < '0' || s[i] > '9') {
      return std::nullopt;
    }
    value = value * 10 + (s[i] - '0');
  }
  return value;
}

bool hasGranteeRole(const Object& actor) {
  const Object::Ptr role = objectAt(actor, "role");
  const Array::Ptr codings = role ? arrayAt(*role, "coding") : nullptr;
  if (!codings) {
    return false;
  }
  for (std::size_t i = 0; i < codings->size(); ++i) {
    const Object::Ptr coding = codings->getObject(static_cast<unsigned>(i));
    if (coding && stringAt(*coding, "system") == std::string(kParticipationTypeSystem) &&
        stringAt(*coding, "code") == std::string(kGranteeRoleCode)) {
      return true;
    }
  }
  return false;
}

std::expected<ConsentRecord, std::string> mapConsent(const Object& resource, const ConsentMapping& mapping) {
  if (stringAt(resource, "resourceType") != std::string("Consent")) {
    return std::unexpected("resourceType must be Consent");
  }
  ConsentRecord record;
  const auto id = stringAt(resource, "id");
  if (!id || !isFhirId(*id)) {
    return std::unexpected("id must be a FHIR id of 1 to 64 characters A-Z a-z 0-9 - .");
  }
  record.id = *id;
  const auto statusCode = stringAt(resource, "status");
  const auto status = statusCode ? consentStatusFromCode(*statusCode) : std::nullopt;
  if (!status) {
    return std::unexpected(
        "status must be one of draft proposed active rejected inactive entered-in-error (FHIR R4 Consent.status)");
  }
  record.status = *status;
  if (wrongType(resource, "extension", true) || wrongType(resource, "provision", false)) {
    return std::unexpected("extension must be an array and provision an object");
  }

  if (const Array::Ptr extensions = arrayAt(resource, "extension")) {
    for (std::size_t i = 0; i < extensions->size(); ++i) {
      const Object::Ptr ext = extensions->getObject(static_cast<unsigned>(i));
      if (!ext || stringAt(*ext, "url") != std::string(kPermittedScopeExtension)) {
        continue;
      }
      const auto value = stringAt(*ext, "valueString");
      auto scope = value ? parseSystemScope(*value) : std::nullopt;
      if (!scope) {
        return std::unexpected("a permitted-scope extension must have a valueString that is a valid system/ scope");
      }
      if (!record.permitted_scopes) {
        record.permitted_scopes.emplace();
      }
      record.permitted_scopes->push_back(std::move(*scope));
    }
  }

  const Object::Ptr provision = objectAt(resource, "provision");
  if (!provision) {
    return record;  // nobody is named: a valid resource that authorizes no system
  }
  // Why: nested provisions are exceptions (often deny) to the base rule; ignoring them would grant too much.
  if (provision->has("provision")) {
    return std::unexpected("nested provisions are not supported");
  }
  if (wrongType(*provision, "period", false) || wrongType(*provision, "actor", true)) {
    return std::unexpected("provision.period must be an object and provision.actor an array");
  }
  if (const auto type = stringAt(*provision, "type")) {
    if (*type != "permit" && *type != "deny") {
      return std::unexpected("provision.type must be permit or deny");
    }
    record.permit = *type == "permit";
  }
  if (const Object::Ptr period = objectAt(*provision, "period")) {
    if (const auto start = stringAt(*period, "start")) {
      record.not_before = parseFhirDateTime(*start, false);
      if (!record.not_before) {
        return std::unexpected("provision.period.start is not a FHIR dateTime");
      }
    }
    if (const auto end = stringAt(*period, "end")) {
      record.not_after = parseFhirDateTime(*end, true);
      if (!record.not_after) {
        return std::unexpected("provision.period.end is not a FHIR dateTime");
      }
    }
  }
  if (const Array::Ptr actors = arrayAt(*provision, "actor")) {
    for (std::size_t i = 0; i < actors->size(); ++i) {
      const Object::Ptr actor = actors->getObject(static_cast<unsigned>(i));
      if (!actor || !hasGranteeRole(*actor)) {
        continue;
      }
      const Object::Ptr reference = objectAt(*actor, "reference");
      const Object::Ptr identifier = reference ? objectAt(*reference, "identifier") : nullptr;
      if (!identifier || stringAt(*identifier, "system") != mapping.grantee_identifier_system) {
        continue;  // a literal reference (Device/123) is not resolved: grantees are named by identifier
      }
      if (const auto value = stringAt(*identifier, "value"); value && !value->empty()) {
        if (std::ranges::find(record.grantees, *value) == record.grantees.end()) {
          record.grantees.push_back(*value);
        }
      }
    }
  }
  return record;
}

std::vector<std::string_view> scopeTokens(std::string_view scope) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (start < scope.size()) {
    const std::size_t end = std::min(scope.find(' ', start), scope.size());
    if (end > start) {
      out.push_back(scope.substr(start, end - start));
    }
    start = end + 1;
  }
  return out;
}

std::string describe(const ConsentLookup& l, std::int64_t now) {
  switch (l.outcome) {
    case ConsentLookup::Outcome::Found:
      if (!l.record->activeAt(now)) {
        return l.id + ":" + std::string(consentStatusCode(l.record->status)) +
               (l.record->status == ConsentStatus::Active ? "_outside_period" : "");
      }
      return l.id + (l.record->permit ? ":not_grantee" : ":deny");
    case ConsentLookup::Outcome::NotFound: return l.id + ":not_found";
    case ConsentLookup::Outcome::Gone: return l.id + ":gone";
    case ConsentLookup::Outcome::Failed: return l.id + ":unavailable(" + l.detail + ")";
  }
  return l.id;
}

std::string instant(std::int64_t seconds) {
  const auto t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  const std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return std::string(text, n);
}

class StoreConsentSource final : public ConsentSource {
 public:
  StoreConsentSource(StateStore& store, ConsentMapping mapping) : store_(store), mapping_(std::move(mapping)) {}
  ConsentLookup fetch(const std::string& id) override {
    ConsentLookup out;
    out.id = id;
    const auto found = store_.findConsent(id);
    if (!found) {
      out.detail = found.error().detail;
      return out;
    }
    if (!*found) {
      out.outcome = ConsentLookup::Outcome::NotFound;
      return out;
    }
    auto record = parseConsentResource((*found)->resource, mapping_);
    if (!record) {
      out.detail = "stored resource: " + record.error();
      return out;
    }
    out.outcome = ConsentLookup::Outcome::Found;
    out.record = std::move(*record);
    return out;
  }

 private:
  StateStore& store_;
  ConsentMapping mapping_;
};

}  // namespace

std::optional<ConsentStatus> consentStatusFromCode(std::string_view code) {
  for (const ConsentStatus s : {ConsentStatus::Draft, ConsentStatus::Proposed, ConsentStatus::Active,
                                ConsentStatus::Rejected, ConsentStatus::Inactive, ConsentStatus::EnteredInError}) {
    if (consentStatusCode(s) == code) {
      return s;
    }
  }
  return std::nullopt;
}

std::string_view consentStatusCode(ConsentStatus status) {
  switch (status) {
    case ConsentStatus::Draft: return "draft";
    case ConsentStatus::Proposed: return "proposed";
    case ConsentStatus::Active: return "active";
    case ConsentStatus::Rejected: return "rejected";
    case ConsentStatus::Inactive: return "inactive";
    case ConsentStatus::EnteredInError: return "entered-in-error";
  }
  return "unknown";
}

bool ConsentRecord::activeAt(std::int64_t now) const {
  return status == ConsentStatus::Active && (!not_before || now >= *not_before) && (!not_after || now < *not_after);
}

bool ConsentRecord::authorizes(std::string_view clientId, std::int64_t now) const {
  return permit && activeAt(now) && std::ranges::find(grantees, clientId) != grantees.end();
}

bool ConsentLookup::withdrawnAt(std::int64_t now) const {
  return outcome == Outcome::Gone || (outcome == Outcome::Found && !record->activeAt(now));
}

std::optional<std::int64_t> parseFhirDateTime(std::string_view s, bool endOfPeriod) {
  using namespace std::chrono;
  // -1 unless `c` is at `at` and `n` digits follow it (c == 0: no separator).
  const auto field = [&s](std::size_t at, char c, std::size_t n) -> int {
    if (c != 0) {
      if (at >= s.size() || s[at] != c) {
        return -1;
      }
      ++at;
    }
    return digits(s, at, n).value_or(-1);
  };
  const int y = field(0, 0, 4);
  if (y < 0) {
    return std::nullopt;
  }
  int month = 1;
  int day = 1;
  enum class Precision : std::uint8_t { Year, Month, Day, Second } precision = Precision::Year;
  std::size_t at = 4;
  if (at < s.size()) {
    month = field(at, '-', 2);
    precision = Precision::Month;
    at += 3;
  }
  if (month >= 0 && at < s.size()) {
    day = field(at, '-', 2);
    precision = Precision::Day;
    at += 3;
  }
  if (month < 0 || day < 0) {
    return std::nullopt;
  }
  const year_month_day date{year{y}, std::chrono::month{static_cast<unsigned>(month)},
                            std::chrono::day{static_cast<unsigned>(day)}};
  if (!date.ok()) {
    return std::nullopt;
  }
  std::int64_t seconds = duration_cast<std::chrono::seconds>(sys_days{date}.time_since_epoch()).count();
  if (at < s.size()) {
    // FHIR: when a time is given, seconds and a zone are required; fractions are allowed.
    const int hh = field(at, 'T', 2);
    const int mm = field(at + 3, ':', 2);
    const int ss = field(at + 6, ':', 2);
    if (hh < 0 || mm < 0 || ss < 0 || hh > 23 || mm > 59 || ss > 60) {
      return std::nullopt;
    }
    at += 9;
    if (at < s.size() && s[at] == '.') {
      ++at;
      const std::size_t first = at;
      while (at < s.size() && s[at] >= '0' && s[at] <= '9') {
        ++at;
      }
      if (at == first) {
        return std::nullopt;
      }
    }
    std::int64_t offset = 0;
    if (at < s.size() && s[at] == 'Z') {
      ++at;
    } else if (at < s.size() && (s[at] == '+' || s[at] == '-')) {
      const int oh = field(at + 1, 0, 2);
      const int om = field(at + 3, ':', 2);
      if (oh < 0 || om < 0 || oh > 14 || om > 59) {
        return std::nullopt;
      }
      offset = (s[at] == '+' ? 1 : -1) * (oh * 3600 + om * 60);
      at += 6;
    } else {
      return std::nullopt;
    }
    if (at != s.size()) {
      return std::nullopt;
    }
    seconds += hh * 3600 + mm * 60 + std::min(ss, 59) - offset;
    precision = Precision::Second;
  }
  if (!endOfPeriod) {
    return seconds;
  }
  switch (precision) {
    case Precision::Year:
      return duration_cast<std::chrono::seconds>(sys_days{year{y + 1} / January / 1}.time_since_epoch()).count();
    case Precision::Month:
      return duration_cast<std::chrono::seconds>(sys_days{date + months{1}}.time_since_epoch()).count();
    case Precision::Day: return seconds + 86400;
    case Precision::Second: return seconds + 1;
  }
  return std::nullopt;
}

std::expected<ConsentRecord, std::string> parseConsentResource(std::string_view json, const ConsentMapping& mapping) {
  if (json.size() > mapping.max_bytes) {
    return std::unexpected("the Consent resource is too large");
  }
  Object::Ptr resource;
  try {
    Poco::JSON::Parser parser;
    parser.setDepth(kMaxJsonDepth);
    const Poco::Dynamic::Var parsed = parser.parse(std::string(json));
    if (parsed.type() != typeid(Object::Ptr)) {
      return std::unexpected("the body must be a JSON object (a FHIR R4 Consent resource)");
    }
    resource = parsed.extract<Object::Ptr>();
    return mapConsent(*resource, mapping);
  } catch (const Poco::Exception&) {
    // A member of the wrong JSON type (getObject on a string) lands here too.
    return std::unexpected("the body is not a well-formed FHIR R4 Consent resource in JSON");
  } catch (const std::exception&) {
    return std::unexpected("the body is not a well-formed FHIR R4 Consent resource in JSON");
  }
}

std::unique_ptr<ConsentSource> makeStoreConsentSource(StateStore& store, ConsentMapping mapping) {
  return std::make_unique<StoreConsentSource>(store, std::move(mapping));
}

std::expected<ConsentGrant, Denial> decideIssuance(std::string_view clientId, std::string_view grantedScope,
                                                   const std::vector<ConsentLookup>& candidates, std::int64_t now,
                                                   std::size_t maxScopes) {
  std::vector<const ConsentRecord*> authorizing;
  bool failed = false;
  std::string why;
  for (const ConsentLookup& l : candidates) {
    if (l.outcome == ConsentLookup::Outcome::Found && l.record->authorizes(clientId, now)) {
      authorizing.push_back(&*l.record);
      continue;
    }
    failed = failed || l.outcome == ConsentLookup::Outcome::Failed;
    why += why.empty() ? "" : " ";
    why += describe(l, now);
  }
  if (authorizing.empty()) {
    // Fail closed either way; a source outage is reported as such so that integrators retry instead of asking
    // the consent platform for a consent that exists.
    return std::unexpected(Denial{failed ? DenyReason::ConsentUnavailable : DenyReason::ConsentRequired,
                                  why.empty() ? "no candidate consent" : why, std::string(clientId)});
  }

  std::string systemPart;
  std::string others;
  for (const std::string_view token : scopeTokens(grantedScope)) {
    std::string& into = parseSystemScope(token) ? systemPart : others;
    into += into.empty() ? "" : " ";
    into += token;
  }
  const bool unlimited = std::ranges::any_of(authorizing, [](const ConsentRecord* r) { return !r->permitted_scopes; });
  if (!unlimited && !systemPart.empty()) {
    std::vector<SystemScope> permitted;
    for (const ConsentRecord* r : authorizing) {
      permitted.insert(permitted.end(), r->permitted_scopes->begin(), r->permitted_scopes->end());
    }
    const ScopeGrant limited = grantScopes(systemPart, permitted, maxScopes);
    if (limited.granted.empty()) {
      return std::unexpected(
          Denial{DenyReason::ConsentScopeNotPermitted, "granted " + systemPart.substr(0, 200), std::string(clientId)});
    }
    systemPart = limited.scopeString();
  }
  ConsentGrant grant;
  grant.scope = systemPart;
  if (!others.empty()) {
    grant.scope += grant.scope.empty() ? "" : " ";
    grant.scope += others;
  }
  for (const ConsentRecord* r : authorizing) {
    if (std::ranges::find(grant.consent_ids, r->id) == grant.consent_ids.end()) {
      grant.consent_ids.push_back(r->id);
    }
  }
  return grant;
}

bool consentsStillAuthorize(std::string_view clientId, std::string_view tokenScope,
                            const std::vector<ConsentLookup>& linked, std::int64_t now) {
  std::vector<SystemScope> permitted;
  bool unlimited = linked.empty();
  for (const ConsentLookup& l : linked) {
    // Conservative: the token was granted under all of them, so each must still hold.
    if (l.outcome != ConsentLookup::Outcome::Found || !l.record->authorizes(clientId, now)) {
      return false;
    }
    if (!l.record->permitted_scopes) {
      unlimited = true;
    } else {
      permitted.insert(permitted.end(), l.record->permitted_scopes->begin(), l.record->permitted_scopes->end());
    }
  }
  if (unlimited) {
    return true;
  }
  for (const std::string_view token : scopeTokens(tokenScope)) {
    const auto scope = parseSystemScope(token);
    if (scope && std::ranges::none_of(permitted, [&](const SystemScope& p) { return scope->containedIn(p); })) {
      return false;  // the consent was narrowed after issuance
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------- ConsentService

ConsentService::ConsentService(ConsentOptions options, std::unique_ptr<ConsentSource> source, StateStore& store,
                               TokenState& state, const Clock& clock, const Log& log)
    : options_(std::move(options)),
      mapping_{options_.settings.grantee_identifier_system, options_.settings.max_resource_bytes},
      local_(source == nullptr),
      source_(source ? std::move(source) : makeStoreConsentSource(store, mapping_)),
      store_(store),
      state_(state),
      clock_(clock),
      log_(log) {}

void ConsentService::remember(const ConsentLookup& lookup, std::int64_t now) const {
  std::lock_guard lock(mutex_);
  if (cache_.size() >= options_.cache_capacity && cache_.find(lookup.id) == cache_.end()) {
    cache_.clear();  // bounded; entries live seconds, so starting over costs little
  }
  cache_[lookup.id] = CacheEntry{lookup, now};
}

ConsentLookup ConsentService::lookup(const std::string& id, bool fresh) const {
  const std::int64_t now = clock_.now();
  if (!fresh) {
    std::lock_guard lock(mutex_);
    const auto it = cache_.find(id);
    if (it != cache_.end()) {
      const bool failed = it->second.lookup.outcome == ConsentLookup::Outcome::Failed;
      const std::int64_t ttl = failed ? std::min<std::int64_t>(1, options_.settings.cache_seconds.count())
                                      : options_.settings.cache_seconds.count();
      if (now - it->second.fetched_at < ttl) {
        return it->second.lookup;
      }
    }
  }
  ConsentLookup result = source_->fetch(id);
  if (result.outcome == ConsentLookup::Outcome::Failed) {
    log_.event("consent_lookup_failed", {{"consent_id", id}, {"detail", result.detail}});
  }
  remember(result, now);
  if (!local_) {
    // A withdrawal seen at the FHIR source revokes the linked tokens once per withdrawal (per instance); a
    // failure or a 404 is not a withdrawal, so an outage or a wrong base URL never revokes anything.
    bool process = false;
    {
      std::lock_guard lock(mutex_);
      if (result.withdrawnAt(now)) {
        process = withdrawn_.insert(id).second;
      } else if (result.outcome == ConsentLookup::Outcome::Found) {
        withdrawn_.erase(id);
      }
    }
    if (process) {
      processRemoteWithdrawal(id);
    }
  }
  return result;
}

void ConsentService::noteRevocations(const ConsentChangeResult& result, const std::string& consentId) const {
  for (const Revocation& r : result.revoked) {
    state_.noteRevoked(r.jti, r.exp);
  }
  if (!result.revoked.empty() || result.notification_id != 0) {
    log_.event("consent_withdrawn", {{"consent_id", consentId},
                                     {"revoked", std::to_string(result.revoked.size())},
                                     {"notification_id", std::to_string(result.notification_id)}});
  }
  if (result.notification_id != 0 && queued_) {
    queued_();
  }
}

void ConsentService::processRemoteWithdrawal(const std::string& id) const {
  ConsentChange change;
  change.consent_id = id;
  change.action = ConsentChange::Record::Keep;
  change.revoke_all = true;
  change.notify = options_.settings.notification_url.has_value();
  auto done = store_.applyConsentChange(change, clock_.now());
  if (!done) {
    // Try again at the next lookup; the introspection answer is inactive regardless.
    std::lock_guard lock(mutex_);
    withdrawn_.erase(id);
    log_.event("consent_withdrawal_failed", {{"consent_id", id}, {"detail", done.error().detail}});
    return;
  }
  noteRevocations(*done, id);
}

std::expected<ConsentGrant, Denial> ConsentService::checkIssuance(const Client& client, std::string_view scope) const {
  if (!client.consent.required) {
    return ConsentGrant{std::string(scope), {}};
  }
  std::vector<std::string> ids = client.consent.references;
  std::vector<ConsentLookup> candidates;
  if (client.consent.rule_grantee && local_) {
    auto found = store_.consentsForGrantee(client.client_id);
    if (!found) {
      ConsentLookup failed;
      failed.id = "grantee-index";
      failed.detail = found.error().detail;
      candidates.push_back(std::move(failed));
    } else {
      for (const StoredConsent& c : *found) {
        if (std::ranges::find(ids, c.id) == ids.end()) {
          ids.push_back(c.id);
        }
      }
    }
  }
  if (ids.size() > options_.max_candidates) {
    ids.resize(options_.max_candidates);
  }
  for (const std::string& id : ids) {
    // Local issuance reads the store itself: a withdrawal by another instance must stop issuance at once.
    candidates.push_back(lookup(id, local_));
  }
  return decideIssuance(client.client_id, scope, candidates, clock_.now(), options_.max_scope_count);
}

bool ConsentService::tokenAuthorized(const TokenClaims& claims) const {
  if (claims.consent_ids.empty()) {
    return true;
  }
  std::vector<ConsentLookup> linked;
  linked.reserve(claims.consent_ids.size());
  for (const std::string& id : claims.consent_ids) {
    linked.push_back(lookup(id, false));
  }
  return consentsStillAuthorize(claims.client_id, claims.scope, linked, clock_.now());
}

std::expected<ConsentWriteResult, ConsentWriteError> ConsentService::put(std::string_view id,
                                                                         std::string_view body) const {
  using Kind = ConsentWriteError::Kind;
  auto record = parseConsentResource(body, mapping_);
  if (!record) {
    return std::unexpected(ConsentWriteError{Kind::Invalid, record.error()});
  }
  if (record->id != id) {
    return std::unexpected(ConsentWriteError{Kind::Invalid, "the resource id must equal the id in the URL"});
  }
  const std::int64_t now = clock_.now();
  const auto previous = store_.findConsent(id);
  if (!previous) {
    return std::unexpected(ConsentWriteError{Kind::StoreUnavailable, previous.error().detail});
  }
  bool wasActive = false;
  if (*previous) {
    if (auto old = parseConsentResource((*previous)->resource, mapping_)) {
      wasActive = old->activeAt(now);
    }
  }
  const bool active = record->activeAt(now) && record->permit;

  ConsentChange change;
  change.consent_id = record->id;
  change.action = ConsentChange::Record::Upsert;
  change.record = StoredConsent{record->id, std::string(consentStatusCode(record->status)), std::string(body),
                                record->grantees, now};
  // Not active any more: a withdrawal. Still active: only tokens of systems no longer named lose their grant.
  change.revoke_all = !active;
  change.keep_clients = record->grantees;
  change.notify = options_.settings.notification_url.has_value();
  change.notify_always = !active && wasActive;
  auto done = store_.applyConsentChange(change, now);
  if (!done) {
    return std::unexpected(ConsentWriteError{Kind::StoreUnavailable, done.error().detail});
  }
  ConsentLookup fresh;
  fresh.id = record->id;
  fresh.outcome = ConsentLookup::Outcome::Found;
  fresh.record = *record;
  remember(fresh, now);
  noteRevocations(*done, record->id);

  ConsentWriteResult result;
  result.created = !*previous;
  result.active = active;
  result.status = std::string(consentStatusCode(record->status));
  for (const Revocation& r : done->revoked) {
    result.revoked_token_ids.push_back(r.jti);
  }
  return result;
}

std::expected<ConsentWriteResult, ConsentWriteError> ConsentService::withdraw(std::string_view id) const {
  using Kind = ConsentWriteError::Kind;
  const auto previous = store_.findConsent(id);
  if (!previous) {
    return std::unexpected(ConsentWriteError{Kind::StoreUnavailable, previous.error().detail});
  }
  if (!*previous) {
    return std::unexpected(ConsentWriteError{Kind::NotFound, "No consent with this id is stored"});
  }
  const std::int64_t now = clock_.now();
  bool wasActive = false;
  if (auto old = parseConsentResource((*previous)->resource, mapping_)) {
    wasActive = old->activeAt(now);
  }
  ConsentChange change;
  change.consent_id = std::string(id);
  change.action = ConsentChange::Record::Delete;
  change.revoke_all = true;
  change.notify = options_.settings.notification_url.has_value();
  change.notify_always = wasActive;
  auto done = store_.applyConsentChange(change, now);
  if (!done) {
    return std::unexpected(ConsentWriteError{Kind::StoreUnavailable, done.error().detail});
  }
  ConsentLookup gone;
  gone.id = std::string(id);
  gone.outcome = ConsentLookup::Outcome::NotFound;
  remember(gone, now);
  noteRevocations(*done, gone.id);
  ConsentWriteResult result;
  result.status = "withdrawn";
  for (const Revocation& r : done->revoked) {
    result.revoked_token_ids.push_back(r.jti);
  }
  return result;
}

// ---------------------------------------------------------------------------------------------- Notifier

std::string notificationBody(const ConsentNotification& n) {
  std::string body = "{\"id\":\"" + std::to_string(n.id) + "\",";
  appendJsonMember(body, "consent_id", n.consent_id);
  body += ",\"revoked_token_ids\":[";
  for (std::size_t i = 0; i < n.revoked_token_ids.size(); ++i) {
    body += i == 0 ? "" : ",";
    appendJsonString(body, n.revoked_token_ids[i]);
  }
  body += "],";
  appendJsonMember(body, "time", instant(n.time));
  body += '}';
  return body;
}

std::int64_t retryDelay(int attempts, std::int64_t initial, std::int64_t max) {
  std::int64_t delay = std::max<std::int64_t>(1, initial);
  for (int i = 1; i < attempts && delay < max; ++i) {
    delay *= 2;
  }
  return std::min(delay, max);
}

ConsentNotifier::ConsentNotifier(StateStore& store, Sender sender, std::int64_t initialBackoff,
                                 std::int64_t maxBackoff, const Clock& clock, const Log& log)
    : store_(store),
      sender_(std::move(sender)),
      initial_(initialBackoff),
      max_(maxBackoff),
      clock_(clock),
      log_(log),
      thread_([this](const std::stop_token& stop) { run(stop); }) {}

ConsentNotifier::~ConsentNotifier() {
  thread_.request_stop();
  wake_.notify_all();
}

void ConsentNotifier::wake() {
  {
    std::lock_guard lock(mutex_);
    woken_ = true;
  }
  wake_.notify_all();
}

void ConsentNotifier::run(const std::stop_token& stop) {
  while (!stop.stop_requested()) {
    deliverDue();
    std::unique_lock lock(mutex_);
    // Due retries are found by polling once a second; a new notification wakes the thread at once.
    wake_.wait_for(lock, stop, std::chrono::seconds(1), [this] { return woken_; });
    woken_ = false;
  }
}

void ConsentNotifier::deliverDue() {
  auto due = store_.dueNotifications(clock_.now(), 16);
  if (!due) {
    log_.event("consent_notification_failed", {{"reason", "store_unavailable"}, {"detail", due.error().detail}});
    return;
  }
  for (const ConsentNotification& n : *due) {
    const auto sent = sender_(notificationBody(n));
    const std::int64_t now = clock_.now();
    const std::string id = std::to_string(n.id);
    if (sent) {
      if (auto marked = store_.notificationDelivered(n.id, now); !marked) {
        // Delivered but not marked: it is sent again later (at least once).
        log_.event("consent_notification_failed", {{"id", id}, {"reason", "store_unavailable"}});
        continue;
      }
      log_.event("consent_notification_delivered",
                 {{"id", id}, {"consent_id", n.consent_id}, {"attempts", std::to_string(n.attempts + 1)}});
      continue;
    }
    const std::int64_t delay = retryDelay(n.attempts + 1, initial_, max_);
    (void)store_.notificationFailed(n.id, now + delay, sent.error());
    log_.event("consent_notification_retry", {{"id", id},
                                              {"consent_id", n.consent_id},
                                              {"attempts", std::to_string(n.attempts + 1)},
                                              {"retry_in", std::to_string(delay)},
                                              {"detail", sent.error()}});
  }
}

}  // namespace smartbroker::broker
