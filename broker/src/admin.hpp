// `smart-broker keys ...`: the operator's signing-key commands, and the keyring settings main() shares with them.
#pragma once

#include <expected>
#include <memory>
#include <string>
#include <vector>

#include "smartbroker/config/config.hpp"
#include "smartbroker/keyring/keyring_storage.hpp"
#include "smartbroker/keyring/manager.hpp"

namespace smartbroker::broker {

/// Runs `keys <command> ...` (args start after "keys"); returns the process exit status: 0 done, 1 refused or
/// failed (the reason on stderr), 2 usage. Changes are durable when the command returns; a running broker applies
/// them within a second.
int runKeysCommand(const std::vector<std::string>& args);

/// The rotation policy from configuration (keyring section, token lifetime and skew of the server section).
keyring::Policy keyringPolicy(const config::Config& config);

/// Where the keyring of `config` lives: the files under server.state_directory, or with storage postgresql the
/// state database (migrated first when `migrate`: brokers do, `keys` commands do not change the schema). `instance`
/// names this process there.
std::shared_ptr<keyring::KeyringStorage> keyringStorage(const config::Config& config, const std::string& instance,
                                                        bool migrate);

/// "host:pid", naming this process in a shared keyring (heartbeats, the last writer).
std::string instanceName();

/// The key-encryption key named by the configuration: empty when none is configured; kek_credential is read from
/// `credentialsDirectory` ($CREDENTIALS_DIRECTORY, set by systemd's LoadCredential=). Never logs the key.
std::expected<std::string, std::string> keyEncryptionKey(const config::Keyring& keyring,
                                                         const char* credentialsDirectory);

}  // namespace smartbroker::broker
