// Client keys for the authenticator: inline from the registration, or fetched from the client's jwks_uri.
#include "smartbroker/broker/client_key_source.hpp"

#include <chrono>
#include <utility>

namespace smartbroker::broker {
namespace {

KeyMatch select(std::shared_ptr<const jwks::JwkSet> set, std::string_view kid, jwks::Alg alg) {
  KeyMatch match;
  match.set = std::move(set);
  for (const jwks::PublicKey& key : match.set->keys) {
    if (key.kid == kid && key.fits(alg)) {
      match.keys.push_back(&key);
    }
  }
  return match;
}

/// The fetch reason alone: the token_denied line then reads `reason=keys_unavailable detail=timeout`, and the
/// jwks_fetch_failed line of the fetch itself carries the full detail.
std::unexpected<std::string> unavailable(const jwks::FetchError& error) {
  return std::unexpected(std::string(jwks::failureName(error.reason)));
}

}  // namespace

std::expected<KeyMatch, std::string> RegisteredKeySource::find(const Client& client, std::string_view kid,
                                                               jwks::Alg alg) {
  if (!client.jwks_uri) {
    return inline_.find(client, kid, alg);
  }
  const std::string& uri = *client.jwks_uri;
  auto keys = cache_.get(uri, client.client_id);
  if (!keys) {
    return unavailable(keys.error());
  }
  KeyMatch match = select(keys->set, kid, alg);
  if (!match.keys.empty()) {
    return match;
  }
  // A kid we do not know may be a key the client just published (rotation): refresh once, within the cooldown.
  auto refreshed = cache_.refreshAfterMiss(uri, client.client_id, *keys);
  if (!refreshed) {
    return unavailable(refreshed.error());
  }
  return select(refreshed->set, kid, alg);
}

jwks::HttpFetcherOptions fetcherOptions(const config::JwksFetch& settings) {
  jwks::HttpFetcherOptions options;
  options.connect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(settings.connect_timeout);
  options.read_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(settings.read_timeout);
  options.max_bytes = settings.max_response_bytes;
  options.allow_http_loopback = settings.allow_http_loopback;
  options.user_agent = "smart-broker/0.1";
  return options;
}

jwks::CacheOptions cacheOptions(const config::JwksFetch& settings) {
  jwks::CacheOptions options;
  options.max_lifetime = settings.max_cache_lifetime;
  options.default_lifetime = settings.default_cache_lifetime;
  options.kid_miss_cooldown = settings.kid_miss_cooldown;
  options.serve_stale = settings.serve_stale;
  return options;
}

jwks::FetchObserver fetchLogger(const Log& log) {
  return [log](const jwks::FetchEvent& e) {
    const std::string status = std::to_string(e.status);
    const std::string bytes = std::to_string(e.bytes);
    const std::string ms = std::to_string(e.elapsed.count());
    const std::string_view trigger = jwks::triggerName(e.trigger);
    if (e.error != nullptr) {
      log.event("jwks_fetch_failed", {{"client_id", e.client_id},
                                      {"uri", e.uri},
                                      {"trigger", trigger},
                                      {"reason", jwks::failureName(e.error->reason)},
                                      {"detail", e.error->detail},
                                      {"status", status},
                                      {"bytes", bytes},
                                      {"ms", ms},
                                      {"served_stale", e.served_stale ? "true" : "false"}});
      return;
    }
    if (e.skipped != nullptr) {
      for (const std::string& skipped : *e.skipped) {
        log.event("jwks_key_skipped", {{"client_id", e.client_id}, {"uri", e.uri}, {"detail", skipped}});
      }
    }
    const std::string keys = std::to_string(e.keys);
    const std::string lifetime = std::to_string(e.lifetime.count());
    log.event("jwks_fetched", {{"client_id", e.client_id},
                               {"uri", e.uri},
                               {"trigger", trigger},
                               {"status", status},
                               {"bytes", bytes},
                               {"ms", ms},
                               {"keys", keys},
                               {"lifetime", lifetime},
                               {"stored", e.stored ? "true" : "false"}});
  };
}

JwksKeySource::JwksKeySource(const config::JwksFetch& settings, const Log& log)
    : fetcher_(jwks::makeHttpFetcher(fetcherOptions(settings))),
      cache_(cacheOptions(settings), *fetcher_, clock_, fetchLogger(log)),
      source_(cache_) {}

}  // namespace smartbroker::broker
