// Opens the configured state store and implements `smart-broker migrate`.
#include "admin_migrate.hpp"

#include <chrono>
#include <iostream>
#include <stdexcept>

namespace smartbroker::broker {

PostgresOptions postgresOptions(const config::Server& server) {
  PostgresOptions options;
  options.connection = server.postgresql.connection;
  options.pool_size = server.postgresql.pool_size;
  options.statement_timeout_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(server.postgresql.statement_timeout).count();
  return options;
}

std::unique_ptr<StateStore> openConfiguredStore(const config::Server& server, const Clock& clock) {
  if (server.storage == config::Server::Storage::Postgresql) {
    return openPostgresStore(postgresOptions(server), clock);
  }
  SqliteOptions options;
  options.path = server.database_path;
  return openSqliteStore(options, clock);
}

int runMigrateCommand(const std::vector<std::string>& args) {
  if (args.size() != 2 || args[0] != "--config") {
    std::cerr << "usage: smart-broker migrate --config FILE   apply pending state store migrations\n";
    return 2;
  }
  auto config = config::loadConfig(args[1], config::Validators{});
  if (!config) {
    for (const auto& problem : config.error()) {
      std::cerr << problem.format() << '\n';
    }
    return 1;
  }
  try {
    if (config->server.storage == config::Server::Storage::Postgresql) {
      // Safe while brokers run: migrations take an advisory lock and each applies once.
      const std::int64_t version = migratePostgres(postgresOptions(config->server));
      std::cout << "postgresql: schema version " << version << '\n';
    } else {
      // SQLite migrates when a store opens; opening and closing it is the migration.
      const SystemClock clock;
      openConfiguredStore(config->server, clock).reset();
      std::cout << "sqlite: " << config->server.database_path << " migrated\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "smart-broker: migration failed: " << e.what() << '\n';
    return 1;
  }
  return 0;
}

}  // namespace smartbroker::broker
