// The broker's configuration as plain structs, loaded from YAML and validated with file:line diagnostics.
#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "smartbroker/jwks/jwk.hpp"

namespace smartbroker::config {

using Seconds = std::chrono::seconds;

/// Bounds on every input of the HTTP endpoints.
struct Limits {
  std::size_t max_body_bytes = 16 * 1024;       ///< request body (token, introspect, revoke)
  std::size_t max_params = 16;                  ///< form parameters
  std::size_t max_param_bytes = 8 * 1024;       ///< any one decoded parameter value
  std::size_t max_assertion_bytes = 8 * 1024;   ///< the client_assertion JWT
  std::size_t max_scope_count = 64;             ///< space-separated scopes in one request
};

/// Optional TLS on the listener (most deployments terminate TLS at a reverse proxy).
struct Tls {
  std::string certificate_file;
  std::string private_key_file;
};

/// The shared state database when several instances serve one deployment (README "Running several instances").
struct Postgresql {
  std::string connection;                       ///< libpq key=value string: "host=... port=... dbname=... user=..."
  unsigned pool_size = 8;                       ///< connections per instance (one writer, the rest readers)
  Seconds statement_timeout{5};                 ///< longest any one statement may run (lock waits included)
};

/// Fetching and caching of client JWK Sets registered by `jwks_uri` (README "Client keys by URL").
struct JwksFetch {
  bool allow_http_loopback = false;             ///< plain http to 127.0.0.1, ::1, localhost (development, tests)
  Seconds connect_timeout{3};                   ///< TCP connect and TLS handshake
  Seconds read_timeout{5};                      ///< the whole response, from the request sent to the last byte
  std::size_t max_response_bytes = 64 * 1024;   ///< body cap; larger is a fetch failure
  Seconds max_cache_lifetime{3600};             ///< ceiling on any freshness lifetime (0 = never cache)
  Seconds default_cache_lifetime{0};            ///< for a response with neither max-age nor Expires
  Seconds kid_miss_cooldown{30};                ///< at most one refetch per URL per cooldown; failures cached this long
  Seconds serve_stale{0};                       ///< serve an expired set this long while the URL is unreachable
};

struct Server {
  std::string listen_address = "127.0.0.1";
  std::uint16_t port = 8080;                    ///< 0 = any free port (tests); the chosen port is logged
  std::string public_base_url;                  ///< e.g. https://auth.example.org/smart (no trailing slash)
  std::vector<std::string> audiences;           ///< FHIR server base URL(s) that issued tokens are for
  Seconds token_lifetime{300};                  ///< default access token lifetime
  Seconds max_token_lifetime{300};              ///< server cap; no client or default may exceed it
  Seconds clock_skew{30};                       ///< tolerance for exp/nbf/iat of client assertions
  Seconds max_assertion_lifetime{300};          ///< exp may be at most this far ahead of now (SPEC: 300)
  std::string state_directory;                  ///< keys and the SQLite database live here
  std::string database_path;                    ///< default: <state_directory>/smart-broker.db
  enum class Storage : std::uint8_t { Sqlite, Postgresql };
  Storage storage = Storage::Sqlite;            ///< where replay records, revocations and system state live
  Postgresql postgresql;                        ///< used with Storage::Postgresql
  std::string signing_algorithm = "ES256";      ///< deprecated alias of keyring.algorithm; holds the effective alg
  unsigned threads = 0;                         ///< HTTP worker threads; 0 = 2 x cores, at least 4
  unsigned max_queued = 256;                    ///< accepted connections waiting for a worker
  Seconds keep_alive_timeout{15};
  Limits limits;
  JwksFetch jwks_fetch;
  std::optional<Tls> tls;
  /// Broker permissions: scopes outside SMART's grammar that a registration lists under `scopes:` and a token
  /// carries to call the broker's own endpoints (README "Scopes"). Granted only by exact name.
  std::string introspection_scope = "smart-broker:introspect";    ///< POST /introspect with a bearer token or as a system
  std::string consent_admin_scope = "smart-broker:consent-admin";  ///< PUT and DELETE /consents/{id}

  /// Every broker permission name, for the scope engine and the registry.
  std::vector<std::string> permissionScopes() const { return {introspection_scope, consent_admin_scope}; }

  /// The token endpoint URL: the one and only accepted assertion `aud` (SPEC "Authenticating" 7).
  std::string tokenEndpoint() const { return public_base_url + "/token"; }
  std::string jwksUri() const { return public_base_url + "/jwks.json"; }
  std::string introspectionEndpoint() const { return public_base_url + "/introspect"; }
  std::string revocationEndpoint() const { return public_base_url + "/revoke"; }
  /// The issuer of our access tokens and of RFC 8414 metadata.
  std::string issuer() const { return public_base_url; }
};

/// What a system's registration requires of consent (README "Consent"). With `required`, a token is issued only
/// while at least one candidate consent is active and names the system as grantee: the consents listed in
/// `references`, and with `rule_grantee` also every consent in the local store whose grantee is the system.
struct ConsentRequirement {
  bool required = false;
  std::vector<std::string> references;          ///< FHIR Consent ids ([A-Za-z0-9.-]{1,64})
  bool rule_grantee = false;                    ///< `rule: grantee` (local consent source only)
};

/// A registered system (OAuth client) as configured. Keys come inline or by URL.
struct System {
  std::string client_id;
  std::string name;
  std::optional<jwks::JwkSet> jwks;             ///< inline keys
  std::optional<std::string> jwks_uri;          ///< keys by URL; exactly one of jwks/jwks_uri is set
  std::vector<std::string> scopes;              ///< pre-authorized scopes, each valid `system/` syntax
  std::vector<jwks::Alg> algorithms{jwks::Alg::RS384, jwks::Alg::ES384};  ///< allowed assertion algs
  bool enabled = true;
  std::optional<Seconds> token_lifetime;        ///< <= server max_token_lifetime
  ConsentRequirement consent;
  int line = 0;                                 ///< where it was defined, for diagnostics
};

/// The broker's own signing keys and their rotation (README "Signing keys and rotation"). The durations relate as
/// jwks_max_age <= lead_time < rotation_period: a key is published for the whole lead time before it signs, so every
/// copy of the JWKS a resource server may still cache (max-age) has expired by then.
struct Keyring {
  jwks::Alg algorithm = jwks::Alg::ES256;       ///< ES256 (default), RS256 or ES384
  Seconds rotation_period{30 * 86400};          ///< age at which the active key is replaced; 0 = only by command
  Seconds lead_time{86400};                     ///< default min(1 day, rotation_period / 2)
  Seconds jwks_max_age{3600};                   ///< default min(1 hour, lead_time / 2), at least 1
  Seconds retirement_grace{3600};               ///< a retired key stays published max_token_lifetime + skew + this
  std::string kek_file;                         ///< key-encryption key (32 bytes) sealing private keys at rest, or
  std::string kek_credential;                   ///< the name of a systemd credential holding it
};

/// Where consent records come from and how withdrawals are reported (README "Consent"): top-level `consent:`.
struct ConsentSettings {
  enum class Source : std::uint8_t { Local, Fhir };
  Source source = Source::Local;                ///< local: PUT/DELETE /consents/{id}; fhir: GET {fhir_base_url}/Consent/{id}
  std::string fhir_base_url;                    ///< required with source fhir; no trailing slash
  Seconds cache_seconds{10};                    ///< how long a looked-up consent is believed (0 = every time)
  Seconds connect_timeout{3};                   ///< FHIR reads and notifications
  Seconds read_timeout{5};
  std::size_t max_resource_bytes = 64 * 1024;   ///< a Consent resource, PUT or fetched
  bool allow_http_loopback = false;             ///< plain http to 127.0.0.1, ::1, localhost (development, tests)
  std::string grantee_identifier_system = "urn:smart-broker:client-id";  ///< Identifier.system naming client_ids
  std::optional<std::string> notification_url;  ///< withdrawal notifications are POSTed here; none when unset
  Seconds retry_initial_backoff{1};             ///< first retry delay; doubles per failed attempt
  Seconds retry_max_backoff{300};               ///< ceiling of the retry delay
};

struct Config {
  std::string source;                           ///< the file it was read from
  Server server;
  Keyring keyring;
  std::vector<System> systems;
  ConsentSettings consent;
};

/// One problem found while loading: rendered as "file:line: key: problem".
struct Problem {
  std::string file;
  int line = 0;
  std::string key;      ///< dotted path, e.g. "systems[1].scopes[0]"
  std::string message;
  std::string format() const;
};

/// Checks that are not the config library's own (scope syntax belongs to the broker's scope engine).
struct Validators {
  /// Returns an error message when `scope` is not a valid pre-authorizable scope, nullopt when it is.
  std::function<std::optional<std::string>(const std::string& scope)> scope;
};

/// Reads and validates the YAML file at `path`. Every problem found is returned (not just the first).
/// Unknown keys are problems, so that a typo never silently falls back to a default.
std::expected<Config, std::vector<Problem>> loadConfig(const std::string& path, const Validators& validators);

/// The same, from YAML text (tests); `sourceName` is used in diagnostics.
std::expected<Config, std::vector<Problem>> parseConfig(const std::string& yaml, const std::string& sourceName,
                                                        const Validators& validators);

}  // namespace smartbroker::config
