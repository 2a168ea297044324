// smartbroker-bench: the load generator and crypto-ceiling micro-benchmark behind scripts/bench (see README.md here).
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "crypto.hpp"
#include "live.hpp"
#include "load.hpp"
#include "tokens.hpp"

namespace {

namespace bench = smartbroker::bench;

constexpr const char* kUsage = R"(usage:
  smartbroker-bench crypto [--seconds S] [--cpu N]
      single-core RS384 verify, ES384 verify, ES256 sign (raw EVP_DigestVerify/EVP_DigestSign) and the
      derived token-request ceiling 1/(1/verify + 1/es256_sign); TEST-ONLY keys from --rsa-key/--p384-key
  smartbroker-bench load --url http://HOST:PORT[/base] --scenario NAME
      (--key PEM --client-id ID --kid KID [--scope S] [--aud URL]   POST /token, one assertion per request
       | --get PATH [--expect TEXT])                                 the same GET again and again
      [--duration S=10] [--warmup S=2] [--concurrency C=32] [--threads T=1] [--rate R=0 (closed loop)]
      [--requests N|auto] [--max-requests N=400000] [--gen-threads G=all cores] [--cpu N]
      [--server-pid PID] [--db-pid POSTMASTER_PID] [--ceiling LABEL=RATE]...
      [--sign pre|live]   pre: sign every assertion before the phase (default); live: a signer thread on the
                          generator's core signs while the load runs (no pool limit, no 300 s expiry limit)
      [--stop-after N]    end the timed phase after N successes (--duration stays a cap)
      [--sample-every S]  sample the server's RSS/VmHWM every S seconds of the timed phase; prints the
                          samples and their least-squares slope
  smartbroker-bench client-algs [--seconds S] [--cpu N] [--key PEM]...
      single-core sign (generator side) and verify (server side) rate of each key's JWS algorithm
  smartbroker-bench free-port          print a loopback TCP port that was free a moment ago
)";

struct Args {
  std::string command;
  std::map<std::string, std::vector<std::string>> values;

  std::optional<std::string> get(const std::string& name) const {
    const auto it = values.find(name);
    return it == values.end() || it->second.empty() ? std::nullopt : std::optional(it->second.back());
  }
  std::string get(const std::string& name, const std::string& fallback) const { return get(name).value_or(fallback); }
  double number(const std::string& name, double fallback) const {
    const auto v = get(name);
    return v ? std::stod(*v) : fallback;
  }
};

Args parseArgs(int argc, char** argv) {
  Args args;
  if (argc < 2) {
    throw std::invalid_argument("missing command");
  }
  args.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string name = argv[i];
    if (!name.starts_with("--") || i + 1 >= argc) {
      throw std::invalid_argument("expected --name value, got " + name);
    }
    args.values[name.substr(2)].push_back(argv[++i]);
  }
  return args;
}

// ------------------------------------------------------------------------------------------ processes

/// Pins the calling thread (and the threads it starts later) to one CPU, or frees it when cpu < 0.
void pinTo(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu < 0) {
    for (std::size_t c = 0; c < CPU_SETSIZE; ++c) {
      CPU_SET(c, &set);
    }
  } else {
    CPU_SET(static_cast<std::size_t>(cpu), &set);
  }
  if (sched_setaffinity(0, sizeof set, &set) != 0 && cpu >= 0) {
    throw std::runtime_error("sched_setaffinity(" + std::to_string(cpu) + ") failed");
  }
}

/// A process's CPU and memory from /proc: utime+stime (stat fields 14, 15), threads, VmRSS, VmHWM.
struct ProcSample {
  bool ok = false;
  double cpu_seconds = 0;
  long threads = 0;
  double rss_mib = 0;
  double hwm_mib = 0;
};

std::string readSmallFile(const std::string& path) {
  std::string text;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return text;
  }
  char buffer[4096];
  for (ssize_t n = 0; (n = ::read(fd, buffer, sizeof buffer)) > 0;) {
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

ProcSample sample(long pid) {
  ProcSample s;
  if (pid <= 0) {
    return s;
  }
  const std::string text = readSmallFile("/proc/" + std::to_string(pid) + "/stat");
  const std::size_t paren = text.rfind(')');
  if (paren == std::string::npos) {
    return s;
  }
  std::istringstream fields(text.substr(paren + 2));
  std::vector<std::string> f;
  for (std::string field; fields >> field;) {
    f.push_back(field);
  }
  if (f.size() < 18) {
    return s;
  }
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  s.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / tick;  // fields 14 and 15 (f[0] is field 3)
  s.threads = std::stol(f[17]);
  std::istringstream status(readSmallFile("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("VmRSS:")) {
      s.rss_mib = std::stod(line.substr(6)) / 1024.0;
    } else if (line.starts_with("VmHWM:")) {
      s.hwm_mib = std::stod(line.substr(6)) / 1024.0;
    }
  }
  s.ok = true;
  return s;
}

/// CPU seconds of a process tree one level deep, e.g. a PostgreSQL postmaster: its own utime+stime, the
/// cutime+cstime of the children it has reaped, and the utime+stime of those still running. -1 if absent.
double treeCpuSeconds(long pid) {
  if (pid <= 0) {
    return -1;
  }
  const auto fields = [](long p) {
    const std::string text = readSmallFile("/proc/" + std::to_string(p) + "/stat");
    std::vector<std::string> f;
    const std::size_t paren = text.rfind(')');
    if (paren != std::string::npos) {
      std::istringstream in(text.substr(paren + 2));
      for (std::string field; in >> field;) {
        f.push_back(field);
      }
    }
    return f;
  };
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  const std::vector<std::string> own = fields(pid);
  if (own.size() < 15) {
    return -1;
  }
  double ticks = std::stod(own[11]) + std::stod(own[12]) + std::stod(own[13]) + std::stod(own[14]);
  std::istringstream children(readSmallFile("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) +
                                            "/children"));
  for (long child = 0; children >> child;) {
    const std::vector<std::string> f = fields(child);
    if (f.size() >= 13) {
      ticks += std::stod(f[11]) + std::stod(f[12]);
    }
  }
  return ticks / tick;
}

/// Whole-machine CPU from the first line of /proc/stat, in seconds: busy (not idle/iowait) and steal.
struct MachineSample {
  double busy = 0;
  double steal = 0;
};

MachineSample machine() {
  std::istringstream in(readSmallFile("/proc/stat"));
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  return {(user + nice + system + irq + softirq) / tick, steal / tick};
}

// ------------------------------------------------------------------------------------------ crypto

int crypto(const Args& args) {
  const std::string data = args.get("data", SMARTBROKER_BENCH_TEST_DATA);
  if (const auto cpu = args.get("cpu")) {
    pinTo(std::stoi(*cpu));
  }
  const double seconds = args.number("seconds", 1.0);
  const bench::CryptoRates r = bench::measureCrypto(args.get("rsa-key", data + "/keys/rs384-client.pem"),
                                                    args.get("p384-key", data + "/keys/es384-client.pem"), seconds);
  const double rsCeiling = bench::CryptoRates::tokenCeiling(r.rs384_verify, r.es256_sign);
  const double esCeiling = bench::CryptoRates::tokenCeiling(r.es384_verify, r.es256_sign);
  std::printf("== crypto ceiling (one core%s, the server's code paths: OpenSSL %s prepared contexts, nettle for "
              "ES384; best of 3 windows in ~%.1f s per operation)\n",
              args.get("cpu") ? (", CPU " + *args.get("cpu")).c_str() : "", OPENSSL_VERSION_STR, seconds);
  std::printf("  RS384 verify (RSA-2048)   %10.0f /s\n", r.rs384_verify);
  std::printf("  ES384 verify (P-384)      %10.0f /s\n", r.es384_verify);
  std::printf("  ES256 sign   (P-256)      %10.0f /s\n", r.es256_sign);
  std::printf("  RS384 sign   (client side)%10.0f /s\n", r.rs384_sign);
  std::printf("  ES384 sign   (client side)%10.0f /s\n", r.es384_sign);
  std::printf("  token ceiling RS384 client = 1/(1/%.0f + 1/%.0f) = %.0f /s\n", r.rs384_verify, r.es256_sign, rsCeiling);
  std::printf("  token ceiling ES384 client = 1/(1/%.0f + 1/%.0f) = %.0f /s\n", r.es384_verify, r.es256_sign, esCeiling);
  // es384_verify_openssl: OpenSSL's own P-384 verification (the issue's "P-384 verification ceiling"; the broker
  // verifies with nettle, es384_verify, which is the way past it).
  std::printf("  ES384 verify, OpenSSL     %10.0f /s (the broker uses nettle: x%.2f)\n", r.es384_verify_per_op_init,
              r.es384_verify / r.es384_verify_per_op_init);
  std::printf("CRYPTO rs384_verify=%.0f es384_verify=%.0f es256_sign=%.0f rs384_sign=%.0f es384_sign=%.0f "
              "ceiling_rs384=%.0f ceiling_es384=%.0f es384_verify_openssl=%.0f\n",
              r.rs384_verify, r.es384_verify, r.es256_sign, r.rs384_sign, r.es384_sign, rsCeiling, esCeiling,
              r.es384_verify_per_op_init);
  return 0;
}

int clientAlgs(const Args& args) {
  const std::string data = args.get("data", SMARTBROKER_BENCH_TEST_DATA);
  if (const auto cpu = args.get("cpu")) {
    pinTo(std::stoi(*cpu));
  }
  const double seconds = args.number("seconds", 1.0);
  std::vector<std::string> keys = args.values.count("key") != 0 ? args.values.at("key") : std::vector<std::string>{};
  if (keys.empty()) {
    keys = {data + "/keys/es256-client.pem", data + "/keys/rs384-client.pem", data + "/keys/es384-client.pem"};
  }
  std::printf("== client algorithms (one core%s): client-side sign, server-side verify, ops/s\n",
              args.get("cpu") ? (", CPU " + *args.get("cpu")).c_str() : "");
  for (const std::string& key : keys) {
    const bench::AlgRates r = bench::measureAlg(key, seconds);
    std::printf("  %-6s sign %8.0f /s   verify %8.0f /s   (%s)\n", bench::algName(r.alg), r.sign, r.verify, key.c_str());
    std::printf("CLIENTALG alg=%s sign=%.0f verify=%.0f\n", bench::algName(r.alg), r.sign, r.verify);
  }
  return 0;
}

// ------------------------------------------------------------------------------------------ load

struct Url {
  std::string host;
  std::uint16_t port = 80;
  std::string base;  ///< path prefix without a trailing slash
  std::string text;  ///< scheme://host:port/base as given, without a trailing slash
};

Url parseUrl(std::string text) {
  while (text.ends_with('/')) {
    text.pop_back();
  }
  if (!text.starts_with("http://")) {
    throw std::invalid_argument("--url must be http://HOST:PORT[/base] (the bench does not speak TLS)");
  }
  Url url;
  url.text = text;
  const std::string rest = text.substr(7);
  const std::size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  url.base = slash == std::string::npos ? "" : rest.substr(slash);
  const std::size_t colon = authority.rfind(':');
  url.host = authority.substr(0, colon);
  if (colon != std::string::npos) {
    url.port = static_cast<std::uint16_t>(std::stoul(authority.substr(colon + 1)));
  }
  if (url.host.starts_with('[') && url.host.ends_with(']')) {
    url.host = url.host.substr(1, url.host.size() - 2);
  }
  return url;
}

std::string randomHex() {
  std::random_device device;
  std::mt19937_64 rng((static_cast<std::uint64_t>(device()) << 32) ^ device());
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(rng()));
  return text;
}

double ms(std::uint64_t ns) { return static_cast<double>(ns) / 1e6; }

void printPhase(const char* what, const bench::PhaseResult& r) {
  const double rps = static_cast<double>(r.successes + r.failures) / r.elapsed;
  std::printf("  %-8s %.2f s: %llu responses (%.0f /s), %llu ok, %llu failed%s\n", what, r.elapsed,
              static_cast<unsigned long long>(r.successes + r.failures), rps,
              static_cast<unsigned long long>(r.successes), static_cast<unsigned long long>(r.failures),
              r.exhausted ? "; request pool exhausted early" : "");
}

int load(const Args& args) {
  const Url url = parseUrl(args.get("url", "http://127.0.0.1:8080"));
  const std::string scenario = args.get("scenario", "custom");
  const auto get = args.get("get");
  // --introspect hit|miss: POST /introspect with a bearer caller token; hit = one token again and again (the
  // verified-token cache answers), miss = a distinct token per request (every request verifies a signature).
  const auto introspect = args.get("introspect");
  const bool token = !get.has_value() && !introspect.has_value();
  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  const unsigned genThreads = static_cast<unsigned>(args.number("gen-threads", cores));
  const std::optional<int> cpu = args.get("cpu") ? std::optional(std::stoi(*args.get("cpu"))) : std::nullopt;
  const long serverPid = std::stol(args.get("server-pid", "0"));
  const long dbPid = std::stol(args.get("db-pid", "0"));  // a PostgreSQL postmaster on this machine

  bench::PhaseOptions timed;
  timed.seconds = args.number("duration", 10);
  timed.concurrency = static_cast<unsigned>(args.number("concurrency", 32));
  timed.threads = static_cast<unsigned>(args.number("threads", 1));
  timed.rate = args.number("rate", 0);
  timed.expect = args.get("expect", token ? "access_token" : introspect ? "\"active\":true" : "");
  const double warmup = args.number("warmup", 2);
  const std::string requestsArg = args.get("requests", "auto");
  const auto maxRequests = static_cast<std::size_t>(args.number("max-requests", 400000));
  const bool live = args.get("sign", "pre") == "live";
  if (args.get("sign", "pre") != "pre" && !live) {
    throw std::invalid_argument("--sign must be pre or live");
  }
  timed.stop_after = static_cast<std::uint64_t>(args.number("stop-after", 0));
  const double sampleEvery = args.number("sample-every", 0);

  const bench::Target target = bench::resolve(url.host, url.port);
  const std::string hostHeader = url.host + ":" + std::to_string(url.port);

  bench::AssertionSpec spec;
  if (token) {
    spec.key_file = args.get("key", "");
    spec.client_id = args.get("client-id", "");
    spec.kid = args.get("kid", spec.client_id);
    spec.scope = args.get("scope", "system/*.rs");
    spec.audience = args.get("aud", url.text + "/token");
    spec.path = url.base + "/token";
    spec.host = hostHeader;
    spec.jti_prefix = "bench-" + randomHex() + "-";
    if (spec.key_file.empty() || spec.client_id.empty()) {
      throw std::invalid_argument("token scenarios need --key and --client-id");
    }
  }
  // (An introspection scenario has no --get: its path must not come from the empty optional.)
  std::printf("== scenario %s: %s %s%s, concurrency %u, %u epoll thread(s), %s\n", scenario.c_str(),
              get ? "GET" : "POST", url.text.c_str(), token ? "/token" : get ? get->c_str() : "/introspect",
              timed.concurrency,
              timed.threads,
              timed.rate > 0 ? ("paced at " + std::to_string(static_cast<long>(timed.rate)) + " req/s").c_str()
                             : "closed loop");
  std::string alg = "";
  if (token) {
    const bench::PkeyPtr key = bench::loadPrivateKey(spec.key_file);
    alg = bench::algName(live ? bench::liveAlgForKey(key.get()) : bench::algForKey(key.get()));
    std::printf("  client %s, %s assertions signed %s with TEST-ONLY key %s, aud %s\n", spec.client_id.c_str(),
                alg.c_str(), live ? "on the fly (signer thread on the generator's core)" : "before each phase",
                spec.key_file.c_str(), spec.audience.c_str());
  }

  // Pre-made requests. A token request carries a fresh assertion each time (jti is single-use), so every
  // request is signed here before the timed phase, on all cores (the server is idle meanwhile).
  std::size_t made = 0;
  const auto generate = [&](std::size_t count, const char* what) {
    pinTo(-1);
    const auto t0 = std::chrono::steady_clock::now();
    auto requests = bench::makeTokenRequests(spec, made, count, genThreads);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    made += count;
    std::printf("  generated %zu %s assertions (%s) in %.1f s on %u thread(s): %.0f /s\n", count, alg.c_str(), what,
                took, genThreads, static_cast<double>(count) / took);
    std::fflush(stdout);
    if (cpu) {
      pinTo(*cpu);
    }
    return requests;
  };
  if (cpu) {
    pinTo(*cpu);
  }
  // Started after pinning: the signer thread inherits the generator's CPU, so signing competes with the
  // epoll thread exactly as it would inline, and shows in the generator's CPU.
  std::unique_ptr<bench::LiveQueue> liveQueue;
  if (token && live) {
    liveQueue = std::make_unique<bench::LiveQueue>(
        spec, static_cast<std::size_t>(args.number("live-queue", std::max(1024.0, 32.0 * timed.concurrency))));
  }

  std::vector<std::string> requests;
  if (get) {
    requests.push_back("GET " + url.base + *get + " HTTP/1.1\r\nHost: " + hostHeader + "\r\nAccept: */*\r\n\r\n");
  }
  const bool repeat = !token && !(introspect && *introspect == "miss");
  if (introspect) {
    // Real tokens from the broker first (not timed): the caller's, with the introspection permission, and
    // the tokens to introspect.
    bench::AssertionSpec caller;
    caller.key_file = args.get("caller-key", "");
    caller.client_id = args.get("caller-client-id", "resource-server");
    caller.kid = args.get("caller-kid", caller.client_id);
    caller.scope = "smart-broker:introspect";
    caller.audience = url.text + "/token";
    caller.path = url.base + "/token";
    caller.host = hostHeader;
    caller.jti_prefix = "bench-caller-" + randomHex() + "-";
    bench::AssertionSpec subject = caller;
    subject.key_file = args.get("key", "");
    subject.client_id = args.get("client-id", "rs384-client");
    subject.kid = args.get("kid", subject.client_id);
    subject.scope = "system/*.rs";
    subject.jti_prefix = "bench-subject-" + randomHex() + "-";
    const std::size_t count =
        *introspect == "miss" ? static_cast<std::size_t>(std::stoull(args.get("tokens", "30000"))) : 1;
    const auto t0 = std::chrono::steady_clock::now();
    const std::string bearer =
        bench::fetchTokens(url.host, url.port, bench::makeTokenRequests(caller, 0, 1, 1), 1).front();
    const std::vector<std::string> tokens =
        bench::fetchTokens(url.host, url.port, bench::makeTokenRequests(subject, 0, count, genThreads), 8);
    std::printf("  obtained %zu access token(s) to introspect in %.1f s (not timed)\n", tokens.size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    for (const std::string& t : tokens) {
      const std::string body = "token=" + t;
      requests.push_back("POST " + url.base + "/introspect HTTP/1.1\r\nHost: " + hostHeader +
                         "\r\nAuthorization: Bearer " + bearer +
                         "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " +
                         std::to_string(body.size()) + "\r\n\r\n" + body);
    }
  }

  // Warm-up; with --requests auto it is also the probe that sizes the timed pool.
  double probeRate = 0;
  if (warmup > 0 || (token && requestsArg == "auto")) {
    bench::PhaseOptions probe = timed;
    probe.seconds = warmup > 0 ? warmup : 1.0;
    std::vector<std::string> probeRequests;
    if (token && !live) {
      const double perSecond = alg == "ES384" ? 2000 : 15000;  // generous for today's server, capped below
      probeRequests = generate(std::min(maxRequests, static_cast<std::size_t>(perSecond * probe.seconds)), "warm-up");
    }
    bench::RequestPool pool = liveQueue ? bench::RequestPool(*liveQueue)
                                        : bench::RequestPool(token ? probeRequests : requests, repeat);
    probe.stop_after = 0;
    const bench::PhaseResult r = bench::runPhase(target, pool, probe);
    printPhase("warm-up", r);
    probeRate = static_cast<double>(r.successes + r.failures) / r.elapsed;
  }

  if (token && !live) {
    std::size_t count = 0;
    if (requestsArg == "auto") {
      const double expected = timed.rate > 0 ? timed.rate : probeRate;
      count = static_cast<std::size_t>(std::ceil(expected * timed.seconds * 1.3)) + 2 * timed.concurrency;
      count = std::clamp<std::size_t>(count, 1000, maxRequests);
    } else {
      count = static_cast<std::size_t>(std::stoull(requestsArg));
    }
    requests = generate(count, "timed");
  }

  // RSS samples of the timed phase (t = 0 is its start): the memory targets of issue 3.
  struct MemorySample {
    double t;
    std::uint64_t ok;
    double rss;
    double hwm;
  };
  std::vector<MemorySample> samples;
  if (sampleEvery > 0) {
    timed.sample_every = sampleEvery;
    timed.on_sample = [&](double t, std::uint64_t ok) {
      const ProcSample p = sample(serverPid);
      const double rate = samples.empty() ? static_cast<double>(ok) / t
                                          : static_cast<double>(ok - samples.back().ok) / (t - samples.back().t);
      samples.push_back({t, ok, p.rss_mib, p.hwm_mib});
      std::printf("  sample t=%5.0f s  ok %9llu  (%6.0f /s)  server RSS %6.1f MiB  VmHWM %6.1f MiB\n", t,
                  static_cast<unsigned long long>(ok), rate, p.rss_mib, p.hwm_mib);
      std::fflush(stdout);
    };
  }
  const bench::LiveQueue::Stats liveBefore = liveQueue ? liveQueue->stats() : bench::LiveQueue::Stats{};
  const ProcSample before = sample(serverPid);
  const double dbBefore = treeCpuSeconds(dbPid);
  const MachineSample machineBefore = machine();
  if (sampleEvery > 0) {
    samples.push_back({0, 0, before.rss_mib, before.hwm_mib});
    std::printf("  sample t=%5.0f s  ok %9d  %10s  server RSS %6.1f MiB  VmHWM %6.1f MiB\n", 0.0, 0, "",
                before.rss_mib, before.hwm_mib);
  }
  bench::RequestPool pool = liveQueue ? bench::RequestPool(*liveQueue) : bench::RequestPool(requests, repeat);
  const bench::PhaseResult r = bench::runPhase(target, pool, timed);
  const ProcSample after = sample(serverPid);
  const double dbAfter = treeCpuSeconds(dbPid);
  const MachineSample machineAfter = machine();
  const bench::LiveQueue::Stats liveAfter = liveQueue ? liveQueue->stats() : bench::LiveQueue::Stats{};

  const double rps = static_cast<double>(r.successes) / r.elapsed;
  std::printf("  timed    %.2f s%s\n", r.elapsed,
              r.exhausted ? " (ended early: the pre-generated requests ran out; raise --requests)" : "");
  std::printf("    requests/s      %.0f successful (%.0f responses/s)\n", rps,
              static_cast<double>(r.successes + r.failures) / r.elapsed);
  std::printf("    successes       %llu (HTTP 200 whose body contains %s)\n", static_cast<unsigned long long>(r.successes),
              timed.expect.c_str());
  std::string failures;
  for (const auto& [kind, n] : r.failure_kinds) {
    failures += (failures.empty() ? "" : ",") + kind + ":" + std::to_string(n);
  }
  std::printf("    failures        %llu%s%s\n", static_cast<unsigned long long>(r.failures),
              failures.empty() ? "" : " by status: ", failures.c_str());
  std::printf("    latency ms      p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f  (%llu samples)\n",
              ms(r.latency.quantile(0.5)), ms(r.latency.quantile(0.9)), ms(r.latency.quantile(0.99)),
              ms(r.latency.max()), r.latency.mean() / 1e6, static_cast<unsigned long long>(r.latency.count()));
  std::printf("    connections     %u kept alive, %llu reconnects, %llu in flight at the end (not counted)\n",
              timed.concurrency, static_cast<unsigned long long>(r.reconnects),
              static_cast<unsigned long long>(r.in_flight_at_end));
  const double genCpu = 100.0 * r.cpu_seconds / r.elapsed;
  std::printf("    generator CPU   %.0f%% of one core (busiest epoll thread %.0f%%)%s\n", genCpu,
              100.0 * r.busiest_thread_cpu, cpu ? (", pinned to CPU " + std::to_string(*cpu)).c_str() : "");
  double serverCpu = -1;
  if (before.ok && after.ok) {
    serverCpu = 100.0 * (after.cpu_seconds - before.cpu_seconds) / r.elapsed;
    std::printf("    server CPU      %.0f%% of one core (pid %ld, %ld threads), RSS %.1f MiB, peak RSS (VmHWM) %.1f MiB\n",
                serverCpu, serverPid, after.threads, after.rss_mib, after.hwm_mib);
  } else {
    std::printf("    server CPU      n/a (no --server-pid)\n");
  }
  double dbCpu = -1;
  if (dbBefore >= 0 && dbAfter >= 0) {
    dbCpu = 100.0 * (dbAfter - dbBefore) / r.elapsed;
    std::printf("    database CPU    %.0f%% of one core (PostgreSQL postmaster %ld and its backends)\n", dbCpu, dbPid);
  }
  // Other processes on this machine (builds, tests) compete for the same cores: show how much.
  const double otherCpu = 100.0 *
                          (machineAfter.busy - machineBefore.busy - r.cpu_seconds -
                           (serverCpu >= 0 ? after.cpu_seconds - before.cpu_seconds : 0) -
                           (dbCpu >= 0 ? dbAfter - dbBefore : 0)) /
                          r.elapsed;
  const double stealCpu = 100.0 * (machineAfter.steal - machineBefore.steal) / r.elapsed;
  std::printf("    other load      %.0f%% of one core by other processes%s, steal %.0f%%\n", std::max(0.0, otherCpu),
              serverCpu >= 0 ? "" : " and the server", stealCpu);
  std::string extra;
  if (dbCpu >= 0) {
    extra += " db_cpu_pct=" + std::to_string(static_cast<long>(std::lround(dbCpu)));
  }
  if (liveQueue) {
    const double signerCpu = 100.0 * (liveAfter.signer_cpu_seconds - liveBefore.signer_cpu_seconds) / r.elapsed;
    const double waited = liveAfter.wait_seconds - liveBefore.wait_seconds;
    const auto waits = static_cast<unsigned long long>(liveAfter.empty_waits - liveBefore.empty_waits);
    // The epoll threads waited for a signature less than 1% of the phase: the server, not the signer, set the pace.
    const bool keptUp = waited <= 0.01 * r.elapsed;
    std::printf("    live signer     %llu %s signed, signer thread %.0f%% of one core (in the generator CPU "
                "above); %llu empty-queue waits, %.2f s waited: %s\n",
                static_cast<unsigned long long>(liveAfter.signed_requests - liveBefore.signed_requests), alg.c_str(),
                signerCpu, waits, waited,
                keptUp ? "the signer kept ahead (not the bottleneck)" : "THE SIGNER WAS A BOTTLENECK");
    char text[160];
    std::snprintf(text, sizeof text, " signer_cpu_pct=%.0f signer_waits=%llu signer_wait_s=%.2f signer_kept_up=%d",
                  signerCpu, waits, waited, keptUp ? 1 : 0);
    extra += text;
  }
  if (samples.size() >= 2) {
    // Least-squares slope of RSS over the samples, MiB per minute, and the growth it implies over the window.
    double st = 0, sr = 0;
    for (const auto& m : samples) {
      st += m.t;
      sr += m.rss;
    }
    const double n = static_cast<double>(samples.size());
    const double mt = st / n, mr = sr / n;
    double num = 0, den = 0, lo = samples.front().rss, hi = lo;
    for (const auto& m : samples) {
      num += (m.t - mt) * (m.rss - mr);
      den += (m.t - mt) * (m.t - mt);
      lo = std::min(lo, m.rss);
      hi = std::max(hi, m.rss);
    }
    const double slope = den > 0 ? 60.0 * num / den : 0;  // MiB per minute
    const double window = samples.back().t - samples.front().t;
    const double growth = slope * window / 60.0;
    std::printf("    memory          %zu samples over %.0f s: RSS first %.1f, last %.1f, min %.1f, max %.1f MiB; "
                "slope %+.3f MiB/min = %+.2f MiB over the window; peak (VmHWM) %.1f MiB after %llu tokens\n",
                samples.size(), window, samples.front().rss, samples.back().rss, lo, hi, slope, growth,
                after.hwm_mib, static_cast<unsigned long long>(r.successes));
    char text[240];
    std::snprintf(text, sizeof text,
                  " samples=%zu window_s=%.0f rss_first_mib=%.1f rss_last_mib=%.1f rss_min_mib=%.1f rss_max_mib=%.1f "
                  "rss_slope_mib_min=%.4f rss_growth_mib=%.3f",
                  samples.size(), window, samples.front().rss, samples.back().rss, lo, hi, slope, growth);
    extra += text;
  }
  std::string ratios;
  for (const std::string& c : args.values.count("ceiling") != 0 ? args.values.at("ceiling") : std::vector<std::string>{}) {
    const std::size_t eq = c.rfind('=');
    const double ceiling = std::stod(c.substr(eq + 1));
    std::printf("    vs ceiling      %s %.0f /s: achieved %.1f%%\n", c.substr(0, eq).c_str(), ceiling,
                100.0 * rps / ceiling);
    ratios += " ratio_" + c.substr(0, eq) + "=" + std::to_string(rps / ceiling);
  }
  std::printf("RESULT scenario=%s rps=%.1f ok=%llu fail=%llu p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
              "gen_cpu_pct=%.0f server_cpu_pct=%.0f server_rss_mib=%.1f server_hwm_mib=%.1f requests=%zu "
              "exhausted=%d other_cpu_pct=%.0f failures=%s%s%s\n",
              scenario.c_str(), rps, static_cast<unsigned long long>(r.successes),
              static_cast<unsigned long long>(r.failures), ms(r.latency.quantile(0.5)), ms(r.latency.quantile(0.9)),
              ms(r.latency.quantile(0.99)), ms(r.latency.max()), genCpu, serverCpu, after.rss_mib, after.hwm_mib,
              token ? (liveQueue ? pool.taken() : requests.size()) : std::size_t{0}, r.exhausted ? 1 : 0,
              std::max(0.0, otherCpu), failures.empty() ? "none" : failures.c_str(), ratios.c_str(), extra.c_str());
  return 0;
}

int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    return 1;
  }
  std::printf("%u\n", static_cast<unsigned>(ntohs(address.sin_port)));
  ::close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args args = parseArgs(argc, argv);
    if (args.command == "crypto") {
      return crypto(args);
    }
    if (args.command == "load") {
      return load(args);
    }
    if (args.command == "client-algs") {
      return clientAlgs(args);
    }
    if (args.command == "free-port") {
      return freePort();
    }
    std::cerr << kUsage;
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "smartbroker-bench: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "smartbroker-bench: " << e.what() << "\n";
    return 1;
  }
}
