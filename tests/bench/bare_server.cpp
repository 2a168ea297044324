// A bare POCO HTTPServer answering every request with a small fixed JSON: the reference rate for GET /jwks.json.
#include <pthread.h>
#include <signal.h>

#include <Poco/Net/HTTPRequestHandler.h>
#include <Poco/Net/HTTPRequestHandlerFactory.h>
#include <Poco/Net/HTTPServer.h>
#include <Poco/Net/HTTPServerParams.h>
#include <Poco/Net/HTTPServerRequest.h>
#include <Poco/Net/HTTPServerResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/ThreadPool.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>

namespace {

// About the size of the broker's one-key ES256 JWK Set, so that both servers move similar bytes.
constexpr std::string_view kBody =
    R"({"keys":[{"kty":"EC","crv":"P-256","kid":"bare-reference-key-0000000000000000000000","use":"sig",)"
    R"("alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",)"
    R"("y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})";

class Handler final : public Poco::Net::HTTPRequestHandler {
 public:
  void handleRequest(Poco::Net::HTTPServerRequest&, Poco::Net::HTTPServerResponse& response) override {
    response.setContentType("application/json");
    response.sendBuffer(kBody.data(), kBody.size());
  }
};

class Factory final : public Poco::Net::HTTPRequestHandlerFactory {
 public:
  Poco::Net::HTTPRequestHandler* createRequestHandler(const Poco::Net::HTTPServerRequest&) override {
    return new Handler;
  }
};

}  // namespace

int main(int argc, char** argv) {
  // Signals are taken by sigwait below, never by a worker (POCO-NOTES.md "Server").
  sigset_t signals;
  sigemptyset(&signals);
  for (const int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP}) {
    sigaddset(&signals, s);
  }
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  int port = 0;
  int threads = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--port") == 0) {
      port = std::stoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--threads") == 0) {
      threads = std::max(1, std::stoi(argv[i + 1]));
    } else {
      std::cerr << "usage: smartbroker-bare-server [--port P=0] [--threads T=64]\n";
      return 2;
    }
  }
  try {
    // The same server settings as the broker's http_server.cpp, so that only the request handling differs.
    Poco::Net::ServerSocket socket;
    socket.bind(Poco::Net::SocketAddress("127.0.0.1", static_cast<Poco::UInt16>(port)), true, false);
    socket.listen(1024);
    Poco::ThreadPool pool(std::min(2, threads), threads);
    auto* params = new Poco::Net::HTTPServerParams;
    params->setMaxThreads(threads);
    params->setMaxQueued(1024);
    params->setKeepAlive(true);
    params->setKeepAliveTimeout(Poco::Timespan(60, 0));
    params->setTimeout(Poco::Timespan(10, 0));
    Poco::Net::HTTPServer server(new Factory, pool, socket, params);
    server.start();
    std::fprintf(stderr, "event=listening port=%u threads=%d\n", static_cast<unsigned>(socket.address().port()),
                 threads);
    int sig = 0;
    sigwait(&signals, &sig);
    server.stopAll(true);
    pool.joinAll();
  } catch (const std::exception& e) {
    std::cerr << "smartbroker-bare-server: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
