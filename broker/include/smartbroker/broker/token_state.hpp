// The in-memory mirror of revocations and system suspensions that introspection and issuance consult.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "smartbroker/broker/snapshot.hpp"
#include "smartbroker/broker/store.hpp"

namespace smartbroker::broker {

/// Answers "is this token revoked?" and "is this system suspended?" from memory. The store is the truth:
/// sync() follows it (every second from the broker's maintenance loop, so changes made by admin commands or
/// other instances arrive within that bound), and a revocation made through this instance is noted here right
/// after it is durable, so it takes effect for the very next introspection.
/// Thread-safe; readers take a shard's shared lock only (no global lock).
///
/// With a staleness bound, the mirror also knows when it can no longer be trusted: current() is false from the
/// moment a sync fails, and whenever the last successful sync began more than the bound ago (a sync that hangs).
/// Endpoints that answer from the mirror then fail closed (503) instead of answering from a view that may miss a
/// revocation made elsewhere: "no request is ever answered from a guess".
class TokenState {
 public:
  /// `maxStaleness` zero: the mirror is always current (one process, no other writer; unit tests).
  explicit TokenState(std::chrono::milliseconds maxStaleness = {}) : max_staleness_(maxStaleness) {}

  /// True when the view reflects the store as of at most the staleness bound ago.
  bool current() const;

  bool isRevoked(std::string_view jti) const;
  /// Suspended, or every token issued at or before `iat` revoked.
  bool systemBlocks(const std::string& clientId, std::int64_t iat) const;
  bool isSuspended(const std::string& clientId) const;

  /// Records a revocation that is already durable in the store.
  void noteRevoked(std::string_view jti, std::int64_t exp);
  void noteSystem(const std::string& clientId, SystemState state);

  /// Pulls changes from the store. Returns false (and keeps the current view) when the store does not answer.
  bool sync(StateStore& store, std::int64_t now);
  /// Drops revocations of tokens that have expired: they are refused as expired anyway.
  void prune(std::int64_t now);

 private:
  static constexpr std::size_t kShards = 16;
  struct Shard {
    mutable std::shared_mutex mutex;
    std::unordered_map<std::string, std::int64_t> revoked;  ///< jti → exp
  };
  Shard& shardFor(std::string_view jti) const;

  mutable std::array<Shard, kShards> shards_;
  Snapshot<std::map<std::string, SystemState>> systems_{std::make_shared<const std::map<std::string, SystemState>>()};
  std::mutex syncMutex_;
  std::int64_t cursor_ = 0;
  const std::chrono::milliseconds max_staleness_;
  /// steady_clock nanoseconds at which the last successful sync began; 0 before the first.
  std::atomic<std::int64_t> synced_as_of_{0};
  std::atomic<bool> sync_failed_{false};
};

}  // namespace smartbroker::broker
