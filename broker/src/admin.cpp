// `smart-broker keys list|rotate|retire|revoke|export-jwks`: signing-key lifecycle commands for operators.
#include "admin.hpp"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "admin_migrate.hpp"
#include "smartbroker/broker/postgres_keyring.hpp"

namespace smartbroker::broker {
namespace {

namespace kr = smartbroker::keyring;

constexpr const char* kDefaultConfig = "/etc/smart-broker/smart-broker.yaml";

constexpr const char* kUsage =
    "usage: smart-broker keys list [--json] [--config FILE]\n"
    "       smart-broker keys rotate [--now] [--config FILE]   stage a new key; it signs once resource servers can\n"
    "                                                          have seen it (--now: at once, see the warning)\n"
    "       smart-broker keys retire KID [--config FILE]       withdraw a staged key, or hand over to a ready one\n"
    "       smart-broker keys revoke KID [--force] [--config FILE]\n"
    "                                                          emergency: remove KID from the JWKS at once\n"
    "       smart-broker keys export-jwks [--config FILE]      the JWK Set the broker serves\n"
    "FILE defaults to /etc/smart-broker/smart-broker.yaml. Run as the service user (scripts/smart-broker-keys).\n";

/// How long a command waits for the running broker to act on a request it recorded (the broker ticks each second).
constexpr std::chrono::seconds kBrokerWait{10};

struct Arguments {
  std::string command;
  std::optional<std::string> kid;
  std::string config = kDefaultConfig;
  bool now = false;
  bool force = false;
  bool json = false;
};

std::optional<Arguments> parseArguments(const std::vector<std::string>& args) {
  if (args.empty()) {
    return std::nullopt;
  }
  Arguments out;
  out.command = args[0];
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "--config" || a == "-c") && i + 1 < args.size()) {
      out.config = args[++i];
    } else if (a == "--now" && out.command == "rotate") {
      out.now = true;
    } else if (a == "--force" && out.command == "revoke") {
      out.force = true;
    } else if (a == "--json" && out.command == "list") {
      out.json = true;
    } else if (!out.kid && (out.command == "retire" || out.command == "revoke")) {
      // A kid is an RFC 7638 thumbprint in base64url and may begin with '-': anything that is not one of the
      // options above is the kid (so is the argument after "--", as usual).
      if (a == "--") {
        if (i + 1 >= args.size()) {
          return std::nullopt;
        }
        out.kid = args[++i];
        continue;
      }
      out.kid = a;
    } else {
      return std::nullopt;
    }
  }
  const bool needsKid = out.command == "retire" || out.command == "revoke";
  const bool known = needsKid || out.command == "list" || out.command == "rotate" || out.command == "export-jwks";
  if (!known || needsKid != out.kid.has_value()) {
    return std::nullopt;
  }
  return out;
}

std::string optionalTime(const std::optional<std::int64_t>& t) { return t ? kr::formatTime(*t) : "-"; }

/// What happens next to a key, in words.
std::string nextStep(const kr::KeyRecord& k, const kr::Policy& policy) {
  switch (k.state) {
    case kr::KeyState::Pending: {
      const auto at = kr::activationAt(k, policy);
      return at ? "signs from " + kr::formatTime(*at) : "waits for a running broker to publish it";
    }
    case kr::KeyState::Active:
      return policy.rotation_period > 0
                 ? "replaced from " + kr::formatTime(k.activated_at.value_or(0) + policy.rotation_period)
                 : "replaced only by `keys rotate`";
    case kr::KeyState::Retired:
      return "leaves the JWKS at " + kr::formatTime(kr::removalAt(k, policy).value_or(0));
    case kr::KeyState::Revoked:
      return "revoked at " + optionalTime(k.ended_at);
    case kr::KeyState::Removed:
      return "left the JWKS at " + optionalTime(k.ended_at);
  }
  return "";
}

std::string jsonTime(const std::optional<std::int64_t>& t) { return t ? std::to_string(*t) : "null"; }

/// Values written here are kids (base64url), fixed tokens and generated sentences without quotes or backslashes.
std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
    }
    out += c;
  }
  return out + "\"";
}

void printList(const kr::RingState& state, const kr::KeyringAdmin& admin, const std::string& keysDir, bool json) {
  const kr::Policy& p = admin.policy();
  const bool running = admin.brokerRunning();
  if (json) {
    std::cout << "{\"keyring\":" << jsonString(keysDir) << ",\"broker_running\":" << (running ? "true" : "false")
              << ",\"policy\":{\"algorithm\":\"" << jwks::algName(p.algorithm)
              << "\",\"rotation_period\":" << p.rotation_period << ",\"lead_time\":" << p.lead_time
              << ",\"jwks_max_age\":" << p.jwks_max_age << ",\"retention\":" << p.retention() << "}"
              << ",\"rotation_request\":";
    if (state.rotation_request) {
      std::cout << "{\"requested_at\":" << state.rotation_request->requested_at
                << ",\"immediate\":" << (state.rotation_request->immediate ? "true" : "false") << "}";
    } else {
      std::cout << "null";
    }
    std::cout << ",\"keys\":[";
    for (std::size_t i = 0; i < state.keys.size(); ++i) {
      const kr::KeyRecord& k = state.keys[i];
      std::cout << (i == 0 ? "" : ",") << "{\"kid\":" << jsonString(k.kid) << ",\"alg\":\"" << jwks::algName(k.alg)
                << "\",\"state\":\"" << kr::keyStateName(k.state) << "\",\"created_at\":" << k.created_at
                << ",\"published_at\":" << jsonTime(k.published_at) << ",\"activated_at\":"
                << jsonTime(k.activated_at) << ",\"retired_at\":" << jsonTime(k.retired_at)
                << ",\"ended_at\":" << jsonTime(k.ended_at) << ",\"next\":" << jsonString(nextStep(k, p)) << "}";
    }
    std::cout << "]}\n";
    return;
  }
  std::cout << "keyring " << keysDir << ": " << jwks::algName(p.algorithm) << ", rotation "
            << (p.rotation_period > 0 ? "every " + kr::formatDuration(p.rotation_period) : std::string("by command only"))
            << ", lead time " << kr::formatDuration(p.lead_time) << ", JWKS max-age "
            << kr::formatDuration(p.jwks_max_age) << ", retired keys published "
            << kr::formatDuration(p.retention()) << " after their last signature\n";
  std::cout << "smart-broker running: " << (running ? "yes" : "no") << "\n";
  if (state.rotation_request) {
    std::cout << "rotation requested at " << kr::formatTime(state.rotation_request->requested_at)
              << (state.rotation_request->immediate ? " (immediate)" : "") << ": the broker applies it at its next tick\n";
  }
  if (state.active() == nullptr) {
    std::cout << "NO ACTIVE KEY: no token can be issued until smart-broker activates one (it does at its next tick)\n";
  }
  std::cout << std::left << std::setw(45) << "KID" << std::setw(7) << "ALG" << std::setw(9) << "STATE"
            << std::setw(22) << "CREATED" << std::setw(22) << "ACTIVATED" << "NEXT\n";
  // Live keys first (newest first), then the tombstones.
  std::vector<const kr::KeyRecord*> order;
  for (const bool live : {true, false}) {
    for (auto it = state.keys.rbegin(); it != state.keys.rend(); ++it) {
      if (it->published() == live) {
        order.push_back(&*it);
      }
    }
  }
  for (const kr::KeyRecord* k : order) {
    std::cout << std::left << std::setw(45) << k->kid << std::setw(7) << jwks::algName(k->alg) << std::setw(9)
              << kr::keyStateName(k->state) << std::setw(22) << kr::formatTime(k->created_at) << std::setw(22)
              << optionalTime(k->activated_at) << nextStep(*k, p) << "\n";
  }
}

void printOutcome(const kr::CommandOutcome& outcome) {
  std::cout << outcome.summary << "\n";
  for (const std::string& w : outcome.warnings) {
    std::cerr << "WARNING: " << w << "\n";
  }
}

/// After a command that needs the broker to make a key: wait for it and say what happened, or say it will happen at
/// the next start.
int followUp(const kr::KeyringAdmin& admin, const std::string& command, const std::optional<std::string>& revoked) {
  if (!admin.brokerRunning()) {
    std::cout << "smart-broker is not running: it applies this when it starts\n";
    return 0;
  }
  auto state = admin.waitFor(
      [&](const kr::RingState& s) {
        if (s.rotation_request) {
          return false;
        }
        return command != "revoke" || s.active() != nullptr;
      },
      kBrokerWait);
  if (!state) {
    std::cerr << "smart-broker keys: " << state.error() << "\n";
    return 1;
  }
  if (state->rotation_request || state->active() == nullptr) {
    std::cerr << "smart-broker keys: the running broker has not acted within " << kBrokerWait.count()
              << " s; check its log (journalctl -u smart-broker)\n";
    return 1;
  }
  const kr::KeyRecord* active = state->active();
  const kr::KeyRecord* pending = state->nextPending();
  if (command == "rotate" && pending != nullptr) {
    const auto at = kr::activationAt(*pending, admin.policy());
    std::cout << "smart-broker staged " << pending->kid << "; it signs from "
              << (at ? kr::formatTime(*at) : std::string("after the lead time")) << "\n";
  } else if (!revoked || active->kid != *revoked) {
    std::cout << active->kid << " is now the active signing key\n";
  }
  return 0;
}

}  // namespace

std::shared_ptr<kr::KeyringStorage> keyringStorage(const config::Config& config, const std::string& instance,
                                                    bool migrate) {
  if (config.server.storage == config::Server::Storage::Postgresql) {
    return openPostgresKeyring(postgresOptions(config.server), instance, migrate);
  }
  return kr::fileKeyringStorage(config.server.state_directory);
}

std::string instanceName() {
  std::array<char, 256> host{};
  if (::gethostname(host.data(), host.size() - 1) != 0) {
    host[0] = '\0';
  }
  return std::string(host.data()) + ":" + std::to_string(::getpid());
}

kr::Policy keyringPolicy(const config::Config& config) {
  kr::Policy p;
  p.algorithm = config.keyring.algorithm;
  p.rotation_period = config.keyring.rotation_period.count();
  p.lead_time = config.keyring.lead_time.count();
  p.jwks_max_age = config.keyring.jwks_max_age.count();
  p.retirement_grace = config.keyring.retirement_grace.count();
  p.max_token_lifetime = config.server.max_token_lifetime.count();
  p.clock_skew = config.server.clock_skew.count();
  if (config.server.storage == config::Server::Storage::Postgresql) {
    // Several instances share the keyring; each serves a new key up to a tick later than the one that made it.
    p.propagation_delay = kr::kSharedPropagationDelay;
  }
  return p;
}

std::expected<std::string, std::string> keyEncryptionKey(const config::Keyring& keyring,
                                                         const char* credentialsDirectory) {
  if (!keyring.kek_file.empty()) {
    return kr::loadKeyEncryptionKey(keyring.kek_file);
  }
  if (keyring.kek_credential.empty()) {
    return std::string();
  }
  // Why: no fallback to a file when the credential is missing; starting with plain keys would silently downgrade.
  if (credentialsDirectory == nullptr || *credentialsDirectory == '\0') {
    return std::unexpected("keyring.kek_credential is " + keyring.kek_credential +
                           ", but $CREDENTIALS_DIRECTORY is not set (start smart-broker with systemd's "
                           "LoadCredential=" + keyring.kek_credential + ":/path/to/kek)");
  }
  return kr::loadKeyEncryptionKey(std::string(credentialsDirectory) + "/" + keyring.kek_credential);
}

int runKeysCommand(const std::vector<std::string>& args) {
  const auto parsed = parseArguments(args);
  if (!parsed) {
    std::cerr << kUsage;
    return 2;
  }
  const Arguments& a = *parsed;
  // Scope syntax is the broker's business, not this command's: no validators.
  auto config = config::loadConfig(a.config, config::Validators{});
  if (!config) {
    for (const auto& problem : config.error()) {
      std::cerr << problem.format() << '\n';
    }
    return 1;
  }
  // Files or the shared database, as the broker uses them; the same records, commands and output on both.
  auto admin = kr::KeyringAdmin::open(keyringStorage(*config, "smart-broker keys on " + instanceName(), false),
                                      keyringPolicy(*config));
  if (!admin) {
    std::cerr << "smart-broker keys: " << admin.error() << "\n";
    return 1;
  }
  const std::string keysDir = admin->location();

  if (a.command == "list") {
    auto state = admin->read();
    if (!state) {
      std::cerr << "smart-broker keys: " << state.error() << "\n";
      return 1;
    }
    printList(*state, *admin, keysDir, a.json);
    return 0;
  }
  if (a.command == "export-jwks") {
    auto jwks = admin->exportJwks();
    if (!jwks) {
      std::cerr << "smart-broker keys: " << jwks.error() << "\n";
      return 1;
    }
    std::cout << *jwks << "\n";
    return 0;
  }

  std::expected<kr::CommandOutcome, std::string> outcome;
  if (a.command == "rotate") {
    outcome = admin->rotate(a.now);
  } else if (a.command == "retire") {
    outcome = admin->retire(*a.kid);
  } else {
    outcome = admin->revoke(*a.kid, a.force);
  }
  if (!outcome) {
    std::cerr << "smart-broker keys: refused: " << outcome.error() << "\n";
    return 1;
  }
  printOutcome(*outcome);
  if (outcome->needs_broker) {
    return followUp(*admin, a.command, a.kid);
  }
  if (outcome->changed && admin->brokerRunning()) {
    std::cout << "the running broker applies this within a second\n";
  }
  return 0;
}

}  // namespace smartbroker::broker
