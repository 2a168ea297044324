// An immutable value published to many reader threads and replaced atomically (registry, keyring).
#pragma once

#include <atomic>
#include <memory>

namespace smartbroker::broker {

/// Readers take a shared_ptr to the current value and keep using it for the whole request, even if a
/// reload publishes a new value meanwhile; a writer never blocks readers.
template <class T>
class Snapshot {
 public:
  explicit Snapshot(std::shared_ptr<const T> initial) : current_(std::move(initial)) {}
  std::shared_ptr<const T> get() const { return current_.load(std::memory_order_acquire); }
  void set(std::shared_ptr<const T> next) { current_.store(std::move(next), std::memory_order_release); }

 private:
  std::atomic<std::shared_ptr<const T>> current_;
};

}  // namespace smartbroker::broker
