// Obtaining real access tokens from the broker before an introspection scenario (not timed).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smartbroker::bench {

/// Sends each pre-made token request (complete HTTP/1.1 bytes) to host:port over keep-alive connections on
/// `threads` threads and returns the access tokens, in no particular order. Throws when a request fails.
std::vector<std::string> fetchTokens(const std::string& host, std::uint16_t port,
                                     const std::vector<std::string>& requests, unsigned threads);

}  // namespace smartbroker::bench
