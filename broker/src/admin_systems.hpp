// `smart-broker systems ...`: operator commands on registered systems, applied through the state store.
#pragma once

#include <string>
#include <vector>

namespace smartbroker::broker {

/// Runs `systems <command> ...` (args start after "systems"); returns the process exit status.
/// Changes are durable in the store when the command returns; a running broker applies them within a second.
int runSystemsCommand(const std::vector<std::string>& args);

}  // namespace smartbroker::broker
