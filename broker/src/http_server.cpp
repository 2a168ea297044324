// POCO HTTP(S) server adapter: bounded request reading, routing, common headers, and the boundary catch.
#include "smartbroker/broker/http_server.hpp"

#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerRequestImpl.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/SecureServerSocket.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/ThreadPool.h>

#include <chrono>
#include <thread>

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
  std::unique_ptr<Poco::ThreadPool> pool;
  std::unique_ptr<Poco::Net::HTTPServer> server;
  std::uint16_t port = 0;

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

  HttpReply dispatch(Route r, HttpRequest& request, HTTPServerRequest& raw) const {
    switch (r) {
      case Route::Token: {
        if (request.method == "POST") {
          if (auto failure = readBody(raw, request)) {
            return *failure;
          }
        }
        return endpoints.token.handle(request);
      }
      case Route::Introspect:
      case Route::Revoke: {
        if (request.method == "POST") {
          if (auto failure = readBody(raw, request)) {
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
          if (auto failure = readBody(raw, request, endpoints.consent->maxBodyBytes())) {
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
  std::optional<HttpReply> readBody(HTTPServerRequest& raw, HttpRequest& request, std::size_t maxBytes = 0) const {
    const std::size_t limit = maxBytes != 0 ? maxBytes : config.limits.max_body_bytes;
    const auto tooLarge = [&] {
      log.event("request_refused", {{"reason", "body_too_large"}, {"path", request.path}});
      return error(413, "invalid_request", "Request body is too large");
    };
    if (raw.hasContentLength() && raw.getContentLength64() > static_cast<Poco::Int64>(limit)) {
      return tooLarge();
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

  void send(const HttpReply& reply, const std::string& method, HTTPServerResponse& response) const {
    response.setStatus(static_cast<HTTPResponse::HTTPStatus>(reply.status));
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

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  explicit Handler(const HttpServer::Impl& impl) : impl_(impl) {}

  void handleRequest(HTTPServerRequest& raw, HTTPServerResponse& response) override {
    HttpRequest request;
    request.method = raw.getMethod();
    const std::string& uri = raw.getURI();
    request.path = uri.substr(0, uri.find('?'));
    try {
      request.content_type = raw.getContentType();
      request.authorization = raw.get("Authorization", "");
      const HttpReply reply = impl_.dispatch(impl_.route(request.path), request, raw);
      impl_.send(reply, request.method, response);
      if (reply.status == 413) {
        lingeringClose(raw);
      }
    } catch (const std::exception& e) {
      // The one catch at the boundary: an unexpected failure is server_error, and the server keeps serving.
      impl_.log.event("internal_error", {{"path", request.path}, {"what", e.what()}});
      if (!response.sent()) {
        impl_.send(HttpServer::Impl::error(500, "server_error", "Internal server error"), request.method, response);
      }
    }
  }

 private:
  /// The 413 was sent (and flushed) with most of the body still unread. Closing a socket whose receive queue is
  /// not empty makes the kernel send RST, and a client still writing its body can lose the response to it. So
  /// stop sending (a FIN over TCP; POCO's TLS socket ignores shutdownSend, and the drain alone keeps the queue
  /// empty), then read and discard what the client still sends, within a bound of bytes and time (the same
  /// "lingering close" as Apache and nginx), before POCO closes the connection.
  static void lingeringClose(HTTPServerRequest& raw) {
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

  const HttpServer::Impl& impl_;
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  explicit Factory(const HttpServer::Impl& impl) : impl_(impl) {}
  Poco::Net::HTTPRequestHandler* createRequestHandler(const HTTPServerRequest&) override { return new Handler(impl_); }

 private:
  const HttpServer::Impl& impl_;
};

}  // namespace

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
  } else {
    socket = std::make_unique<Poco::Net::ServerSocket>();
  }
  // bind(reuseAddress, reusePort=false): POCO's default constructor sets SO_REUSEPORT and would silently share
  // the port with another instance (POCO-NOTES.md); this way a taken port is an error at start.
  socket->bind(address, true, false);
  socket->listen(static_cast<int>(server.max_queued));
  impl_->port = socket->address().port();

  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  // POCO serves each keep-alive connection on one thread for as long as it stays open, so the pool must be
  // larger than the number of connections integration engines keep open; threads idle cheaply.
  const int threads = static_cast<int>(server.threads != 0 ? server.threads : std::max(64U, 8 * cores));
  impl_->pool = std::make_unique<Poco::ThreadPool>(std::min(2, threads), threads);
  auto* params = new Poco::Net::HTTPServerParams;
  params->setMaxThreads(threads);
  params->setMaxQueued(static_cast<int>(server.max_queued));
  params->setKeepAlive(true);
  params->setKeepAliveTimeout(Poco::Timespan(server.keep_alive_timeout.count(), 0));
  params->setTimeout(Poco::Timespan(10, 0));
  params->setServerName("smart-broker");
  impl_->server = std::make_unique<Poco::Net::HTTPServer>(new Factory(*impl_), *impl_->pool, *socket, params);
}

HttpServer::~HttpServer() {
  if (impl_->server) {
    impl_->server->stopAll(true);
  }
}

std::uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::start() { impl_->server->start(); }

void HttpServer::stop(int drainSeconds) {
  impl_->server->stopAll(false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(drainSeconds);
  while (impl_->server->currentConnections() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  impl_->server->stopAll(true);
  impl_->pool->joinAll();
}

}  // namespace smartbroker::broker
