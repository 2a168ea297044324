// The POCO JWK Set fetcher: verified TLS, no redirects, accepted media types only, capped body, hard deadlines.
#include <sys/socket.h>

#include <Poco/DateTimeFormat.h>
#include <Poco/DateTimeFormatter.h>
#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/Net/SSLException.h>
#include <Poco/Net/SecureStreamSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/String.h>
#include <Poco/Timespan.h>
#include <Poco/Timestamp.h>
#include <Poco/URI.h>

#include <array>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "smartbroker/jwks/fetch.hpp"

namespace smartbroker::jwks {

std::string_view failureName(FetchFailure failure) {
  switch (failure) {
    case FetchFailure::InvalidUri: return "invalid_uri";
    case FetchFailure::Dns: return "dns";
    case FetchFailure::Connect: return "connect";
    case FetchFailure::Tls: return "tls";
    case FetchFailure::Timeout: return "timeout";
    case FetchFailure::Io: return "io";
    case FetchFailure::Redirect: return "redirect";
    case FetchFailure::HttpStatus: return "http_status";
    case FetchFailure::TooLarge: return "too_large";
    case FetchFailure::ContentType: return "content_type";
    case FetchFailure::InvalidJwkSet: return "invalid_jwk_set";
    case FetchFailure::NoUsableKeys: return "no_usable_keys";
  }
  return "unknown";
}

bool acceptableJwksContentType(std::string_view contentType) {
  const std::size_t semicolon = contentType.find(';');
  std::string_view type = contentType.substr(0, semicolon);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) {
    type.remove_suffix(1);
  }
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) {
    type.remove_prefix(1);
  }
  const std::string t = Poco::toLower(std::string(type));
  return t == "application/json" || t == "application/jwk-set+json";
}

namespace {

using SteadyTime = std::chrono::steady_clock::time_point;

/// Enforces whole-response deadlines: socket timeouts bound each read, but a server that sends one byte just
/// before every timeout could hold a worker for ever. One thread shuts down (never closes) sockets whose
/// deadline passed; the blocked read then returns and the fetch fails as a timeout.
class DeadlineReaper {
 public:
  DeadlineReaper() : thread_([this] { run(); }) {}
  ~DeadlineReaper() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  DeadlineReaper(const DeadlineReaper&) = delete;
  DeadlineReaper& operator=(const DeadlineReaper&) = delete;

  std::uint64_t arm(int fd, SteadyTime deadline) {
    const std::lock_guard lock(mutex_);
    const std::uint64_t id = ++next_;
    armed_.emplace(id, Armed{fd, deadline, false});
    wake_.notify_all();
    return id;
  }

  /// Forgets `id`; true when its deadline fired. After this returns the fd is never touched again, so the
  /// caller may close it (the lock makes a shutdown in progress finish first).
  bool disarm(std::uint64_t id) {
    const std::lock_guard lock(mutex_);
    const auto it = armed_.find(id);
    if (it == armed_.end()) {
      return false;
    }
    const bool fired = it->second.fired;
    armed_.erase(it);
    return fired;
  }

  bool fired(std::uint64_t id) const {
    const std::lock_guard lock(mutex_);
    const auto it = armed_.find(id);
    return it != armed_.end() && it->second.fired;
  }

 private:
  struct Armed {
    int fd;
    SteadyTime deadline;
    bool fired;
  };

  void run() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      const auto now = std::chrono::steady_clock::now();
      std::optional<SteadyTime> next;
      for (auto& [id, armed] : armed_) {
        if (armed.fired) {
          continue;
        }
        if (armed.deadline <= now) {
          ::shutdown(armed.fd, SHUT_RDWR);
          armed.fired = true;
        } else if (!next || armed.deadline < *next) {
          next = armed.deadline;
        }
      }
      if (next) {
        wake_.wait_until(lock, *next);
      } else {
        wake_.wait(lock);
      }
    }
  }

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::uint64_t, Armed> armed_;
  std::uint64_t next_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: started after every member it uses exists
};

/// Disarms on scope exit; declared after the session so that it runs before the session closes the socket.
class ArmedDeadline {
 public:
  ArmedDeadline(DeadlineReaper& reaper, int fd, SteadyTime deadline)
      : reaper_(reaper), id_(reaper.arm(fd, deadline)) {}
  ~ArmedDeadline() { disarm(); }
  ArmedDeadline(const ArmedDeadline&) = delete;
  ArmedDeadline& operator=(const ArmedDeadline&) = delete;
  bool fired() const { return done_ ? fired_ : reaper_.fired(id_); }
  void disarm() {
    if (!done_) {
      fired_ = reaper_.disarm(id_);
      done_ = true;
    }
  }

 private:
  DeadlineReaper& reaper_;
  std::uint64_t id_;
  bool done_ = false;
  bool fired_ = false;
};

Poco::Timespan timespan(std::chrono::milliseconds ms) {
  return Poco::Timespan(static_cast<Poco::Timespan::TimeDiff>(ms.count()) * 1000);
}

/// Untrusted header text for a log detail: short, and the Log escapes the rest.
std::string quoteable(std::string_view s) { return std::string(s.substr(0, 64)); }

std::unexpected<FetchError> fail(FetchFailure reason, std::string detail, int status = 0, std::size_t bytes = 0) {
  return std::unexpected(FetchError{reason, std::move(detail), status, bytes});
}

bool isLoopbackName(const std::string& host) {
  const std::string h = Poco::toLower(host);
  return h == "127.0.0.1" || h == "::1" || h == "localhost";
}

enum class Phase : std::uint8_t { Connect, Response };

/// Translates POCO's exceptions at the module boundary; the most specific type decides.
FetchError classify(const Poco::Exception& e, Phase phase) {
  const std::string what = e.displayText();
  if (dynamic_cast<const Poco::TimeoutException*>(&e) != nullptr) {
    return {FetchFailure::Timeout, what, 0, 0};
  }
  if (dynamic_cast<const Poco::Net::SSLException*>(&e) != nullptr) {
    return {FetchFailure::Tls, what, 0, 0};
  }
  if (dynamic_cast<const Poco::Net::DNSException*>(&e) != nullptr) {
    return {FetchFailure::Dns, what, 0, 0};
  }
  if (dynamic_cast<const Poco::Net::ConnectionRefusedException*>(&e) != nullptr) {
    return {FetchFailure::Connect, what, 0, 0};
  }
  // Anything else (reset, unreachable, malformed message) is a connect failure before the request went out
  // and an I/O failure after.
  return {phase == Phase::Connect ? FetchFailure::Connect : FetchFailure::Io, what, 0, 0};
}

class HttpFetcher final : public JwksFetcher {
 public:
  explicit HttpFetcher(HttpFetcherOptions options) : options_(std::move(options)) {
    Poco::Net::initializeSSL();
    Poco::Net::Context::Params params;
    // Why: the keys decide who may get tokens; an unverified peer could substitute its own.
    params.verificationMode = Poco::Net::Context::VERIFY_STRICT;
    params.loadDefaultCAs = true;
    params.verificationDepth = 9;
    params.cipherList = "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES";
    context_ = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, params);
    context_->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
  }
  ~HttpFetcher() override {
    context_.reset();
    Poco::Net::uninitializeSSL();
  }
  HttpFetcher(const HttpFetcher&) = delete;
  HttpFetcher& operator=(const HttpFetcher&) = delete;

  std::expected<FetchedDocument, FetchError> fetch(const std::string& text) override {
    try {
      return fetchUnguarded(text);
    } catch (const Poco::Exception& e) {
      return std::unexpected(classify(e, Phase::Response));
    } catch (const std::exception& e) {
      return fail(FetchFailure::Io, std::string("unexpected: ") + e.what());
    }
  }

 private:
  std::expected<FetchedDocument, FetchError> fetchUnguarded(const std::string& text) {
    Poco::URI uri;
    try {
      uri = Poco::URI(text);
    } catch (const Poco::Exception& e) {
      return fail(FetchFailure::InvalidUri, "not a URL: " + e.message());
    }
    const std::string scheme = uri.getScheme();
    const bool https = scheme == "https";
    if (!https && scheme != "http") {
      return fail(FetchFailure::InvalidUri, "scheme must be https");
    }
    if (!uri.getUserInfo().empty() || uri.getHost().empty()) {
      return fail(FetchFailure::InvalidUri, "URL has userinfo or no host");
    }
    const std::string host = uri.getHost();
    const Poco::UInt16 port = uri.getPort();
    // Configuration already refuses these; checked again here so the fetcher is safe on its own.
    if (!https && (!options_.allow_http_loopback || !isLoopbackName(host))) {
      return fail(FetchFailure::InvalidUri, "plain http is allowed only to loopback hosts, and only when configured");
    }

    Poco::Net::SocketAddress address;
    try {
      address = Poco::Net::SocketAddress(host, port);
    } catch (const Poco::Net::DNSException& e) {
      return fail(FetchFailure::Dns, e.displayText());
    } catch (const Poco::Exception& e) {
      return fail(FetchFailure::Dns, e.displayText());
    }
    if (!https && !address.host().isLoopback()) {
      return fail(FetchFailure::InvalidUri, "http host " + quoteable(host) + " resolved to a non-loopback address");
    }

    // Connect to the address just resolved (one resolution, so what was checked is what is used), while TLS
    // verifies the certificate against the host name from the URL and sends it as SNI.
    std::unique_ptr<Poco::Net::HTTPClientSession> session;
    if (https) {
      auto secure = std::make_unique<Poco::Net::HTTPSClientSession>(context_);
      secure->setHost(address.host().toString());
      secure->setPort(port);
      Poco::Net::SecureStreamSocket(secure->socket()).setPeerHostName(host);
      session = std::move(secure);
    } else {
      session = std::make_unique<Poco::Net::HTTPClientSession>(address);
    }
    // An empty proxy configuration: keys are fetched directly, never through a process-wide proxy setting.
    session->setProxyConfig(Poco::Net::HTTPClientSession::ProxyConfig());
    session->setKeepAlive(false);
    session->setTimeout(timespan(options_.connect_timeout), timespan(options_.read_timeout),
                        timespan(options_.read_timeout));

    const std::string target = uri.getPathAndQuery().empty() ? "/" : uri.getPathAndQuery();
    Poco::Net::HTTPRequest request(Poco::Net::HTTPRequest::HTTP_GET, target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(host, port);
    request.set("Accept", "application/jwk-set+json, application/json");
    request.set("User-Agent", options_.user_agent);
    request.setKeepAlive(false);
    try {
      session->sendRequest(request);
    } catch (const Poco::Exception& e) {
      return std::unexpected(classify(e, Phase::Connect));
    }

    const ArmedDeadline deadlineGuard(reaper_, static_cast<int>(session->socket().impl()->sockfd()),
                                      std::chrono::steady_clock::now() + options_.read_timeout);
    auto timedOut = [&](const std::string& detail) {
      return fail(FetchFailure::Timeout, "no complete response within " +
                                             std::to_string(options_.read_timeout.count()) + " ms (" + detail + ")");
    };
    Poco::Net::HTTPResponse response;
    std::istream* body = nullptr;
    try {
      body = &session->receiveResponse(response);
    } catch (const Poco::Exception& e) {
      if (deadlineGuard.fired()) {
        return timedOut("headers");
      }
      return std::unexpected(classify(e, Phase::Response));
    }
    const int status = static_cast<int>(response.getStatus());
    if (status >= 300 && status <= 399) {
      // Why: a redirect would let the URL's host (or anyone who can inject a 3xx) name another key source.
      return fail(FetchFailure::Redirect, "HTTP " + std::to_string(status) + " (redirects are not followed)", status);
    }
    if (status != 200) {
      return fail(FetchFailure::HttpStatus, "HTTP " + std::to_string(status), status);
    }
    const std::string contentType = response.getContentType();
    if (!acceptableJwksContentType(contentType)) {
      return fail(FetchFailure::ContentType,
                  contentType.empty() ? "no Content-Type" : "Content-Type " + quoteable(contentType), status);
    }
    if (response.has("Content-Encoding") && Poco::icompare(response.get("Content-Encoding"), "identity") != 0) {
      return fail(FetchFailure::ContentType, "Content-Encoding " + quoteable(response.get("Content-Encoding")),
                  status);
    }
    const std::size_t cap = options_.max_bytes;
    if (response.hasContentLength() && response.getContentLength64() > static_cast<Poco::Int64>(cap)) {
      return fail(FetchFailure::TooLarge,
                  "Content-Length " + std::to_string(response.getContentLength64()) + " over " +
                      std::to_string(cap) + " bytes",
                  status, static_cast<std::size_t>(response.getContentLength64()));
    }

    FetchedDocument document;
    document.status = status;
    std::array<char, 8192> buffer{};
    while (!body->eof() && !body->bad()) {
      body->read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const auto n = static_cast<std::size_t>(body->gcount());
      document.body.append(buffer.data(), n);
      if (document.body.size() > cap) {
        // Stop reading at once: the rest of an oversized body is never buffered.
        return fail(FetchFailure::TooLarge, "body over " + std::to_string(cap) + " bytes", status,
                    document.body.size());
      }
      if (n == 0) {
        break;
      }
    }
    if (deadlineGuard.fired()) {
      return timedOut("body");
    }
    if (body->bad()) {
      if (const Poco::Exception* e = session->networkException()) {
        FetchError error = classify(*e, Phase::Response);
        error.status = status;
        error.bytes = document.body.size();
        return std::unexpected(std::move(error));
      }
      return fail(FetchFailure::Io, "reading the body failed", status, document.body.size());
    }
    if (response.hasContentLength() &&
        static_cast<Poco::Int64>(document.body.size()) != response.getContentLength64()) {
      return fail(FetchFailure::Io,
                  "body truncated at " + std::to_string(document.body.size()) + " of " +
                      std::to_string(response.getContentLength64()) + " bytes",
                  status, document.body.size());
    }

    std::string cacheControl;
    for (const auto& [name, value] : response) {
      // Several Cache-Control lines mean one list (RFC 9110 §5.3); every directive in any of them counts.
      if (Poco::icompare(name, "Cache-Control") == 0) {
        cacheControl += cacheControl.empty() ? value : ", " + value;
      }
    }
    document.cache.cache_control = std::move(cacheControl);
    if (response.has("Expires")) {
      document.cache.expires = response.get("Expires");
    }
    if (response.has("Age")) {
      document.cache.age = response.get("Age");
    }
    // RFC 9110 §6.6.1: a recipient with a clock records the receipt time when the origin sent no Date.
    document.cache.date = response.has("Date")
                              ? response.get("Date")
                              : Poco::DateTimeFormatter::format(Poco::Timestamp(), Poco::DateTimeFormat::HTTP_FORMAT);
    return document;
  }

  HttpFetcherOptions options_;
  Poco::Net::Context::Ptr context_;
  DeadlineReaper reaper_;
};

}  // namespace

std::unique_ptr<JwksFetcher> makeHttpFetcher(HttpFetcherOptions options) {
  return std::make_unique<HttpFetcher>(std::move(options));
}

}  // namespace smartbroker::jwks
