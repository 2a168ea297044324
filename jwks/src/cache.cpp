// The JWK Set cache: HTTP freshness rules, single-flight fetching per URL, kid-miss cooldown and failure memory.
#include "smartbroker/jwks/cache.hpp"

#include <Poco/DateTime.h>
#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeParser.h>
#include <Poco/Exception.h>

#include <algorithm>
#include <charconv>
#include <condition_variable>
#include <exception>
#include <limits>
#include <utility>

namespace smartbroker::jwks {
namespace {

using Clock = std::chrono::steady_clock;

// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31; a lifetime beyond that is moot
// anyway because of the configured ceiling.
constexpr std::int64_t kMaxDeltaSeconds = 2147483648LL;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

/// delta-seconds = 1*DIGIT (RFC 9111 §1.2.2); nullopt for anything else (signs, fractions, empty).
std::optional<std::int64_t> deltaSeconds(std::string_view s) {
  if (s.empty() || !std::ranges::all_of(s, [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec == std::errc::result_out_of_range || (ec == std::errc{} && value > kMaxDeltaSeconds)) {
    return kMaxDeltaSeconds;
  }
  if (ec != std::errc{} || ptr != s.data() + s.size()) {
    return std::nullopt;
  }
  return value;
}

/// Splits a Cache-Control value into directives at commas outside quoted strings.
std::vector<std::string_view> directives(std::string_view value) {
  std::vector<std::string_view> out;
  bool quoted = false;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= value.size(); ++i) {
    if (i < value.size() && value[i] == '"') {
      quoted = !quoted;
    }
    if (i == value.size() || (value[i] == ',' && !quoted)) {
      const std::string_view d = trim(value.substr(start, i - start));
      if (!d.empty()) {
        out.push_back(d);
      }
      start = i + 1;
    }
  }
  return out;
}

/// Only a server that cannot be reached may have its last good set served past expiry: every other failure is
/// the URL's current answer (a 404 means the keys are gone; a TLS failure may be an attack) and is final.
bool unreachable(const FetchError& error) {
  switch (error.reason) {
    case FetchFailure::Dns:
    case FetchFailure::Connect:
    case FetchFailure::Timeout:
    case FetchFailure::Io:
      return true;
    case FetchFailure::HttpStatus:
      return error.status >= 500 && error.status <= 599;
    case FetchFailure::InvalidUri:
    case FetchFailure::Tls:
    case FetchFailure::Redirect:
    case FetchFailure::TooLarge:
    case FetchFailure::ContentType:
    case FetchFailure::InvalidJwkSet:
    case FetchFailure::NoUsableKeys:
      return false;
  }
  return false;
}

}  // namespace

std::string_view triggerName(FetchTrigger trigger) {
  switch (trigger) {
    case FetchTrigger::Missing: return "first_use";
    case FetchTrigger::Expired: return "expired";
    case FetchTrigger::KidMiss: return "kid_miss";
  }
  return "unknown";
}

std::optional<std::int64_t> parseHttpDate(std::string_view text) {
  const std::string s(trim(text));
  // An IMF-fixdate is 29 characters; asctime and RFC 850 forms are of similar size. Anything short is not a date
  // (Expires: 0, Expires: -1), which RFC 9111 §5.3 says to treat as already expired.
  if (s.size() < 20 || s.size() > 40) {
    return std::nullopt;
  }
  for (const std::string& format : {Poco::DateTimeFormat::HTTP_FORMAT, Poco::DateTimeFormat::RFC850_FORMAT,
                                    Poco::DateTimeFormat::ASCTIME_FORMAT}) {
    Poco::DateTime parsed;
    int tzd = 0;
    try {
      if (Poco::DateTimeParser::tryParse(format, s, parsed, tzd)) {
        if (parsed.year() < 100) {
          // RFC 850's two-digit year (RFC 9110 §5.6.7): the most recent year with those digits that is not more
          // than 50 years in the future.
          const int thisYear = Poco::DateTime().year();
          int year = thisYear - thisYear % 100 + parsed.year();
          if (year > thisYear + 50) {
            year -= 100;
          }
          parsed.assign(year, parsed.month(), parsed.day(), parsed.hour(), parsed.minute(), parsed.second());
        }
        return static_cast<std::int64_t>(parsed.timestamp().epochTime()) - tzd;
      }
    } catch (const Poco::Exception&) {
      // tryParse reports most problems by its result, a few by exception; both mean "not this format".
    }
  }
  return std::nullopt;
}

Freshness freshnessOf(const CacheHeaders& headers) {
  Freshness out;
  bool noCache = false;
  bool maxAgeSeen = false;
  bool maxAgeInvalid = false;
  std::int64_t maxAge = kMaxDeltaSeconds;
  for (const std::string_view directive : directives(headers.cache_control)) {
    const std::size_t eq = directive.find('=');
    const std::string name = lower(trim(directive.substr(0, eq)));
    std::string_view value = eq == std::string_view::npos ? std::string_view{} : trim(directive.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (name == "no-store") {
      out.store = false;
      out.may_serve_stale = false;
    } else if (name == "no-cache") {
      // Qualified no-cache="field" only restricts those fields, but a JWK Set response has none worth keeping
      // apart; treating every form as "revalidate before each use" can only be stricter.
      noCache = true;
      out.may_serve_stale = false;
    } else if (name == "must-revalidate" || name == "proxy-revalidate") {
      out.may_serve_stale = false;
    } else if (name == "max-age") {
      maxAgeSeen = true;
      if (const auto seconds = deltaSeconds(value)) {
        maxAge = std::min(maxAge, *seconds);
      } else {
        maxAgeInvalid = true;
      }
    }
  }

  std::optional<std::int64_t> lifetime;
  if (!out.store || noCache) {
    lifetime = 0;
  } else if (maxAgeSeen) {
    lifetime = maxAgeInvalid ? 0 : maxAge;
  } else if (headers.expires) {
    // Expires − Date (RFC 9111 §4.2.1), both from the origin's clock, so our own clock's skew does not matter.
    const auto expires = parseHttpDate(*headers.expires);
    const auto date = headers.date ? parseHttpDate(*headers.date) : std::nullopt;
    lifetime = expires && date ? std::max<std::int64_t>(0, *expires - *date) : 0;
  }
  if (lifetime && headers.age) {
    // Time the response already spent in caches on the way counts against its lifetime (RFC 9111 §4.2.3).
    if (const auto age = deltaSeconds(trim(*headers.age))) {
      lifetime = std::max<std::int64_t>(0, *lifetime - *age);
    }
  }
  if (lifetime) {
    out.lifetime = std::chrono::seconds{*lifetime};
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- JwksCache

struct JwksCache::Entry {
  std::mutex mutex;                 ///< guards everything below; never held by a thread doing I/O
  std::condition_variable done;     ///< signalled when a fetch completes
  bool fetching = false;
  std::uint64_t generation = 0;     ///< completed fetches
  std::optional<Result> lastAnswer; ///< what the last completed fetch answered; shared with its waiters

  std::shared_ptr<const JwkSet> set;  ///< the stored set; null when none, no-store, or no longer servable
  Clock::time_point freshUntil{};
  Clock::time_point staleUntil{};     ///< == freshUntil when stale serving is not allowed

  bool everFetched = false;
  Clock::time_point lastFetchStart{};

  std::optional<FetchError> error;    ///< the last fetch failed: remembered until errorUntil
  Clock::time_point errorUntil{};
};

JwksCache::JwksCache(CacheOptions options, JwksFetcher& fetcher, const SteadyClock& clock, FetchObserver observer)
    : options_(options), fetcher_(fetcher), clock_(clock), observer_(std::move(observer)) {}

JwksCache::~JwksCache() = default;

std::shared_ptr<JwksCache::Entry> JwksCache::entry(const std::string& uri) {
  const std::lock_guard lock(mapMutex_);
  auto& slot = entries_[uri];
  if (!slot) {
    slot = std::make_shared<Entry>();
  }
  return slot;
}

JwksCache::Result JwksCache::get(const std::string& uri, std::string_view clientId) {
  const std::shared_ptr<Entry> e = entry(uri);
  std::unique_lock lock(e->mutex);
  const auto now = clock_.now();
  if (e->set && now < e->freshUntil) {
    return CachedKeys{e->set, e->generation, false};
  }
  if (e->fetching) {
    return waitLocked(lock, *e);
  }
  if (e->error && now < e->errorUntil) {
    // Failure memory: a broken URL costs one fetch per cooldown, not one per request.
    if (e->set && now < e->staleUntil && unreachable(*e->error)) {
      staleServed_.fetch_add(1, std::memory_order_relaxed);
      return CachedKeys{e->set, e->generation, true};
    }
    return std::unexpected(*e->error);
  }
  return fetchLocked(lock, *e, uri, clientId, e->everFetched ? FetchTrigger::Expired : FetchTrigger::Missing);
}

JwksCache::Result JwksCache::refreshAfterMiss(const std::string& uri, std::string_view clientId,
                                              const CachedKeys& seen) {
  const std::shared_ptr<Entry> e = entry(uri);
  std::unique_lock lock(e->mutex);
  // Single flight: whichever fetch is in flight is the refresh this caller asks for.
  if (e->fetching) {
    return waitLocked(lock, *e);
  }
  const auto now = clock_.now();
  if (e->generation != seen.generation && e->set && now < e->freshUntil) {
    return CachedKeys{e->set, e->generation, false};
  }
  // Why: an unknown kid costs nothing to send, so without this bound anyone could make us fetch once per request.
  if (e->everFetched && now - e->lastFetchStart < options_.kid_miss_cooldown) {
    return seen;
  }
  kidMissRefetches_.fetch_add(1, std::memory_order_relaxed);
  return fetchLocked(lock, *e, uri, clientId, FetchTrigger::KidMiss);
}

JwksCache::Result JwksCache::waitLocked(std::unique_lock<std::mutex>& lock, Entry& e) {
  // Bounded: the fetch in flight ends within the fetcher's connect and read deadlines.
  const std::uint64_t generation = e.generation;
  e.done.wait(lock, [&] { return e.generation != generation; });
  return *e.lastAnswer;
}

JwksCache::Result JwksCache::fetchLocked(std::unique_lock<std::mutex>& lock, Entry& e, const std::string& uri,
                                         std::string_view clientId, FetchTrigger trigger) {
  e.fetching = true;
  const auto started = clock_.now();
  e.everFetched = true;
  e.lastFetchStart = started;
  fetches_.fetch_add(1, std::memory_order_relaxed);
  lock.unlock();

  // ---- I/O and parsing, without any lock.
  const auto wallStart = Clock::now();
  std::optional<FetchedDocument> document;
  std::optional<JwkSetParse> parsed;
  FetchError error;
  try {
    auto fetched = fetcher_.fetch(uri);
    if (!fetched) {
      error = std::move(fetched.error());
    } else {
      document = std::move(*fetched);
      auto set = parseJwkSet(document->body, BadKeyPolicy::Skip, options_.max_keys);
      if (set) {
        parsed = std::move(*set);
      } else {
        const bool noKeys = set.error().starts_with("keys: no usable key") ||
                            set.error().starts_with("keys: the set has no keys");
        error = FetchError{noKeys ? FetchFailure::NoUsableKeys : FetchFailure::InvalidJwkSet, set.error(),
                           document->status, document->body.size()};
      }
    }
  } catch (const std::exception& ex) {
    // The fetcher does not throw; this keeps a bug (or bad_alloc) from leaving `fetching` set forever.
    error = FetchError{FetchFailure::Io, std::string("unexpected: ") + ex.what(), 0, 0};
    parsed.reset();
  } catch (...) {
    error = FetchError{FetchFailure::Io, "unexpected exception", 0, 0};
    parsed.reset();
  }
  const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - wallStart);

  lock.lock();
  const auto finished = clock_.now();
  FetchEvent event;
  event.uri = uri;
  event.client_id = clientId;
  event.trigger = trigger;
  event.elapsed = elapsed;
  Result answer = std::unexpected(error);
  if (parsed) {
    const Freshness freshness = freshnessOf(document->cache);
    const auto lifetime = std::clamp(freshness.lifetime.value_or(options_.default_lifetime), std::chrono::seconds{0},
                                     options_.max_lifetime);
    auto set = std::make_shared<const JwkSet>(std::move(parsed->set));
    if (freshness.store) {
      e.set = set;
      // Measured from the request, not the response: the conservative end of RFC 9111 §4.2.3's age estimate.
      e.freshUntil = started + lifetime;
      e.staleUntil = freshness.may_serve_stale ? e.freshUntil + options_.serve_stale : e.freshUntil;
    } else {
      // no-store: this answer goes to the callers of this fetch and nowhere else.
      e.set.reset();
      e.freshUntil = started;
      e.staleUntil = started;
    }
    e.error.reset();
    ++e.generation;
    answer = CachedKeys{std::move(set), e.generation, false};
    successes_.fetch_add(1, std::memory_order_relaxed);
    event.status = document->status;
    event.bytes = document->body.size();
    event.keys = answer->set->keys.size();
    event.lifetime = freshness.store ? lifetime : std::chrono::seconds{0};
    event.stored = freshness.store;
    event.skipped = &parsed->skipped;
  } else {
    failures_[static_cast<std::size_t>(error.reason)].fetch_add(1, std::memory_order_relaxed);
    e.error = error;
    e.errorUntil = finished + options_.kid_miss_cooldown;
    const bool fresh = e.set && finished < e.freshUntil;
    const bool staleServable = e.set && !fresh && finished < e.staleUntil && unreachable(error);
    if (!fresh && !staleServable) {
      // A set that may no longer be used is dropped, so a key removed at the URL cannot come back from memory.
      e.set.reset();
    }
    ++e.generation;
    if (staleServable) {
      answer = CachedKeys{e.set, e.generation, true};
      staleServed_.fetch_add(1, std::memory_order_relaxed);
      event.served_stale = true;
    }
    event.error = &error;
    event.status = error.status;
    event.bytes = error.bytes;
  }
  e.lastAnswer = answer;
  e.fetching = false;
  lock.unlock();
  e.done.notify_all();
  if (observer_) {
    observer_(event);
  }
  return answer;
}

FetchStats JwksCache::stats() const {
  FetchStats out;
  out.fetches = fetches_.load(std::memory_order_relaxed);
  out.successes = successes_.load(std::memory_order_relaxed);
  out.kid_miss_refetches = kidMissRefetches_.load(std::memory_order_relaxed);
  out.stale_served = staleServed_.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < kFetchFailureCount; ++i) {
    out.failures[i] = failures_[i].load(std::memory_order_relaxed);
  }
  return out;
}

}  // namespace smartbroker::jwks
