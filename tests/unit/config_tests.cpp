// Tests of the config library: a full config into structs, every broken one as "file:line: key: problem".
#define BOOST_TEST_MODULE config
#include <boost/test/unit_test.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "smartbroker/config/config.hpp"
#include "smartbroker/jwks/jwk.hpp"

namespace bdata = boost::unit_test::data;
namespace fs = std::filesystem;
using smartbroker::config::Config;
using smartbroker::config::loadConfig;
using smartbroker::config::parseConfig;
using smartbroker::config::Problem;
using smartbroker::config::Seconds;
using smartbroker::config::Validators;
using smartbroker::jwks::Alg;

namespace {

const std::string kData = SMARTBROKER_TEST_DATA;

// TEST-ONLY public keys, copied from tests/data/keys/ (made by tests/data/make-keys.sh; see tests/data/README.md).
// The 2048-bit modulus of rs384-client.jwks.json:
constexpr std::string_view kRs384N =
    "vTXEyxs5n5rQmrt7lFEDGeN7NHiXkrlR1jryV_0v0jhVnVKGzDAQbRQ-JvcrlcwOqkEXOb0Ss52JcaVa5Nndp5mmBz8Sp1U0hGetfg23GvpByNJgdpj"
    "G_HFRT5lSE7m_Xnfg_ncfcf5Xg_nxJjpxqtO3J4r7RGI8aMaeRr2Tbf5aJncakZTQzY7lUIDD9GK8FKnQrvhZvr1ebqV_YJbcbh0o6xQzpGqRgRbe31"
    "Fs_pwDtZ4luSshuhmLeGXSC-qxOw4rOfAealagRTZqKM3jIRlqiDhtUoLA2qZROypi9sXnbRXK8EuHqbjzxUY67GURo2x6keoKOm-w7mBFVeHOww";
// The 1024-bit modulus of rsa1024.jwks.json (`openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024`).
constexpr std::string_view kRsa1024N =
    "tUieFBDD-AJs2ONwrDztpa0_3Fa5wdS82EGiUHb-Db8aRMijEm3Pmr_sXGJkevvYZSnaPHtOpIKGiT-5zD1Rw7YUKApAXi5ebTxjCeDSrmkzF1NVVEO"
    "E3b5SOEJo-8WXR62QVV-MKZW8LqjccHfv8ZLgSgjZLearhsjQliwrU2s";

/// A JSON-style (flow) JWK for one line of YAML.
std::string rsaJwk(std::string_view kid, std::string_view n, std::string_view alg = "RS384") {
  std::string out = R"({"kty": "RSA", "kid": ")" + std::string(kid) + "\"";
  if (!alg.empty()) {
    out += R"(, "alg": ")" + std::string(alg) + "\"";
  }
  return out + R"(, "use": "sig", "e": "AQAB", "n": ")" + std::string(n) + "\"}";
}

/// The scope validator the broker would inject, reduced to what these tests need.
Validators systemOnly() {
  return Validators{[](const std::string& scope) -> std::optional<std::string> {
    if (scope.starts_with("system/")) {
      return std::nullopt;
    }
    return "not a system/ scope (test validator)";
  }};
}

std::vector<std::string> formatted(const std::vector<Problem>& problems) {
  std::vector<std::string> out;
  for (const Problem& p : problems) {
    out.push_back(p.format());
  }
  return out;
}

std::vector<std::string> problemsOf(const std::string& yaml) {
  const auto result = parseConfig(yaml, "t.yaml", systemOnly());
  if (result) {
    return {};
  }
  return formatted(result.error());
}

Config parsed(const std::string& yaml, const std::string& source = "t.yaml") {
  auto result = parseConfig(yaml, source, systemOnly());
  if (!result) {
    for (const std::string& line : formatted(result.error())) {
      BOOST_TEST_MESSAGE(line);
    }
  }
  BOOST_TEST_REQUIRE(result.has_value());
  return std::move(*result);
}

const std::string kMinimalServer = R"(server:
  public_base_url: https://auth.example.org/smart
  audiences: [https://fhir.example.org/r4]
  state_directory: /var/lib/smart-broker
)";

}  // namespace

BOOST_AUTO_TEST_SUITE(valid_config)

BOOST_AUTO_TEST_CASE(loads_every_field_of_a_full_config) {
  // Relative paths resolve against the config file's directory: here tests/data (the file need not exist).
  const std::string source = kData + "/full.yaml";
  const Config config = parsed(R"(# every key the schema has
server:
  listen_address: "::"
  port: 0
  public_base_url: https://auth.example.org/smart/
  audiences:
    - https://fhir.example.org/r4
    - https://fhir.example.org/r5
  token_lifetime: 240
  max_token_lifetime: 600
  clock_skew: 10
  max_assertion_lifetime: 120
  state_directory: state
  database_path: db/../broker.db
  signing_algorithm: RS256
  threads: 8
  max_queued: 100
  keep_alive_timeout: 5
  limits:
    max_body_bytes: 32768
    max_params: 12
    max_param_bytes: 16384
    max_assertion_bytes: 4096
    max_scope_count: 20
  tls:
    certificate_file: /etc/smart-broker/tls.crt
    private_key_file: tls/key.pem
  jwks_fetch:
    allow_http_loopback: true
    connect_timeout: 2
    read_timeout: 4
    max_response_bytes: 32768
    max_cache_lifetime: 600
    default_cache_lifetime: 60
    kid_miss_cooldown: 10
    serve_stale: 120
systems:
  - client_id: bulk-exporter
    name: Bulk exporter
    enabled: false
    algorithms: [RS384, RS256]
    scopes: [system/*.rs, system/Observation.read]
    token_lifetime: 600
    jwks:
      keys:
        - kty: RSA
          kid: rs384-client
          alg: RS384
          use: sig
          e: AQAB
          n: )" + std::string(kRs384N) + R"(
  - client_id: ec-client
    scopes: [system/Patient.rs]
    jwks_file: keys/es384-client.jwks.json
  - client_id: remote
    scopes: [system/*.cruds]
    jwks_uri: https://client.example.org/.well-known/jwks.json?v=2
  - client_id: local-dev
    scopes: [system/*.rs]
    jwks_uri: http://[::1]:9999/jwks.json
)",
                               source);

  BOOST_TEST(config.source == source);
  const auto& s = config.server;
  BOOST_TEST(s.listen_address == "::");
  BOOST_TEST(s.port == 0);
  BOOST_TEST(s.public_base_url == "https://auth.example.org/smart");
  BOOST_TEST(s.audiences == (std::vector<std::string>{"https://fhir.example.org/r4", "https://fhir.example.org/r5"}),
             boost::test_tools::per_element());
  BOOST_TEST(s.token_lifetime.count() == 240);
  BOOST_TEST(s.max_token_lifetime.count() == 600);
  BOOST_TEST(s.clock_skew.count() == 10);
  BOOST_TEST(s.max_assertion_lifetime.count() == 120);
  BOOST_TEST(s.state_directory == kData + "/state");
  BOOST_TEST(s.database_path == kData + "/broker.db");
  BOOST_TEST(s.signing_algorithm == "RS256");
  BOOST_TEST(s.threads == 8U);
  BOOST_TEST(s.max_queued == 100U);
  BOOST_TEST(s.keep_alive_timeout.count() == 5);
  BOOST_TEST(s.limits.max_body_bytes == 32768U);
  BOOST_TEST(s.limits.max_params == 12U);
  BOOST_TEST(s.limits.max_param_bytes == 16384U);
  BOOST_TEST(s.limits.max_assertion_bytes == 4096U);
  BOOST_TEST(s.limits.max_scope_count == 20U);
  BOOST_TEST_REQUIRE(s.tls.has_value());
  BOOST_TEST(s.tls->certificate_file == "/etc/smart-broker/tls.crt");
  BOOST_TEST(s.tls->private_key_file == kData + "/tls/key.pem");
  BOOST_TEST(s.tokenEndpoint() == "https://auth.example.org/smart/token");
  BOOST_TEST(s.issuer() == "https://auth.example.org/smart");
  BOOST_TEST(s.jwks_fetch.allow_http_loopback);
  BOOST_TEST(s.jwks_fetch.connect_timeout.count() == 2);
  BOOST_TEST(s.jwks_fetch.read_timeout.count() == 4);
  BOOST_TEST(s.jwks_fetch.max_response_bytes == 32768U);
  BOOST_TEST(s.jwks_fetch.max_cache_lifetime.count() == 600);
  BOOST_TEST(s.jwks_fetch.default_cache_lifetime.count() == 60);
  BOOST_TEST(s.jwks_fetch.kid_miss_cooldown.count() == 10);
  BOOST_TEST(s.jwks_fetch.serve_stale.count() == 120);

  BOOST_TEST_REQUIRE(config.systems.size() == 4U);
  const auto& bulk = config.systems[0];
  BOOST_TEST(bulk.client_id == "bulk-exporter");
  BOOST_TEST(bulk.name == "Bulk exporter");
  BOOST_TEST(!bulk.enabled);
  BOOST_TEST((bulk.algorithms == std::vector<Alg>{Alg::RS384, Alg::RS256}));
  BOOST_TEST(bulk.scopes == (std::vector<std::string>{"system/*.rs", "system/Observation.read"}),
             boost::test_tools::per_element());
  BOOST_TEST_REQUIRE(bulk.token_lifetime.has_value());
  BOOST_TEST(bulk.token_lifetime->count() == 600);
  BOOST_TEST(!bulk.jwks_uri.has_value());
  BOOST_TEST_REQUIRE(bulk.jwks.has_value());
  BOOST_TEST_REQUIRE(bulk.jwks->keys.size() == 1U);
  BOOST_TEST(bulk.jwks->keys[0].kid == "rs384-client");
  BOOST_TEST(bulk.jwks->keys[0].bits == 2048);
  BOOST_TEST(bulk.line == 38);

  const auto& ec = config.systems[1];
  BOOST_TEST(ec.client_id == "ec-client");
  BOOST_TEST(ec.name == "ec-client");  // name defaults to client_id
  BOOST_TEST(ec.enabled);
  BOOST_TEST((ec.algorithms == std::vector<Alg>{Alg::RS384, Alg::ES384}));
  BOOST_TEST(!ec.token_lifetime.has_value());
  BOOST_TEST_REQUIRE(ec.jwks.has_value());
  BOOST_TEST_REQUIRE(ec.jwks->keys.size() == 1U);
  BOOST_TEST(ec.jwks->keys[0].kid == "es384-client");
  BOOST_TEST(ec.line == 52);

  BOOST_TEST(!config.systems[2].jwks.has_value());
  BOOST_TEST(config.systems[2].jwks_uri.value_or("") == "https://client.example.org/.well-known/jwks.json?v=2");
  BOOST_TEST(config.systems[3].jwks_uri.value_or("") == "http://[::1]:9999/jwks.json");
}

BOOST_AUTO_TEST_CASE(applies_the_documented_defaults_when_optional_keys_are_absent) {
  const Config config = parsed(R"(server:
  public_base_url: http://localhost:8080
  audiences: https://fhir.example.org/r4
  state_directory: /var/lib/smart-broker/
)");
  const auto& s = config.server;
  BOOST_TEST(s.listen_address == "127.0.0.1");
  BOOST_TEST(s.port == 8080);
  BOOST_TEST(s.public_base_url == "http://localhost:8080");
  BOOST_TEST(s.audiences == (std::vector<std::string>{"https://fhir.example.org/r4"}), boost::test_tools::per_element());
  BOOST_TEST(s.token_lifetime.count() == 300);
  BOOST_TEST(s.max_token_lifetime.count() == 300);
  BOOST_TEST(s.clock_skew.count() == 30);
  BOOST_TEST(s.max_assertion_lifetime.count() == 300);
  BOOST_TEST(s.state_directory == "/var/lib/smart-broker/");
  BOOST_TEST(s.database_path == "/var/lib/smart-broker/smart-broker.db");
  BOOST_TEST(s.signing_algorithm == "ES256");
  BOOST_TEST(s.threads == 0U);
  BOOST_TEST(s.max_queued == 256U);
  BOOST_TEST(s.keep_alive_timeout.count() == 15);
  BOOST_TEST(s.limits.max_body_bytes == 16384U);
  BOOST_TEST(s.limits.max_params == 16U);
  BOOST_TEST(s.limits.max_param_bytes == 8192U);
  BOOST_TEST(s.limits.max_assertion_bytes == 8192U);
  BOOST_TEST(s.limits.max_scope_count == 64U);
  BOOST_TEST(!s.tls.has_value());
  BOOST_TEST(!s.jwks_fetch.allow_http_loopback);
  BOOST_TEST(s.jwks_fetch.connect_timeout.count() == 3);
  BOOST_TEST(s.jwks_fetch.read_timeout.count() == 5);
  BOOST_TEST(s.jwks_fetch.max_response_bytes == 65536U);
  BOOST_TEST(s.jwks_fetch.max_cache_lifetime.count() == 3600);
  BOOST_TEST(s.jwks_fetch.default_cache_lifetime.count() == 0);
  BOOST_TEST(s.jwks_fetch.kid_miss_cooldown.count() == 30);
  BOOST_TEST(s.jwks_fetch.serve_stale.count() == 0);
  BOOST_TEST(config.systems.empty());
}

BOOST_AUTO_TEST_CASE(removes_trailing_slashes_from_the_base_url_and_derives_the_endpoints) {
  const Config config = parsed(R"(server:
  public_base_url: https://auth.example.org/
  audiences: [https://fhir.example.org/r4]
  state_directory: /var/lib/smart-broker
)");
  const auto& s = config.server;
  BOOST_TEST(s.public_base_url == "https://auth.example.org");
  BOOST_TEST(s.tokenEndpoint() == "https://auth.example.org/token");
  BOOST_TEST(s.jwksUri() == "https://auth.example.org/jwks.json");
  BOOST_TEST(s.introspectionEndpoint() == "https://auth.example.org/introspect");
  BOOST_TEST(s.revocationEndpoint() == "https://auth.example.org/revoke");
  BOOST_TEST(s.issuer() == "https://auth.example.org");
}

BOOST_AUTO_TEST_CASE(default_token_lifetime_never_exceeds_a_lowered_cap) {
  const Config config = parsed(kMinimalServer + "  max_token_lifetime: 120\n");
  BOOST_TEST(config.server.token_lifetime.count() == 120);
  BOOST_TEST(config.server.max_token_lifetime.count() == 120);
}

BOOST_AUTO_TEST_CASE(keyring_defaults_rotate_monthly_with_a_day_of_lead_and_an_hour_of_jwks_cache) {
  const Config config = parsed(kMinimalServer);
  BOOST_TEST((config.keyring.algorithm == Alg::ES256));
  BOOST_TEST(config.keyring.rotation_period.count() == 30 * 86400);
  BOOST_TEST(config.keyring.lead_time.count() == 86400);
  BOOST_TEST(config.keyring.jwks_max_age.count() == 3600);
  BOOST_TEST(config.keyring.retirement_grace.count() == 3600);
  BOOST_TEST(config.keyring.kek_file.empty());
  BOOST_TEST(config.keyring.kek_credential.empty());
}

BOOST_AUTO_TEST_CASE(keyring_lead_time_and_max_age_derive_from_a_short_rotation_period) {
  const Config config = parsed(kMinimalServer + "keyring:\n  algorithm: ES384\n  rotation_period: 10\n"
                                                "  kek_credential: keyring-kek\n");
  BOOST_TEST((config.keyring.algorithm == Alg::ES384));
  BOOST_TEST(config.keyring.lead_time.count() == 5);
  BOOST_TEST(config.keyring.jwks_max_age.count() == 2);
  BOOST_TEST(config.keyring.kek_credential == "keyring-kek");
  BOOST_TEST(config.server.signing_algorithm == "ES384");  // the deprecated alias holds the effective alg
}

BOOST_AUTO_TEST_CASE(server_signing_algorithm_still_selects_the_keyring_algorithm) {
  const Config config = parsed(kMinimalServer + "  signing_algorithm: RS256\n");
  BOOST_TEST((config.keyring.algorithm == Alg::RS256));
  const Config agreeing = parsed(kMinimalServer + "  signing_algorithm: RS256\nkeyring:\n  algorithm: RS256\n");
  BOOST_TEST((agreeing.keyring.algorithm == Alg::RS256));
}

BOOST_AUTO_TEST_CASE(keyring_kek_file_resolves_against_the_config_directory) {
  const Config config = parsed(kMinimalServer + "keyring:\n  kek_file: keyring.kek\n", "/etc/sb/t.yaml");
  BOOST_TEST(config.keyring.kek_file == "/etc/sb/keyring.kek");
}

BOOST_AUTO_TEST_CASE(accepts_an_empty_systems_key_as_no_systems) {
  BOOST_TEST(parsed(kMinimalServer + "systems:\n").systems.empty());
  BOOST_TEST(parsed(kMinimalServer + "systems: []\n").systems.empty());
}

BOOST_AUTO_TEST_CASE(accepts_loopback_http_jwks_uris_when_the_server_allows_them) {
  const Config config = parsed(kMinimalServer + R"(  jwks_fetch: {allow_http_loopback: true}
systems:
  - client_id: a
    scopes: [system/*.rs]
    jwks_uri: http://127.0.0.1:9000/jwks.json
  - client_id: b
    scopes: [system/*.rs]
    jwks_uri: http://LocalHost/jwks.json
)");
  BOOST_TEST_REQUIRE(config.systems.size() == 2U);
  BOOST_TEST(config.systems[0].jwks_uri.value_or("") == "http://127.0.0.1:9000/jwks.json");
  BOOST_TEST(config.systems[1].jwks_uri.value_or("") == "http://LocalHost/jwks.json");
}

BOOST_AUTO_TEST_CASE(accepts_https_jwks_uris_to_loopback_without_the_http_opt_in) {
  const Config config = parsed(kMinimalServer + R"(systems:
  - client_id: a
    scopes: [system/*.rs]
    jwks_uri: https://127.0.0.1:9000/jwks.json
)");
  BOOST_TEST_REQUIRE(config.systems.size() == 1U);
  BOOST_TEST(!config.server.jwks_fetch.allow_http_loopback);
  BOOST_TEST(config.systems[0].jwks_uri.value_or("") == "https://127.0.0.1:9000/jwks.json");
}

BOOST_AUTO_TEST_CASE(resolves_relative_paths_against_the_config_file_directory) {
  const Config config = parsed(R"(server:
  public_base_url: https://auth.example.org
  audiences: [https://fhir.example.org/r4]
  state_directory: ./state
)",
                               "/etc/smart-broker/broker.yaml");
  BOOST_TEST(config.server.state_directory == "/etc/smart-broker/state");
  BOOST_TEST(config.server.database_path == "/etc/smart-broker/state/smart-broker.db");
}

BOOST_AUTO_TEST_CASE(loads_the_good_config_file_from_disk) {
  const std::string path = kData + "/configs/good.yaml";
  const auto result = loadConfig(path, systemOnly());
  if (!result) {
    for (const std::string& line : formatted(result.error())) {
      BOOST_TEST_MESSAGE(line);
    }
  }
  BOOST_TEST_REQUIRE(result.has_value());
  BOOST_TEST(result->source == path);
  BOOST_TEST_REQUIRE(result->systems.size() == 1U);
  BOOST_TEST_REQUIRE(result->systems[0].jwks.has_value());
  BOOST_TEST(result->systems[0].jwks->keys.at(0).kid == "rs384-client");
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

struct BrokenCase {
  std::string name;
  std::string yaml;
  std::vector<std::string> expected;
};

std::ostream& operator<<(std::ostream& os, const BrokenCase& c) { return os << c.name; }

std::string withSystem(const std::string& systemLines) { return kMinimalServer + "systems:\n" + systemLines; }

// kMinimalServer takes lines 1-4, so a key added after it is on line 5, and a system from withSystem starts on 6.
const std::vector<BrokenCase> kBrokenCases = {
    {"missing_server", "# no server section\nsystems: []\n", {"t.yaml:2: server: missing required key"}},
    {"empty_file", "", {"t.yaml:1: server: missing required key"}},
    {"top_level_not_a_map", "- server\n", {"t.yaml:1: expected a map at the top level"}},
    {"two_documents", kMinimalServer + "---\nserver: {}\n", {"t.yaml:6: expected a single YAML document"}},
    {"missing_public_base_url",
     "server:\n  audiences: [https://fhir.example.org/r4]\n  state_directory: /var/lib/smart-broker\n",
     {"t.yaml:2: server.public_base_url: missing required key"}},
    {"base_url_not_http",
     "server:\n  public_base_url: ftp://auth.example.org\n  audiences: [https://f.example.org]\n  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must be an absolute http or https URL"}},
    {"base_url_relative",
     "server:\n  public_base_url: /smart\n  audiences: [https://f.example.org]\n  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must be an absolute http or https URL"}},
    {"base_url_with_userinfo",
     "server:\n  public_base_url: https://me@auth.example.org\n  audiences: [https://f.example.org]\n"
     "  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must not contain userinfo"}},
    {"base_url_with_query",
     "server:\n  public_base_url: https://auth.example.org/?x=1\n  audiences: [https://f.example.org]\n"
     "  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must not have a query"}},
    {"base_url_with_fragment",
     "server:\n  public_base_url: https://auth.example.org/#top\n  audiences: [https://f.example.org]\n"
     "  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must not have a fragment"}},
    {"base_url_with_bad_port",
     "server:\n  public_base_url: https://auth.example.org:99999\n  audiences: [https://f.example.org]\n"
     "  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: has an invalid port"}},
    {"base_url_with_space",
     "server:\n  public_base_url: https://auth.example.org/a b\n  audiences: [https://f.example.org]\n"
     "  state_directory: /s\n",
     {"t.yaml:2: server.public_base_url: must contain only printable ASCII characters without spaces"}},
    {"missing_audiences", "server:\n  public_base_url: https://auth.example.org\n  state_directory: /s\n",
     {"t.yaml:2: server.audiences: missing required key"}},
    {"empty_audiences", "server:\n  public_base_url: https://a.example.org\n  audiences: []\n  state_directory: /s\n",
     {"t.yaml:3: server.audiences: must not be empty"}},
    {"audience_not_a_url",
     "server:\n  public_base_url: https://a.example.org\n  audiences:\n    - https://f.example.org\n    - fhir\n"
     "  state_directory: /s\n",
     {"t.yaml:5: server.audiences[1]: must be an absolute http or https URL"}},
    {"missing_state_directory", "server:\n  public_base_url: https://a.example.org\n  audiences: [https://f.example.org]\n",
     {"t.yaml:2: server.state_directory: missing required key"}},
    {"empty_state_directory",
     "server:\n  public_base_url: https://a.example.org\n  audiences: [https://f.example.org]\n  state_directory: ''\n",
     {"t.yaml:4: server.state_directory: must not be empty"}},
    {"null_state_directory",
     "server:\n  public_base_url: https://a.example.org\n  audiences: [https://f.example.org]\n  state_directory:\n",
     {"t.yaml:4: server.state_directory: expected a string"}},
    {"server_not_a_map", "server: [1, 2]\n", {"t.yaml:1: server: expected a map"}},
    {"jwks_fetch_not_a_map", kMinimalServer + "  jwks_fetch: 5\n", {"t.yaml:5: server.jwks_fetch: expected a map"}},
    {"keyring_not_a_map", kMinimalServer + "keyring: 5\n", {"t.yaml:5: keyring: expected a map"}},
    {"keyring_unknown_key", kMinimalServer + "keyring:\n  rotation_perod: 5\n",
     {"t.yaml:6: keyring.rotation_perod: unknown key (did you mean rotation_period?)"}},
    {"keyring_algorithm_rs384", kMinimalServer + "keyring:\n  algorithm: RS384\n",
     {"t.yaml:6: keyring.algorithm: must be ES256, RS256 or ES384"}},
    {"keyring_algorithm_conflicts_with_server_alias",
     kMinimalServer + "  signing_algorithm: RS256\nkeyring:\n  algorithm: ES256\n",
     {"t.yaml:7: keyring.algorithm: conflicts with server.signing_algorithm (line 5); remove the deprecated "
      "server.signing_algorithm"}},
    {"keyring_rotation_period_of_one_second", kMinimalServer + "keyring:\n  rotation_period: 1\n",
     {"t.yaml:6: keyring.rotation_period: must be 0 (rotate only by command) or at least 2 seconds"}},
    {"keyring_lead_time_not_below_period", kMinimalServer + "keyring:\n  rotation_period: 100\n  lead_time: 100\n",
     {"t.yaml:7: keyring.lead_time: must be between 1 and 99 (below keyring.rotation_period)"}},
    {"keyring_max_age_above_lead_time", kMinimalServer + "keyring:\n  lead_time: 60\n  jwks_max_age: 61\n",
     {"t.yaml:7: keyring.jwks_max_age: must be between 1 and 60 (at most keyring.lead_time)"}},
    {"keyring_both_kek_sources",
     kMinimalServer + "keyring:\n  kek_file: /k\n  kek_credential: k\n",
     {"t.yaml:7: keyring.kek_credential: set at most one of kek_file and kek_credential"}},
    {"keyring_kek_credential_with_slash", kMinimalServer + "keyring:\n  kek_credential: ../k\n",
     {"t.yaml:6: keyring.kek_credential: must be a systemd credential name: letters, digits and - _ . @ : (no /)"}},
    {"jwks_fetch_unknown_key", kMinimalServer + "  jwks_fetch: {kid_miss_cooldow: 5}\n",
     {"t.yaml:5: server.jwks_fetch.kid_miss_cooldow: unknown key (did you mean kid_miss_cooldown?)"}},
    {"jwks_fetch_allow_http_not_boolean", kMinimalServer + "  jwks_fetch: {allow_http_loopback: yes}\n",
     {"t.yaml:5: server.jwks_fetch.allow_http_loopback: expected true or false"}},
    {"jwks_fetch_connect_timeout_zero", kMinimalServer + "  jwks_fetch: {connect_timeout: 0}\n",
     {"t.yaml:5: server.jwks_fetch.connect_timeout: must be between 1 and 60"}},
    {"jwks_fetch_read_timeout_too_long", kMinimalServer + "  jwks_fetch: {read_timeout: 61}\n",
     {"t.yaml:5: server.jwks_fetch.read_timeout: must be between 1 and 60"}},
    {"jwks_fetch_read_timeout_with_unit", kMinimalServer + "  jwks_fetch: {read_timeout: 5s}\n",
     {"t.yaml:5: server.jwks_fetch.read_timeout: expected an integer (seconds)"}},
    {"jwks_fetch_body_cap_too_small", kMinimalServer + "  jwks_fetch: {max_response_bytes: 100}\n",
     {"t.yaml:5: server.jwks_fetch.max_response_bytes: must be between 1024 and 524288"}},
    {"jwks_fetch_body_cap_too_large", kMinimalServer + "  jwks_fetch: {max_response_bytes: 524289}\n",
     {"t.yaml:5: server.jwks_fetch.max_response_bytes: must be between 1024 and 524288"}},
    {"jwks_fetch_ceiling_above_a_day", kMinimalServer + "  jwks_fetch: {max_cache_lifetime: 86401}\n",
     {"t.yaml:5: server.jwks_fetch.max_cache_lifetime: must be between 0 and 86400"}},
    {"jwks_fetch_default_lifetime_above_the_ceiling",
     kMinimalServer + "  jwks_fetch: {max_cache_lifetime: 60, default_cache_lifetime: 61}\n",
     {"t.yaml:5: server.jwks_fetch.default_cache_lifetime: must be between 0 and 60 "
      "(server.jwks_fetch.max_cache_lifetime)"}},
    {"jwks_fetch_cooldown_zero", kMinimalServer + "  jwks_fetch: {kid_miss_cooldown: 0}\n",
     {"t.yaml:5: server.jwks_fetch.kid_miss_cooldown: must be between 1 and 3600"}},
    {"jwks_fetch_serve_stale_negative", kMinimalServer + "  jwks_fetch: {serve_stale: -1}\n",
     {"t.yaml:5: server.jwks_fetch.serve_stale: must be between 0 and 86400"}},
    {"port_out_of_range", kMinimalServer + "  port: 70000\n", {"t.yaml:5: server.port: must be between 0 and 65535"}},
    {"port_negative", kMinimalServer + "  port: -1\n", {"t.yaml:5: server.port: must be between 0 and 65535"}},
    {"port_quoted", kMinimalServer + "  port: \"8080\"\n", {"t.yaml:5: server.port: expected an integer"}},
    {"port_fraction", kMinimalServer + "  port: 80.5\n", {"t.yaml:5: server.port: expected an integer"}},
    {"port_boolean", kMinimalServer + "  port: true\n", {"t.yaml:5: server.port: expected an integer"}},
    {"port_huge", kMinimalServer + "  port: 99999999999999999999999\n",
     {"t.yaml:5: server.port: must be between 0 and 65535"}},
    {"negative_token_lifetime", kMinimalServer + "  token_lifetime: -5\n",
     {"t.yaml:5: server.token_lifetime: must be between 1 and 300 (server.max_token_lifetime)"}},
    {"token_lifetime_above_max", kMinimalServer + "  max_token_lifetime: 600\n  token_lifetime: 900\n",
     {"t.yaml:6: server.token_lifetime: must be between 1 and 600 (server.max_token_lifetime)"}},
    {"max_token_lifetime_above_an_hour", kMinimalServer + "  max_token_lifetime: 3601\n",
     {"t.yaml:5: server.max_token_lifetime: must be between 1 and 3600"}},
    {"duration_with_unit", kMinimalServer + "  clock_skew: 30s\n",
     {"t.yaml:5: server.clock_skew: expected an integer (seconds)"}},
    {"clock_skew_too_big", kMinimalServer + "  clock_skew: 301\n",
     {"t.yaml:5: server.clock_skew: must be between 0 and 300"}},
    {"assertion_lifetime_above_spec", kMinimalServer + "  max_assertion_lifetime: 301\n",
     {"t.yaml:5: server.max_assertion_lifetime: must be between 1 and 300"}},
    {"keep_alive_zero", kMinimalServer + "  keep_alive_timeout: 0\n",
     {"t.yaml:5: server.keep_alive_timeout: must be between 1 and 300"}},
    {"threads_too_many", kMinimalServer + "  threads: 1025\n", {"t.yaml:5: server.threads: must be between 0 and 1024"}},
    {"max_queued_zero", kMinimalServer + "  max_queued: 0\n", {"t.yaml:5: server.max_queued: must be between 1 and 65535"}},
    {"bad_signing_algorithm", kMinimalServer + "  signing_algorithm: HS256\n",
     {"t.yaml:5: server.signing_algorithm: must be ES256 or RS256"}},
    {"bad_listen_address", kMinimalServer + "  listen_address: 'bad host'\n",
     {"t.yaml:5: server.listen_address: must be an IPv4 or IPv6 address or a host name"}},
    {"unknown_key_typo", kMinimalServer + "  token_lifetme: 300\n",
     {"t.yaml:5: server.token_lifetme: unknown key (did you mean token_lifetime?)"}},
    {"unknown_key", kMinimalServer + "  colour: blue\n", {"t.yaml:5: server.colour: unknown key"}},
    {"unknown_top_level_key", kMinimalServer + "sytems: []\n", {"t.yaml:5: sytems: unknown key (did you mean systems?)"}},
    {"duplicate_key", kMinimalServer + "  port: 1\n  port: 2\n", {"t.yaml:6: server.port: duplicate key (first on line 5)"}},
    {"limit_body_above_a_mebibyte", kMinimalServer + "  limits:\n    max_body_bytes: 1048577\n",
     {"t.yaml:6: server.limits.max_body_bytes: must be between 1 and 1048576"}},
    {"limit_param_above_body", kMinimalServer + "  limits: {max_body_bytes: 4096, max_param_bytes: 8192}\n",
     {"t.yaml:5: server.limits.max_param_bytes: must be between 1 and 4096 (server.limits.max_body_bytes)"}},
    {"limit_default_param_above_body", kMinimalServer + "  limits: {max_body_bytes: 4096}\n",
     {"t.yaml:5: server.limits.max_param_bytes: the default 8192 exceeds server.limits.max_body_bytes; set it "
      "explicitly"}},
    {"limit_assertion_above_param", kMinimalServer + "  limits: {max_param_bytes: 4096, max_assertion_bytes: 4097}\n",
     {"t.yaml:5: server.limits.max_assertion_bytes: must be between 1 and 4096 (server.limits.max_param_bytes)"}},
    {"limit_zero_scopes", kMinimalServer + "  limits: {max_scope_count: 0}\n",
     {"t.yaml:5: server.limits.max_scope_count: must be between 1 and 1024"}},
    {"limit_unknown_key", kMinimalServer + "  limits: {max_body: 1}\n", {"t.yaml:5: server.limits.max_body: unknown key"}},
    {"tls_without_private_key", kMinimalServer + "  tls:\n    certificate_file: /etc/tls.crt\n",
     {"t.yaml:6: server.tls.private_key_file: missing required key"}},
    {"systems_not_a_list", kMinimalServer + "systems:\n  client_id: bulk-exporter\n",
     {"t.yaml:5: systems: expected a list"}},
    {"systems_a_string", kMinimalServer + "systems: bulk-exporter\n", {"t.yaml:5: systems: expected a list"}},
    {"system_not_a_map", withSystem("  - bulk-exporter\n"), {"t.yaml:6: systems[0]: expected a map"}},
    {"missing_client_id", withSystem("  - scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:6: systems[0].client_id: missing required key"}},
    {"duplicate_client_id",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/jwks.json\n"
                "  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:9: systems[1].client_id: duplicate client_id (first defined on line 6)"}},
    {"client_id_with_space",
     withSystem("  - client_id: bulk exporter\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:6: systems[0].client_id: must be 1 to 255 printable ASCII characters without space, '\"' or '\\'"}},
    {"client_id_with_quote",
     withSystem("  - client_id: 'bulk\"1'\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:6: systems[0].client_id: must be 1 to 255 printable ASCII characters without space, '\"' or '\\'"}},
    {"client_id_too_long",
     withSystem("  - client_id: " + std::string(256, 'a') +
                "\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:6: systems[0].client_id: must be 1 to 255 printable ASCII characters without space, '\"' or '\\'"}},
    {"missing_scopes", withSystem("  - client_id: bulk\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:6: systems[0].scopes: missing required key"}},
    {"empty_scopes", withSystem("  - client_id: bulk\n    scopes: []\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:7: systems[0].scopes: must not be empty"}},
    {"scopes_a_string",
     withSystem("  - client_id: bulk\n    scopes: system/*.rs\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:7: systems[0].scopes: expected a list"}},
    {"scope_rejected_by_validator",
     withSystem("  - client_id: bulk\n    scopes:\n      - system/*.rs\n      - user/*.rs\n"
                "    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:9: systems[0].scopes[1]: not a system/ scope (test validator)"}},
    {"unknown_system_key",
     withSystem("  - client_id: bulk\n    scope: [system/*.rs]\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:6: systems[0].scopes: missing required key",
      "t.yaml:7: systems[0].scope: unknown key (did you mean scopes?)"}},
    {"enabled_not_boolean",
     withSystem("  - client_id: bulk\n    enabled: yes\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].enabled: expected true or false"}},
    {"empty_name",
     withSystem("  - client_id: bulk\n    name: ''\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].name: must not be empty"}},
    {"unknown_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [RS512]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[0]: unsupported algorithm RS512 (allowed: RS256, RS384, ES256, ES384)"}},
    {"lower_case_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [rs384]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[0]: unsupported algorithm rs384 (allowed: RS256, RS384, ES256, ES384)"}},
    {"unprintable_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [\"RS\\t384\"]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[0]: unsupported algorithm (allowed: RS256, RS384, ES256, ES384)"}},
    {"none_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [RS384, none]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[1]: \"none\" is never allowed: assertions must be signed"}},
    {"hs256_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [HS256]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[0]: HS256 is a shared-secret algorithm; only RS256, RS384, ES256 and ES384 "
      "are allowed"}},
    {"duplicate_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [ES384, ES384]\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms[1]: duplicate algorithm ES384"}},
    {"empty_algorithms",
     withSystem("  - client_id: bulk\n    algorithms: []\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].algorithms: must not be empty"}},
    {"system_token_lifetime_above_server_max",
     withSystem("  - client_id: bulk\n    token_lifetime: 301\n    scopes: [system/*.rs]\n"
                "    jwks_uri: https://c.example.org/j\n"),
     {"t.yaml:7: systems[0].token_lifetime: must be between 1 and 300 (server.max_token_lifetime)"}},
    {"both_jwks_and_jwks_uri",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks: {keys: [" + rsaJwk("k1", kRs384N) +
                "]}\n    jwks_uri: https://c.example.org/jwks.json\n"),
     {"t.yaml:9: systems[0].jwks_uri: conflicts with jwks: set exactly one of jwks, jwks_file or jwks_uri"}},
    {"both_jwks_file_and_jwks_uri",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: https://c.example.org/jwks.json\n"
                "    jwks_file: /nonexistent/k.json\n"),
     {"t.yaml:9: systems[0].jwks_file: conflicts with jwks_uri: set exactly one of jwks, jwks_file or jwks_uri",
      "t.yaml:9: systems[0].jwks_file: cannot read /nonexistent/k.json: No such file or directory"}},
    {"neither_jwks_nor_jwks_uri", withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n"),
     {"t.yaml:6: systems[0]: needs keys: set one of jwks, jwks_file or jwks_uri"}},
    {"jwks_uri_http_to_remote_host",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: http://client.example.org/jwks.json\n"),
     {"t.yaml:8: systems[0].jwks_uri: must be an https URL (http only for loopback hosts 127.0.0.1, ::1, localhost)"}},
    {"jwks_uri_http_to_loopback_without_opt_in",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: http://127.0.0.1:9000/jwks.json\n"),
     {"t.yaml:8: systems[0].jwks_uri: plain http (even to a loopback host) needs "
      "server.jwks_fetch.allow_http_loopback: true"}},
    {"jwks_uri_http_to_loopback_explicitly_refused",
     kMinimalServer + "  jwks_fetch:\n    allow_http_loopback: false\nsystems:\n  - client_id: bulk\n"
                      "    scopes: [system/*.rs]\n    jwks_uri: http://[::1]/jwks.json\n",
     {"t.yaml:10: systems[0].jwks_uri: plain http (even to a loopback host) needs "
      "server.jwks_fetch.allow_http_loopback: true"}},
    {"jwks_uri_with_userinfo",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks_uri: https://u:p@c.example.org/jwks.json\n"),
     {"t.yaml:8: systems[0].jwks_uri: must not contain userinfo"}},
    {"jwks_not_a_map", withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks: [a]\n"),
     {"t.yaml:8: systems[0].jwks: expected a map (a JWK Set with a keys list)"}},
    {"inline_rsa_key_below_2048_bits",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks:\n      keys:\n        - " +
                rsaJwk("small", kRsa1024N, "") + "\n"),
     {"t.yaml:8: systems[0].jwks: keys[0] (kid small): n: modulus is 1024 bits, at least 2048 required"}},
    {"inline_jwks_with_duplicate_kid",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks:\n      keys:\n        - " +
                rsaJwk("same", kRs384N) + "\n        - " + rsaJwk("same", kRs384N, "RS256") + "\n"),
     {"t.yaml:8: systems[0].jwks: keys[1] (kid same): duplicate kid"}},
    {"inline_jwks_with_private_member",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks: {keys: [{kty: RSA, kid: k, e: AQAB, n: " +
                std::string(kRs384N) + ", d: AQAB}]}\n"),
     {"t.yaml:8: systems[0].jwks: keys[0] (kid k): d: private key member present, only public keys are accepted"}},
    {"inline_jwks_with_repeated_member",
     withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n    jwks:\n      keys:\n        - kid: a\n"
                "          kid: b\n"),
     {"t.yaml:8: systems[0].jwks: repeats the member \"kid\" (line 11)"}},
    {"inline_keys_fit_no_allowed_algorithm",
     withSystem("  - client_id: bulk\n    algorithms: [ES384]\n    scopes: [system/*.rs]\n    jwks: {keys: [" +
                rsaJwk("k1", kRs384N) + "]}\n"),
     {"t.yaml:9: systems[0].jwks: no key fits any of the allowed algorithms (ES384)"}},
    {"yaml_syntax_error", kMinimalServer + "systems: [\n  - client_id: x\n", {"t.yaml:6: YAML syntax error: illegal block entry"}},
    {"several_problems_reported_together",
     R"(server:
  port: 70000
  public_base_url: ftp://auth.example.org
  audiences: [https://fhir.example.org/r4]
  clock_skew: 1000
  state_directory: /var/lib/smart-broker
systems:
  - client_id: bulk
    algorithms: [none]
    scopes: [user/*.rs]
    jwks_uri: http://client.example.org/jwks.json
  - client_id: bulk
    scopes: [system/*.rs]
)",
     {"t.yaml:2: server.port: must be between 0 and 65535",
      "t.yaml:3: server.public_base_url: must be an absolute http or https URL",
      "t.yaml:5: server.clock_skew: must be between 0 and 300",
      "t.yaml:9: systems[0].algorithms[0]: \"none\" is never allowed: assertions must be signed",
      "t.yaml:10: systems[0].scopes[0]: not a system/ scope (test validator)",
      "t.yaml:11: systems[0].jwks_uri: must be an https URL (http only for loopback hosts 127.0.0.1, ::1, localhost)",
      "t.yaml:12: systems[1].client_id: duplicate client_id (first defined on line 8)",
      "t.yaml:12: systems[1]: needs keys: set one of jwks, jwks_file or jwks_uri"}},
};

}  // namespace

BOOST_AUTO_TEST_SUITE(broken_config)

BOOST_DATA_TEST_CASE(reports_each_problem_with_file_line_and_key, bdata::make(kBrokenCases), c) {
  const std::vector<std::string> actual = problemsOf(c.yaml);
  BOOST_TEST(actual == c.expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(reports_an_unreadable_file_on_line_zero) {
  const std::string path = kData + "/configs/does-not-exist.yaml";
  const auto result = loadConfig(path, systemOnly());
  BOOST_TEST_REQUIRE(!result.has_value());
  BOOST_TEST(formatted(result.error()) == (std::vector<std::string>{path + ":0: cannot read file: No such file or directory"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(reports_a_missing_jwks_file_with_its_resolved_path) {
  const auto result = parseConfig(withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n"
                                             "    jwks_file: keys/missing.jwks.json\n"),
                                  kData + "/inline.yaml", systemOnly());
  BOOST_TEST_REQUIRE(!result.has_value());
  BOOST_TEST(formatted(result.error()) ==
                 (std::vector<std::string>{kData + "/inline.yaml:8: systems[0].jwks_file: cannot read " + kData +
                                           "/keys/missing.jwks.json: No such file or directory"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(refuses_a_jwks_file_with_a_too_small_key) {
  const auto result = parseConfig(withSystem("  - client_id: bulk\n    scopes: [system/*.rs]\n"
                                             "    jwks_file: keys/rsa1024.jwks.json\n"),
                                  kData + "/inline.yaml", systemOnly());
  BOOST_TEST_REQUIRE(!result.has_value());
  BOOST_TEST_REQUIRE(result.error().size() == 1U);
  BOOST_TEST(result.error()[0].key == "systems[0].jwks_file");
  BOOST_TEST(result.error()[0].line == 8);
}

BOOST_AUTO_TEST_CASE(formats_a_problem_without_a_key_as_file_line_message) {
  BOOST_TEST((Problem{"a.yaml", 3, "", "oops"}.format() == "a.yaml:3: oops"));
  BOOST_TEST((Problem{"a.yaml", 3, "server.port", "oops"}.format() == "a.yaml:3: server.port: oops"));
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

/// tests/data/configs/bad-*.yaml, sorted: each one's first line is "# expect: <problem with {file} for the path>".
std::vector<std::string> badConfigFiles() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kData + "/configs", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("bad-") && name.ends_with(".yaml")) {
      out.push_back(entry.path().string());
    }
  }
  std::ranges::sort(out);
  return out;
}

std::string firstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(bad_config_files)

BOOST_AUTO_TEST_CASE(there_are_enough_files_for_the_end_to_end_check) { BOOST_TEST(badConfigFiles().size() >= 8U); }

BOOST_DATA_TEST_CASE(each_file_reports_exactly_its_expected_problem, bdata::make(badConfigFiles()), path) {
  constexpr std::string_view kPrefix = "# expect: ";
  std::string expected = firstLine(path);
  BOOST_TEST_REQUIRE(expected.starts_with(kPrefix));
  expected.erase(0, kPrefix.size());
  const std::size_t at = expected.find("{file}");
  BOOST_TEST_REQUIRE(at != std::string::npos);
  expected.replace(at, 6, path);

  const auto result = loadConfig(path, systemOnly());
  BOOST_TEST_REQUIRE(!result.has_value());
  BOOST_TEST(formatted(result.error()) == std::vector<std::string>{expected}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

namespace {

const std::string kConsentSystem = R"(systems:
  - client_id: exporter
    scopes: [system/*.rs]
    jwks: {keys: [)" + rsaJwk("k1", kRs384N) + R"(]}
)";

}  // namespace

BOOST_AUTO_TEST_SUITE(consent_config)

BOOST_AUTO_TEST_CASE(defaults_to_a_local_source_with_a_ten_second_cache_and_no_notifications) {
  const Config config = parsed(kMinimalServer + kConsentSystem);
  BOOST_TEST((config.consent.source == smartbroker::config::ConsentSettings::Source::Local));
  BOOST_TEST(config.consent.cache_seconds.count() == 10);
  BOOST_TEST(!config.consent.notification_url.has_value());
  BOOST_TEST(config.consent.retry_initial_backoff.count() == 1);
  BOOST_TEST(config.consent.retry_max_backoff.count() == 300);
  BOOST_TEST(!config.systems.at(0).consent.required);
}

BOOST_AUTO_TEST_CASE(loads_a_fhir_source_with_notifications_and_retry_settings) {
  const Config config = parsed(kMinimalServer + R"(consent:
  source: fhir
  fhir_base_url: https://fhir.example.org/r4/
  cache_seconds: 3
  connect_timeout: 2
  read_timeout: 4
  max_resource_bytes: 2048
  grantee_identifier_system: https://example.org/clients
  notification_url: https://consent.example.org/withdrawals
  retry: {initial_backoff: 2, max_backoff: 60}
)" + kConsentSystem + R"(    consent: {required: true, references: [c-1, c.2]}
)");
  const auto& c = config.consent;
  BOOST_TEST((c.source == smartbroker::config::ConsentSettings::Source::Fhir));
  BOOST_TEST(c.fhir_base_url == "https://fhir.example.org/r4");
  BOOST_TEST(c.cache_seconds.count() == 3);
  BOOST_TEST(c.connect_timeout.count() == 2);
  BOOST_TEST(c.read_timeout.count() == 4);
  BOOST_TEST(c.max_resource_bytes == 2048U);
  BOOST_TEST(c.grantee_identifier_system == "https://example.org/clients");
  BOOST_TEST(c.notification_url.value_or("") == "https://consent.example.org/withdrawals");
  BOOST_TEST(c.retry_initial_backoff.count() == 2);
  BOOST_TEST(c.retry_max_backoff.count() == 60);
  const auto& r = config.systems.at(0).consent;
  BOOST_TEST(r.required);
  BOOST_TEST(r.references == (std::vector<std::string>{"c-1", "c.2"}), boost::test_tools::per_element());
  BOOST_TEST(!r.rule_grantee);
}

BOOST_AUTO_TEST_CASE(accepts_the_grantee_rule_with_the_local_source) {
  const Config config = parsed(kMinimalServer + kConsentSystem + "    consent: {required: true, rule: grantee}\n");
  BOOST_TEST(config.systems.at(0).consent.rule_grantee);
  BOOST_TEST(config.systems.at(0).consent.references.empty());
}

BOOST_AUTO_TEST_CASE(accepts_plain_http_to_loopback_only_with_the_opt_in) {
  const Config config = parsed(kMinimalServer + R"(consent:
  allow_http_loopback: true
  notification_url: http://127.0.0.1:9000/hook
)" + kConsentSystem);
  BOOST_TEST(config.consent.notification_url.value_or("") == "http://127.0.0.1:9000/hook");
}

// kMinimalServer is lines 1-4; `consent:` is line 5; kConsentSystem puts the system's own keys on lines 6-9
// when it follows directly, or later after consent lines.
const std::vector<BrokenCase> kBrokenConsent = {
    {"unknown_source", kMinimalServer + "consent:\n  source: ldap\n",
     {"t.yaml:6: consent.source: must be local or fhir"}},
    {"fhir_without_base_url", kMinimalServer + "consent:\n  source: fhir\n",
     {"t.yaml:6: consent.fhir_base_url: missing required key (source fhir)"}},
    {"base_url_with_local_source", kMinimalServer + "consent:\n  fhir_base_url: https://fhir.example.org\n",
     {"t.yaml:6: consent.fhir_base_url: applies only with source: fhir"}},
    {"plain_http_fhir_server",
     kMinimalServer + "consent:\n  source: fhir\n  fhir_base_url: http://fhir.example.org\n",
     {"t.yaml:7: consent.fhir_base_url: must be an https URL (plain http only to loopback hosts, with "
      "consent.allow_http_loopback: true)"}},
    {"loopback_http_without_opt_in", kMinimalServer + "consent:\n  notification_url: http://127.0.0.1:1/x\n",
     {"t.yaml:6: consent.notification_url: must be an https URL (plain http only to loopback hosts, with "
      "consent.allow_http_loopback: true)"}},
    {"cache_too_long", kMinimalServer + "consent:\n  cache_seconds: 301\n",
     {"t.yaml:6: consent.cache_seconds: must be between 0 and 300"}},
    {"max_backoff_below_initial", kMinimalServer + "consent:\n  retry: {initial_backoff: 10, max_backoff: 5}\n",
     {"t.yaml:6: consent.retry.max_backoff: must be between 10 and 86400 (at least initial_backoff)"}},
    {"unknown_consent_key", kMinimalServer + "consent:\n  cache_second: 3\n",
     {"t.yaml:6: consent.cache_second: unknown key (did you mean cache_seconds?)"}},
    {"required_without_references_or_rule", kMinimalServer + kConsentSystem + "    consent: {required: true}\n",
     {"t.yaml:9: systems[0].consent: required: true needs references or rule: grantee"}},
    {"references_without_required", kMinimalServer + kConsentSystem + "    consent: {references: [c1]}\n",
     {"t.yaml:9: systems[0].consent: references and rule apply only with required: true"}},
    {"reference_not_a_fhir_id", kMinimalServer + kConsentSystem + "    consent: {required: true, references: [a/b]}\n",
     {"t.yaml:9: systems[0].consent.references[0]: must be a FHIR id: 1 to 64 of A-Z a-z 0-9 - ."}},
    {"duplicate_reference", kMinimalServer + kConsentSystem + "    consent: {required: true, references: [c1, c1]}\n",
     {"t.yaml:9: systems[0].consent.references[1]: duplicate consent reference c1"}},
    {"unknown_rule", kMinimalServer + kConsentSystem + "    consent: {required: true, rule: anyone}\n",
     {"t.yaml:9: systems[0].consent.rule: must be grantee"}},
    {"grantee_rule_with_fhir_source",
     kMinimalServer + "consent: {source: fhir, fhir_base_url: 'https://fhir.example.org'}\n" + kConsentSystem +
         "    consent: {required: true, rule: grantee}\n",
     {"t.yaml:10: systems[0].consent.rule: rule grantee needs consent.source local (a FHIR source is read by id)"}},
};

BOOST_DATA_TEST_CASE(reports_each_consent_problem_with_file_line_and_key, bdata::make(kBrokenConsent), c) {
  const std::vector<std::string> actual = problemsOf(c.yaml);
  BOOST_TEST(actual == c.expected, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(storage_config)

/// With storage postgresql a key-encryption key is required; these cases are about other problems.
const std::string kKek = "keyring: {kek_credential: keyring-kek}\n";

BOOST_AUTO_TEST_CASE(defaults_to_sqlite) {
  const Config config = parsed(kMinimalServer);
  BOOST_TEST((config.server.storage == smartbroker::config::Server::Storage::Sqlite));
  BOOST_TEST(config.server.postgresql.connection.empty());
  BOOST_TEST(config.server.postgresql.pool_size == 8U);
  BOOST_TEST(config.server.postgresql.statement_timeout.count() == 5);
}

BOOST_AUTO_TEST_CASE(loads_postgresql_storage_with_its_connection_and_pool_size) {
  const Config config = parsed(kMinimalServer + R"(  storage: postgresql
  postgresql:
    connection: "host=127.0.0.1 port=5433 dbname=broker user=broker"
    pool_size: 4
keyring:
  kek_credential: keyring-kek
)");
  BOOST_TEST((config.server.storage == smartbroker::config::Server::Storage::Postgresql));
  BOOST_TEST(config.server.postgresql.connection == "host=127.0.0.1 port=5433 dbname=broker user=broker");
  BOOST_TEST(config.server.postgresql.pool_size == 4U);
  BOOST_TEST(config.server.postgresql.statement_timeout.count() == 5);
}

BOOST_AUTO_TEST_CASE(loads_a_postgresql_statement_timeout_in_seconds) {
  const Config config = parsed(kMinimalServer + R"(  storage: postgresql
  postgresql:
    connection: "host=127.0.0.1"
    statement_timeout: 30
keyring:
  kek_file: /etc/smart-broker/keyring.kek
)");
  BOOST_TEST(config.server.postgresql.statement_timeout.count() == 30);
  BOOST_TEST(parsed(kMinimalServer + "  postgresql: {connection: x, statement_timeout: 1}\n")
                 .server.postgresql.statement_timeout.count() == 1);
  BOOST_TEST(parsed(kMinimalServer + "  postgresql: {connection: x, statement_timeout: 300}\n")
                 .server.postgresql.statement_timeout.count() == 300);
}

BOOST_AUTO_TEST_CASE(refuses_a_statement_timeout_that_is_zero_too_long_or_not_whole_seconds) {
  const std::string prefix = kMinimalServer + "  postgresql: {connection: x, statement_timeout: ";
  // 0 would mean "no limit" to PostgreSQL: the hang this setting exists to prevent.
  BOOST_TEST(problemsOf(prefix + "0}\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.postgresql.statement_timeout: must be between 1 and 300"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(prefix + "301}\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.postgresql.statement_timeout: must be between 1 and 300"}),
             boost::test_tools::per_element());
  for (const char* bad : {"5s", "1.5", "\"5\"", "-1", "true"}) {
    const auto problems = problemsOf(prefix + bad + "}\n");
    BOOST_REQUIRE_EQUAL(problems.size(), 1U);
    BOOST_TEST(problems[0].starts_with("t.yaml:5: server.postgresql.statement_timeout: "), problems[0]);
  }
}

BOOST_AUTO_TEST_CASE(refuses_postgresql_storage_without_a_connection_string) {
  BOOST_TEST(problemsOf(kMinimalServer + "  storage: postgresql\n" + kKek) ==
                 (std::vector<std::string>{"t.yaml:5: server.postgresql: missing: storage postgresql needs "
                                           "postgresql.connection"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(kMinimalServer + "  storage: postgresql\n  postgresql: {pool_size: 4}\n" + kKek) ==
                 (std::vector<std::string>{"t.yaml:6: server.postgresql.connection: missing required key"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(kMinimalServer + "  storage: postgresql\n  postgresql: {connection: \"\"}\n" + kKek) ==
                 (std::vector<std::string>{"t.yaml:6: server.postgresql.connection: must not be empty"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(refuses_postgresql_storage_without_a_key_encryption_key) {
  const std::string pg = kMinimalServer + "  storage: postgresql\n  postgresql: {connection: \"host=x\"}\n";
  const std::string expected =
      "keyring: storage postgresql keeps the signing keys in the database, sealed: set keyring.kek_file or "
      "keyring.kek_credential (the same key-encryption key on every instance)";
  BOOST_TEST(problemsOf(pg) == (std::vector<std::string>{"t.yaml:5: " + expected}), boost::test_tools::per_element());
  BOOST_TEST(problemsOf(pg + "keyring:\n  lead_time: 60\n") == (std::vector<std::string>{"t.yaml:7: " + expected}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(pg + "keyring:\n  kek_file: /etc/smart-broker/keyring.kek\n").empty());
  // SQLite keeps keys on the machine, where a KEK stays optional.
  BOOST_TEST(problemsOf(kMinimalServer).empty());
}

BOOST_AUTO_TEST_CASE(refuses_unknown_storage_and_bad_pool_sizes) {
  BOOST_TEST(problemsOf(kMinimalServer + "  storage: mysql\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.storage: must be sqlite or postgresql"}),
             boost::test_tools::per_element());
  const auto pool = problemsOf(kMinimalServer + "  postgresql: {connection: \"host=x\", pool_size: 1}\n");
  BOOST_REQUIRE_EQUAL(pool.size(), 1U);
  BOOST_TEST(pool[0].starts_with("t.yaml:5: server.postgresql.pool_size: "));
  const auto typo = problemsOf(kMinimalServer + "  postgresql: {connection: \"host=x\", poolsize: 4}\n");
  BOOST_REQUIRE_EQUAL(typo.size(), 1U);
  BOOST_TEST(typo[0].starts_with("t.yaml:5: server.postgresql.poolsize: unknown key"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(permission_scopes)

const std::string kSystemKeys = "    jwks: {keys: [" + rsaJwk("k1", kRs384N) + "]}\n";

BOOST_AUTO_TEST_CASE(defaults_to_the_documented_names_and_accepts_them_in_registrations) {
  const Config config = parsed(withSystem("  - client_id: rs\n    scopes: [smart-broker:introspect, "
                                          "smart-broker:consent-admin, system/*.rs]\n" + kSystemKeys));
  BOOST_TEST(config.server.introspection_scope == "smart-broker:introspect");
  BOOST_TEST(config.server.consent_admin_scope == "smart-broker:consent-admin");
  BOOST_TEST(config.systems.at(0).scopes ==
                 (std::vector<std::string>{"smart-broker:introspect", "smart-broker:consent-admin", "system/*.rs"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(renamed_permissions_are_accepted_and_the_old_names_are_not) {
  const std::string server = kMinimalServer + "  introspection_scope: acme:introspect\n"
                                              "  consent_admin_scope: acme/consents.write\n";
  const Config config =
      parsed(server + "systems:\n  - client_id: rs\n    scopes: [acme:introspect, acme/consents.write]\n" + kSystemKeys);
  BOOST_TEST(config.server.introspection_scope == "acme:introspect");
  BOOST_TEST(config.server.consent_admin_scope == "acme/consents.write");
  BOOST_TEST(config.server.permissionScopes() ==
                 (std::vector<std::string>{"acme:introspect", "acme/consents.write"}),
             boost::test_tools::per_element());
  // The default name is now an ordinary scope, and the injected validator refuses it.
  BOOST_TEST(problemsOf(server + "systems:\n  - client_id: rs\n    scopes: [smart-broker:introspect]\n" +
                        kSystemKeys) ==
                 (std::vector<std::string>{"t.yaml:9: systems[0].scopes[0]: not a system/ scope (test validator)"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(refuses_names_that_are_not_scope_tokens_or_look_like_smart_scopes) {
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: \"a b\"\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.introspection_scope: must be 1..128 characters of an "
                                           "RFC 6749 scope-token (no space, '\"' or '\\')"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: system/Introspect.rs\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.introspection_scope: must not look like a SMART scope "
                                           "(system/...)"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(kMinimalServer + "  consent_admin_scope: patient/Consent.cud\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.consent_admin_scope: must not look like a SMART scope "
                                           "(patient/...)"}),
             boost::test_tools::per_element());
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: " + std::string(129, 'x') + "\n").size() == 1U);
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: " + std::string(128, 'x') + "\n").empty());
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: \"\"\n") ==
                 (std::vector<std::string>{"t.yaml:5: server.introspection_scope: must not be empty"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(refuses_one_name_for_both_permissions) {
  BOOST_TEST(problemsOf(kMinimalServer + "  introspection_scope: acme:all\n  consent_admin_scope: acme:all\n") ==
                 (std::vector<std::string>{"t.yaml:6: server.consent_admin_scope: must differ from "
                                           "introspection_scope"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_SUITE_END()
