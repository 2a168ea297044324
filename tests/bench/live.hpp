// On-the-fly client assertions: signed while the load runs, for runs longer than a pre-made pool can cover
// (a million tokens, a ten-minute soak: assertions expire 300 s after signing and would not fit in memory).
#pragma once

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "crypto.hpp"

namespace smartbroker::bench {

/// RS384 for RSA keys, ES384 for P-384, ES256 for P-256 keys (crypto.hpp's algForKey knows the first two).
JwsAlg liveAlgForKey(EVP_PKEY* key);

/// Builds complete token requests, one distinct assertion each (jti = spec.jti_prefix + n), the same bytes
/// makeTokenRequests makes, with exp = signing time + 300.
class AssertionSigner {
 public:
  explicit AssertionSigner(const AssertionSpec& spec);
  JwsAlg alg() const { return alg_; }
  /// Writes request number `n` into `out` (its buffer is reused).
  void make(std::uint64_t n, std::string& out) const;

 private:
  AssertionSpec spec_;
  PkeyPtr key_;
  JwsAlg alg_;
  std::string header_;  ///< base64url JOSE header
  std::string prefix_;  ///< form body up to the assertion
  std::string suffix_;  ///< form body after it
};

/// One signer thread keeps a bounded queue of freshly signed requests full; the epoll threads take from it.
/// The thread inherits the starting thread's CPU affinity, so with --cpu it signs on the generator's core and
/// its cost shows in the generator's CPU. A consumer that finds the queue empty waits; those waits are counted,
/// because they mean the signer, not the server, set the pace.
class LiveQueue {
 public:
  LiveQueue(const AssertionSpec& spec, std::size_t capacity);
  ~LiveQueue();
  LiveQueue(const LiveQueue&) = delete;
  LiveQueue& operator=(const LiveQueue&) = delete;

  JwsAlg alg() const { return signer_.alg(); }
  /// Moves the next request into `out` (blocking while none is signed yet); false once stopped.
  bool pop(std::string& out);

  struct Stats {
    std::uint64_t signed_requests = 0;  ///< signed so far (some may still be queued)
    std::uint64_t empty_waits = 0;      ///< pops that found the queue empty and had to wait
    double wait_seconds = 0;            ///< time consumers spent in those waits
    double signer_cpu_seconds = 0;      ///< the signer thread's CPU so far
  };
  Stats stats() const;

 private:
  void run();

  AssertionSigner signer_;
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;  ///< a request was queued (consumers wait)
  std::condition_variable room_;   ///< the queue drained below half (the signer waits)
  std::deque<std::string> queue_;
  std::deque<std::string> spare_;  ///< taken-back buffers, so that signing does not allocate per request
  bool stop_ = false;
  unsigned consumers_waiting_ = 0;
  bool signer_waiting_ = false;
  std::uint64_t signed_ = 0;
  std::uint64_t empty_waits_ = 0;
  double wait_seconds_ = 0;
  std::thread thread_;
  clockid_t signer_clock_{};
};

}  // namespace smartbroker::bench

namespace smartbroker::bench {

/// Single-core sign and verify rates (ops/s) of one client key's JWS algorithm, over an assertion-sized input:
/// what a client algorithm costs the generator (sign) and the server (verify).
struct AlgRates {
  JwsAlg alg{};
  double sign = 0;
  double verify = 0;
};
AlgRates measureAlg(const std::string& keyFile, double seconds);

}  // namespace smartbroker::bench
