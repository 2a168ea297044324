// A fixed-size log-linear latency histogram (64 sub-buckets per power of two, under 1.6% error), no allocation.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace smartbroker::bench {

/// Records nanosecond values up to 2^40 ns (~18 min); larger values are clamped. `quantile` returns the
/// midpoint of the bucket holding the requested rank; `max` is exact.
class Histogram {
 public:
  void record(std::uint64_t ns) {
    ns = std::min(ns, kMaxValue);
    ++counts_[index(ns)];
    ++count_;
    sum_ += ns;
    max_ = std::max(max_, ns);
  }

  void merge(const Histogram& other) {
    for (std::size_t i = 0; i < kBuckets; ++i) {
      counts_[i] += other.counts_[i];
    }
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  void reset() { *this = Histogram{}; }

  std::uint64_t count() const { return count_; }
  std::uint64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }

  /// q in [0, 1]; 0 when empty.
  std::uint64_t quantile(double q) const {
    if (count_ == 0) {
      return 0;
    }
    const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(q * static_cast<double>(count_) + 0.5));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        return std::min(max_, lower(i) + width(i) / 2);
      }
    }
    return max_;
  }

 private:
  static constexpr unsigned kSubBits = 6;
  static constexpr std::uint64_t kSub = std::uint64_t{1} << kSubBits;
  static constexpr std::uint64_t kMaxValue = (std::uint64_t{1} << 40) - 1;
  static constexpr std::size_t kBuckets = 2 * kSub + (40 - kSubBits) * kSub;

  static std::size_t index(std::uint64_t v) {
    if (v < 2 * kSub) {
      return static_cast<std::size_t>(v);
    }
    const auto e = static_cast<unsigned>(std::bit_width(v)) - (kSubBits + 1);
    return static_cast<std::size_t>(2 * kSub + (e - 1) * kSub + ((v >> e) - kSub));
  }
  static std::uint64_t lower(std::size_t i) {
    if (i < 2 * kSub) {
      return i;
    }
    const std::uint64_t e = (i - 2 * kSub) / kSub + 1;
    const std::uint64_t m = (i - 2 * kSub) % kSub + kSub;
    return m << e;
  }
  static std::uint64_t width(std::size_t i) {
    return i < 2 * kSub ? 1 : std::uint64_t{1} << ((i - 2 * kSub) / kSub + 1);
  }

  std::array<std::uint64_t, kBuckets> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace smartbroker::bench
