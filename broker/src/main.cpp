// smart-broker's composition root: configuration in, objects wired, signals handled, nothing global.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <Poco/Exception.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "admin.hpp"
#include "admin_migrate.hpp"
#include "admin_systems.hpp"
#include "consent_http.hpp"
#include "smartbroker/broker/access_token.hpp"
#include "smartbroker/broker/client_auth.hpp"
#include "smartbroker/broker/client_key_source.hpp"
#include "smartbroker/broker/consent.hpp"
#include "smartbroker/broker/consent_endpoint.hpp"
#include "smartbroker/broker/introspection.hpp"
#include "smartbroker/broker/token_state.hpp"
#include "smartbroker/broker/discovery.hpp"
#include "smartbroker/broker/http_server.hpp"
#include "smartbroker/broker/log.hpp"
#include "smartbroker/broker/registry.hpp"
#include "smartbroker/broker/scopes.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/broker/token_endpoint.hpp"
#include "smartbroker/config/config.hpp"
#include "smartbroker/keyring/keyring.hpp"
#include "smartbroker/keyring/keyring_storage.hpp"
#include "smartbroker/keyring/manager.hpp"

namespace {

namespace sb = smartbroker;

constexpr const char* kUsage =
    "usage: smart-broker --config FILE        run the broker\n"
    "       smart-broker --check-config FILE  validate FILE, print every problem as file:line: key: problem\n"
    "       smart-broker systems list|suspend|resume|revoke-tokens|tokens ... --config FILE\n"
    "       smart-broker migrate --config FILE  apply pending state store migrations\n"
    "       smart-broker keys list|rotate [--now]|retire KID|revoke KID [--force]|export-jwks [--config FILE]\n"
    "       smart-broker --version | --help\n";

/// How often the revocation/suspension mirror follows the store, and how far behind it may be before the
/// endpoints that answer from it fail closed (issue 7: changes made elsewhere are seen within one second).
constexpr std::chrono::milliseconds kStateSyncInterval{200};
constexpr std::chrono::milliseconds kStateMaxStaleness{1000};

sb::config::Validators validators() {
  sb::config::Validators v;
  // Broker permissions (server.introspection_scope, server.consent_admin_scope) are recognised by the config
  // loader itself; every other pre-authorized scope must be a SMART system/ scope.
  v.scope = [](const std::string& scope) -> std::optional<std::string> {
    if (!sb::broker::parseSystemScope(scope)) {
      return "not a valid system/ scope (SMART v1 .read/.write/.*, v2 .cruds subset in order, optional ?param=value)";
    }
    return std::nullopt;
  };
  return v;
}

/// One log line per keyring event (rotation steps, problems); never key material.
void logKeyring(const std::vector<sb::keyring::Event>& events, const std::optional<std::string>& error,
                const sb::broker::Log& log) {
  for (const sb::keyring::Event& e : events) {
    log.event(e.name, {{"kid", e.kid}, {"level", e.warning ? "warning" : "info"}, {"detail", e.detail}});
  }
  if (error) {
    log.event("keyring_error", {{"detail", *error}, {"note", "the keys being served are kept"}});
  }
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
    sb::keyring::KeyringOptions keyringOptions;
    keyringOptions.state_directory = server.state_directory;
    keyringOptions.policy = sb::broker::keyringPolicy(*config);
    keyringOptions.now = [&clock] { return clock.now(); };
    auto kek = sb::broker::keyEncryptionKey(config->keyring, std::getenv("CREDENTIALS_DIRECTORY"));
    if (!kek) {
      log.event("startup_failed", {{"reason", "keyring"}, {"detail", kek.error()}});
      return 1;
    }
    keyringOptions.kek = std::move(*kek);
    keyringOptions.instance = sb::broker::instanceName();
    if (server.storage == sb::config::Server::Storage::Postgresql) {
      // One keyring for every instance, in the state database: one instance at a time changes it (advisory lock),
      // the others load its changes within a second. A file keyring this instance kept before is imported once,
      // when the database holds none yet.
      keyringOptions.storage = sb::broker::keyringStorage(*config, keyringOptions.instance, true);
      if (std::filesystem::exists(std::filesystem::path(server.state_directory) / "keys")) {
        keyringOptions.import_from = sb::keyring::fileKeyringStorage(server.state_directory);
      }
    }
    auto keyring = sb::keyring::KeyringManager::open(std::move(keyringOptions));
    if (!keyring) {
      log.event("startup_failed", {{"reason", "keyring"}, {"detail", keyring.error()}});
      return 1;
    }
    logKeyring((*keyring)->startupEvents(), std::nullopt, log);
    sb::broker::KeyringHolder keys((*keyring)->current());
    // The keyring applies its rotation policy and picks up changes of `smart-broker keys` and other instances every
    // second, off the request path; each new snapshot is swapped in atomically. While its storage does not answer,
    // the last snapshot keeps serving (JWKS, signing) and the ticks go on trying.
    std::jthread keyringTicker([&](const std::stop_token& stop) {
      (*keyring)->run(stop, [&](const sb::keyring::KeyringManager::Tick& t) {
        if (t.published) {
          keys.set(t.published);
        }
        logKeyring(t.events, t.error, log);
      });
    });

    // server.storage: SQLite on this machine, or PostgreSQL shared with the other instances (migrated at open).
    const auto store = sb::broker::openConfiguredStore(server, clock);

    // The mirror follows the store every kStateSyncInterval and stops answering (503) when it is more than
    // kStateMaxStaleness behind, so a revocation made on another instance is honoured within that bound.
    sb::broker::TokenState tokenState(kStateMaxStaleness);
    if (!tokenState.sync(*store, clock.now())) {
      log.event("startup_failed", {{"reason", "store_unavailable"}, {"detail", "cannot read revocations"}});
      return 1;
    }
    auto registryValue =
        std::make_shared<const sb::broker::ClientRegistry>(config->systems, server.permissionScopes());
    sb::broker::Snapshot<sb::broker::DiscoveryDocuments> discovery(
        std::make_shared<const sb::broker::DiscoveryDocuments>(
            sb::broker::buildDiscovery(server, registryValue->allAlgorithms())));
    sb::broker::RegistryHolder registry(registryValue);

    // Inline keys, or the client's jwks_uri through one cache shared by every endpoint that authenticates.
    sb::broker::JwksKeySource clientKeys(server.jwks_fetch, log);
    sb::broker::ClientKeySource& keySource = clientKeys.source();
    sb::broker::AssertionPolicy assertionPolicy;
    assertionPolicy.audience = server.tokenEndpoint();
    assertionPolicy.clock_skew = server.clock_skew.count();
    assertionPolicy.max_lifetime = server.max_assertion_lifetime.count();
    assertionPolicy.max_bytes = server.limits.max_assertion_bytes;
    const sb::broker::ClientAuthenticator authenticator(assertionPolicy, registry, keySource, clock, &tokenState);
    // Introspection and revocation callers name their endpoint in aud; the token endpoint URL (the usual
    // RFC 7523 audience for "this authorization server") is accepted there too.
    sb::broker::AssertionPolicy introspectPolicy = assertionPolicy;
    introspectPolicy.audience = server.introspectionEndpoint();
    introspectPolicy.also_accepted = {server.tokenEndpoint(), server.issuer()};
    const sb::broker::ClientAuthenticator introspectAuth(introspectPolicy, registry, keySource, clock, &tokenState);
    sb::broker::AssertionPolicy revokePolicy = introspectPolicy;
    revokePolicy.audience = server.revocationEndpoint();
    const sb::broker::ClientAuthenticator revokeAuth(revokePolicy, registry, keySource, clock, &tokenState);

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
    // Consent (README "Consent"): the local store or a FHIR server, and the outbox of withdrawal notifications.
    sb::broker::ConsentOptions consentOptions;
    consentOptions.settings = config->consent;
    consentOptions.max_scope_count = server.limits.max_scope_count;
    const bool fhirConsent = config->consent.source == sb::config::ConsentSettings::Source::Fhir;
    sb::broker::ConsentMapping consentMapping{config->consent.grantee_identifier_system,
                                              config->consent.max_resource_bytes};
    sb::broker::ConsentService consents(
        consentOptions, fhirConsent ? sb::broker::makeFhirConsentSource(config->consent, consentMapping) : nullptr,
        *store, tokenState, clock, log);
    std::unique_ptr<sb::broker::ConsentNotifier> notifier;
    if (config->consent.notification_url) {
      notifier = std::make_unique<sb::broker::ConsentNotifier>(
          *store, sb::broker::makeNotificationSender(config->consent),
          config->consent.retry_initial_backoff.count(), config->consent.retry_max_backoff.count(), clock, log);
      consents.onNotificationQueued([&notifier] { notifier->wake(); });
    }

    const sb::broker::TokenEndpoint token(tokenPolicy, authenticator, *store, keys, clock, log, &consents);

    const sb::broker::AccessTokenVerifier verifier(server.issuer(), keys, clock, server.clock_skew.count());
    const sb::broker::TokenServices services{verifier, tokenState, registry, *store, clock, log,
                                             tokenPolicy.form, server.clock_skew.count(), &consents};
    const sb::broker::IntrospectionEndpoint introspection(services, introspectAuth, server.introspection_scope);
    const sb::broker::RevocationEndpoint revocation(services, revokeAuth);
    // Consent admin callers name {base}/consents in aud (the token endpoint and issuer are accepted too).
    sb::broker::AssertionPolicy consentPolicy = introspectPolicy;
    consentPolicy.audience = server.public_base_url + "/consents";
    const sb::broker::ClientAuthenticator consentAuth(consentPolicy, registry, keySource, clock, &tokenState);
    const sb::broker::ConsentEndpoint consentEndpoint(consents, verifier, tokenState, registry, *store, consentAuth,
                                                      server.consent_admin_scope, server.clock_skew.count(), log);

    // Maintenance: follow revocations and suspensions made elsewhere (admin commands, other instances) within
    // the staleness bound, and forget revocations of tokens that have expired.
    std::jthread maintenance([&](std::stop_token stop) {
      std::mutex mutex;
      std::condition_variable_any wake;
      std::int64_t lastPrune = 0;
      bool failing = false;
      while (!stop.stop_requested()) {
        std::unique_lock lock(mutex);
        wake.wait_for(lock, stop, kStateSyncInterval, [] { return false; });
        const std::int64_t now = clock.now();
        const bool synced = tokenState.sync(*store, now);
        if (synced != !failing) {
          // Logged on each change only: an outage is one line, not five a second.
          if (synced) {
            log.event("state_sync_recovered", {});
          } else {
            log.event("state_sync_failed", {{"reason", "store_unavailable"}});
          }
          failing = !synced;
        }
        if (now - lastPrune >= 60) {
          tokenState.prune(now);
          lastPrune = now;
        }
      }
    });

    sb::broker::Endpoints endpoints{token, keys, discovery, *store, (*keyring)->policy().jwks_max_age};
    endpoints.introspection = &introspection;
    endpoints.revocation = &revocation;
    if (consents.local()) {
      endpoints.consent = &consentEndpoint;
    }
    sb::broker::HttpServer http(server, endpoints, log);
    http.start();
    log.event("listening", {{"address", server.listen_address},
                            {"port", std::to_string(http.port())},
                            {"public_base_url", server.public_base_url},
                            {"systems", std::to_string(registryValue->size())},
                            {"kid", keys.get()->active->kid()}});
    sd_notify(0, "READY=1");

    // Under WatchdogSec= the main loop pings at half the interval, and only while the store answers, so a
    // broker that can no longer record assertions is restarted instead of refusing every request.
    std::uint64_t watchdogUsec = 0;
    const bool watchdog = sd_watchdog_enabled(0, &watchdogUsec) > 0 && watchdogUsec > 0;
    const auto tick = watchdog ? static_cast<long>(watchdogUsec / 2) : 1'000'000'000L * 3600;
    for (;;) {
      const timespec timeout{tick / 1'000'000, (tick % 1'000'000) * 1000};
      const int sig = sigtimedwait(&signals, nullptr, &timeout);
      if (sig < 0) {
        if (watchdog && store->healthy()) {
          sd_notify(0, "WATCHDOG=1");
        }
        continue;
      }
      if (sig == SIGHUP) {
        sd_notify(0, "RELOADING=1");
        // Only the registry reloads; listener, keys and store settings apply at the next start.
        auto next = load(configPath, log, false);
        if (next && next->server.permissionScopes() != server.permissionScopes()) {
          // The endpoints hold the names they were started with; a registry built with other names would
          // grant a permission no endpoint honours (or honour one no registration names).
          log.event("reload_failed", {{"reason", "permission_scopes_changed"},
                                      {"note", "restart to apply server.introspection_scope or consent_admin_scope; "
                                               "previous registry kept"}});
        } else if (next) {
          auto nextRegistry = std::make_shared<const sb::broker::ClientRegistry>(
              next->systems, server.permissionScopes());
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
  if (!args.empty() && args[0] == "keys") {
    return sb::broker::runKeysCommand({args.begin() + 1, args.end()});
  }
  if (!args.empty() && args[0] == "migrate") {
    return sb::broker::runMigrateCommand({args.begin() + 1, args.end()});
  }
  if (!args.empty() && args[0] == "systems") {
    return sb::broker::runSystemsCommand({args.begin() + 1, args.end()});
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
