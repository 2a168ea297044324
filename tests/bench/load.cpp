// The epoll load engine: non-blocking keep-alive sockets, a minimal HTTP/1.1 response reader, latency per request.
#include "load.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <thread>

#include "live.hpp"

namespace smartbroker::bench {
namespace {

std::uint64_t monotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

double threadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double processCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

/// A blocking connect (loopback: immediate), then non-blocking with Nagle off. -1 on failure.
int connectTo(const Target& target) {
  const int fd = ::socket(target.address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    return -1;
  }
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&target.address), target.length) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

bool startsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    const char a = text[i] >= 'A' && text[i] <= 'Z' ? static_cast<char>(text[i] - 'A' + 'a') : text[i];
    if (a != prefix[i]) {
      return false;
    }
  }
  return true;
}

struct Connection {
  int fd = -1;
  std::string_view request;
  std::string owned;  ///< the bytes of a live-signed request (request views them)
  std::size_t sent = 0;
  bool busy = false;
  bool want_out = false;
  std::uint64_t start_ns = 0;
  std::string in;
  std::size_t header_end = 0;  ///< 0 while the header block is incomplete
  std::size_t body_length = 0;
  int status = 0;
  bool close_after = false;
};

struct ThreadResult {
  Histogram latency;
  std::uint64_t successes = 0;
  std::uint64_t failures = 0;
  std::map<std::string, std::uint64_t> failure_kinds;
  std::uint64_t reconnects = 0;
  std::uint64_t in_flight_at_end = 0;
  double cpu_seconds = 0;
  bool exhausted = false;
};

/// What the epoll threads of one phase share: successes so far (for --stop-after and samples) and the stop flag.
struct Shared {
  std::atomic<std::uint64_t> successes{0};
  std::atomic<bool> stop{false};
};

/// One epoll thread driving its share of the connections.
class Driver {
 public:
  Driver(const Target& target, RequestPool& pool, const PhaseOptions& options, std::vector<int> fds,
         std::uint64_t startNs, std::uint64_t deadlineNs, double rate, Shared& shared)
      : target_(target), pool_(pool), options_(options), shared_(shared), deadline_ns_(deadlineNs),
        interval_ns_(rate > 0 ? 1e9 / rate : 0), next_due_(static_cast<double>(startNs)) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    connections_.resize(fds.size());
    for (std::size_t i = 0; i < fds.size(); ++i) {
      connections_[i].fd = fds[i];
      connections_[i].in.reserve(16 * 1024);
      watch(static_cast<std::uint32_t>(i));
    }
    active_ = connections_.size();
  }
  ~Driver() {
    for (auto& c : connections_) {
      if (c.fd >= 0) {
        ::close(c.fd);
      }
    }
    ::close(epoll_);
  }
  Driver(const Driver&) = delete;
  Driver& operator=(const Driver&) = delete;

  ThreadResult run() {
    const double cpuStart = threadCpuSeconds();
    for (std::uint32_t i = 0; i < connections_.size(); ++i) {
      next(i, monotonicNs());
    }
    std::vector<epoll_event> events(256);
    for (;;) {
      const std::uint64_t now = monotonicNs();
      if (now >= deadline_ns_ || shared_.stop.load(std::memory_order_relaxed)) {
        break;
      }
      if (paced()) {
        while (!idle_.empty() && static_cast<double>(now) >= next_due_) {
          const std::uint32_t i = idle_.back();
          idle_.pop_back();
          issue(i, static_cast<std::uint64_t>(next_due_));
          next_due_ += interval_ns_;
        }
      }
      if (active_ == 0) {
        break;
      }
      std::uint64_t wait = std::min<std::uint64_t>(deadline_ns_ - now, 50'000'000);
      if (paced() && !idle_.empty()) {
        wait = std::min<std::uint64_t>(wait, static_cast<std::uint64_t>(std::max(0.0, next_due_ - static_cast<double>(now))));
      }
      timespec timeout{static_cast<time_t>(wait / 1'000'000'000), static_cast<long>(wait % 1'000'000'000)};
      const int n = ::epoll_pwait2(epoll_, events.data(), static_cast<int>(events.size()), &timeout, nullptr);
      for (int e = 0; e < n; ++e) {
        onEvent(events[static_cast<std::size_t>(e)].data.u32, events[static_cast<std::size_t>(e)].events);
      }
    }
    for (const auto& c : connections_) {
      result_.in_flight_at_end += c.busy ? 1 : 0;
    }
    result_.cpu_seconds = threadCpuSeconds() - cpuStart;
    return std::move(result_);
  }

 private:
  bool paced() const { return interval_ns_ > 0; }

  void watch(std::uint32_t i) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    ::epoll_ctl(epoll_, EPOLL_CTL_ADD, connections_[i].fd, &ev);
  }

  void setWantOut(std::uint32_t i, bool on) {
    Connection& c = connections_[i];
    if (c.want_out == on) {
      return;
    }
    c.want_out = on;
    epoll_event ev{};
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0U);
    ev.data.u32 = i;
    ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void retire(std::uint32_t i) {
    Connection& c = connections_[i];
    if (c.fd >= 0) {
      ::close(c.fd);
      c.fd = -1;
    }
    c.busy = false;
    --active_;
  }

  /// The connection is free: closed loop sends at once, paced waits for its slot.
  void next(std::uint32_t i, std::uint64_t now) {
    if (!paced()) {
      issue(i, now);
      return;
    }
    if (static_cast<double>(now) >= next_due_) {
      issue(i, static_cast<std::uint64_t>(next_due_));
      next_due_ += interval_ns_;
    } else {
      idle_.push_back(i);
    }
  }

  void issue(std::uint32_t i, std::uint64_t scheduledNs) {
    Connection& c = connections_[i];
    const std::string_view request = pool_.take(c.owned);
    if (request.empty()) {
      result_.exhausted = true;
      retire(i);
      return;
    }
    c.request = request;
    c.sent = 0;
    c.busy = true;
    c.start_ns = scheduledNs;
    c.in.clear();
    c.header_end = 0;
    send(i);
  }

  void send(std::uint32_t i) {
    Connection& c = connections_[i];
    while (c.sent < c.request.size()) {
      const ssize_t n = ::send(c.fd, c.request.data() + c.sent, c.request.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        setWantOut(i, true);
        return;
      }
      if (n < 0 && errno == EINTR) {
        continue;
      }
      fail(i, "transport");
      return;
    }
    setWantOut(i, false);
  }

  void onEvent(std::uint32_t i, std::uint32_t events) {
    Connection& c = connections_[i];
    if (c.fd < 0) {
      return;
    }
    if ((events & EPOLLOUT) != 0 && c.busy && c.sent < c.request.size()) {
      send(i);
      if (c.fd < 0) {
        return;
      }
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) == 0) {
      return;
    }
    bool eof = false;
    char buffer[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, 0);
      if (n > 0) {
        c.in.append(buffer, static_cast<std::size_t>(n));
        if (static_cast<std::size_t>(n) < sizeof buffer) {
          break;
        }
        continue;
      }
      if (n == 0) {
        eof = true;
      } else if (errno == EINTR) {
        continue;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        eof = true;
      }
      break;
    }
    if (!c.busy) {
      if (eof || !c.in.empty()) {
        reconnect(i);  // the server closed an idle connection (or sent something unasked)
        if (c.fd >= 0) {
          next(i, monotonicNs());
        }
      }
      return;
    }
    if (parse(c)) {
      complete(i);
    } else if (eof) {
      fail(i, "transport");
    }
  }

  /// True when a whole response is in `c.in`.
  static bool parse(Connection& c) {
    if (c.header_end == 0) {
      const std::size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos) {
        return false;
      }
      c.header_end = end + 4;
      const std::string_view head(c.in.data(), end + 2);
      c.status = head.size() > 12 && head.starts_with("HTTP/1.") ? std::atoi(head.data() + 9) : -1;
      c.body_length = 0;
      c.close_after = head.starts_with("HTTP/1.0");
      bool haveLength = false;
      for (std::size_t at = head.find("\r\n"); at != std::string_view::npos && at + 2 < head.size();
           at = head.find("\r\n", at + 2)) {
        const std::string_view line = head.substr(at + 2, head.find("\r\n", at + 2) - (at + 2));
        if (startsWithIgnoreCase(line, "content-length:")) {
          c.body_length = std::strtoul(line.data() + 15, nullptr, 10);
          haveLength = true;
        } else if (startsWithIgnoreCase(line, "connection:")) {
          const std::string_view value = line.substr(11);
          c.close_after = value.find("close") != std::string_view::npos || value.find("Close") != std::string_view::npos;
        } else if (startsWithIgnoreCase(line, "transfer-encoding:")) {
          c.status = -2;  // chunked bodies are not read: the bench's servers always send Content-Length
          c.close_after = true;
        }
      }
      if (!haveLength) {
        c.close_after = true;
      }
    }
    return c.in.size() >= c.header_end + c.body_length;
  }

  void complete(std::uint32_t i) {
    Connection& c = connections_[i];
    const std::uint64_t now = monotonicNs();
    result_.latency.record(now - c.start_ns);
    const std::string_view body(c.in.data() + c.header_end, c.body_length);
    if (c.status == 200 && body.find(options_.expect) != std::string_view::npos) {
      ++result_.successes;
      const std::uint64_t total = shared_.successes.fetch_add(1, std::memory_order_relaxed) + 1;
      if (options_.stop_after > 0 && total >= options_.stop_after) {
        shared_.stop.store(true, std::memory_order_relaxed);
      }
    } else {
      ++result_.failures;
      ++result_.failure_kinds[c.status == 200    ? "200-without-" + options_.expect
                              : c.status == -2   ? "chunked"
                              : c.status < 0     ? "bad-response"
                                                 : std::to_string(c.status)];
    }
    c.busy = false;
    const bool leftover = c.in.size() > c.header_end + c.body_length;
    if (c.close_after || leftover) {
      reconnect(i);
      if (c.fd < 0) {
        return;
      }
    }
    next(i, now);
  }

  void fail(std::uint32_t i, const std::string& kind) {
    ++result_.failures;
    ++result_.failure_kinds[kind];
    connections_[i].busy = false;
    reconnect(i);
    if (connections_[i].fd >= 0) {
      next(i, monotonicNs());
    }
  }

  void reconnect(std::uint32_t i) {
    Connection& c = connections_[i];
    ::close(c.fd);
    ++result_.reconnects;
    c.want_out = false;
    c.fd = connectTo(target_);
    if (c.fd < 0) {
      ++result_.failure_kinds["connect"];
      c.busy = false;
      --active_;
      return;
    }
    watch(i);
  }

  const Target& target_;
  RequestPool& pool_;
  const PhaseOptions& options_;
  Shared& shared_;
  std::uint64_t deadline_ns_;
  double interval_ns_;
  double next_due_;
  int epoll_ = -1;
  std::vector<Connection> connections_;
  std::vector<std::uint32_t> idle_;
  std::size_t active_ = 0;
  ThreadResult result_;
};

}  // namespace

std::string_view RequestPool::take(std::string& scratch) {
  if (live_ != nullptr) {
    if (!live_->pop(scratch)) {
      return {};
    }
    next_.fetch_add(1, std::memory_order_relaxed);
    return scratch;
  }
  if (repeat_) {
    return requests_->front();
  }
  const std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
  return i < requests_->size() ? std::string_view((*requests_)[i]) : std::string_view();
}

Target resolve(const std::string& host, std::uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &found) != 0 || found == nullptr) {
    throw std::runtime_error("cannot resolve " + host);
  }
  Target target;
  std::memcpy(&target.address, found->ai_addr, found->ai_addrlen);
  target.length = found->ai_addrlen;
  ::freeaddrinfo(found);
  return target;
}

PhaseResult runPhase(const Target& target, RequestPool& pool, const PhaseOptions& options) {
  const unsigned threads = std::max(1U, std::min(options.threads, options.concurrency));
  std::vector<std::vector<int>> fds(threads);
  for (unsigned c = 0; c < options.concurrency; ++c) {
    const int fd = connectTo(target);
    if (fd < 0) {
      for (const auto& list : fds) {
        for (const int open : list) {
          ::close(open);
        }
      }
      throw std::runtime_error(std::string("cannot connect: ") + std::strerror(errno));
    }
    fds[c % threads].push_back(fd);
  }
  const double cpuStart = processCpuSeconds();
  const std::uint64_t start = monotonicNs();
  const auto deadline = start + static_cast<std::uint64_t>(options.seconds * 1e9);
  std::vector<ThreadResult> results(threads);
  std::vector<std::thread> workers;
  Shared shared;
  std::atomic<unsigned> finished{0};
  for (unsigned t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      Driver driver(target, pool, options, std::move(fds[t]), start, deadline, options.rate / threads, shared);
      results[t] = driver.run();
      finished.fetch_add(1);
    });
  }
  // Samples come from this thread, which otherwise only waits: the epoll threads never stop for them.
  if (options.sample_every > 0 && options.on_sample) {
    const auto every = static_cast<std::uint64_t>(options.sample_every * 1e9);
    for (std::uint64_t due = start + every; finished.load() < threads;) {
      const std::uint64_t now = monotonicNs();
      if (now >= due) {
        options.on_sample(static_cast<double>(now - start) / 1e9, shared.successes.load(std::memory_order_relaxed));
        due += every;
        continue;
      }
      const std::uint64_t nap = std::min<std::uint64_t>(due - now, 100'000'000);
      timespec ts{static_cast<time_t>(nap / 1'000'000'000), static_cast<long>(nap % 1'000'000'000)};
      nanosleep(&ts, nullptr);
    }
  }
  for (auto& w : workers) {
    w.join();
  }
  PhaseResult out;
  out.elapsed = static_cast<double>(monotonicNs() - start) / 1e9;
  out.cpu_seconds = processCpuSeconds() - cpuStart;
  for (const auto& r : results) {
    out.latency.merge(r.latency);
    out.successes += r.successes;
    out.failures += r.failures;
    for (const auto& [kind, n] : r.failure_kinds) {
      out.failure_kinds[kind] += n;
    }
    out.reconnects += r.reconnects;
    out.in_flight_at_end += r.in_flight_at_end;
    out.busiest_thread_cpu = std::max(out.busiest_thread_cpu, r.cpu_seconds / out.elapsed);
    out.exhausted = out.exhausted || r.exhausted;
  }
  return out;
}

}  // namespace smartbroker::bench
