// A cache of fetched client JWK Sets that never keeps a set longer than its HTTP response allows.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smartbroker/jwks/fetch.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::jwks {

/// What a response's header fields allow a cache to do with it (RFC 9111 §4.2, §5.2.2).
struct Freshness {
  bool store = true;                            ///< false for no-store: use for the request at hand, then forget
  bool may_serve_stale = true;                  ///< false for no-store, no-cache, must-revalidate, proxy-revalidate
  std::optional<std::chrono::seconds> lifetime; ///< explicit lifetime minus Age; nullopt when the response has none
};

/// Freshness from Cache-Control (max-age, no-store, no-cache, must-revalidate), else Expires − Date, minus Age.
/// Conservative wherever RFC 9111 leaves a choice: no-cache (with or without field names) means lifetime 0;
/// a repeated max-age takes the smallest; an unparsable max-age, Expires or Date means lifetime 0; a lifetime
/// is never negative. s-maxage is ignored (it is for shared caches and may only lengthen the lifetime).
Freshness freshnessOf(const CacheHeaders& headers);

/// Parses an HTTP-date (IMF-fixdate, RFC 850 or asctime form, RFC 9110 §5.6.7) into Unix seconds.
std::optional<std::int64_t> parseHttpDate(std::string_view text);

/// The cache's time source: monotonic, injectable for tests.
class SteadyClock {
 public:
  virtual ~SteadyClock() = default;
  virtual std::chrono::steady_clock::time_point now() const = 0;
};

class SystemSteadyClock final : public SteadyClock {
 public:
  std::chrono::steady_clock::time_point now() const override { return std::chrono::steady_clock::now(); }
};

struct CacheOptions {
  std::chrono::seconds max_lifetime{3600};      ///< ceiling on every freshness lifetime; 0 = never reuse a set
  std::chrono::seconds default_lifetime{0};     ///< lifetime of a response that states none (capped by the ceiling)
  std::chrono::seconds kid_miss_cooldown{30};   ///< min time between a fetch and a kid-miss refetch; failure memory
  std::chrono::seconds serve_stale{0};          ///< how long past expiry a set may serve while its URL is unreachable
  std::size_t max_keys = 100;                   ///< keys per set (jwks::parseJwkSet)
};

/// Why a fetch was made.
enum class FetchTrigger : std::uint8_t { Missing, Expired, KidMiss };
std::string_view triggerName(FetchTrigger trigger);

/// One fetch, reported to the observer after it completed (the cache holds no lock while reporting).
struct FetchEvent {
  std::string_view uri;
  std::string_view client_id;                 ///< the client whose request caused the fetch
  FetchTrigger trigger = FetchTrigger::Missing;
  const FetchError* error = nullptr;          ///< null on success
  int status = 0;
  std::size_t bytes = 0;
  std::chrono::milliseconds elapsed{0};
  std::size_t keys = 0;                       ///< usable keys in the fetched set
  std::chrono::seconds lifetime{0};           ///< how long the set will be reused (after the ceiling)
  bool stored = true;                         ///< false for no-store
  bool served_stale = false;                  ///< the fetch failed and an expired set was served instead
  const std::vector<std::string>* skipped = nullptr;  ///< keys dropped by validation ("keys[1] (kid x): reason")
};
using FetchObserver = std::function<void(const FetchEvent&)>;

/// The keys of one URL as a request sees them.
struct CachedKeys {
  std::shared_ptr<const JwkSet> set;
  std::uint64_t generation = 0;   ///< increases with every completed fetch of this URL; pass back to refreshAfterMiss
  bool stale = false;             ///< served past its lifetime under the serve_stale window
};

/// Counters since start, for operators and tests.
struct FetchStats {
  std::uint64_t fetches = 0;               ///< fetches started
  std::uint64_t successes = 0;
  std::uint64_t kid_miss_refetches = 0;    ///< fetches started because of an unknown kid
  std::uint64_t stale_served = 0;          ///< answers given from an expired set under serve_stale
  std::array<std::uint64_t, kFetchFailureCount> failures{};  ///< indexed by FetchFailure
  std::uint64_t failed(FetchFailure reason) const { return failures[static_cast<std::size_t>(reason)]; }
};

/// Client JWK Sets keyed by URL.
///
/// - A set is reused while fresh: fetched at t, fresh until t + min(Freshness::lifetime or default_lifetime,
///   max_lifetime). `no-store` sets are never reused; concurrent callers waiting on the same fetch share it.
/// - One fetch per URL at a time: concurrent callers wait for the fetch in flight and share its answer
///   (single flight). No lock is held during I/O except the waiting caller's own; other URLs are unaffected.
/// - A failed fetch is remembered for kid_miss_cooldown: until then callers get the same error without a fetch.
/// - An expired set is served for up to serve_stale more only when the URL is unreachable (DNS, connect,
///   timeout, I/O, HTTP 5xx) and its response allowed it; any other failure (404, TLS, bad content) is final.
/// - refreshAfterMiss refetches at most once per kid_miss_cooldown per URL.
/// Thread-safe.
class JwksCache {
 public:
  using Result = std::expected<CachedKeys, FetchError>;

  JwksCache(CacheOptions options, JwksFetcher& fetcher, const SteadyClock& clock, FetchObserver observer = {});
  ~JwksCache();
  JwksCache(const JwksCache&) = delete;
  JwksCache& operator=(const JwksCache&) = delete;

  /// The set for `uri`: the cached one while fresh, else the result of a fetch (or of the fetch in flight).
  Result get(const std::string& uri, std::string_view clientId);

  /// After the caller found no fitting key for its kid in `seen` (an answer of get): the fetch in flight, if any;
  /// else the set of a fetch completed since `seen`, if still fresh; else `seen` itself when the last fetch of
  /// this URL started less than kid_miss_cooldown ago; else a new fetch.
  Result refreshAfterMiss(const std::string& uri, std::string_view clientId, const CachedKeys& seen);

  FetchStats stats() const;
  const CacheOptions& options() const { return options_; }

 private:
  struct Entry;
  std::shared_ptr<Entry> entry(const std::string& uri);
  Result fetchLocked(std::unique_lock<std::mutex>& lock, Entry& entry, const std::string& uri,
                     std::string_view clientId, FetchTrigger trigger);
  Result waitLocked(std::unique_lock<std::mutex>& lock, Entry& entry);

  CacheOptions options_;
  JwksFetcher& fetcher_;
  const SteadyClock& clock_;
  FetchObserver observer_;

  mutable std::mutex mapMutex_;  ///< guards entries_ only: held for lookup and insert, never during a fetch
  std::unordered_map<std::string, std::shared_ptr<Entry>> entries_;

  std::atomic<std::uint64_t> fetches_{0};
  std::atomic<std::uint64_t> successes_{0};
  std::atomic<std::uint64_t> kidMissRefetches_{0};
  std::atomic<std::uint64_t> staleServed_{0};
  std::array<std::atomic<std::uint64_t>, kFetchFailureCount> failures_{};
};

}  // namespace smartbroker::jwks
