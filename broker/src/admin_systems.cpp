// Suspend, resume, revoke all tokens of, and list tokens of a registered system.
#include "admin_systems.hpp"

#include "admin_migrate.hpp"

#include <ctime>
#include <iostream>
#include <optional>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/scopes.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/config/config.hpp"

namespace smartbroker::broker {
namespace {

constexpr const char* kUsage =
    "usage: smart-broker systems list --config FILE\n"
    "       smart-broker systems suspend CLIENT_ID --config FILE      refuse new tokens; live tokens introspect inactive\n"
    "       smart-broker systems resume CLIENT_ID --config FILE\n"
    "       smart-broker systems revoke-tokens CLIENT_ID --config FILE  revoke every token issued until now\n"
    "       smart-broker systems tokens CLIENT_ID [--limit N] --config FILE  live tokens: jti, scope, exp (never the token)\n";

std::string isoTime(std::int64_t t) {
  const std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

int runSystemsCommand(const std::vector<std::string>& args) {
  std::optional<std::string> configPath;
  std::vector<std::string> positional;
  std::size_t limit = 50;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--config" && i + 1 < args.size()) {
      configPath = args[++i];
    } else if (args[i] == "--limit" && i + 1 < args.size()) {
      limit = static_cast<std::size_t>(std::stoul(args[++i]));
    } else {
      positional.push_back(args[i]);
    }
  }
  if (!configPath || positional.empty() || (positional[0] != "list" && positional.size() != 2)) {
    std::cerr << kUsage;
    return 2;
  }
  config::Validators validators;
  auto config = config::loadConfig(*configPath, validators);
  if (!config) {
    for (const auto& problem : config.error()) {
      std::cerr << problem.format() << '\n';
    }
    return 1;
  }
  const SystemClock clock;
  std::unique_ptr<StateStore> store;
  try {
    store = openConfiguredStore(config->server, clock);
  } catch (const std::exception& e) {
    std::cerr << "smart-broker: cannot open the state store: " << e.what() << '\n';
    return 1;
  }
  const std::string& command = positional[0];
  if (command == "list") {
    auto changes = store->changesSince(0, clock.now());
    if (!changes) {
      std::cerr << "smart-broker: " << changes.error().detail << '\n';
      return 1;
    }
    std::cout << "client_id\tenabled\tsuspended\trevoked_before\n";
    for (const config::System& s : config->systems) {
      const auto it = changes->systems.find(s.client_id);
      const SystemState state = it == changes->systems.end() ? SystemState{} : it->second;
      std::cout << s.client_id << '\t' << (s.enabled ? "yes" : "no") << '\t' << (state.suspended ? "yes" : "no")
                << '\t' << (state.revoked_before > 0 ? isoTime(state.revoked_before) : "-") << '\n';
    }
    return 0;
  }
  const std::string& clientId = positional[1];
  bool registered = false;
  for (const config::System& s : config->systems) {
    registered = registered || s.client_id == clientId;
  }
  if (!registered) {
    std::cerr << "smart-broker: no system " << clientId << " is registered in " << *configPath << '\n';
    return 1;
  }
  std::expected<void, StoreError> done;
  if (command == "suspend" || command == "resume") {
    done = store->setSuspended(clientId, command == "suspend");
  } else if (command == "revoke-tokens") {
    done = store->revokeAllTokens(clientId, clock.now());
  } else if (command == "tokens") {
    auto tokens = store->recentTokens(clientId, limit, clock.now());
    if (!tokens) {
      std::cerr << "smart-broker: " << tokens.error().detail << '\n';
      return 1;
    }
    std::cout << "jti\tissued\texpires\tkid\tscope\n";
    for (const IssuedToken& t : *tokens) {
      std::cout << t.jti << '\t' << isoTime(t.iat) << '\t' << isoTime(t.exp) << '\t' << t.kid << '\t' << t.scope
                << '\n';
    }
    return 0;
  } else {
    std::cerr << kUsage;
    return 2;
  }
  if (!done) {
    std::cerr << "smart-broker: " << done.error().detail << '\n';
    return 1;
  }
  std::cout << clientId << ": " << command << " done; a running broker applies it within one second\n";
  return 0;
}

}  // namespace smartbroker::broker
