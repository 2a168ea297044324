// The load engine: C keep-alive HTTP/1.1 connections over epoll, pre-made request bytes, one request in flight each.
#pragma once

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "histogram.hpp"

namespace smartbroker::bench {

/// A resolved TCP endpoint (plain HTTP; the bench does not speak TLS).
struct Target {
  sockaddr_storage address{};
  socklen_t length = 0;
};

/// Resolves host:port; throws std::runtime_error.
Target resolve(const std::string& host, std::uint16_t port);

class LiveQueue;

/// The requests to send. Token scenarios hand out each request once (every assertion is single-use), from a
/// pre-made list or, for long runs, from a LiveQueue signing them meanwhile; static scenarios (GET /jwks.json)
/// send the same bytes again and again.
class RequestPool {
 public:
  RequestPool(const std::vector<std::string>& requests, bool repeat) : requests_(&requests), repeat_(repeat) {}
  explicit RequestPool(LiveQueue& live) : live_(&live) {}

  /// The next request, or an empty view when a single-use pool is spent. A live request is moved into
  /// `scratch` (the caller's buffer, which must outlive the view); pre-made ones are not copied.
  std::string_view take(std::string& scratch);
  std::size_t taken() const { return next_.load(std::memory_order_relaxed); }

 private:
  const std::vector<std::string>* requests_ = nullptr;
  LiveQueue* live_ = nullptr;
  const bool repeat_ = false;
  std::atomic<std::size_t> next_{0};
};

struct PhaseOptions {
  unsigned concurrency = 32;  ///< connections, each with at most one request in flight
  unsigned threads = 1;       ///< epoll threads sharing the connections
  double seconds = 10;
  double rate = 0;            ///< 0 = closed loop (send the next request as soon as a response is in);
                              ///< > 0 = requests scheduled at this total rate, latency measured from the
                              ///< scheduled time so that a stalled server is not hidden (coordinated omission)
  std::string expect;         ///< a 200 counts as success only if its body contains this
  std::uint64_t stop_after = 0;  ///< > 0: end the phase once this many successes are in (seconds stays a cap)
  double sample_every = 0;    ///< > 0: call on_sample from the calling thread at this interval, seconds
  std::function<void(double elapsed, std::uint64_t successes)> on_sample;
};

struct PhaseResult {
  Histogram latency;                      ///< nanoseconds, every completed request
  std::uint64_t successes = 0;
  std::uint64_t failures = 0;
  std::map<std::string, std::uint64_t> failure_kinds;  ///< "401", "200-without-access_token", "transport", ...
  std::uint64_t reconnects = 0;
  std::uint64_t in_flight_at_end = 0;
  double elapsed = 0;                     ///< wall seconds of the phase
  double cpu_seconds = 0;                 ///< this process's user+sys CPU during the phase
  double busiest_thread_cpu = 0;          ///< the highest share of one core used by one epoll thread
  bool exhausted = false;                 ///< a single-use pool ran out before the time was up
};

/// Connects `options.concurrency` sockets, drives them for `options.seconds`, and returns what happened.
PhaseResult runPhase(const Target& target, RequestPool& pool, const PhaseOptions& options);

}  // namespace smartbroker::bench
