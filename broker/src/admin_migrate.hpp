// Opening the configured state store (SQLite or PostgreSQL), and `smart-broker migrate`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/store.hpp"
#include "smartbroker/config/config.hpp"

namespace smartbroker::broker {

/// The PostgreSQL settings of `server` (connection string, pool size).
PostgresOptions postgresOptions(const config::Server& server);

/// The store `server.storage` selects, with its migrations applied. Throws std::runtime_error when it cannot open.
std::unique_ptr<StateStore> openConfiguredStore(const config::Server& server, const Clock& clock);

/// `smart-broker migrate --config FILE`: applies pending schema migrations and prints the version. Exit status 0
/// on success, 1 on failure, 2 on bad usage.
int runMigrateCommand(const std::vector<std::string>& args);

}  // namespace smartbroker::broker
