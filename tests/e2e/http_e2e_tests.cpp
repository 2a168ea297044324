// End-to-end tests of the connection layer over raw sockets: keep-alive and pipelining, Expect: 100-continue, a
// body left unread, the keep-alive timeout, and a stop with idle connections open. Bytes on the wire, no client
// library in between.
#include <signal.h>
#include <stdlib.h>

#include <Poco/Net/NetException.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "harness.hpp"

using namespace e2e;

namespace {

/// One TCP connection to a broker, read with a deadline.
class Wire {
 public:
  explicit Wire(const Broker& broker) : socket_(Poco::Net::SocketAddress("127.0.0.1", broker.port())) {
    socket_.setReceiveTimeout(Poco::Timespan(5, 0));
  }

  void send(const std::string& bytes) { socket_.sendBytes(bytes.data(), static_cast<int>(bytes.size())); }

  /// The next response: its status line and headers, then as many body bytes as Content-Length says. nullopt when
  /// the server closed the connection before a status line came.
  std::optional<std::string> response() {
    const std::size_t headEnd = fillUntil("\r\n\r\n");
    if (headEnd == std::string::npos) {
      return std::nullopt;
    }
    std::string head = buffer_.substr(0, headEnd + 4);
    std::size_t length = 0;
    const std::size_t at = lower(head).find("\r\ncontent-length:");
    if (at != std::string::npos) {
      length = std::stoul(head.substr(at + 17));
    }
    while (buffer_.size() < head.size() + length && fill()) {
    }
    std::string whole = buffer_.substr(0, std::min(buffer_.size(), head.size() + length));
    buffer_.erase(0, whole.size());
    return whole;
  }

  /// True when the server closed the connection (end of stream) within the receive timeout.
  bool closedByServer() {
    try {
      char byte;
      return buffer_.empty() && socket_.receiveBytes(&byte, 1) == 0;
    } catch (const Poco::Net::ConnectionResetException&) {
      return true;
    } catch (const Poco::TimeoutException&) {
      return false;
    }
  }

  void setReceiveTimeout(int seconds) { socket_.setReceiveTimeout(Poco::Timespan(seconds, 0)); }

 private:
  static std::string lower(std::string s) {
    for (char& c : s) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return s;
  }
  bool fill() {
    char chunk[4096];
    int n = 0;
    try {
      n = socket_.receiveBytes(chunk, sizeof chunk);
    } catch (const Poco::Exception&) {
      return false;
    }
    if (n <= 0) {
      return false;
    }
    buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }
  std::size_t fillUntil(const std::string& marker) {
    for (;;) {
      const std::size_t at = buffer_.find(marker);
      if (at != std::string::npos) {
        return at;
      }
      if (!fill()) {
        return std::string::npos;
      }
    }
  }

  Poco::Net::StreamSocket socket_;
  std::string buffer_;
};

Broker& broker() {
  static Broker instance;
  return instance;
}

std::string assertionFor(const Broker& b) {
  const Json header = object({{"alg", "RS384"}, {"kid", "rs384-client"}, {"typ", "JWT"}});
  return jose().sign("RS384", keyFile("rs384-client"), header, claims("rs384-client", b.tokenUrl()));
}

std::string lowered(std::string s) {
  for (char& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string statusLine(const std::string& response) { return response.substr(0, response.find("\r\n")); }

std::string tokenRequestHead(std::size_t contentLength, bool expectContinue) {
  return "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         "Content-Length: " +
         std::to_string(contentLength) + "\r\n" + (expectContinue ? "Expect: 100-continue\r\n" : "") + "\r\n";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(http_connection)

BOOST_AUTO_TEST_CASE(pipelined_requests_sent_in_one_write_are_all_answered_in_order) {
  Wire wire(broker());
  wire.send("GET /jwks.json HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
            "GET /no-such-path HTTP/1.1\r\nHost: a\r\n\r\n");
  const auto first = wire.response();
  const auto second = wire.response();
  const auto third = wire.response();
  BOOST_REQUIRE(first && second && third);
  BOOST_TEST(statusLine(*first) == "HTTP/1.1 200 OK");
  BOOST_TEST(first->find("\"keys\"") != std::string::npos);
  BOOST_TEST(statusLine(*second) == "HTTP/1.1 200 OK");
  BOOST_TEST(second->find("\"status\":\"ok\"") != std::string::npos);
  BOOST_TEST(statusLine(*third) == "HTTP/1.1 404 Not Found");
  // Still open: a fourth request on the same connection is served.
  wire.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
  const auto fourth = wire.response();
  BOOST_REQUIRE(fourth);
  BOOST_TEST(statusLine(*fourth) == "HTTP/1.1 200 OK");
}

BOOST_AUTO_TEST_CASE(keep_alive_serves_many_token_requests_on_one_connection) {
  Wire wire(broker());
  for (int i = 0; i < 5; ++i) {
    const std::string body = tokenForm(assertionFor(broker()));
    wire.send(tokenRequestHead(body.size(), false) + body);
    const auto reply = wire.response();
    BOOST_REQUIRE(reply);
    BOOST_TEST(statusLine(*reply) == "HTTP/1.1 200 OK");
    BOOST_TEST(reply->find("\"access_token\"") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(expect_100_continue_within_the_limit_gets_continue_then_the_token) {
  Wire wire(broker());
  const std::string body = tokenForm(assertionFor(broker()));
  wire.send(tokenRequestHead(body.size(), true));
  const auto interim = wire.response();
  BOOST_REQUIRE(interim);
  BOOST_TEST(statusLine(*interim) == "HTTP/1.1 100 Continue");
  wire.send(body);
  const auto reply = wire.response();
  BOOST_REQUIRE(reply);
  BOOST_TEST(statusLine(*reply) == "HTTP/1.1 200 OK");
  BOOST_TEST(reply->find("\"access_token\"") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(expect_100_continue_over_the_limit_gets_413_and_no_continue) {
  // A client that waits for 100 Continue must never be invited to send a body that will be refused.
  Wire wire(broker());
  wire.send(tokenRequestHead(10'000'000, true));
  const auto reply = wire.response();
  BOOST_REQUIRE(reply);
  BOOST_TEST(statusLine(*reply) == "HTTP/1.1 413 Request Entity Too Large");
  BOOST_TEST(reply->find("100 Continue") == std::string::npos);
  BOOST_TEST(wire.closedByServer());
  BOOST_TEST(broker().get("/healthz").status == 200);
}

BOOST_AUTO_TEST_CASE(a_body_the_endpoint_does_not_read_closes_the_connection) {
  // POST /jwks.json is refused (405) without reading its body; parsing that body as the next request would let a
  // client smuggle one past the server, so the connection closes instead.
  Wire wire(broker());
  const std::string smuggled = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
  wire.send("POST /jwks.json HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: " +
            std::to_string(smuggled.size()) + "\r\n\r\n" + smuggled);
  const auto reply = wire.response();
  BOOST_REQUIRE(reply);
  BOOST_TEST(statusLine(*reply) == "HTTP/1.1 405 Method Not Allowed");
  BOOST_TEST(lowered(*reply).find("\r\nconnection: close\r\n") != std::string::npos);
  BOOST_TEST(!wire.response().has_value());
}

BOOST_AUTO_TEST_CASE(a_malformed_request_line_is_400_and_closes) {
  Wire wire(broker());
  wire.send("GET /healthz HTTP/1.1-and-then-some\r\nHost: a\r\n\r\n");
  const auto reply = wire.response();
  BOOST_REQUIRE(reply);
  BOOST_TEST(statusLine(*reply).starts_with("HTTP/1.1 400"), statusLine(*reply));
  BOOST_TEST(wire.closedByServer());
}

BOOST_AUTO_TEST_CASE(an_idle_connection_is_closed_after_the_keep_alive_timeout) {
  Broker b(Broker::Options{"  keep_alive_timeout: 1\n", {}, {}});
  Wire wire(b);
  wire.send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
  BOOST_REQUIRE(wire.response());
  const auto before = std::chrono::steady_clock::now();
  BOOST_TEST(wire.closedByServer());
  const auto idleMs =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - before).count();
  BOOST_TEST(idleMs >= 800);
  BOOST_TEST(idleMs < 4000);
}

BOOST_AUTO_TEST_CASE(sigterm_with_idle_keep_alive_connections_open_exits_promptly) {
  Broker b;
  Wire first(b);
  Wire second(b);
  for (Wire* w : {&first, &second}) {
    w->send("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n");
    BOOST_REQUIRE(w->response());
  }
  const auto before = std::chrono::steady_clock::now();
  BOOST_TEST(b.stop() == 0);
  const auto stopMs =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - before).count();
  BOOST_TEST(stopMs < 5000);
  BOOST_TEST(first.closedByServer());
  BOOST_TEST(second.closedByServer());
}

BOOST_AUTO_TEST_CASE(over_tls_a_keep_alive_connection_serves_several_requests_including_a_token) {
  // The same connection layer over TLS (server.tls), with curl as the independent client: three transfers on one
  // connection (curl reuses it: one connect), the last a token request.
  char tmpl[] = "/tmp/smart-broker-tls-XXXXXX";
  BOOST_REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  const Run made = runCommand("umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1"
                              " -subj /CN=localhost -keyout " + dir + "/tls.key -out " + dir + "/tls.crt");
  BOOST_REQUIRE_MESSAGE(made.status == 0, made.output);
  {
    Broker b(Broker::Options{"  tls:\n    certificate_file: " + dir + "/tls.crt\n    private_key_file: " + dir +
                                 "/tls.key\n",
                             {}, {}});
    const std::string base = "https://127.0.0.1:" + std::to_string(b.port());
    const std::string form = dir + "/form";
    BOOST_REQUIRE(runCommand("printf '%s' '" + tokenForm(assertionFor(b)) + "' > " + form).status == 0);
    const std::string each = "-sk --http1.1 -w '%{http_code} %{num_connects}\\n' ";
    const Run run = runCommand("curl " + each + "-o /dev/null " + base + "/healthz --next " + each + "-o /dev/null " +
                               base + "/jwks.json --next " + each + "-o " + dir + "/token.json --data-binary @" + form +
                               " " + base + "/token");
    BOOST_TEST(run.status == 0, run.output);
    BOOST_TEST(run.output == "200 1\n200 0\n200 0\n", run.output);
    const Run token = runCommand("cat " + dir + "/token.json");
    BOOST_TEST(token.output.find("\"access_token\"") != std::string::npos, token.output);
  }
  runCommand("rm -rf " + dir);
}

BOOST_AUTO_TEST_SUITE_END()
