// POCO HTTP(S) server adapter: bounded request reading, routing, common headers, and the boundary catch.
#include "smartbroker/broker/http_server.hpp"

#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/HTTPServerResponseImpl.h>
#include <Poco/Net/HTTPServerSession.h>
#include <Poco/Net/NetException.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/TCPServer.h>
#include <Poco/Net/TCPServerConnection.h>
#include <Poco/Net/TCPServerConnectionFactory.h>
#include <Poco/ThreadPool.h>
#include <Poco/Timestamp.h>
#include <poll.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "smartbroker/broker/consent_endpoint.hpp"

namespace smartbroker::broker {
namespace {

using Poco::Net::HTTPResponse;
using Poco::Net::HTTPServerRequest;
using Poco::Net::HTTPServerResponse;

enum class Route : std::uint8_t {
  Token,
  Introspect,
  Revoke,
  Consents,
  Jwks,
  SmartConfiguration,
  OAuthMetadata,
  Health,
  NotFound,
};

class Connection;

/// The path part of `public_base_url`, e.g. "/smart", or "" at the root.
std::string basePath(const std::string& publicBaseUrl) {
  const std::size_t scheme = publicBaseUrl.find("://");
  const std::size_t slash = scheme == std::string::npos ? std::string::npos : publicBaseUrl.find('/', scheme + 3);
  return slash == std::string::npos ? std::string() : publicBaseUrl.substr(slash);
}

}  // namespace

struct HttpServer::Impl {
  Impl(const config::Server& serverConfig, Endpoints routes, const Log& logger)
      : config(serverConfig), endpoints(routes), log(logger), prefix(basePath(serverConfig.public_base_url)) {}

  const config::Server& config;
  Endpoints endpoints;
  const Log& log;
  std::string prefix;
  bool tls = false;
  Poco::Net::HTTPServerParams::Ptr params;
  // The open connections, so that stop() can close the idle ones (declared before the pool: they outlive its
  // threads).
  std::mutex connectionsMutex;
  std::unordered_set<Connection*> connections;
  bool stopping = false;
  std::unique_ptr<Poco::ThreadPool> pool;
  std::unique_ptr<Poco::Net::TCPServer> server;
  std::uint16_t port = 0;

  /// What one exchange needs besides the parsed request: POCO's request and response, and whether the body was
  /// read (a body left unread on the connection would be parsed as the next request: the connection closes).
  struct Exchange {
    HTTPServerRequest& raw;
    HTTPServerResponse& response;
    bool bodyRead = false;
  };

  void serve(HTTPServerRequest& raw, HTTPServerResponse& response) const;
  bool track(Connection* connection);
  void untrack(Connection* connection);
  void stopConnections(bool abort);

  Route route(std::string_view path) const {
    // A reverse proxy may forward /smart/token as /token (prefix stripped) or unchanged: accept both.
    if (!prefix.empty() && path.starts_with(prefix)) {
      path.remove_prefix(prefix.size());
    }
    if (path == "/token") {
      return Route::Token;
    }
    if (path == "/introspect") {
      return Route::Introspect;
    }
    if (path == "/revoke") {
      return Route::Revoke;
    }
    if (path.starts_with("/consents/")) {
      return Route::Consents;
    }
    if (path == "/jwks.json") {
      return Route::Jwks;
    }
    if (path == "/.well-known/smart-configuration") {
      return Route::SmartConfiguration;
    }
    if (path == "/.well-known/oauth-authorization-server" ||
        (!prefix.empty() && path == "/.well-known/oauth-authorization-server" + prefix)) {
      return Route::OAuthMetadata;
    }
    if (path == "/healthz") {
      return Route::Health;
    }
    return Route::NotFound;
  }

  static HttpReply error(int status, std::string_view code, std::string_view description) {
    return HttpReply::noStoreJson(status, errorBody({status, code, description}));
  }

  static HttpReply publicJson(const std::string& body, std::int64_t maxAge) {
    HttpReply reply;
    reply.body = body;
    reply.headers = {{"Cache-Control", "public, max-age=" + std::to_string(maxAge)},
                     {"Access-Control-Allow-Origin", "*"}};
    return reply;
  }

  /// GET (and HEAD) only endpoints; OPTIONS answers a CORS preflight.
  static std::optional<HttpReply> getOnly(const std::string& method, bool cors) {
    if (method == "GET" || method == "HEAD") {
      return std::nullopt;
    }
    if (cors && method == "OPTIONS") {
      HttpReply reply;
      reply.status = 204;
      reply.content_type.clear();
      reply.headers = {{"Access-Control-Allow-Origin", "*"},
                       {"Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"},
                       {"Access-Control-Max-Age", "86400"}};
      return reply;
    }
    HttpReply reply = error(405, "invalid_request", "Method not allowed on this endpoint");
    reply.headers.emplace_back("Allow", cors ? "GET, HEAD, OPTIONS" : "GET, HEAD");
    return reply;
  }

  HttpReply dispatch(Route r, HttpRequest& request, Exchange& exchange) const {
    switch (r) {
      case Route::Token: {
        if (request.method == "POST") {
          if (auto failure = readBody(exchange, request)) {
            return *failure;
          }
        }
        return endpoints.token.handle(request);
      }
      case Route::Introspect:
      case Route::Revoke: {
        if (request.method == "POST") {
          if (auto failure = readBody(exchange, request)) {
            return *failure;
          }
        }
        if (r == Route::Introspect && endpoints.introspection != nullptr) {
          return endpoints.introspection->handle(request);
        }
        if (r == Route::Revoke && endpoints.revocation != nullptr) {
          return endpoints.revocation->handle(request);
        }
        break;
      }
      case Route::Consents: {
        if (endpoints.consent == nullptr) {
          break;
        }
        if (request.method == "PUT" || request.method == "DELETE") {
          // A FHIR Consent may be larger than a token request: its own limit (consent.max_resource_bytes).
          if (auto failure = readBody(exchange, request, endpoints.consent->maxBodyBytes())) {
            return *failure;
          }
        }
        return endpoints.consent->handle(request);
      }
      case Route::Jwks: {
        if (auto refused = getOnly(request.method, true)) {
          return *refused;
        }
        return publicJson(endpoints.keys.get()->jwksJson, endpoints.jwks_max_age);
      }
      case Route::SmartConfiguration: {
        if (auto refused = getOnly(request.method, true)) {
          return *refused;
        }
        return publicJson(endpoints.discovery.get()->smart_configuration, 300);
      }
      case Route::OAuthMetadata: {
        if (auto refused = getOnly(request.method, true)) {
          return *refused;
        }
        return publicJson(endpoints.discovery.get()->oauth_metadata, 300);
      }
      case Route::Health: {
        if (auto refused = getOnly(request.method, false)) {
          return *refused;
        }
        HttpReply reply = endpoints.store.healthy() ? HttpReply::noStoreJson(200, "{\"status\":\"ok\"}")
                                                    : HttpReply::noStoreJson(503, "{\"status\":\"store_unavailable\"}");
        return reply;
      }
      case Route::NotFound:
        break;
    }
    return error(404, "invalid_request", "Unknown endpoint");
  }

  /// Reads at most the configured number of bytes; a longer body is refused without being read.
  std::optional<HttpReply> readBody(Exchange& exchange, HttpRequest& request, std::size_t maxBytes = 0) const {
    HTTPServerRequest& raw = exchange.raw;
    const std::size_t limit = maxBytes != 0 ? maxBytes : config.limits.max_body_bytes;
    const auto tooLarge = [&] {
      log.event("request_refused", {{"reason", "body_too_large"}, {"path", request.path}});
      return error(413, "invalid_request", "Request body is too large");
    };
    if (raw.hasContentLength() && raw.getContentLength64() > static_cast<Poco::Int64>(limit)) {
      return tooLarge();  // no 100 Continue: a client that waits for it never sends the body
    }
    exchange.bodyRead = true;
    if (raw.getExpectContinue()) {
      exchange.response.sendContinue();
    }
    // Read in chunks into a buffer that grows with what arrives (not a zero-filled buffer of the whole limit),
    // stopping one byte past the limit.
    std::istream& in = raw.stream();
    char chunk[4096];
    request.body.clear();
    if (raw.hasContentLength()) {
      request.body.reserve(static_cast<std::size_t>(raw.getContentLength64()));
    }
    while (request.body.size() <= limit && in) {
      in.read(chunk, static_cast<std::streamsize>(std::min(sizeof chunk, limit + 1 - request.body.size())));
      request.body.append(chunk, static_cast<std::size_t>(in.gcount()));
    }
    if (request.body.size() > limit) {
      return tooLarge();
    }
    return std::nullopt;
  }

  static void send(const HttpReply& reply, const std::string& method, HTTPServerResponse& response) {
    response.setStatusAndReason(static_cast<HTTPResponse::HTTPStatus>(reply.status));
    if (!reply.content_type.empty()) {
      response.setContentType(reply.content_type);
    }
    response.set("X-Content-Type-Options", "nosniff");
    for (const auto& [name, value] : reply.headers) {
      response.set(name, value);
    }
    if (reply.status == 413) {
      // The unread body is still on the connection: close it rather than parse it as the next request.
      response.setKeepAlive(false);
    }
    if (method == "HEAD") {
      response.setContentLength64(static_cast<Poco::Int64>(reply.body.size()));
      response.send();
      return;
    }
    if (reply.status == 413) {
      // Flushed now, not when POCO finishes the request: the lingering close that follows must find the
      // response already on the wire.
      response.setContentLength64(static_cast<Poco::Int64>(reply.body.size()));
      std::ostream& out = response.send();
      out.write(reply.body.data(), static_cast<std::streamsize>(reply.body.size()));
      out.flush();
      return;
    }
    response.sendBuffer(reply.body.data(), reply.body.size());
  }
};

namespace {

/// POCO's server session, with what is already read from the socket in view.
class Session final : public Poco::Net::HTTPServerSession {
 public:
  using HTTPServerSession::HTTPServerSession;
  int bufferedBytes() const { return buffered(); }
};

/// The 413 was sent (and flushed) with most of the body still unread. Closing a socket whose receive queue is not
/// empty makes the kernel send RST, and a client still writing its body can lose the response to it. So stop
/// sending (a FIN over TCP; POCO's TLS socket ignores shutdownSend, and the drain alone keeps the queue empty),
/// then read and discard what the client still sends, within a bound of bytes and time (the same "lingering
/// close" as Apache and nginx), before the connection is closed.
void lingeringClose(HTTPServerRequest& raw) {
  constexpr std::size_t kMaxDrainBytes = 1U << 20;
  constexpr auto kMaxDrainTime = std::chrono::seconds(2);
  auto* impl = dynamic_cast<Poco::Net::HTTPServerRequestImpl*>(&raw);
  if (impl == nullptr) {
    return;
  }
  try {
    Poco::Net::StreamSocket& socket = impl->socket();
    socket.shutdownSend();
    socket.setReceiveTimeout(Poco::Timespan(0, 250'000));
    const auto deadline = std::chrono::steady_clock::now() + kMaxDrainTime;
    char sink[4096];
    std::size_t drained = 0;
    while (drained < kMaxDrainBytes && std::chrono::steady_clock::now() < deadline) {
      const int n = socket.receiveBytes(sink, sizeof sink);
      if (n <= 0) {
        break;
      }
      drained += static_cast<std::size_t>(n);
    }
  } catch (const Poco::Exception&) {
    // A timeout or a reset: the client is gone or idle; nothing more to do before the close.
  }
}

/// One connection, served on a pool thread for as long as it stays open. What POCO's HTTPServerConnection does,
/// with POCO's request parser and response writer, except for two things: between keep-alive requests it waits
/// with one poll(2) (POCO's Socket::poll creates, registers and closes an epoll instance for every wait: three
/// extra system calls per request, ~7% of the token path and more of the cheap endpoints; issue 3), and it leaves
/// "100 Continue" to the body reader, which sends it only for a body it is going to read.
class Connection final : public Poco::Net::TCPServerConnection {
 public:
  Connection(const Poco::Net::StreamSocket& socket, HttpServer::Impl& impl)
      : TCPServerConnection(socket), impl_(impl) {}

  void run() override {
    if (!impl_.track(this)) {
      return;
    }
    try {
      Session session(socket(), impl_.params);
      // The first wait is POCO's (it also starts the session's keep-alive accounting); later ones are ours.
      bool more = session.hasMoreRequests();
      while (more && !stopped_) {
        if (!exchange(session)) {
          break;
        }
        more = session.getKeepAlive() && !stopped_ && nextRequestArrives(session);
      }
    } catch (const Poco::Exception&) {
      // The peer reset the connection, or a send timed out: nothing to answer; the connection closes.
    }
    impl_.untrack(this);
  }

  /// From stop(): an idle connection closes now; a busy one after the response it is writing (or at once when
  /// aborting).
  void stop(bool abort) {
    stopped_ = true;
    std::unique_lock lock(busy_, std::defer_lock);
    if (!abort) {
      lock.lock();
    }
    try {
      socket().shutdown();
    } catch (const Poco::Exception&) {
    }
  }

 private:
  /// One request and its response; false when the connection must close.
  bool exchange(Session& session) {
    std::lock_guard lock(busy_);
    if (stopped_) {
      return false;
    }
    Poco::Net::HTTPServerResponseImpl response(session);
    try {
      Poco::Net::HTTPServerRequestImpl request(response, session, impl_.params);
      response.setDate(Poco::Timestamp());
      response.setVersion(request.getVersion());
      response.setKeepAlive(impl_.params->getKeepAlive() && request.getKeepAlive() && session.canKeepAlive());
      impl_.serve(request, response);
      session.setKeepAlive(impl_.params->getKeepAlive() && response.getKeepAlive() && session.canKeepAlive());
      return true;
    } catch (const Poco::Net::NoMessageException&) {
      return false;  // the client closed the connection (or the wait timed out) between requests
    } catch (const Poco::Net::MessageException&) {
      // A malformed request line or header: 400 and close, as POCO's own connection does.
      if (!response.sent()) {
        Poco::Net::HTTPServerResponseImpl bad(session);
        bad.setVersion(Poco::Net::HTTPMessage::HTTP_1_1);
        bad.setStatusAndReason(HTTPResponse::HTTP_BAD_REQUEST);
        bad.setKeepAlive(false);
        bad.send();
      }
      return false;
    }
  }

  /// Waits up to the keep-alive timeout for the next request: true when bytes are there to parse (or the peer
  /// closed, which the parser then reports).
  bool nextRequestArrives(Session& session) {
    if (session.bufferedBytes() > 0) {
      return true;  // pipelined: already read
    }
    if (impl_.tls && socket().available() > 0) {
      return true;  // decrypted bytes inside OpenSSL: the descriptor would not poll readable for them
    }
    pollfd pfd{socket().impl()->sockfd(), POLLIN, 0};
    const auto timeoutMs = static_cast<int>(impl_.params->getKeepAliveTimeout().totalMilliseconds());
    for (;;) {
      const int ready = ::poll(&pfd, 1, timeoutMs);
      if (ready < 0 && errno == EINTR) {
        continue;
      }
      return ready > 0;
    }
  }

  HttpServer::Impl& impl_;
  std::mutex busy_;
  std::atomic<bool> stopped_{false};
};

class ConnectionFactory final : public Poco::Net::TCPServerConnectionFactory {
 public:
  explicit ConnectionFactory(HttpServer::Impl& impl) : impl_(impl) {}
  Poco::Net::TCPServerConnection* createConnection(const Poco::Net::StreamSocket& socket) override {
    return new Connection(socket, impl_);
  }

 private:
  HttpServer::Impl& impl_;
};

}  // namespace

void HttpServer::Impl::serve(HTTPServerRequest& raw, HTTPServerResponse& response) const {
  HttpRequest request;
  request.method = raw.getMethod();
  const std::string& uri = raw.getURI();
  request.path = uri.substr(0, uri.find('?'));
  Exchange exchange{raw, response};
  try {
    request.content_type = raw.getContentType();
    request.authorization = raw.get("Authorization", "");
    const HttpReply reply = dispatch(route(request.path), request, exchange);
    const bool unreadBody = !exchange.bodyRead && (raw.hasContentLength() ? raw.getContentLength64() > 0
                                                                          : raw.getChunkedTransferEncoding());
    if (unreadBody) {
      response.setKeepAlive(false);
    }
    send(reply, request.method, response);
    if (reply.status == 413) {
      lingeringClose(raw);
    }
  } catch (const std::exception& e) {
    // The one catch at the boundary: an unexpected failure is server_error, and the server keeps serving.
    log.event("internal_error", {{"path", request.path}, {"what", e.what()}});
    if (!response.sent()) {
      response.setKeepAlive(false);
      send(error(500, "server_error", "Internal server error"), request.method, response);
    }
  }
}

bool HttpServer::Impl::track(Connection* connection) {
  std::lock_guard lock(connectionsMutex);
  if (stopping) {
    return false;
  }
  connections.insert(connection);
  return true;
}

void HttpServer::Impl::untrack(Connection* connection) {
  std::lock_guard lock(connectionsMutex);
  connections.erase(connection);
}

void HttpServer::Impl::stopConnections(bool abort) {
  std::lock_guard lock(connectionsMutex);
  stopping = true;
  for (Connection* connection : connections) {
    connection->stop(abort);
  }
}

HttpServer::HttpServer(const config::Server& server, Endpoints endpoints, const Log& log)
    : impl_(std::make_unique<Impl>(server, endpoints, log)) {
  const Poco::Net::SocketAddress address(server.listen_address, server.port);
  std::unique_ptr<Poco::Net::ServerSocket> socket;
  if (server.tls) {
    Poco::Net::Context::Ptr context =
        new Poco::Net::Context(Poco::Net::Context::TLS_SERVER_USE, server.tls->private_key_file,
                               server.tls->certificate_file, "", Poco::Net::Context::VERIFY_NONE);
    context->disableProtocols(Poco::Net::Context::PROTO_SSLV2 | Poco::Net::Context::PROTO_SSLV3 |
                              Poco::Net::Context::PROTO_TLSV1 | Poco::Net::Context::PROTO_TLSV1_1);
    socket = std::make_unique<Poco::Net::SecureServerSocket>(context);
    impl_->tls = true;
  } else {
    socket = std::make_unique<Poco::Net::ServerSocket>();
  }
  // bind(reuseAddress, reusePort=false): POCO's default constructor sets SO_REUSEPORT and would silently share
  // the port with another instance (POCO-NOTES.md); this way a taken port is an error at start.
  socket->bind(address, true, false);
  socket->listen(static_cast<int>(server.max_queued));
  impl_->port = socket->address().port();

  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  // Each keep-alive connection is served on one thread for as long as it stays open, so the pool must be larger
  // than the number of connections integration engines keep open; threads idle cheaply.
  const int threads = static_cast<int>(server.threads != 0 ? server.threads : std::max(64U, 8 * cores));
  impl_->pool = std::make_unique<Poco::ThreadPool>(std::min(2, threads), threads);
  impl_->params = new Poco::Net::HTTPServerParams;
  impl_->params->setMaxThreads(threads);
  impl_->params->setMaxQueued(static_cast<int>(server.max_queued));
  impl_->params->setKeepAlive(true);
  impl_->params->setKeepAliveTimeout(Poco::Timespan(server.keep_alive_timeout.count(), 0));
  impl_->params->setTimeout(Poco::Timespan(10, 0));
  impl_->params->setServerName("smart-broker");
  impl_->server = std::make_unique<Poco::Net::TCPServer>(new ConnectionFactory(*impl_), *impl_->pool, *socket,
                                                         impl_->params);
}

HttpServer::~HttpServer() {
  if (impl_->server) {
    impl_->server->stop();
    impl_->stopConnections(true);
    impl_->pool->joinAll();
  }
}

std::uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::start() { impl_->server->start(); }

void HttpServer::stop(int drainSeconds) {
  impl_->server->stop();
  impl_->stopConnections(false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(drainSeconds);
  while (impl_->server->currentConnections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  impl_->stopConnections(true);
  impl_->pool->joinAll();
}

}  // namespace smartbroker::broker
