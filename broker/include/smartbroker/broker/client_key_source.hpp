// The broker's ClientKeySource: inline keys from the registration, or the client's jwks_uri through the cache.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/config/config.hpp"
#include "smartbroker/jwks/cache.hpp"
#include "smartbroker/jwks/fetch.hpp"

namespace smartbroker::broker {

/// Inline keys for clients registered with `jwks`/`jwks_file`; for `jwks_uri` clients the cached set, refreshed
/// once (jwks::JwksCache::refreshAfterMiss) when no key has the assertion's kid and fits its alg (SPEC
/// "Authenticating" 5). A set that cannot be fetched is an error whose text starts with the fetch reason
/// (e.g. "timeout"), which the authenticator reports as KeysUnavailable. Thread-safe.
class RegisteredKeySource final : public ClientKeySource {
 public:
  explicit RegisteredKeySource(jwks::JwksCache& cache) : cache_(cache) {}
  std::expected<KeyMatch, std::string> find(const Client& client, std::string_view kid, jwks::Alg alg) override;

 private:
  InlineKeySource inline_;
  jwks::JwksCache& cache_;
};

/// server.jwks_fetch as options of the HTTP fetcher and of the cache.
jwks::HttpFetcherOptions fetcherOptions(const config::JwksFetch& settings);
jwks::CacheOptions cacheOptions(const config::JwksFetch& settings);

/// Logs every fetch: `event=jwks_fetched` (client_id uri trigger status bytes ms keys lifetime stored) or
/// `event=jwks_fetch_failed` (client_id uri trigger reason detail status bytes ms served_stale), and one
/// `event=jwks_key_skipped` line per key that failed validation.
jwks::FetchObserver fetchLogger(const Log& log);

/// A RegisteredKeySource with its own fetcher, clock and cache, built from server.jwks_fetch (main's wiring).
class JwksKeySource {
 public:
  JwksKeySource(const config::JwksFetch& settings, const Log& log);
  ClientKeySource& source() { return source_; }
  jwks::FetchStats stats() const { return cache_.stats(); }

 private:
  std::unique_ptr<jwks::JwksFetcher> fetcher_;
  jwks::SystemSteadyClock clock_;
  jwks::JwksCache cache_;
  RegisteredKeySource source_;
};

}  // namespace smartbroker::broker
