// The POCO HTTP(S) server: routing, body limits, security headers, and the one catch for the unexpected.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "smartbroker/broker/discovery.hpp"
#include "smartbroker/broker/http.hpp"
#include "smartbroker/broker/introspection.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/snapshot.hpp"
#include "smartbroker/broker/token_endpoint.hpp"
#include "smartbroker/config/config.hpp"

namespace smartbroker::broker {

class ConsentEndpoint;

/// What the server routes to. Everything is owned by main() and outlives the server.
struct Endpoints {
  const TokenEndpoint& token;
  const KeyringHolder& keys;
  const Snapshot<DiscoveryDocuments>& discovery;
  const StateStore& store;
  std::int64_t jwks_max_age = 300;   ///< Cache-Control max-age of /jwks.json
  const IntrospectionEndpoint* introspection = nullptr;
  const RevocationEndpoint* revocation = nullptr;
  const ConsentEndpoint* consent = nullptr;   ///< PUT/DELETE /consents/{id}; null: 404
};

class HttpServer {
 public:
  /// Binds (refusing a port already in use) but does not start serving.
  HttpServer(const config::Server& server, Endpoints endpoints, const Log& log);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  std::uint16_t port() const;
  void start();
  /// Stops accepting, lets requests in progress finish (up to `drainSeconds`), then closes.
  void stop(int drainSeconds);

  struct Impl;  ///< POCO stays out of this header.

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace smartbroker::broker
