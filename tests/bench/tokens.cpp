// Blocking keep-alive HTTP/1.1 exchanges with POCO sockets, just enough to collect access tokens.
#include "tokens.hpp"

#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>

#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace smartbroker::bench {
namespace {

/// One response: headers up to the blank line, then exactly Content-Length bytes.
std::string exchange(Poco::Net::StreamSocket& socket, const std::string& request) {
  socket.sendBytes(request.data(), static_cast<int>(request.size()));
  std::string in;
  char buffer[8192];
  std::size_t headerEnd = std::string::npos;
  std::size_t length = 0;
  for (;;) {
    const int n = socket.receiveBytes(buffer, sizeof buffer);
    if (n <= 0) {
      throw std::runtime_error("connection closed by the broker");
    }
    in.append(buffer, static_cast<std::size_t>(n));
    if (headerEnd == std::string::npos) {
      headerEnd = in.find("\r\n\r\n");
      if (headerEnd == std::string::npos) {
        continue;
      }
      std::size_t at = in.find("Content-Length: ");
      if (at == std::string::npos || at > headerEnd) {
        at = in.find("content-length: ");
      }
      if (at == std::string::npos || at > headerEnd) {
        throw std::runtime_error("response without Content-Length");
      }
      length = std::stoul(in.substr(at + 16));
    }
    if (in.size() >= headerEnd + 4 + length) {
      return in.substr(0, headerEnd + 4 + length);
    }
  }
}

std::string accessToken(const std::string& response) {
  constexpr std::string_view kField = "\"access_token\":\"";
  const std::size_t at = response.find(kField);
  if (response.compare(0, 12, "HTTP/1.1 200") != 0 || at == std::string::npos) {
    throw std::runtime_error("token request failed: " + response.substr(0, response.find("\r\n")) + " " +
                             response.substr(response.find("\r\n\r\n") + 4, 200));
  }
  const std::size_t start = at + kField.size();
  return response.substr(start, response.find('"', start) - start);
}

}  // namespace

std::vector<std::string> fetchTokens(const std::string& host, std::uint16_t port,
                                     const std::vector<std::string>& requests, unsigned threads) {
  std::vector<std::string> tokens;
  std::mutex mutex;
  std::atomic<std::size_t> next{0};
  std::string failure;
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < std::max(1U, threads); ++t) {
    workers.emplace_back([&] {
      try {
        Poco::Net::StreamSocket socket(Poco::Net::SocketAddress(host, port));
        std::vector<std::string> mine;
        for (std::size_t i = next++; i < requests.size(); i = next++) {
          mine.push_back(accessToken(exchange(socket, requests[i])));
        }
        std::lock_guard lock(mutex);
        tokens.insert(tokens.end(), mine.begin(), mine.end());
      } catch (const std::exception& e) {
        std::lock_guard lock(mutex);
        failure = e.what();
      }
    });
  }
  for (auto& w : workers) {
    w.join();
  }
  if (!failure.empty()) {
    throw std::runtime_error(failure);
  }
  return tokens;
}

}  // namespace smartbroker::bench
