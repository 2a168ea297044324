// Loads the broker's YAML configuration into plain structs, reporting every problem with file, line and key path.
//
// The schema (the reference; a key not listed here is a problem, so a typo never falls back to a default):
//
//   server:                              # required map
//     listen_address: 127.0.0.1          # IPv4 or IPv6 literal (no brackets) or host name; default 127.0.0.1
//     port: 8080                         # 0..65535; 0 = any free port; default 8080
//     public_base_url: https://auth.example.org/smart
//                                        # required; absolute http/https URL without userinfo, query or
//                                        # fragment; trailing slashes are removed
//     audiences: [https://fhir.example.org/r4]
//                                        # required, non-empty list of absolute http/https URLs (no userinfo,
//                                        # query or fragment); a single string is accepted as a one-item list
//     token_lifetime: 300                # seconds, 1..max_token_lifetime; default min(300, max_token_lifetime)
//     max_token_lifetime: 300            # seconds, 1..3600; default 300
//     clock_skew: 30                     # seconds, 0..300; default 30
//     max_assertion_lifetime: 300        # seconds, 1..300 (SPEC caps assertion exp at now+300); default 300
//     state_directory: /var/lib/smart-broker          # required, non-empty path
//     database_path: /var/lib/smart-broker/smart-broker.db
//                                        # optional; default <state_directory>/smart-broker.db
//     storage: sqlite                    # sqlite | postgresql; default sqlite (README "Running several instances")
//     postgresql:                        # optional map; required (with connection) when storage is postgresql
//       connection: "host=127.0.0.1 port=5432 dbname=smartbroker user=smartbroker"
//                                        # required, non-empty libpq key=value connection string (a password is
//                                        # better kept in ~/.pgpass or PGPASSFILE than here)
//       pool_size: 8                     # 2..256 connections per instance; default 8
//       statement_timeout: 5             # seconds, 1..300: a statement still running then (e.g. waiting on a lock
//                                        # another session holds) is cancelled and the request fails closed (503)
//     signing_algorithm: ES256           # deprecated: use keyring.algorithm (ES256 | RS256 here); when both are
//                                        # set they must agree
//     threads: 0                         # 0..1024 (0 = 2 x cores, at least 4); default 0
//     max_queued: 256                    # 1..65535; default 256
//     keep_alive_timeout: 15             # seconds, 1..300; default 15
//     limits:                            # optional map; every member optional
//       max_body_bytes: 16384            # 1..1048576
//       max_params: 16                   # 1..256
//       max_param_bytes: 8192            # 1..max_body_bytes
//       max_assertion_bytes: 8192        # 1..max_param_bytes
//       max_scope_count: 64              # 1..1024
//     jwks_fetch:                        # optional map; every member optional (README "Client keys by URL")
//       allow_http_loopback: false       # true | false; true lets jwks_uri use plain http to 127.0.0.1, ::1 or
//                                        # localhost (development and tests only); default false
//       connect_timeout: 3               # seconds, 1..60: TCP connect plus TLS handshake
//       read_timeout: 5                  # seconds, 1..60: the whole response after the request is sent
//       max_response_bytes: 65536        # 1024..524288: larger bodies are a fetch failure
//       max_cache_lifetime: 3600         # seconds, 0..86400: ceiling on any Cache-Control/Expires lifetime
//       default_cache_lifetime: 0        # seconds, 0..max_cache_lifetime: for responses with neither max-age
//                                        # nor Expires (0 = not cached)
//       kid_miss_cooldown: 30            # seconds, 1..3600: at most one refetch per URL per cooldown on an
//                                        # unknown kid; failed fetches are remembered this long
//       serve_stale: 0                   # seconds, 0..86400: keep using an expired set this long while its URL
//                                        # is unreachable (0 = never; see README)
//     introspection_scope: smart-broker:introspect
//                                        # the broker permission for POST /introspect (README "Scopes"): an RFC
//                                        # 6749 scope-token of 1..128 bytes, not system/, patient/ or user/
//     consent_admin_scope: smart-broker:consent-admin
//                                        # the same rules; the permission for PUT/DELETE /consents/{id}; must
//                                        # differ from introspection_scope
//     tls:                               # optional map; when present both members are required
//       certificate_file: /etc/smart-broker/tls.crt
//       private_key_file: /etc/smart-broker/tls.key
//   keyring:                             # optional map; every member optional (README "Signing keys and rotation")
//     algorithm: ES256                   # ES256 | RS256 | ES384; default server.signing_algorithm, else ES256
//     rotation_period: 2592000           # seconds, 0 (rotate only by command) or 2..315360000; default 30 days
//     lead_time: 86400                   # seconds, 1..31536000, below rotation_period: a key is published this long
//                                        # before it signs; default min(86400, rotation_period / 2)
//     jwks_max_age: 3600                 # seconds, 1..86400, at most lead_time: Cache-Control max-age of
//                                        # /jwks.json; default min(3600, lead_time / 2), at least 1
//     retirement_grace: 3600             # seconds, 0..2592000: a retired key stays published max_token_lifetime +
//                                        # clock_skew + this after its last signature; default 3600
//     kek_file: /etc/smart-broker/keyring.kek
//                                        # optional: key-encryption key (32 raw bytes or 64 hex characters, mode
//                                        # at most 0600) sealing private keys at rest with AES-256-GCM
//     kek_credential: keyring-kek        # optional, instead of kek_file: a systemd credential name
//                                        # (LoadCredential=), read from $CREDENTIALS_DIRECTORY/<name>
//   systems:                             # optional list (absent, empty or null = no systems)
//     - client_id: bulk-exporter         # required, unique; 1..255 printable ASCII without space, '"' or '\'
//       name: Bulk exporter              # optional, non-empty; default = client_id
//       enabled: true                    # true | false; default true
//       algorithms: [RS384, ES384]       # optional, non-empty, no duplicates; each one of RS256 RS384 ES256
//                                        # ES384 (never none or HS*); default [RS384, ES384]
//       scopes: [system/*.rs]            # required, non-empty; each a broker permission named above, or
//                                        # checked by Validators::scope when set
//       token_lifetime: 300              # optional seconds, 1..server.max_token_lifetime
//       # exactly one of the following three:
//       jwks: {keys: [{kty: RSA, kid: k1, n: ..., e: AQAB}]}   # inline JWK Set (YAML or JSON-style)
//       jwks_file: keys/bulk-exporter.jwks.json                # a JSON JWK Set file, at most 512 KiB
//       jwks_uri: https://client.example.org/.well-known/jwks.json
//                                        # https URL; plain http only for the loopback hosts 127.0.0.1, ::1
//                                        # and localhost, and only with server.jwks_fetch.allow_http_loopback;
//                                        # no userinfo or fragment
//       consent:                         # optional map (README "Consent")
//         required: true                 # true | false; default false. true needs references or rule
//         references: [consent-123]      # optional list of FHIR Consent ids, each [A-Za-z0-9.-]{1,64}, no
//                                        # duplicates; only with required: true
//         rule: grantee                  # optional, only value grantee: also any active local consent whose
//                                        # grantee is this system; only with required: true and source local
//   consent:                             # optional map; every member optional (README "Consent")
//     source: local                      # local (PUT/DELETE /consents/{id}) | fhir; default local
//     fhir_base_url: https://fhir.example.org/r4
//                                        # required with source fhir, refused with local: absolute https URL (http
//                                        # only to loopback hosts with allow_http_loopback), no query or fragment;
//                                        # trailing slashes removed; consents are read from
//                                        # {fhir_base_url}/Consent/{id}
//     cache_seconds: 10                  # seconds, 0..300: how long a looked-up consent is believed; default 10
//     connect_timeout: 3                 # seconds, 1..60 (FHIR reads and notifications)
//     read_timeout: 5                    # seconds, 1..60
//     max_resource_bytes: 65536          # 1024..1048576: a Consent resource, PUT or fetched
//     allow_http_loopback: false         # true | false: plain http to 127.0.0.1, ::1, localhost (tests only)
//     grantee_identifier_system: urn:smart-broker:client-id
//                                        # non-empty: the Identifier.system whose value is a client_id
//     notification_url: https://consent.example.org/withdrawals
//                                        # optional, same URL rules as fhir_base_url: withdrawal notifications
//     retry:                             # optional map: notification retries (exponential backoff, no limit)
//       initial_backoff: 1               # seconds, 1..3600; default 1
//       max_backoff: 300                 # seconds, initial_backoff..86400; default 300
//
// Value rules: integers and durations are plain decimal integers (durations in seconds): "30s", 1.5, true and
// quoted "30" are refused. Booleans are exactly true or false. Strings are any scalar (an empty value or ~ is
// null, not a string). Relative paths (state_directory, database_path, jwks_file, tls files) resolve against the
// directory of the config file (for parseConfig: the directory of `sourceName`, relative to the working directory).
// An inline JWK Set is converted to JSON (every scalar a JSON string) and validated by jwks::parseJwkSet exactly as
// a jwks_file is; a system whose keys fit none of its algorithms is a problem, since it could never authenticate.
//
// Problems carry the 1-based line of the offending node: a scalar's own line; for a map or list in the wrong
// place, an empty value, or a conflicting key, the line of its key; for a missing key, the line of the map that
// lacks it. They are returned in line order.

#include "smartbroker/config/config.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <memory>
#include <set>
#include <string_view>
#include <system_error>
#include <utility>

#include <yaml-cpp/yaml.h>

namespace smartbroker::config {

std::string Problem::format() const {
  std::string out = file + ":" + std::to_string(line) + ": ";
  if (!key.empty()) {
    out += key + ": ";
  }
  return out + message;
}

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxConfigBytes = 1024 * 1024;
constexpr std::size_t kMaxJwksBytes = 512 * 1024;
constexpr int kMaxJwksDepth = 8;  // {keys: [ {member: [x5c entries]} ]} needs 4; anything deeper is not a JWK Set
constexpr std::int64_t kTokenLifetimeCeiling = 3600;
constexpr std::int64_t kDefaultTokenLifetime = 300;
constexpr std::size_t kMaxClientIdLength = 255;

/// The whole file, or why not ("No such file or directory", "larger than N bytes"); the caller names the file.
std::expected<std::string, std::string> readFileCapped(const std::string& path, std::size_t limit) {
  const std::unique_ptr<std::FILE, decltype(&std::fclose)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) {
    const int err = errno;
    return std::unexpected(std::generic_category().message(err));
  }
  std::string out;
  std::array<char, 8192> buffer{};
  for (;;) {
    const std::size_t n = std::fread(buffer.data(), 1, buffer.size(), file.get());
    out.append(buffer.data(), n);
    // Why: a cap, so that pointing the broker at /dev/zero or a huge file fails instead of exhausting memory.
    if (out.size() > limit) {
      return std::unexpected("larger than " + std::to_string(limit) + " bytes");
    }
    if (n < buffer.size()) {
      if (std::ferror(file.get()) != 0) {
        const int err = errno;
        return std::unexpected(std::generic_category().message(err));
      }
      return out;
    }
  }
}

bool isAsciiAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

/// True for a value short and plain enough to quote in a diagnostic line.
bool isShortPrintable(std::string_view s) {
  return s.size() <= 32 && std::ranges::all_of(s, [](char c) {
           const auto u = static_cast<unsigned char>(c);
           return u > 0x20 && u < 0x7f;
         });
}

std::string asciiLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
  }
  return out;
}

bool isIpv4(std::string_view s) {
  in_addr addr{};
  return inet_pton(AF_INET, std::string(s).c_str(), &addr) == 1;
}

bool isIpv6(std::string_view s) {
  in6_addr addr{};
  return inet_pton(AF_INET6, std::string(s).c_str(), &addr) == 1;
}

/// RFC 1123 host name: dot-separated labels of 1..63 letters, digits and inner hyphens, at most 253 characters.
bool isHostName(std::string_view s) {
  if (s.empty() || s.size() > 253) {
    return false;
  }
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = s.find('.', start);
    const std::size_t length = dot == std::string_view::npos ? std::string_view::npos : dot - start;
    const std::string_view label = s.substr(start, length);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    if (!std::ranges::all_of(label, [](char c) { return isAsciiAlnum(c) || c == '-'; })) {
      return false;
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    start = dot + 1;
  }
}

struct HttpUrl {
  bool https = false;
  std::string host;  ///< lower-cased, without IPv6 brackets
  bool hasQuery = false;
};

/// A deliberately small absolute-URL check: http(s) scheme in lower case, a valid host, an optional port 1..65535,
/// printable ASCII only, no userinfo and no fragment. The query is reported, not refused.
std::expected<HttpUrl, std::string> parseHttpUrl(std::string_view url) {
  for (const char c : url) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return std::unexpected("must contain only printable ASCII characters without spaces");
    }
  }
  HttpUrl out;
  std::string_view rest;
  if (url.starts_with("https://")) {
    out.https = true;
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    rest = url.substr(7);
  } else {
    return std::unexpected("must be an absolute http or https URL");
  }
  const std::size_t authorityEnd = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, authorityEnd);
  const std::string_view tail = authorityEnd == std::string_view::npos ? std::string_view{} : rest.substr(authorityEnd);
  // Why: userinfo in a URL is a classic way to disguise the real host (https://trusted@evil.example/).
  if (authority.find('@') != std::string_view::npos) {
    return std::unexpected("must not contain userinfo");
  }
  if (tail.find('#') != std::string_view::npos) {
    return std::unexpected("must not have a fragment");
  }
  if (authority.empty()) {
    return std::unexpected("has no host");
  }
  std::string_view host;
  std::optional<std::string_view> port;
  if (authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return std::unexpected("has an invalid host");
    }
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!isIpv6(host) || (!after.empty() && after.front() != ':')) {
      return std::unexpected("has an invalid host");
    }
    if (!after.empty()) {
      port = after.substr(1);
    }
  } else {
    const std::size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
    }
    if (!isHostName(host)) {  // dotted IPv4 literals are host names too
      return std::unexpected("has an invalid host");
    }
  }
  if (port) {
    unsigned value = 0;
    const auto [ptr, ec] = std::from_chars(port->data(), port->data() + port->size(), value);
    if (port->empty() || ec != std::errc{} || ptr != port->data() + port->size() || value < 1 || value > 65535) {
      return std::unexpected("has an invalid port");
    }
  }
  out.host = asciiLower(host);
  out.hasQuery = tail.find('?') != std::string_view::npos;
  return out;
}

std::size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0U : 1U)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

void appendJsonString(std::string& out, std::string_view s) {
  static constexpr std::string_view kHex = "0123456789abcdef";
  out += '"';
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += "\\u00";
      out += kHex[u >> 4U];
      out += kHex[u & 0x0fU];
    } else {
      out += c;
    }
  }
  out += '"';
}

/// YAML -> JSON text for jwks::parseJwkSet: maps become objects, sequences arrays, every scalar a JSON string
/// (JWK members are strings), null null. Refuses non-string and duplicate map keys, deep nesting and huge output.
std::optional<std::string> appendJson(std::string& out, const YAML::Node& node, int depth) {
  if (depth > kMaxJwksDepth) {
    return "is nested too deeply to be a JWK Set";
  }
  if (out.size() > kMaxJwksBytes) {
    return "is larger than " + std::to_string(kMaxJwksBytes) + " bytes";
  }
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      out += '{';
      std::set<std::string> seen;
      bool first = true;
      for (auto it = node.begin(); it != node.end(); ++it) {
        if (!it->first.IsScalar()) {
          return "has a member name that is not a string (line " + std::to_string(it->first.Mark().line + 1) + ")";
        }
        const std::string& name = it->first.Scalar();
        // Why: JSON parsers disagree about repeated members; refuse instead of letting one silently win.
        if (!seen.insert(name).second) {
          return "repeats the member \"" + name + "\" (line " + std::to_string(it->first.Mark().line + 1) + ")";
        }
        if (!first) {
          out += ',';
        }
        first = false;
        appendJsonString(out, name);
        out += ':';
        if (auto error = appendJson(out, it->second, depth + 1)) {
          return error;
        }
      }
      out += '}';
      return std::nullopt;
    }
    case YAML::NodeType::Sequence: {
      out += '[';
      bool first = true;
      for (const auto& element : node) {
        if (!first) {
          out += ',';
        }
        first = false;
        if (auto error = appendJson(out, element, depth + 1)) {
          return error;
        }
      }
      out += ']';
      return std::nullopt;
    }
    case YAML::NodeType::Scalar:
      appendJsonString(out, node.Scalar());
      return std::nullopt;
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out += "null";
      return std::nullopt;
  }
  return "cannot be converted to JSON";
}

int lineOf(const YAML::Node& node, int fallback) {
  if (!node.IsDefined() || node.Mark().is_null()) {
    return fallback;
  }
  return node.Mark().line + 1;
}

std::string joinKey(const std::string& parent, std::string_view name) {
  return parent.empty() ? std::string(name) : parent + "." + std::string(name);
}

std::string indexKey(const std::string& parent, std::size_t index) {
  return parent + "[" + std::to_string(index) + "]";
}

/// A value with where it is: the line for diagnostics and its dotted key path.
struct Item {
  YAML::Node node;
  int line = 0;
  std::string key;
};

/// A map's entries after its keys were checked against the schema.
struct Fields {
  int line = 0;     ///< the map's own line: where a missing key is reported
  std::string key;  ///< the map's key path
  std::map<std::string, Item, std::less<>> items;

  const Item* find(std::string_view name) const {
    const auto it = items.find(name);
    return it == items.end() ? nullptr : &it->second;
  }
  std::optional<Item> get(std::string_view name) const {
    const Item* item = find(name);
    return item == nullptr ? std::nullopt : std::optional<Item>(*item);
  }
};

std::string algList(const std::vector<jwks::Alg>& algs) {
  std::string out;
  for (const jwks::Alg alg : algs) {
    if (!out.empty()) {
      out += ", ";
    }
    out += jwks::algName(alg);
  }
  return out;
}

class Loader {
 public:
  Loader(std::string file, fs::path baseDir, const Validators& validators)
      : file_(std::move(file)), baseDir_(std::move(baseDir)), validators_(validators) {}

  std::expected<Config, std::vector<Problem>> load(const std::string& yaml) {
    std::vector<YAML::Node> documents;
    try {
      documents = YAML::LoadAll(yaml);
    } catch (const YAML::ParserException& e) {
      problem(e.mark.is_null() ? 1 : e.mark.line + 1, "", "YAML syntax error: " + e.msg);
      return std::unexpected(std::move(problems_));
    } catch (const YAML::Exception& e) {
      problem(e.mark.is_null() ? 1 : e.mark.line + 1, "", std::string("YAML error: ") + e.msg);
      return std::unexpected(std::move(problems_));
    }
    if (documents.size() > 1) {
      problem(lineOf(documents[1], 1), "", "expected a single YAML document");
    }
    // An empty file (or a lone `~`) is an empty map: it then lacks `server`.
    const YAML::Node root =
        documents.empty() || documents.front().IsNull() ? YAML::Node(YAML::NodeType::Map) : documents.front();

    Config config;
    config.source = file_;
    if (auto fields = fieldsOf(Item{root, lineOf(root, 1), ""}, {"server", "keyring", "systems", "consent"})) {
      if (auto server = required(*fields, "server")) {
        parseServer(*server, config.server);
      }
      parseKeyring(fields->get("keyring"), config.server, config.keyring);
      // Before systems: a system's consent rule depends on the consent source.
      if (auto consent = fields->get("consent")) {
        parseConsentSettings(*consent, config.consent);
      }
      consentSource_ = config.consent.source;
      if (auto systems = fields->get("systems")) {
        parseSystems(*systems, config.server, config.systems);
      }
    }
    if (!problems_.empty()) {
      std::ranges::stable_sort(problems_, {}, &Problem::line);
      return std::unexpected(std::move(problems_));
    }
    return config;
  }

 private:
  void problem(int line, std::string key, std::string message) {
    problems_.push_back(Problem{file_, line, std::move(key), std::move(message)});
  }

  /// Checks a map's keys: unknown keys (with a suggestion for near misses) and repeated keys are problems.
  std::optional<Fields> fieldsOf(const Item& item, std::initializer_list<std::string_view> known) {
    if (!item.node.IsMap()) {
      problem(item.line, item.key, item.key.empty() ? "expected a map at the top level" : "expected a map");
      return std::nullopt;
    }
    Fields fields{lineOf(item.node, item.line), item.key, {}};
    for (auto it = item.node.begin(); it != item.node.end(); ++it) {
      const int keyLine = lineOf(it->first, fields.line);
      if (!it->first.IsScalar()) {
        problem(keyLine, item.key, "expected a string key");
        continue;
      }
      const std::string& name = it->first.Scalar();
      const std::string key = joinKey(item.key, name);
      if (std::ranges::find(known, std::string_view(name)) == known.end()) {
        problem(keyLine, key, "unknown key" + suggestion(name, known));
        continue;
      }
      if (const auto previous = fields.items.find(name); previous != fields.items.end()) {
        // Why: yaml-cpp keeps the first of two equal keys; refusing beats guessing which one the operator meant.
        problem(keyLine, key, "duplicate key (first on line " + std::to_string(previous->second.line) + ")");
        continue;
      }
      // Scalars are reported on their own line; maps, lists and empty values on their key's line.
      const int valueLine = it->second.IsScalar() ? lineOf(it->second, keyLine) : keyLine;
      fields.items.emplace(name, Item{it->second, valueLine, key});
    }
    return fields;
  }

  static std::string suggestion(std::string_view name, std::initializer_list<std::string_view> known) {
    const std::size_t allowed = name.size() >= 8 ? 2 : 1;
    std::string_view best;
    std::size_t bestDistance = allowed + 1;
    for (const std::string_view candidate : known) {
      const std::size_t d = editDistance(name, candidate);
      if (d < bestDistance) {
        best = candidate;
        bestDistance = d;
      }
    }
    return best.empty() ? std::string{} : " (did you mean " + std::string(best) + "?)";
  }

  std::optional<Item> required(const Fields& fields, std::string_view name) {
    auto item = fields.get(name);
    if (!item) {
      problem(fields.line, joinKey(fields.key, name), "missing required key");
    }
    return item;
  }

  std::optional<std::string> text(const Item& item) {
    if (!item.node.IsScalar()) {
      problem(item.line, item.key, "expected a string");
      return std::nullopt;
    }
    return item.node.Scalar();
  }

  std::optional<std::string> nonEmptyText(const Item& item) {
    auto value = text(item);
    if (value && value->empty()) {
      problem(item.line, item.key, "must not be empty");
      return std::nullopt;
    }
    return value;
  }

  /// A plain decimal integer in [lo, hi]. `note` follows the range in the message, e.g. the bound's origin.
  std::optional<std::int64_t> integerIn(const Item& item, std::int64_t lo, std::int64_t hi, bool seconds,
                                        std::string_view note = {}) {
    const std::string expected = seconds ? "expected an integer (seconds)" : "expected an integer";
    // Why: a quoted "30" is a string in YAML; accepting it would blur the type rules for every other key.
    if (!item.node.IsScalar() || item.node.Tag() == "!") {
      problem(item.line, item.key, expected);
      return std::nullopt;
    }
    const std::string& s = item.node.Scalar();
    const std::size_t digitsAt = s.starts_with('-') ? 1 : 0;
    if (s.size() == digitsAt || !std::all_of(s.begin() + static_cast<std::ptrdiff_t>(digitsAt), s.end(),
                                             [](char c) { return c >= '0' && c <= '9'; })) {
      problem(item.line, item.key, expected);
      return std::nullopt;
    }
    std::int64_t value = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc{} || ptr != s.data() + s.size() || value < lo || value > hi) {
      problem(item.line, item.key,
              "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + std::string(note));
      return std::nullopt;
    }
    return value;
  }

  std::optional<bool> boolean(const Item& item) {
    if (item.node.IsScalar() && item.node.Tag() != "!") {
      if (item.node.Scalar() == "true") {
        return true;
      }
      if (item.node.Scalar() == "false") {
        return false;
      }
    }
    problem(item.line, item.key, "expected true or false");
    return std::nullopt;
  }

  std::optional<std::vector<Item>> list(const Item& item) {
    if (!item.node.IsSequence()) {
      problem(item.line, item.key, "expected a list");
      return std::nullopt;
    }
    std::vector<Item> out;
    std::size_t index = 0;
    for (const auto& element : item.node) {
      out.push_back(Item{element, lineOf(element, item.line), indexKey(item.key, index)});
      ++index;
    }
    return out;
  }

  std::string resolvePath(const std::string& path) const {
    const fs::path p(path);
    if (p.is_absolute() || baseDir_.empty()) {
      return path;
    }
    return (baseDir_ / p).lexically_normal().string();
  }

  std::optional<std::string> pathValue(const Item& item) {
    auto value = nonEmptyText(item);
    if (!value) {
      return std::nullopt;
    }
    return resolvePath(*value);
  }

  void parseServer(const Item& item, Server& server) {
    const auto fields = fieldsOf(item, {"listen_address", "port", "public_base_url", "audiences", "token_lifetime",
                                        "max_token_lifetime", "clock_skew", "max_assertion_lifetime",
                                        "state_directory", "database_path", "signing_algorithm", "threads",
                                        "max_queued", "keep_alive_timeout", "limits", "jwks_fetch", "tls",
                                        "storage", "postgresql", "introspection_scope", "consent_admin_scope"});
    if (!fields) {
      return;
    }
    if (const auto v = fields->get("listen_address")) {
      if (const auto address = nonEmptyText(*v)) {
        if (isIpv4(*address) || isIpv6(*address) || isHostName(*address)) {
          server.listen_address = *address;
        } else {
          problem(v->line, v->key, "must be an IPv4 or IPv6 address or a host name");
        }
      }
    }
    if (const auto v = fields->get("port")) {
      if (const auto port = integerIn(*v, 0, 65535, false)) {
        server.port = static_cast<std::uint16_t>(*port);
      }
    }
    if (const auto v = required(*fields, "public_base_url")) {
      if (const auto url = nonEmptyText(*v)) {
        const auto parsed = parseHttpUrl(*url);
        if (!parsed) {
          problem(v->line, v->key, parsed.error());
        } else if (parsed->hasQuery) {
          // Why: endpoint URLs are derived by appending paths; a query would end up in the middle of them.
          problem(v->line, v->key, "must not have a query");
        } else {
          std::string base = *url;
          while (base.ends_with('/')) {
            base.pop_back();
          }
          server.public_base_url = base;
        }
      }
    }
    if (const auto v = required(*fields, "audiences")) {
      parseAudiences(*v, server.audiences);
    }

    bool maxLifetimeValid = true;
    if (const auto v = fields->get("max_token_lifetime")) {
      const auto seconds = integerIn(*v, 1, kTokenLifetimeCeiling, true);
      maxLifetimeValid = seconds.has_value();
      if (seconds) {
        server.max_token_lifetime = Seconds{*seconds};
      }
    }
    const std::int64_t maxLifetime = maxLifetimeValid ? server.max_token_lifetime.count() : kTokenLifetimeCeiling;
    if (const auto v = fields->get("token_lifetime")) {
      if (const auto seconds = integerIn(*v, 1, maxLifetime, true, " (server.max_token_lifetime)")) {
        server.token_lifetime = Seconds{*seconds};
      }
    } else {
      // The default never exceeds a configured cap: lowering the cap alone must be enough.
      server.token_lifetime = Seconds{std::min(kDefaultTokenLifetime, maxLifetime)};
    }
    if (const auto v = fields->get("clock_skew")) {
      if (const auto seconds = integerIn(*v, 0, 300, true)) {
        server.clock_skew = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("max_assertion_lifetime")) {
      // Why: SPEC "Authenticating" 7 caps an assertion's exp at now+300; a larger window only widens replay.
      if (const auto seconds = integerIn(*v, 1, 300, true)) {
        server.max_assertion_lifetime = Seconds{*seconds};
      }
    }
    if (const auto v = required(*fields, "state_directory")) {
      if (const auto path = pathValue(*v)) {
        server.state_directory = *path;
      }
    }
    if (const auto v = fields->get("database_path")) {
      if (const auto path = pathValue(*v)) {
        server.database_path = *path;
      }
    } else if (!server.state_directory.empty()) {
      server.database_path = (fs::path(server.state_directory) / "smart-broker.db").string();
    }
    if (const auto v = fields->get("signing_algorithm")) {
      if (const auto alg = text(*v)) {
        if (*alg == "ES256" || *alg == "RS256") {
          server.signing_algorithm = *alg;
          signingAlgorithmLine_ = v->line;
        } else {
          problem(v->line, v->key, "must be ES256 or RS256");
        }
      }
    }
    if (const auto v = fields->get("threads")) {
      if (const auto n = integerIn(*v, 0, 1024, false)) {
        server.threads = static_cast<unsigned>(*n);
      }
    }
    if (const auto v = fields->get("max_queued")) {
      if (const auto n = integerIn(*v, 1, 65535, false)) {
        server.max_queued = static_cast<unsigned>(*n);
      }
    }
    if (const auto v = fields->get("keep_alive_timeout")) {
      if (const auto seconds = integerIn(*v, 1, 300, true)) {
        server.keep_alive_timeout = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("limits")) {
      parseLimits(*v, server.limits);
    }
    if (const auto v = fields->get("jwks_fetch")) {
      parseJwksFetch(*v, server.jwks_fetch);
    }
    if (const auto v = fields->get("tls")) {
      parseTls(*v, server.tls);
    }
    if (const auto v = fields->get("introspection_scope")) {
      if (const auto name = permissionScopeName(*v)) {
        server.introspection_scope = *name;
      }
    }
    if (const auto v = fields->get("consent_admin_scope")) {
      if (const auto name = permissionScopeName(*v)) {
        if (*name == server.introspection_scope) {
          problem(v->line, v->key, "must differ from introspection_scope");
        } else {
          server.consent_admin_scope = *name;
        }
      }
    }
    parseStorage(*fields, server);
  }

  /// `server.storage` and `server.postgresql`: a connection string is required exactly when it is used.
  void parseStorage(const Fields& fields, Server& server) {
    std::optional<int> storageLine;
    if (const auto v = fields.get("storage")) {
      if (const auto name = text(*v)) {
        storageLine = v->line;
        storageLine_ = v->line;
        if (*name == "sqlite") {
          server.storage = Server::Storage::Sqlite;
        } else if (*name == "postgresql") {
          server.storage = Server::Storage::Postgresql;
        } else {
          problem(v->line, v->key, "must be sqlite or postgresql");
        }
      }
    }
    const auto v = fields.get("postgresql");
    if (!v) {
      if (server.storage == Server::Storage::Postgresql) {
        problem(storageLine.value_or(fields.line), joinKey(fields.key, "postgresql"),
                "missing: storage postgresql needs postgresql.connection");
      }
      return;
    }
    const auto pg = fieldsOf(*v, {"connection", "pool_size", "statement_timeout"});
    if (!pg) {
      return;
    }
    if (const auto c = required(*pg, "connection")) {
      if (const auto connection = nonEmptyText(*c)) {
        server.postgresql.connection = *connection;
      }
    }
    if (const auto n = pg->get("pool_size")) {
      if (const auto size = integerIn(*n, 2, 256, false)) {
        server.postgresql.pool_size = static_cast<unsigned>(*size);
      }
    }
    if (const auto t = pg->get("statement_timeout")) {
      // Why no 0: PostgreSQL reads 0 as "no limit", and a statement without a limit can hang a request forever.
      if (const auto seconds = integerIn(*t, 1, 300, true)) {
        server.postgresql.statement_timeout = Seconds{*seconds};
      }
    }
  }

  void parseJwksFetch(const Item& item, JwksFetch& fetch) {
    const auto fields = fieldsOf(item, {"allow_http_loopback", "connect_timeout", "read_timeout", "max_response_bytes",
                                        "max_cache_lifetime", "default_cache_lifetime", "kid_miss_cooldown",
                                        "serve_stale"});
    if (!fields) {
      return;
    }
    if (const auto v = fields->get("allow_http_loopback")) {
      if (const auto allow = boolean(*v)) {
        fetch.allow_http_loopback = *allow;
      }
    }
    if (const auto v = fields->get("connect_timeout")) {
      if (const auto seconds = integerIn(*v, 1, 60, true)) {
        fetch.connect_timeout = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("read_timeout")) {
      if (const auto seconds = integerIn(*v, 1, 60, true)) {
        fetch.read_timeout = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("max_response_bytes")) {
      // The upper bound is what jwks::parseJwkSet accepts at all; the lower one fits a single RSA-8192 key.
      if (const auto n = integerIn(*v, 1024, static_cast<std::int64_t>(kMaxJwksBytes), false)) {
        fetch.max_response_bytes = static_cast<std::size_t>(*n);
      }
    }
    bool ceilingValid = true;
    if (const auto v = fields->get("max_cache_lifetime")) {
      const auto seconds = integerIn(*v, 0, 86400, true);
      ceilingValid = seconds.has_value();
      if (seconds) {
        fetch.max_cache_lifetime = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("default_cache_lifetime")) {
      const std::int64_t hi = ceilingValid ? fetch.max_cache_lifetime.count() : 86400;
      if (const auto seconds =
              integerIn(*v, 0, hi, true, ceilingValid ? " (server.jwks_fetch.max_cache_lifetime)" : "")) {
        fetch.default_cache_lifetime = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("kid_miss_cooldown")) {
      // Why: at least 1 s, so that unknown kids sent by anyone cannot turn into one outbound fetch per request.
      if (const auto seconds = integerIn(*v, 1, 3600, true)) {
        fetch.kid_miss_cooldown = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("serve_stale")) {
      if (const auto seconds = integerIn(*v, 0, 86400, true)) {
        fetch.serve_stale = Seconds{*seconds};
      }
    }
  }

  /// `keyring:` (absent = defaults). Called after parseServer: server.signing_algorithm is its deprecated alias.
  void parseKeyring(const std::optional<Item>& item, Server& server, Keyring& keyring) {
    std::optional<Fields> fields;
    if (item) {
      fields = fieldsOf(*item, {"algorithm", "rotation_period", "lead_time", "jwks_max_age", "retirement_grace",
                                "kek_file", "kek_credential"});
      if (!fields) {
        return;
      }
    }
    auto get = [&](std::string_view name) { return fields ? fields->get(name) : std::nullopt; };
    if (signingAlgorithmLine_) {
      keyring.algorithm = *jwks::algFromName(server.signing_algorithm);
    }
    if (const auto v = get("algorithm")) {
      if (const auto name = text(*v)) {
        const auto alg = jwks::algFromName(*name);
        // ES384 is signed with OpenSSL directly (POCO's ES384 signatures are sometimes invalid, POCO-NOTES.md).
        if (!alg || *alg == jwks::Alg::RS384) {
          problem(v->line, v->key, "must be ES256, RS256 or ES384");
        } else if (signingAlgorithmLine_ && *alg != keyring.algorithm) {
          problem(v->line, v->key,
                  "conflicts with server.signing_algorithm (line " + std::to_string(*signingAlgorithmLine_) +
                      "); remove the deprecated server.signing_algorithm");
        } else {
          keyring.algorithm = *alg;
        }
      }
    }
    server.signing_algorithm = std::string(jwks::algName(keyring.algorithm));

    constexpr std::int64_t kDay = 86400;
    bool periodValid = true;
    if (const auto v = get("rotation_period")) {
      const auto seconds = integerIn(*v, 0, 3650 * kDay, true);
      periodValid = seconds.has_value();
      if (seconds && *seconds == 1) {
        problem(v->line, v->key, "must be 0 (rotate only by command) or at least 2 seconds");
        periodValid = false;
      } else if (seconds) {
        keyring.rotation_period = Seconds{*seconds};
      }
    }
    const std::int64_t period = keyring.rotation_period.count();
    bool leadValid = periodValid;
    if (const auto v = get("lead_time")) {
      // Why: the successor must be published for the whole lead time within the period of the key it replaces.
      const std::int64_t hi = periodValid && period > 0 ? std::min(365 * kDay, period - 1) : 365 * kDay;
      const bool bounded = periodValid && period > 0;
      const auto seconds = integerIn(*v, 1, hi, true, bounded ? " (below keyring.rotation_period)" : "");
      leadValid = seconds.has_value();
      if (seconds) {
        keyring.lead_time = Seconds{*seconds};
      }
    } else {
      keyring.lead_time = Seconds{period > 0 ? std::max<std::int64_t>(1, std::min(kDay, period / 2)) : kDay};
    }
    if (const auto v = get("jwks_max_age")) {
      // Why (Hydra #2535): a resource server may serve its cached JWKS for max-age; a key that signs before every
      // such copy has expired produces tokens that resource server rejects.
      const std::int64_t hi = leadValid ? std::min(kDay, keyring.lead_time.count()) : kDay;
      if (const auto seconds = integerIn(*v, 1, hi, true, leadValid ? " (at most keyring.lead_time)" : "")) {
        keyring.jwks_max_age = Seconds{*seconds};
      }
    } else {
      const std::int64_t half = keyring.lead_time.count() / 2;
      keyring.jwks_max_age = Seconds{std::max<std::int64_t>(1, std::min<std::int64_t>(3600, half))};
    }
    if (const auto v = get("retirement_grace")) {
      if (const auto seconds = integerIn(*v, 0, 30 * kDay, true)) {
        keyring.retirement_grace = Seconds{*seconds};
      }
    }
    const auto kekFile = get("kek_file");
    const auto kekCredential = get("kek_credential");
    if (kekFile && kekCredential) {
      const Item& later = kekFile->line > kekCredential->line ? *kekFile : *kekCredential;
      problem(later.line, later.key, "set at most one of kek_file and kek_credential");
    } else if (kekFile) {
      // Existence is not checked here: the file may be readable only by the service user.
      keyring.kek_file = pathValue(*kekFile).value_or("");
    } else if (kekCredential) {
      if (const auto name = nonEmptyText(*kekCredential)) {
        const bool valid = name->size() <= 255 && *name != "." && *name != ".." &&
                           std::ranges::all_of(*name, [](char c) {
                             return isAsciiAlnum(c) || c == '-' || c == '_' || c == '.' || c == '@' || c == ':';
                           });
        if (valid) {
          keyring.kek_credential = *name;
        } else {
          problem(kekCredential->line, kekCredential->key,
                  "must be a systemd credential name: letters, digits and - _ . @ : (no /)");
        }
      }
    }
    // Why: with PostgreSQL the private keys live in the shared database, and a key enters it only sealed.
    if (server.storage == Server::Storage::Postgresql && !kekFile && !kekCredential) {
      problem(item ? item->line : storageLine_.value_or(1), item ? item->key : std::string("keyring"),
              "storage postgresql keeps the signing keys in the database, sealed: set keyring.kek_file or "
              "keyring.kek_credential (the same key-encryption key on every instance)");
    }
  }

  void parseAudiences(const Item& item, std::vector<std::string>& audiences) {
    if (!item.node.IsScalar() && !item.node.IsSequence()) {
      problem(item.line, item.key, "expected a string or a list");
      return;
    }
    const std::vector<Item> items = item.node.IsScalar() ? std::vector<Item>{item} : *list(item);
    if (items.empty()) {
      problem(item.line, item.key, "must not be empty");
      return;
    }
    for (const Item& audience : items) {
      const auto url = nonEmptyText(audience);
      if (!url) {
        continue;
      }
      const auto parsed = parseHttpUrl(*url);
      if (!parsed) {
        problem(audience.line, audience.key, parsed.error());
      } else if (parsed->hasQuery) {
        problem(audience.line, audience.key, "must not have a query");
      } else {
        // Kept exactly as written: resource servers compare `aud` as a string.
        audiences.push_back(*url);
      }
    }
  }

  void parseLimits(const Item& item, Limits& limits) {
    const auto fields =
        fieldsOf(item, {"max_body_bytes", "max_params", "max_param_bytes", "max_assertion_bytes", "max_scope_count"});
    if (!fields) {
      return;
    }
    constexpr std::int64_t kMiB = 1024 * 1024;
    // Each bound feeds the next: an assertion is one parameter, a parameter is part of the body.
    bool bodyValid = true;
    bool paramValid = true;
    if (const auto v = fields->get("max_body_bytes")) {
      const auto n = integerIn(*v, 1, kMiB, false);
      bodyValid = n.has_value();
      if (n) {
        limits.max_body_bytes = static_cast<std::size_t>(*n);
      }
    }
    if (const auto v = fields->get("max_params")) {
      if (const auto n = integerIn(*v, 1, 256, false)) {
        limits.max_params = static_cast<std::size_t>(*n);
      }
    }
    if (const auto v = fields->get("max_param_bytes")) {
      const std::int64_t hi = bodyValid ? static_cast<std::int64_t>(limits.max_body_bytes) : kMiB;
      const auto n = integerIn(*v, 1, hi, false, bodyValid ? " (server.limits.max_body_bytes)" : "");
      paramValid = n.has_value();
      if (n) {
        limits.max_param_bytes = static_cast<std::size_t>(*n);
      }
    } else if (bodyValid && limits.max_param_bytes > limits.max_body_bytes) {
      problem(fields->line, joinKey(fields->key, "max_param_bytes"),
              "the default " + std::to_string(limits.max_param_bytes) +
                  " exceeds server.limits.max_body_bytes; set it explicitly");
      paramValid = false;
    }
    if (const auto v = fields->get("max_assertion_bytes")) {
      const std::int64_t hi = paramValid ? static_cast<std::int64_t>(limits.max_param_bytes) : kMiB;
      if (const auto n = integerIn(*v, 1, hi, false, paramValid ? " (server.limits.max_param_bytes)" : "")) {
        limits.max_assertion_bytes = static_cast<std::size_t>(*n);
      }
    } else if (paramValid && limits.max_assertion_bytes > limits.max_param_bytes) {
      problem(fields->line, joinKey(fields->key, "max_assertion_bytes"),
              "the default " + std::to_string(limits.max_assertion_bytes) +
                  " exceeds server.limits.max_param_bytes; set it explicitly");
    }
    if (const auto v = fields->get("max_scope_count")) {
      if (const auto n = integerIn(*v, 1, 1024, false)) {
        limits.max_scope_count = static_cast<std::size_t>(*n);
      }
    }
  }

  void parseTls(const Item& item, std::optional<Tls>& tls) {
    const auto fields = fieldsOf(item, {"certificate_file", "private_key_file"});
    if (!fields) {
      return;
    }
    Tls out;
    // Existence is not checked here: the files may be readable only by the service user.
    const auto certificate = required(*fields, "certificate_file");
    const auto privateKey = required(*fields, "private_key_file");
    if (certificate) {
      out.certificate_file = pathValue(*certificate).value_or("");
    }
    if (privateKey) {
      out.private_key_file = pathValue(*privateKey).value_or("");
    }
    tls = std::move(out);
  }

  void parseSystems(const Item& item, const Server& server, std::vector<System>& systems) {
    if (item.node.IsNull()) {
      return;  // `systems:` with every entry commented out
    }
    const auto items = list(item);
    if (!items) {
      return;
    }
    std::map<std::string, int, std::less<>> firstLine;  // client_id -> line of its first definition
    for (const Item& entry : *items) {
      if (auto system = parseSystem(entry, server, firstLine)) {
        systems.push_back(std::move(*system));
      }
    }
  }

  std::optional<System> parseSystem(const Item& item, const Server& server,
                                    std::map<std::string, int, std::less<>>& firstLine) {
    const auto fields = fieldsOf(item, {"client_id", "name", "enabled", "algorithms", "scopes", "token_lifetime",
                                        "jwks", "jwks_file", "jwks_uri", "consent"});
    if (!fields) {
      return std::nullopt;
    }
    System system;
    system.line = fields->line;
    if (const auto v = required(*fields, "client_id")) {
      if (const auto id = nonEmptyText(*v)) {
        // Why: client_id is echoed in logs and RFC 6749 error descriptions, which allow only these characters.
        const bool valid = id->size() <= kMaxClientIdLength && std::ranges::all_of(*id, [](char c) {
                             const auto u = static_cast<unsigned char>(c);
                             return u > 0x20 && u < 0x7f && c != '"' && c != '\\';
                           });
        if (!valid) {
          problem(v->line, v->key, "must be 1 to 255 printable ASCII characters without space, '\"' or '\\'");
        } else if (const auto first = firstLine.find(*id); first != firstLine.end()) {
          problem(v->line, v->key, "duplicate client_id (first defined on line " + std::to_string(first->second) + ")");
        } else {
          firstLine.emplace(*id, v->line);
          system.client_id = *id;
        }
      }
    }
    if (const auto v = fields->get("name")) {
      if (const auto name = nonEmptyText(*v)) {
        system.name = *name;
      }
    } else {
      system.name = system.client_id;
    }
    if (const auto v = fields->get("enabled")) {
      if (const auto enabled = boolean(*v)) {
        system.enabled = *enabled;
      }
    }
    if (const auto v = fields->get("algorithms")) {
      parseAlgorithms(*v, system.algorithms);
    }
    if (const auto v = required(*fields, "scopes")) {
      parseScopes(*v, server, system.scopes);
    }
    if (const auto v = fields->get("token_lifetime")) {
      if (const auto seconds =
              integerIn(*v, 1, server.max_token_lifetime.count(), true, " (server.max_token_lifetime)")) {
        system.token_lifetime = Seconds{*seconds};
      }
    }
    parseKeys(*fields, server, system);
    if (const auto v = fields->get("consent")) {
      parseConsentRequirement(*v, system.consent);
    }
    return system;
  }

  /// FHIR `id` (R4 §2.1.0.x id datatype): 1..64 of A-Z a-z 0-9 - and '.'. Also keeps ids safe in URLs and logs.
  static bool isFhirId(std::string_view id) {
    return !id.empty() && id.size() <= 64 &&
           std::ranges::all_of(id, [](char c) { return isAsciiAlnum(c) || c == '-' || c == '.'; });
  }

  void parseConsentRequirement(const Item& item, ConsentRequirement& out) {
    const auto fields = fieldsOf(item, {"required", "references", "rule"});
    if (!fields) {
      return;
    }
    if (const auto v = fields->get("required")) {
      if (const auto required = boolean(*v)) {
        out.required = *required;
      }
    }
    const auto references = fields->get("references");
    const auto rule = fields->get("rule");
    if (references) {
      if (const auto items = list(*references)) {
        if (items->empty()) {
          problem(references->line, references->key, "must not be empty");
        }
        std::set<std::string> seen;
        for (const Item& entry : *items) {
          const auto id = nonEmptyText(entry);
          if (!id) {
            continue;
          }
          if (!isFhirId(*id)) {
            problem(entry.line, entry.key, "must be a FHIR id: 1 to 64 of A-Z a-z 0-9 - .");
          } else if (!seen.insert(*id).second) {
            problem(entry.line, entry.key, "duplicate consent reference " + *id);
          } else {
            out.references.push_back(*id);
          }
        }
      }
    }
    if (rule) {
      if (const auto name = text(*rule)) {
        if (*name != "grantee") {
          problem(rule->line, rule->key, "must be grantee");
        } else if (consentSource_ == ConsentSettings::Source::Fhir) {
          // Why: a FHIR server is read by id only; "any consent naming this system" needs the local store's index.
          problem(rule->line, rule->key, "rule grantee needs consent.source local (a FHIR source is read by id)");
        } else {
          out.rule_grantee = true;
        }
      }
    }
    if (!out.required && (references || rule)) {
      // Why: references without required would look enforced while nothing is checked.
      problem(fields->line, fields->key, "references and rule apply only with required: true");
    } else if (out.required && !references && !rule) {
      problem(fields->line, fields->key, "required: true needs references or rule: grantee");
    }
  }

  /// An http(s) URL for an outbound call of the consent module: https, or http to loopback when allowed.
  std::optional<std::string> outboundUrl(const Item& item, bool allowHttpLoopback) {
    const auto url = nonEmptyText(item);
    if (!url) {
      return std::nullopt;
    }
    const auto parsed = parseHttpUrl(*url);
    if (!parsed) {
      problem(item.line, item.key, parsed.error());
      return std::nullopt;
    }
    if (parsed->hasQuery) {
      problem(item.line, item.key, "must not have a query");
      return std::nullopt;
    }
    const bool loopback = parsed->host == "127.0.0.1" || parsed->host == "::1" || parsed->host == "localhost";
    // Why: consent decides who gets tokens; a plain-http answer could be forged in transit.
    if (!parsed->https && !(loopback && allowHttpLoopback)) {
      problem(item.line, item.key,
              "must be an https URL (plain http only to loopback hosts, with consent.allow_http_loopback: true)");
      return std::nullopt;
    }
    std::string out = *url;
    while (out.ends_with('/')) {
      out.pop_back();
    }
    return out;
  }

  void parseConsentSettings(const Item& item, ConsentSettings& consent) {
    const auto fields = fieldsOf(item, {"source", "fhir_base_url", "cache_seconds", "connect_timeout", "read_timeout",
                                        "max_resource_bytes", "allow_http_loopback", "grantee_identifier_system",
                                        "notification_url", "retry"});
    if (!fields) {
      return;
    }
    if (const auto v = fields->get("allow_http_loopback")) {
      if (const auto allow = boolean(*v)) {
        consent.allow_http_loopback = *allow;
      }
    }
    if (const auto v = fields->get("source")) {
      if (const auto name = text(*v)) {
        if (*name == "local") {
          consent.source = ConsentSettings::Source::Local;
        } else if (*name == "fhir") {
          consent.source = ConsentSettings::Source::Fhir;
        } else {
          problem(v->line, v->key, "must be local or fhir");
        }
      }
    }
    const auto base = fields->get("fhir_base_url");
    if (consent.source == ConsentSettings::Source::Fhir) {
      if (!base) {
        problem(fields->line, joinKey(fields->key, "fhir_base_url"), "missing required key (source fhir)");
      } else if (const auto url = outboundUrl(*base, consent.allow_http_loopback)) {
        consent.fhir_base_url = *url;
      }
    } else if (base) {
      problem(base->line, base->key, "applies only with source: fhir");
    }
    if (const auto v = fields->get("cache_seconds")) {
      if (const auto seconds = integerIn(*v, 0, 300, true)) {
        consent.cache_seconds = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("connect_timeout")) {
      if (const auto seconds = integerIn(*v, 1, 60, true)) {
        consent.connect_timeout = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("read_timeout")) {
      if (const auto seconds = integerIn(*v, 1, 60, true)) {
        consent.read_timeout = Seconds{*seconds};
      }
    }
    if (const auto v = fields->get("max_resource_bytes")) {
      if (const auto n = integerIn(*v, 1024, 1024 * 1024, false)) {
        consent.max_resource_bytes = static_cast<std::size_t>(*n);
      }
    }
    if (const auto v = fields->get("grantee_identifier_system")) {
      if (const auto system = nonEmptyText(*v)) {
        consent.grantee_identifier_system = *system;
      }
    }
    if (const auto v = fields->get("notification_url")) {
      if (const auto url = outboundUrl(*v, consent.allow_http_loopback)) {
        consent.notification_url = *url;
      }
    }
    if (const auto v = fields->get("retry")) {
      if (const auto retry = fieldsOf(*v, {"initial_backoff", "max_backoff"})) {
        bool initialValid = true;
        if (const auto r = retry->get("initial_backoff")) {
          const auto seconds = integerIn(*r, 1, 3600, true);
          initialValid = seconds.has_value();
          if (seconds) {
            consent.retry_initial_backoff = Seconds{*seconds};
          }
        }
        if (const auto r = retry->get("max_backoff")) {
          const std::int64_t lo = initialValid ? consent.retry_initial_backoff.count() : 1;
          if (const auto seconds = integerIn(*r, lo, 86400, true, initialValid ? " (at least initial_backoff)" : "")) {
            consent.retry_max_backoff = Seconds{*seconds};
          }
        } else if (initialValid && consent.retry_max_backoff < consent.retry_initial_backoff) {
          consent.retry_max_backoff = consent.retry_initial_backoff;
        }
      }
    }
  }

  void parseAlgorithms(const Item& item, std::vector<jwks::Alg>& algorithms) {
    const auto items = list(item);
    if (!items) {
      return;
    }
    if (items->empty()) {
      problem(item.line, item.key, "must not be empty");
      return;
    }
    std::vector<jwks::Alg> out;
    for (const Item& entry : *items) {
      const auto name = nonEmptyText(entry);
      if (!name) {
        continue;
      }
      const auto alg = jwks::algFromName(*name);
      if (!alg) {
        const std::string lower = asciiLower(*name);
        // Why: an unsigned assertion proves nothing, and an HMAC key would have to be a shared secret;
        // name the reason so the operator does not look for a spelling mistake.
        if (lower == "none") {
          problem(entry.line, entry.key, "\"none\" is never allowed: assertions must be signed");
        } else if (!isShortPrintable(*name)) {
          problem(entry.line, entry.key, "unsupported algorithm (allowed: RS256, RS384, ES256, ES384)");
        } else if (lower.starts_with("hs")) {
          problem(entry.line, entry.key,
                  *name + " is a shared-secret algorithm; only RS256, RS384, ES256 and ES384 are allowed");
        } else {
          problem(entry.line, entry.key, "unsupported algorithm " + *name + " (allowed: RS256, RS384, ES256, ES384)");
        }
        continue;
      }
      if (std::ranges::find(out, *alg) != out.end()) {
        problem(entry.line, entry.key, "duplicate algorithm " + *name);
        continue;
      }
      out.push_back(*alg);
    }
    if (!out.empty()) {
      algorithms = std::move(out);
    }
  }

  /// A broker permission name: an RFC 6749 §3.3 scope-token that cannot be mistaken for a SMART scope.
  std::optional<std::string> permissionScopeName(const Item& item) {
    const auto name = nonEmptyText(item);
    if (!name) {
      return std::nullopt;
    }
    const bool tokenChars = std::ranges::all_of(*name, [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return u == 0x21 || (u >= 0x23 && u <= 0x5B) || (u >= 0x5D && u <= 0x7E);
    });
    if (name->size() > 128 || !tokenChars) {
      problem(item.line, item.key, "must be 1..128 characters of an RFC 6749 scope-token (no space, '\"' or '\\')");
      return std::nullopt;
    }
    for (const std::string_view context : {"system/", "patient/", "user/"}) {
      if (name->starts_with(context)) {
        problem(item.line, item.key, "must not look like a SMART scope (" + std::string(context) + "...)");
        return std::nullopt;
      }
    }
    return name;
  }

  void parseScopes(const Item& item, const Server& server, std::vector<std::string>& scopes) {
    const auto items = list(item);
    if (!items) {
      return;
    }
    if (items->empty()) {
      problem(item.line, item.key, "must not be empty");
      return;
    }
    for (const Item& entry : *items) {
      const auto scope = nonEmptyText(entry);
      if (!scope) {
        continue;
      }
      if (*scope == server.introspection_scope || *scope == server.consent_admin_scope) {
        scopes.push_back(*scope);
        continue;
      }
      if (validators_.scope) {
        if (auto error = validators_.scope(*scope)) {
          problem(entry.line, entry.key, std::move(*error));
          continue;
        }
      }
      scopes.push_back(*scope);
    }
  }

  void parseKeys(const Fields& fields, const Server& server, System& system) {
    // Pointers, not Items: assigning a YAML::Node (as sorting would) rewrites the node it refers to.
    std::vector<std::pair<std::string_view, const Item*>> present;
    for (const std::string_view source : {"jwks", "jwks_file", "jwks_uri"}) {
      if (const Item* v = fields.find(source)) {
        present.emplace_back(source, v);
      }
    }
    if (present.empty()) {
      problem(fields.line, fields.key, "needs keys: set one of jwks, jwks_file or jwks_uri");
      return;
    }
    // The first one in the file is taken as meant; every later one is the conflict.
    std::ranges::stable_sort(present, {}, [](const auto& p) { return p.second->line; });
    for (const auto& [source, itemPtr] : present) {
      const Item& item = *itemPtr;
      if (source != present.front().first) {
        // Why: two key sources would leave it unclear which keys authenticate the client.
        problem(item.line, item.key,
                "conflicts with " + std::string(present.front().first) +
                    ": set exactly one of jwks, jwks_file or jwks_uri");
      }
      if (source == "jwks") {
        parseInlineJwks(item, system);
      } else if (source == "jwks_file") {
        parseJwksFile(item, system);
      } else {
        parseJwksUri(item, server, system);
      }
    }
  }

  void parseInlineJwks(const Item& item, System& system) {
    if (!item.node.IsMap()) {
      problem(item.line, item.key, "expected a map (a JWK Set with a keys list)");
      return;
    }
    std::string json;
    if (auto error = appendJson(json, item.node, 0)) {
      problem(item.line, item.key, *error);
      return;
    }
    acceptJwks(item, json, system);
  }

  void parseJwksFile(const Item& item, System& system) {
    const auto path = pathValue(item);
    if (!path) {
      return;
    }
    const auto json = readFileCapped(*path, kMaxJwksBytes);
    if (!json) {
      problem(item.line, item.key, "cannot read " + *path + ": " + json.error());
      return;
    }
    acceptJwks(item, *json, system);
  }

  void acceptJwks(const Item& item, const std::string& json, System& system) {
    // Reject, not Skip: a bad key in the operator's own file is a mistake to fix now, not to discover later.
    auto parsed = jwks::parseJwkSet(json, jwks::BadKeyPolicy::Reject);
    if (!parsed) {
      problem(item.line, item.key, parsed.error());
      return;
    }
    const bool usable = std::ranges::any_of(parsed->set.keys, [&](const jwks::PublicKey& key) {
      return std::ranges::any_of(system.algorithms, [&](jwks::Alg alg) { return key.fits(alg); });
    });
    if (!usable) {
      problem(item.line, item.key, "no key fits any of the allowed algorithms (" + algList(system.algorithms) + ")");
      return;
    }
    system.jwks = std::move(parsed->set);
  }

  void parseJwksUri(const Item& item, const Server& server, System& system) {
    const auto uri = nonEmptyText(item);
    if (!uri) {
      return;
    }
    const auto parsed = parseHttpUrl(*uri);
    if (!parsed) {
      problem(item.line, item.key, parsed.error());
      return;
    }
    // Why: keys fetched over plain http could be replaced in transit; loopback is for development and tests,
    // and even that only when the operator opted in, so that a production file never silently accepts http.
    const bool loopback = parsed->host == "127.0.0.1" || parsed->host == "::1" || parsed->host == "localhost";
    if (!parsed->https && !loopback) {
      problem(item.line, item.key, "must be an https URL (http only for loopback hosts 127.0.0.1, ::1, localhost)");
      return;
    }
    if (!parsed->https && !server.jwks_fetch.allow_http_loopback) {
      problem(item.line, item.key,
              "plain http (even to a loopback host) needs server.jwks_fetch.allow_http_loopback: true");
      return;
    }
    system.jwks_uri = *uri;
  }

  std::string file_;
  fs::path baseDir_;
  const Validators& validators_;
  std::vector<Problem> problems_;
  std::optional<int> signingAlgorithmLine_;
  std::optional<int> storageLine_;  ///< line of server.storage, when set (the keyring's KEK depends on it)  ///< line of server.signing_algorithm, when set (keyring follows it)
  ConsentSettings::Source consentSource_ = ConsentSettings::Source::Local;  ///< consent.source (systems follow it)
};

/// The directory relative paths resolve against: that of `source`, made absolute so that a later chdir is harmless.
fs::path baseDirectoryOf(const std::string& source) {
  std::error_code ec;
  const fs::path absolute = fs::absolute(fs::path(source), ec);
  if (ec) {
    return fs::path(source).parent_path();
  }
  return absolute.parent_path();
}

}  // namespace

std::expected<Config, std::vector<Problem>> loadConfig(const std::string& path, const Validators& validators) {
  const auto text = readFileCapped(path, kMaxConfigBytes);
  if (!text) {
    return std::unexpected(std::vector<Problem>{Problem{path, 0, "", "cannot read file: " + text.error()}});
  }
  return Loader(path, baseDirectoryOf(path), validators).load(*text);
}

std::expected<Config, std::vector<Problem>> parseConfig(const std::string& yaml, const std::string& sourceName,
                                                        const Validators& validators) {
  return Loader(sourceName, baseDirectoryOf(sourceName), validators).load(yaml);
}

}  // namespace smartbroker::config
