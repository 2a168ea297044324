// Fetching a client's JWK Set by URL: the failure reasons, the fetched document and the fetcher test seam.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace smartbroker::jwks {

/// Why a JWK Set could not be obtained. One value per distinct cause, each with its own counter and log name.
enum class FetchFailure : std::uint8_t {
  InvalidUri,     ///< not an absolute http(s) URL, userinfo, or plain http where it is not allowed
  Dns,            ///< the host name did not resolve
  Connect,        ///< TCP connection refused, unreachable or reset while connecting
  Tls,            ///< TLS handshake or certificate verification (chain or host name) failed
  Timeout,        ///< connect, handshake or response exceeded its time limit
  Io,             ///< the connection broke or the HTTP response was malformed or truncated
  Redirect,       ///< a 3xx answer: redirects are never followed
  HttpStatus,     ///< any status other than 200 and 3xx
  TooLarge,       ///< the body exceeds the configured cap
  ContentType,    ///< not application/json or application/jwk-set+json
  InvalidJwkSet,  ///< not JSON, or not a valid JWK Set (e.g. duplicate kids, no keys array)
  NoUsableKeys,   ///< a JWK Set in which no key passed validation
};
inline constexpr std::size_t kFetchFailureCount = 12;

/// snake_case name for logs and counters, e.g. "http_status".
std::string_view failureName(FetchFailure failure);

/// A failed fetch. `detail` is for operators: it never contains the body.
struct FetchError {
  FetchFailure reason = FetchFailure::Io;
  std::string detail;
  int status = 0;          ///< the HTTP status when one was received
  std::size_t bytes = 0;   ///< body bytes read (or announced by Content-Length for TooLarge)
};

/// The response header fields that decide freshness (RFC 9111 §4.2), as received.
struct CacheHeaders {
  std::string cache_control;            ///< every Cache-Control field line, joined with ", "
  std::optional<std::string> expires;
  std::optional<std::string> date;      ///< the fetcher supplies its own receipt time when the server sent none
  std::optional<std::string> age;
};

/// A 200 response with an accepted Content-Type and a body within the cap. Not yet parsed as a JWK Set.
struct FetchedDocument {
  std::string body;
  CacheHeaders cache;
  int status = 200;
};

/// Fetches one URL. The test seam between the cache and the network.
class JwksFetcher {
 public:
  virtual ~JwksFetcher() = default;
  /// GET `uri`. Thread-safe; never throws; returns within the configured time limits (DNS resolution excepted:
  /// the system resolver has no timeout of its own).
  virtual std::expected<FetchedDocument, FetchError> fetch(const std::string& uri) = 0;
};

struct HttpFetcherOptions {
  std::chrono::milliseconds connect_timeout{3000};  ///< TCP connect plus TLS handshake
  std::chrono::milliseconds read_timeout{5000};     ///< the whole response, measured from the request sent
  std::size_t max_bytes = 64 * 1024;                ///< body cap
  bool allow_http_loopback = false;                 ///< plain http, only to 127.0.0.1, ::1 or localhost
  std::string user_agent = "smart-broker";
};

/// The POCO fetcher: https with certificate and host name verification against the system CA store (TLS 1.2+),
/// plain http only to a loopback address and only when allowed; GET with `Accept: application/jwk-set+json,
/// application/json`; status 200 only, no redirect followed; Content-Type application/json or
/// application/jwk-set+json (parameters allowed); body capped; the connect and read limits are hard deadlines
/// (a server that trickles bytes is cut off). No proxy is used.
std::unique_ptr<JwksFetcher> makeHttpFetcher(HttpFetcherOptions options);

/// True for an accepted JWK Set media type: application/json or application/jwk-set+json, any case, with
/// optional parameters (`application/json; charset=utf-8`).
bool acceptableJwksContentType(std::string_view contentType);

}  // namespace smartbroker::jwks
