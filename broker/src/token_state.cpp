// Sharded in-memory revocation set and system-state snapshot, followed from the store by cursor.
#include "smartbroker/broker/token_state.hpp"

#include <functional>

namespace smartbroker::broker {

TokenState::Shard& TokenState::shardFor(std::string_view jti) const {
  return shards_[std::hash<std::string_view>{}(jti) % kShards];
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
  auto changes = store.changesSince(cursor_, now);
  if (!changes) {
    return false;
  }
  for (const Revocation& r : changes->revocations) {
    Shard& shard = shardFor(r.jti);
    std::unique_lock shardLock(shard.mutex);
    shard.revoked[r.jti] = r.exp;
  }
  cursor_ = changes->cursor;
  systems_.set(std::make_shared<const std::map<std::string, SystemState>>(std::move(changes->systems)));
  return true;
}

void TokenState::prune(std::int64_t now) {
  for (Shard& shard : shards_) {
    std::unique_lock lock(shard.mutex);
    std::erase_if(shard.revoked, [now](const auto& entry) { return entry.second < now; });
  }
}

}  // namespace smartbroker::broker
