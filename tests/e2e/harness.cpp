// The e2e harness: process control (fork/exec, node helpers, commands), a loopback HTTP client (POCO) and the jose
// line protocol.
#include "harness.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/StreamCopier.h>
#include <Poco/URI.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace e2e {
namespace fs = std::filesystem;

std::string dataDir() { return SMARTBROKER_TEST_DATA; }
std::string keyFile(const std::string& name) { return dataDir() + "/keys/" + name + ".pem"; }

std::int64_t now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string randomJti() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::ostringstream out;
  out << std::hex << rng() << rng();
  return out.str();
}

std::string Response::header(const std::string& name) const {
  const auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

Json Response::json() const {
  Poco::JSON::Parser parser;
  return parser.parse(body).extract<Json>();
}

std::string formEncode(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  for (const auto& [name, value] : params) {
    std::string n;
    std::string v;
    Poco::URI::encode(name, "!#$&'()*+,/:;=?@[]% ", n);
    Poco::URI::encode(value, "!#$&'()*+,/:;=?@[]% ", v);
    out += out.empty() ? "" : "&";
    out += n + "=" + v;
  }
  return out;
}

std::string tokenForm(const std::string& assertion, const std::string& scope) {
  return formEncode({{"grant_type", "client_credentials"},
                     {"client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
                     {"client_assertion", assertion},
                     {"scope", scope}});
}

Json object(std::initializer_list<std::pair<std::string, Poco::Dynamic::Var>> members) {
  Json obj = new Poco::JSON::Object;
  for (const auto& [name, value] : members) {
    obj->set(name, value);
  }
  return obj;
}

Json claims(const std::string& clientId, const std::string& aud) {
  return object({{"iss", clientId}, {"sub", clientId}, {"aud", aud}, {"exp", now() + 300}, {"jti", randomJti()}});
}

// ---------------------------------------------------------------------------------------------- Broker

const char* Broker::standardSystems() {
  return R"(
  - client_id: rs384-client
    algorithms: [RS384, ES384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
  - client_id: es384-client
    algorithms: [ES384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/es384-client.jwks.json
  - client_id: rs256-client
    algorithms: [RS256]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs256-client.jwks.json
  - client_id: es256-client
    algorithms: [ES256]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/es256-client.jwks.json
  - client_id: other-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/other-client.jwks.json
  - client_id: disabled-client
    enabled: false
    algorithms: [RS384]
    scopes: [system/*.rs]
    jwks_file: @DATA@/keys/rs384-client.jwks.json
  - client_id: scoped-client
    algorithms: [RS384]
    scopes:
      - system/Observation.rs
      - system/Patient.read
      - system/Condition.rs?category=problem-list-item
      - system/Encounter.cruds
    jwks_file: @DATA@/keys/rs384-client.jwks.json
  - client_id: resource-server
    algorithms: [RS384]
    scopes: [smart-broker:introspect]
    jwks_file: @DATA@/keys/other-client.jwks.json
  - client_id: short-lived-client
    algorithms: [RS384]
    scopes: [system/*.rs]
    token_lifetime: 60
    jwks_file: @DATA@/keys/rs384-client.jwks.json
)";
}

Broker::Broker() : Broker(Options{}) {}

Broker::Broker(Options options) : Broker(std::move(options), {}) {}

Broker::Broker(Options options, std::string publicBaseUrl)
    : options_(std::move(options)), public_base_url_(std::move(publicBaseUrl)) {
  if (options_.state_dir.empty()) {
    char tmpl[] = "/tmp/smart-broker-e2e-XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    if (dir == nullptr) {
      throw std::runtime_error("mkdtemp failed");
    }
    state_dir_ = dir;
  } else {
    state_dir_ = options_.state_dir;
  }
  config_path_ = state_dir_ + "/smart-broker.yaml";
  log_path_ = state_dir_ + "/broker.log";
  start();
}

namespace {

/// A port that was free a moment ago (bound to 0, read, closed). A race with another process is possible;
/// start() retries on "Address already in use".
std::uint16_t freePort() {
  Poco::Net::ServerSocket probe(Poco::Net::SocketAddress("127.0.0.1", 0));
  const std::uint16_t port = probe.address().port();
  probe.close();
  return port;
}

}  // namespace

void Broker::start() {
  std::string systems = options_.systems.empty() ? standardSystems() : options_.systems;
  for (std::size_t at = systems.find("@DATA@"); at != std::string::npos; at = systems.find("@DATA@")) {
    systems.replace(at, 6, dataDir());
  }
  const bool restart = port_ != 0;
  for (int attempt = 0; attempt < 20; ++attempt) {
    if (!restart) {
      port_ = freePort();
    }
    {
      std::ofstream config(config_path_);
      config << "server:\n"
             << "  listen_address: 127.0.0.1\n"
             << "  port: " << port_ << "\n"
             << "  public_base_url: "
             << (public_base_url_.empty() ? baseUrl() : public_base_url_) << "\n"
             << "  audiences: [https://fhir.example.org/r4]\n"
             << "  state_directory: " << state_dir_ << "/state\n"
             << options_.server_extra << "systems:" << systems;
    }
    const std::size_t logged = log().size();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      ::dup2(fd, 2);
      ::execl(SMARTBROKER_BINARY, SMARTBROKER_BINARY, "--config", config_path_.c_str(), nullptr);
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      const std::string text = log();
      if (text.find("event=listening", logged) != std::string::npos) {
        return;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!exited) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
    if (restart || log().find("already in use", logged) == std::string::npos) {
      throw std::runtime_error("smart-broker did not start:\n" + log());
    }
  }
  throw std::runtime_error("no free port found");
}

Broker::~Broker() {
  if (pid_ > 0) {
    stop();
  }
  if (options_.state_dir.empty() && std::getenv("SMARTBROKER_KEEP_E2E") == nullptr) {
    std::error_code ec;
    fs::remove_all(state_dir_, ec);
  }
}

std::string Broker::baseUrl() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string Broker::log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Broker::waitForLog(const std::string& needle, int ms) const {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (log().find(needle) != std::string::npos) {
      return true;
    }
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
      return log().find(needle) != std::string::npos;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

void Broker::signal(int sig) const { ::kill(pid_, sig); }

int Broker::stop() {
  if (pid_ <= 0) {
    return -1;
  }
  ::kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 1500; ++i) {
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

Response Broker::request(const std::string& method, const std::string& path, const std::string& body,
                         const std::string& contentType,
                         const std::vector<std::pair<std::string, std::string>>& headers) const {
  Poco::Net::HTTPClientSession session("127.0.0.1", port_);
  session.setTimeout(Poco::Timespan(10, 0));
  Poco::Net::HTTPRequest req(method, path, Poco::Net::HTTPMessage::HTTP_1_1);
  if (!contentType.empty()) {
    req.setContentType(contentType);
  }
  for (const auto& [name, value] : headers) {
    req.set(name, value);
  }
  if (!body.empty() || method == "POST") {
    req.setContentLength64(static_cast<Poco::Int64>(body.size()));
  }
  session.sendRequest(req) << body;
  Poco::Net::HTTPResponse res;
  std::istream& in = session.receiveResponse(res);
  Response out;
  out.status = static_cast<int>(res.getStatus());
  std::ostringstream text;
  Poco::StreamCopier::copyStream(in, text);
  out.body = text.str();
  for (const auto& [name, value] : res) {
    std::string lower = name;
    for (char& c : lower) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    out.headers[lower] = value;
  }
  return out;
}

Response Broker::post(const std::string& path, const std::string& body, const std::string& contentType) const {
  return request("POST", path, body, contentType);
}

Response Broker::get(const std::string& path) const { return request("GET", path); }

// ---------------------------------------------------------------------------------------------- commands

Run runCommand(const std::string& command) {
  Run out;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    throw std::runtime_error("popen failed: " + command);
  }
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) {
    out.output.append(buf.data(), n);
  }
  const int status = ::pclose(pipe);
  out.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

Run runBroker(const std::string& args) { return runCommand(std::string(SMARTBROKER_BINARY) + " " + args); }

// ---------------------------------------------------------------------------------------------- NodeProcess

NodeProcess::NodeProcess(const std::string& script, const std::vector<std::string>& args) : script_(script) {
  // argv is built before fork: between fork and exec the child of a threaded process may only make
  // async-signal-safe calls, so no allocation there.
  const std::string path = std::string(SMARTBROKER_E2E_DIR) + "/" + script;
  std::vector<std::string> words{"node", path};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& word : words) {
    argv.push_back(word.data());
  }
  argv.push_back(nullptr);

  // Close-on-exec: a broker or another helper forked later must not hold these ends, or closing our end of the
  // child's stdin would not reach it as end of file.
  int in[2];
  int out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  if (::pipe2(out, O_CLOEXEC) != 0) {
    ::close(in[0]);
    ::close(in[1]);
    throw std::runtime_error("pipe failed");
  }
  pid_ = ::fork();
  if (pid_ == 0) {
    // dup2 clears close-on-exec on the copies; the originals close at exec.
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::execvp("node", argv.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  if (pid_ < 0) {
    ::close(in[1]);
    ::close(out[0]);
    throw std::runtime_error("fork failed");
  }
  to_ = in[1];
  from_ = out[0];
}

NodeProcess::~NodeProcess() { stop(); }

void NodeProcess::sendLine(const std::string& line) {
  const std::string text = line + "\n";
  if (to_ < 0 || ::write(to_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw std::runtime_error(script_ + ": write failed");
  }
}

std::string NodeProcess::readLine(int timeoutMs) {
  for (;;) {
    const std::size_t nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    pollfd pfd{from_, POLLIN, 0};
    if (from_ < 0 || ::poll(&pfd, 1, timeoutMs) <= 0) {
      throw std::runtime_error(script_ + ": no answer");
    }
    char chunk[65536];
    const ssize_t n = ::read(from_, chunk, sizeof chunk);
    if (n <= 0) {
      throw std::runtime_error(script_ + " exited (is node installed and `npm ci` run in tests/e2e?)");
    }
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

void NodeProcess::stop() {
  if (to_ >= 0) {
    ::close(to_);
    to_ = -1;
  }
  if (from_ >= 0) {
    ::close(from_);
    from_ = -1;
  }
  if (pid_ <= 0) {
    return;
  }
  int status = 0;
  for (int i = 0; i < 300; ++i) {
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    if (i == 200) {
      ::kill(pid_, SIGTERM);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

// ---------------------------------------------------------------------------------------------- Jose

Jose::Jose() : node_("jose_helper.mjs") {}

Json Jose::call(const Json& command) {
  std::lock_guard lock(mutex_);
  std::ostringstream line;
  Poco::JSON::Stringifier::stringify(command, line);
  node_.sendLine(line.str());
  Poco::JSON::Parser parser;
  Json result = parser.parse(node_.readLine()).extract<Json>();
  if (result->has("error") && !result->has("ok")) {
    throw std::runtime_error("jose helper: " + result->getValue<std::string>("error"));
  }
  return result;
}

std::string Jose::sign(const std::string& alg, const std::string& key, const Json& header, const Json& payload) {
  return call(object({{"op", "sign"}, {"alg", alg}, {"key", key}, {"header", header}, {"payload", payload}}))
      ->getValue<std::string>("jwt");
}

std::string Jose::joseSign(const std::string& alg, const std::string& key, const std::string& kid,
                           const Json& payload) {
  return call(object({{"op", "jose_sign"}, {"alg", alg}, {"key", key}, {"kid", kid}, {"payload", payload}}))
      ->getValue<std::string>("jwt");
}

Json Jose::verify(const std::string& token, const std::string& jwksUrl, const std::string& issuer,
                  const std::string& audience) {
  return call(object({{"op", "verify"},
                      {"token", token},
                      {"jwks_url", jwksUrl},
                      {"issuer", issuer},
                      {"audience", audience},
                      {"typ", "at+jwt"}}));
}

Jose& jose() {
  static Jose instance;
  return instance;
}

}  // namespace e2e
