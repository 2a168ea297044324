// Sharded in-memory revocation set and system-state snapshot, followed from the store by cursor.
#include "smartbroker/broker/token_state.hpp"

#include <functional>

namespace smartbroker::broker {

TokenState::Shard& TokenState::shardFor(std::string_view jti) const {
  return shards_[std::hash<std::string_view>{}(jti) % kShards];
}

namespace {
std::int64_t steadyNow() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

bool TokenState::current() const {
  if (max_staleness_.count() == 0) {
    return true;
  }
  if (sync_failed_.load(std::memory_order_acquire)) {
    return false;
  }
  const std::int64_t asOf = synced_as_of_.load(std::memory_order_acquire);
  return asOf != 0 &&
         steadyNow() - asOf <= std::chrono::duration_cast<std::chrono::nanoseconds>(max_staleness_).count();
}

bool TokenState::isRevoked(std::string_view jti) const {
  const Shard& shard = shardFor(jti);
  std::shared_lock lock(shard.mutex);
  return shard.revoked.find(std::string(jti)) != shard.revoked.end();
}

bool TokenState::isSuspended(const std::string& clientId) const {
  const auto systems = systems_.get();
  const auto it = systems->find(clientId);
  return it != systems->end() && it->second.suspended;
}

bool TokenState::systemBlocks(const std::string& clientId, std::int64_t iat) const {
  const auto systems = systems_.get();
  const auto it = systems->find(clientId);
  return it != systems->end() && (it->second.suspended || iat <= it->second.revoked_before);
}

void TokenState::noteRevoked(std::string_view jti, std::int64_t exp) {
  Shard& shard = shardFor(jti);
  std::unique_lock lock(shard.mutex);
  shard.revoked[std::string(jti)] = exp;
}

void TokenState::noteSystem(const std::string& clientId, SystemState state) {
  std::lock_guard lock(syncMutex_);
  auto next = std::make_shared<std::map<std::string, SystemState>>(*systems_.get());
  SystemState& current = (*next)[clientId];
  current.suspended = state.suspended;
  current.revoked_before = std::max(current.revoked_before, state.revoked_before);
  systems_.set(std::move(next));
}

bool TokenState::sync(StateStore& store, std::int64_t now) {
  std::lock_guard lock(syncMutex_);
  // Taken before the read: whatever the store held at this moment is in the view once the sync succeeds.
  const std::int64_t started = steadyNow();
  auto changes = store.changesSince(cursor_, now);
  if (!changes) {
    sync_failed_.store(true, std::memory_order_release);
    return false;
  }
  for (const Revocation& r : changes->revocations) {
    Shard& shard = shardFor(r.jti);
    std::unique_lock shardLock(shard.mutex);
    shard.revoked[r.jti] = r.exp;
  }
  cursor_ = changes->cursor;
  systems_.set(std::make_shared<const std::map<std::string, SystemState>>(std::move(changes->systems)));
  synced_as_of_.store(started, std::memory_order_release);
  sync_failed_.store(false, std::memory_order_release);
  return true;
}

void TokenState::prune(std::int64_t now) {
  for (Shard& shard : shards_) {
    std::unique_lock lock(shard.mutex);
    std::erase_if(shard.revoked, [now](const auto& entry) { return entry.second < now; });
  }
}

}  // namespace smartbroker::broker
