// What every PostgreSQL connection of the broker gets, state store and keyring alike.
#pragma once
#include <Poco/Data/Session.h>

#include <cstdint>

namespace smartbroker::broker {

/// Sets statement_timeout (`milliseconds`) and idle_in_transaction_session_timeout on the session, for the life of
/// the connection. Defined in postgres_store.cpp.
void applyStatementTimeout(Poco::Data::Session& session, std::int64_t milliseconds);

}  // namespace smartbroker::broker
