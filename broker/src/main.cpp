// smart-broker's composition root: configuration in, objects wired, signals handled, nothing global.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <Poco/Exception.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/discovery.hpp"
#include "smartbroker/broker/http_server.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/scopes.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_endpoint.hpp"
#include "smartbroker/config/config.hpp"
#include "smartbroker/keyring/keyring.hpp"

namespace {

namespace sb = smartbroker;

constexpr const char* kUsage =
    "usage: smart-broker --config FILE        run the broker\n"
    "       smart-broker --check-config FILE  validate FILE, print every problem as file:line: key: problem\n"
    "       smart-broker --version | --help\n";

sb::config::Validators validators() {
  sb::config::Validators v;
  v.scope = [](const std::string& scope) -> std::optional<std::string> {
    if (!sb::broker::parseSystemScope(scope)) {
      return "not a valid system/ scope (SMART v1 .read/.write/.*, v2 .cruds subset in order, optional ?param=value)";
    }
    return std::nullopt;
  };
  return v;
}

std::optional<sb::config::Config> load(const std::string& path, const sb::broker::Log& log, bool toStderr) {
  auto config = sb::config::loadConfig(path, validators());
  if (config) {
    return std::move(*config);
  }
  for (const auto& problem : config.error()) {
    if (toStderr) {
      std::cerr << problem.format() << '\n';
    } else {
      log.event("config_problem", {{"problem", problem.format()}});
    }
  }
  return std::nullopt;
}

int checkConfig(const std::string& path) {
  const sb::broker::Log log;
  if (!load(path, log, true)) {
    return 1;
  }
  std::cout << path << ": OK\n";
  return 0;
}

/// SIGTERM/SIGINT/SIGQUIT/SIGHUP are blocked in every thread and taken with sigwait() by main alone:
/// POCO's ServerApplication leaves a window in which SIGTERM kills the process and SIGHUP always does
/// (POCO-NOTES.md). Blocking them first thing closes that window; a signal sent during start-up waits.
sigset_t blockHandledSignals() {
  sigset_t set;
  sigemptyset(&set);
  for (const int s : {SIGTERM, SIGINT, SIGQUIT, SIGHUP}) {
    sigaddset(&set, s);
  }
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A client closing its socket mid-response must not kill the process.
  signal(SIGPIPE, SIG_IGN);
  return set;
}

bool ensurePrivateDirectory(const std::string& path, const sb::broker::Log& log) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) {
    log.event("startup_failed", {{"reason", "state_directory"}, {"path", path}, {"detail", ec.message()}});
    return false;
  }
  ::chmod(path.c_str(), 0700);
  return true;
}

int run(const std::string& configPath, sigset_t signals) {
  const sb::broker::Log log;
  auto config = load(configPath, log, false);
  if (!config) {
    log.event("startup_failed", {{"reason", "invalid_configuration"}, {"config", configPath}});
    return 1;
  }
  const sb::config::Server& server = config->server;
  try {
    if (!ensurePrivateDirectory(server.state_directory, log)) {
      return 1;
    }
    const sb::broker::SystemClock clock;
    const auto signingAlg = *sb::jwks::algFromName(server.signing_algorithm);
    auto keySet = sb::keyring::openKeyring(server.state_directory, signingAlg);
    if (!keySet) {
      log.event("startup_failed", {{"reason", "keyring"}, {"detail", keySet.error()}});
      return 1;
    }
    const sb::broker::KeyringHolder keys(std::make_shared<const sb::keyring::KeySet>(std::move(*keySet)));

    sb::broker::SqliteOptions storeOptions;
    storeOptions.path = server.database_path;
    const auto store = sb::broker::openSqliteStore(storeOptions, clock);

    auto registryValue = std::make_shared<const sb::broker::ClientRegistry>(config->systems);
    sb::broker::Snapshot<sb::broker::DiscoveryDocuments> discovery(
        std::make_shared<const sb::broker::DiscoveryDocuments>(
            sb::broker::buildDiscovery(server, registryValue->allAlgorithms())));
    sb::broker::RegistryHolder registry(registryValue);

    sb::broker::InlineKeySource keySource;
    sb::broker::AssertionPolicy assertionPolicy;
    assertionPolicy.audience = server.tokenEndpoint();
    assertionPolicy.clock_skew = server.clock_skew.count();
    assertionPolicy.max_lifetime = server.max_assertion_lifetime.count();
    assertionPolicy.max_bytes = server.limits.max_assertion_bytes;
    const sb::broker::ClientAuthenticator authenticator(assertionPolicy, registry, keySource, clock);

    sb::broker::TokenPolicy tokenPolicy;
    tokenPolicy.issuer = server.issuer();
    tokenPolicy.audiences = server.audiences;
    tokenPolicy.default_lifetime = server.token_lifetime.count();
    tokenPolicy.max_lifetime = server.max_token_lifetime.count();
    tokenPolicy.max_scope_count = server.limits.max_scope_count;
    tokenPolicy.form.max_params = server.limits.max_params;
    tokenPolicy.form.max_value_bytes = server.limits.max_param_bytes;
    // The assertion may use the whole body at the form layer, so that an oversized one is refused by the
    // authenticator as invalid_client (SPEC "Authenticating" 1) rather than as a malformed request.
    tokenPolicy.form.max_large_value_bytes = server.limits.max_body_bytes;
    const sb::broker::TokenEndpoint token(tokenPolicy, authenticator, *store, keys, clock, log);

    sb::broker::HttpServer http(server, {token, keys, discovery, *store, 300}, log);
    http.start();
    log.event("listening", {{"address", server.listen_address},
                            {"port", std::to_string(http.port())},
                            {"public_base_url", server.public_base_url},
                            {"systems", std::to_string(registryValue->size())},
                            {"kid", keys.get()->active->kid()}});
    sd_notify(0, "READY=1");

    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) {
        continue;
      }
      if (sig == SIGHUP) {
        sd_notify(0, "RELOADING=1");
        // Only the registry reloads; listener, keys and store settings apply at the next start.
        if (auto next = load(configPath, log, false)) {
          auto nextRegistry = std::make_shared<const sb::broker::ClientRegistry>(next->systems);
          discovery.set(std::make_shared<const sb::broker::DiscoveryDocuments>(
              sb::broker::buildDiscovery(server, nextRegistry->allAlgorithms())));
          registry.set(nextRegistry);
          log.event("reloaded", {{"systems", std::to_string(nextRegistry->size())}});
        } else {
          log.event("reload_failed", {{"reason", "invalid_configuration"}, {"note", "previous registry kept"}});
        }
        sd_notify(0, "READY=1");
        continue;
      }
      log.event("stopping", {{"signal", strsignal(sig)}});
      sd_notify(0, "STOPPING=1");
      http.stop(10);
      break;
    }
  } catch (const Poco::Exception& e) {
    log.event("startup_failed", {{"reason", "exception"}, {"detail", e.displayText()}});
    return 1;
  } catch (const std::exception& e) {
    log.event("startup_failed", {{"reason", "exception"}, {"detail", e.what()}});
    return 1;
  }
  log.event("stopped", {});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const sigset_t signals = blockHandledSignals();
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  if (args.size() == 1 && args[0] == "--version") {
    std::cout << "smart-broker 0.1.0\n";
    return 0;
  }
  if (args.size() == 2 && args[0] == "--check-config") {
    return checkConfig(args[1]);
  }
  if (args.size() == 2 && (args[0] == "--config" || args[0] == "-c")) {
    return run(args[1], signals);
  }
  std::cerr << kUsage;
  return 2;
}
