// The transport-neutral request and reply that endpoints take and return (the HTTP server adapts POCO).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace smartbroker::broker {

struct HttpRequest {
  std::string method;
  std::string path;          ///< without query string
  std::string content_type;
  std::string body;          ///< already bounded by the server's body limit
  std::string authorization; ///< the Authorization header, empty when absent
};

struct HttpReply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;

  /// JSON reply with Cache-Control: no-store and Pragma: no-cache (token and error responses).
  static HttpReply noStoreJson(int status, std::string body);
};

}  // namespace smartbroker::broker
