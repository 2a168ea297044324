// The keyring in PostgreSQL: one keyring for every broker instance of a deployment, changed by one at a time.
#pragma once

#include <memory>
#include <string>

#include "smartbroker/broker/store.hpp"
#include "smartbroker/keyring/keyring_storage.hpp"

namespace smartbroker::broker {

/// The keyring tables of the state database (postgres_store.cpp migrations): `keyring_state` (one row: the
/// rotation request and a generation that moves with every change), `keyring_keys` (the lifecycle records, public
/// keys only), `keyring_secrets` (private keys of pending and active keys, sealed with the key-encryption key; the
/// table refuses anything without the sealed-key magic) and `keyring_brokers` (heartbeats).
///
/// Every change (a broker's policy tick that writes, a `keys` command) runs in one transaction that holds the
/// transaction-scoped advisory lock kKeyringLock (pg_try_advisory_xact_lock, retried until the wait is over), so
/// exactly one instance changes the keyring at a time and each rotation happens once. Reads run in a REPEATABLE READ
/// READ ONLY transaction and see one consistent keyring. `instance` names this process in `keyring_state.updated_by`
/// and in the heartbeats. With `migrate`, pending schema migrations are applied first (brokers; `keys` commands
/// do not change the schema). Nothing is connected before the first call; an unreachable database makes calls fail
/// (after a failed connection attempt the next one waits 2 s, as libpq leaks memory on each) until it answers again.
std::shared_ptr<keyring::KeyringStorage> openPostgresKeyring(const PostgresOptions& options, std::string instance,
                                                             bool migrate);

/// "postgresql host=... port=... dbname=...": the parts of a libpq connection string that say where, never a
/// password or other option.
std::string describeConnection(const std::string& connection);

}  // namespace smartbroker::broker
