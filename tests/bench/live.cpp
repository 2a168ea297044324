// The on-the-fly assertion signer behind `smartbroker-bench load --sign live`.
#include "live.hpp"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <stdexcept>
#include <utility>

#include "smartbroker/jwks/base64url.hpp"

namespace smartbroker::bench {
namespace {

/// application/x-www-form-urlencoded for the few values the bench sends (the same escaping as crypto.cpp).
std::string formEscape(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '*') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 0xf]);
    }
  }
  return out;
}

double clockSeconds(clockid_t clock) {
  timespec ts{};
  if (clock_gettime(clock, &ts) != 0) {
    return 0;
  }
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

}  // namespace

JwsAlg liveAlgForKey(EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC && EVP_PKEY_get_bits(key) == 256) {
    return JwsAlg::ES256;
  }
  return algForKey(key);
}

AssertionSigner::AssertionSigner(const AssertionSpec& spec)
    : spec_(spec), key_(loadPrivateKey(spec.key_file)), alg_(liveAlgForKey(key_.get())) {
  header_ = jwks::base64urlEncode(std::string("{\"alg\":\"") + algName(alg_) + "\",\"kid\":\"" + spec_.kid +
                                  "\",\"typ\":\"JWT\"}");
  prefix_ = "grant_type=client_credentials&client_assertion_type=" +
            formEscape("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") + "&client_assertion=";
  suffix_ = "&scope=" + formEscape(spec_.scope);
}

void AssertionSigner::make(std::uint64_t n, std::string& out) const {
  const std::int64_t exp = static_cast<std::int64_t>(std::time(nullptr)) + 300;
  const std::string claims = "{\"iss\":\"" + spec_.client_id + "\",\"sub\":\"" + spec_.client_id + "\",\"aud\":\"" +
                             spec_.audience + "\",\"exp\":" + std::to_string(exp) + ",\"jti\":\"" + spec_.jti_prefix +
                             std::to_string(n) + "\"}";
  const std::string input = header_ + "." + jwks::base64urlEncode(claims);
  const std::string signature = jwks::base64urlEncode(signJws(key_.get(), alg_, input));
  const std::size_t bodySize = prefix_.size() + input.size() + 1 + signature.size() + suffix_.size();
  out.clear();
  out += "POST ";
  out += spec_.path;
  out += " HTTP/1.1\r\nHost: ";
  out += spec_.host;
  out += "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ";
  out += std::to_string(bodySize);
  out += "\r\n\r\n";
  out += prefix_;
  out += input;
  out += '.';
  out += signature;
  out += suffix_;
}

LiveQueue::LiveQueue(const AssertionSpec& spec, std::size_t capacity)
    : signer_(spec), capacity_(std::max<std::size_t>(2, capacity)) {
  thread_ = std::thread([this] { run(); });
  if (pthread_getcpuclockid(thread_.native_handle(), &signer_clock_) != 0) {
    signer_clock_ = CLOCK_PROCESS_CPUTIME_ID;  // not expected on Linux; overstates rather than hides the cost
  }
}

LiveQueue::~LiveQueue() {
  {
    const std::lock_guard lock(mutex_);
    stop_ = true;
  }
  room_.notify_all();
  ready_.notify_all();
  thread_.join();
}

void LiveQueue::run() {
  std::uint64_t n = 0;
  std::string request;
  for (;;) {
    try {
      signer_.make(n++, request);
    } catch (const std::exception& e) {
      // Consumers then see a spent pool and the phase ends early ("exhausted"), with the cause on stderr.
      std::fprintf(stderr, "smartbroker-bench: live signer stopped: %s\n", e.what());
      const std::lock_guard lock(mutex_);
      stop_ = true;
      ready_.notify_all();
      return;
    }
    std::unique_lock lock(mutex_);
    if (queue_.size() >= capacity_) {
      signer_waiting_ = true;
      room_.wait(lock, [&] { return stop_ || queue_.size() <= capacity_ / 2; });
      signer_waiting_ = false;
    }
    if (stop_) {
      return;
    }
    queue_.push_back(std::move(request));
    ++signed_;
    if (!spare_.empty()) {
      request = std::move(spare_.front());
      spare_.pop_front();
    } else {
      request = std::string();
    }
    if (consumers_waiting_ > 0) {
      ready_.notify_one();  // only then: a futex wake per request would cost more than it saves
    }
  }
}

bool LiveQueue::pop(std::string& out) {
  std::unique_lock lock(mutex_);
  if (queue_.empty() && !stop_) {
    ++empty_waits_;
    ++consumers_waiting_;
    const auto start = std::chrono::steady_clock::now();
    ready_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    --consumers_waiting_;
  }
  if (queue_.empty()) {
    return false;
  }
  // The caller's previous request buffer goes back to the signer, so that steady state allocates nothing.
  std::swap(out, queue_.front());
  std::string previous = std::move(queue_.front());
  queue_.pop_front();
  if (previous.capacity() > 0 && spare_.size() < capacity_) {
    spare_.push_back(std::move(previous));
  }
  if (signer_waiting_ && queue_.size() <= capacity_ / 2) {
    room_.notify_one();
  }
  return true;
}

LiveQueue::Stats LiveQueue::stats() const {
  Stats s;
  {
    const std::lock_guard lock(mutex_);
    s.signed_requests = signed_;
    s.empty_waits = empty_waits_;
    s.wait_seconds = wait_seconds_;
  }
  s.signer_cpu_seconds = clockSeconds(signer_clock_);
  return s;
}

}  // namespace smartbroker::bench

namespace smartbroker::bench {
namespace {

/// JWS R||S -> DER ECDSA-Sig-Value, for EVP_DigestVerify.
std::string rawToDer(std::string_view raw) {
  const std::size_t half = raw.size() / 2;
  const auto* p = reinterpret_cast<const unsigned char*>(raw.data());
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(p, static_cast<int>(half), nullptr);
  BIGNUM* s = BN_bin2bn(p + half, static_cast<int>(half), nullptr);
  if (sig == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(sig, r, s) != 1) {
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(sig);
    throw std::runtime_error("ECDSA_SIG_set0 failed");
  }
  unsigned char* der = nullptr;
  const int length = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (length <= 0) {
    throw std::runtime_error("i2d_ECDSA_SIG failed");
  }
  std::string out(reinterpret_cast<const char*>(der), static_cast<std::size_t>(length));
  OPENSSL_free(der);
  return out;
}

template <typename Op>
double opsPerSecond(double seconds, Op op) {
  for (int i = 0; i < 10; ++i) {
    op();
  }
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::duration<double>(seconds);
  std::uint64_t n = 0;
  auto now = start;
  while (now < deadline) {
    op();
    ++n;
    now = std::chrono::steady_clock::now();
  }
  return static_cast<double>(n) / std::chrono::duration<double>(now - start).count();
}

}  // namespace

AlgRates measureAlg(const std::string& keyFile, double seconds) {
  const PkeyPtr key = loadPrivateKey(keyFile);
  AlgRates rates;
  rates.alg = liveAlgForKey(key.get());
  const EVP_MD* md = rates.alg == JwsAlg::ES256 ? EVP_sha256() : EVP_sha384();
  const std::string input =
      jwks::base64urlEncode(R"({"alg":"ES256","kid":"es256-client","typ":"JWT"})") + "." +
      jwks::base64urlEncode(R"({"iss":"es256-client","sub":"es256-client","aud":"http://127.0.0.1:8080/token",)"
                            R"("exp":1700000300,"jti":"bench-0123456789abcdef-123456"})");
  const std::string jws = signJws(key.get(), rates.alg, input);
  const std::string sig = rates.alg == JwsAlg::RS384 ? jws : rawToDer(jws);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  const auto* s = reinterpret_cast<const unsigned char*>(sig.data());
  bool ok = true;
  rates.sign = opsPerSecond(seconds / 2, [&] { (void)signJws(key.get(), rates.alg, input); });
  rates.verify = opsPerSecond(seconds / 2, [&] {
    EVP_MD_CTX_reset(ctx);
    ok = ok && EVP_DigestVerifyInit(ctx, nullptr, md, nullptr, key.get()) == 1 &&
         EVP_DigestVerify(ctx, s, sig.size(), in, input.size()) == 1;
  });
  EVP_MD_CTX_free(ctx);
  if (!ok) {
    throw std::runtime_error("measureAlg: a signature did not verify");
  }
  return rates;
}

}  // namespace smartbroker::bench
