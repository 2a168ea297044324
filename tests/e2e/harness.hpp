// End-to-end test harness: the real smart-broker binary on a loopback port, node's jose as the independent peer.
#pragma once

#include <sys/types.h>

#include <Poco/JSON/Object.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace e2e {

using Json = Poco::JSON::Object::Ptr;

std::string dataDir();   ///< tests/data
std::string keyFile(const std::string& name);   ///< tests/data/keys/<name>.pem
std::int64_t now();

struct Response {
  int status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  ///< names lower-cased
  std::string header(const std::string& name) const;
  Json json() const;   ///< throws unless the body is a JSON object
};

/// `a=b&c=d` with every name and value percent-encoded.
std::string formEncode(const std::vector<std::pair<std::string, std::string>>& params);

/// A token request body: grant_type, client_assertion_type, client_assertion, scope.
std::string tokenForm(const std::string& assertion, const std::string& scope = "system/*.rs");

/// A running smart-broker process with a generated configuration.
class Broker {
 public:
  struct Options {
    std::string server_extra;   ///< YAML lines appended under `server:` (each indented by two spaces)
    std::string systems;        ///< YAML for `systems:`; empty = the standard test systems
    std::string state_dir;      ///< reuse a state directory (restart tests); empty = fresh temp dir
  };
  Broker();
  explicit Broker(Options options);
  /// With server.public_base_url set to `publicBaseUrl` instead of baseUrl(): instances behind one load balancer
  /// share one (multi-instance tests). Requests still go to this instance's port.
  Broker(Options options, std::string publicBaseUrl);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  std::uint16_t port() const { return port_; }
  std::string baseUrl() const;
  std::string tokenUrl() const { return baseUrl() + "/token"; }
  const std::string& stateDir() const { return state_dir_; }
  const std::string& configPath() const { return config_path_; }
  pid_t pid() const { return pid_; }

  Response request(const std::string& method, const std::string& path, const std::string& body = {},
                   const std::string& contentType = {},
                   const std::vector<std::pair<std::string, std::string>>& headers = {}) const;
  Response post(const std::string& path, const std::string& body,
                const std::string& contentType = "application/x-www-form-urlencoded") const;
  Response get(const std::string& path) const;

  std::string log() const;             ///< everything the broker wrote to stderr so far
  /// Waits up to `ms` for `needle` to appear in the log.
  bool waitForLog(const std::string& needle, int ms = 3000) const;
  void signal(int sig) const;
  /// Sends SIGTERM and returns the exit status (or -1 on a signal death / timeout).
  int stop();
  void start();

  static const char* standardSystems();

 private:
  Options options_;
  std::string state_dir_;
  std::string config_path_;
  std::string log_path_;
  std::string public_base_url_;
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
};

/// What a command printed on stdout and stderr together, and how it ended.
struct Run {
  int status = -1;     ///< the exit code; -1 when a signal ended it
  std::string output;
};

/// Runs `command` with /bin/sh, stderr joined to stdout, and waits for it to end.
Run runCommand(const std::string& command);
/// `smart-broker ARGS`: the binary under test, e.g. runBroker("keys rotate --config " + b.configPath()).
Run runBroker(const std::string& args);

/// `node SCRIPT ARGS...` as a child speaking a line protocol: lines go to its stdin, answers come from its stdout
/// (its stderr is the test's). The pipes are close-on-exec, so no other child (a broker, another helper) holds them;
/// the child is always reaped. Not thread-safe: a caller shared between threads serializes its own calls.
class NodeProcess {
 public:
  /// `script` is a file name in tests/e2e.
  explicit NodeProcess(const std::string& script, const std::vector<std::string>& args = {});
  ~NodeProcess();
  NodeProcess(const NodeProcess&) = delete;
  NodeProcess& operator=(const NodeProcess&) = delete;

  /// Writes `line` and a newline.
  void sendLine(const std::string& line);
  /// The next line without its newline; throws when none comes within `timeoutMs` or the child exits first.
  std::string readLine(int timeoutMs = 20000);
  /// Closes its stdin (the helpers end on that), waits up to 2 s, then SIGTERM, then SIGKILL. Idempotent.
  void stop();

 private:
  std::string script_;
  pid_t pid_ = -1;
  int to_ = -1;
  int from_ = -1;
  std::string buffer_;
};

/// node tests/e2e/jose_helper.mjs, one JSON command per line.
class Jose {
 public:
  Jose();
  Json call(const Json& command);

  /// Signs with node:crypto; `header` overlays {"alg": alg, "typ": "JWT"}.
  std::string sign(const std::string& alg, const std::string& key, const Json& header, const Json& payload);
  /// Signs with jose's SignJWT (header {alg, kid, typ: JWT}).
  std::string joseSign(const std::string& alg, const std::string& key, const std::string& kid, const Json& payload);
  /// Verifies an access token against the broker's published JWKS; returns the helper's answer.
  Json verify(const std::string& token, const std::string& jwksUrl, const std::string& issuer,
              const std::string& audience);

 private:
  NodeProcess node_;
  std::mutex mutex_;  ///< one command and its answer at a time: tests call from several threads
};

/// The shared jose helper of this test process.
Jose& jose();

/// Standard claims for a client assertion to `aud`: iss = sub = clientId, exp = now + 300, random jti.
Json claims(const std::string& clientId, const std::string& aud);
Json object(std::initializer_list<std::pair<std::string, Poco::Dynamic::Var>> members);
std::string randomJti();

}  // namespace e2e
