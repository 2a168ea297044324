// Table-driven tests of the SMART `system/` scope engine: parsing, rendering, containment and grants.
#define BOOST_TEST_MODULE scopes
#include <boost/test/unit_test.hpp>
#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "smartbroker/broker/scopes.hpp"

namespace bdata = boost::unit_test::data;
using smartbroker::broker::grantScopes;
using smartbroker::broker::kAllPermissions;
using smartbroker::broker::kCreate;
using smartbroker::broker::kDelete;
using smartbroker::broker::kRead;
using smartbroker::broker::kSearch;
using smartbroker::broker::kUpdate;
using smartbroker::broker::parseSystemScope;
using smartbroker::broker::ScopeGrant;
using smartbroker::broker::SystemScope;

namespace {

using Constraints = std::vector<std::pair<std::string, std::string>>;

constexpr std::uint8_t kRs = kRead | kSearch;
constexpr std::uint8_t kCud = kCreate | kUpdate | kDelete;
constexpr std::string_view kLetters = "cruds";
constexpr std::uint8_t kBits[] = {kCreate, kRead, kUpdate, kDelete, kSearch};

/// Every non-empty subsequence of `cruds` (31 of them) with its permission bits.
std::vector<std::pair<std::string, std::uint8_t>> allV2Permissions() {
  std::vector<std::pair<std::string, std::uint8_t>> out;
  for (unsigned mask = 1; mask < 32U; ++mask) {
    std::string letters;
    std::uint8_t bits = 0;
    for (std::size_t i = 0; i < kLetters.size(); ++i) {
      if ((mask & (1U << i)) != 0) {
        letters += kLetters[i];
        bits = static_cast<std::uint8_t>(bits | kBits[i]);
      }
    }
    out.emplace_back(letters, bits);
  }
  return out;
}

std::vector<std::string> allValidV2Scopes() {
  std::vector<std::string> out;
  for (const auto& [letters, bits] : allV2Permissions()) {
    out.push_back("system/Observation." + letters);
  }
  return out;
}

/// Every two-letter permission string that repeats a letter or breaks the c r u d s order (15 of them).
std::vector<std::string> allInvalidTwoLetterScopes() {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < kLetters.size(); ++i) {
    for (std::size_t j = 0; j <= i; ++j) {
      out.push_back(std::string("system/Observation.") + kLetters[i] + kLetters[j]);
    }
  }
  return out;
}

std::string scopeOfLength(std::size_t bytes) {
  std::string out = "system/Observation.rs?category=";
  out.resize(bytes, 'x');
  return out;
}

std::string resourceOfLength(std::size_t letters) {
  return "system/O" + std::string(letters - 1, 'b') + ".rs";
}

SystemScope mustParse(std::string_view text) {
  const auto parsed = parseSystemScope(text);
  BOOST_TEST_REQUIRE(parsed.has_value(), "test fixture scope does not parse: " << text);
  return *parsed;
}

/// Parses a space-separated fixture list of scopes, all of which must be valid.
std::vector<SystemScope> scopes(std::string_view list) {
  std::vector<SystemScope> out;
  std::size_t pos = 0;
  while (pos < list.size()) {
    const std::size_t end = std::min(list.find(' ', pos), list.size());
    if (end > pos) {
      out.push_back(mustParse(list.substr(pos, end - pos)));
    }
    pos = end + 1;
  }
  return out;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    out += (out.empty() ? "" : " ") + p;
  }
  return out;
}

/// Constraints as `k=v&k=v` in stored order, so that a mismatch prints readably.
std::string rendered(const Constraints& constraints) {
  std::string out;
  for (const auto& [key, value] : constraints) {
    out += (out.empty() ? "" : "&") + key + "=" + value;
  }
  return out;
}

struct ValidRow {
  std::string text;
  std::string resource;
  std::uint8_t permissions;
  Constraints constraints;
  bool v1;
};

std::ostream& operator<<(std::ostream& os, const ValidRow& row) { return os << row.text; }

const std::vector<ValidRow> kValidRows = {
    // v1
    {"system/Observation.read", "Observation", kRs, {}, true},
    {"system/Observation.write", "Observation", kCud, {}, true},
    {"system/Observation.*", "Observation", kAllPermissions, {}, true},
    {"system/*.read", "*", kRs, {}, true},
    {"system/*.write", "*", kCud, {}, true},
    {"system/*.*", "*", kAllPermissions, {}, true},
    {"system/Patient.read", "Patient", kRs, {}, true},
    // v2
    {"system/Observation.rs", "Observation", kRs, {}, false},
    {"system/Observation.cud", "Observation", kCud, {}, false},
    {"system/Observation.cruds", "Observation", kAllPermissions, {}, false},
    {"system/*.rs", "*", kRs, {}, false},
    {"system/*.cruds", "*", kAllPermissions, {}, false},
    {"system/*.c", "*", kCreate, {}, false},
    {"system/DocumentReference.s", "DocumentReference", kSearch, {}, false},
    {"system/A.r", "A", kRead, {}, false},
    {"system/ObservationDefinition.d", "ObservationDefinition", kDelete, {}, false},
    {"system/Patient.u", "Patient", kUpdate, {}, false},
    {resourceOfLength(64), "O" + std::string(63, 'b'), kRs, {}, false},
    // granular
    {"system/Observation.rs?category=laboratory", "Observation", kRs, {{"category", "laboratory"}}, false},
    {"system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
     "Observation",
     kRs,
     {{"category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"}},
     false},
    {"system/Observation.rs?status=final&category=laboratory",
     "Observation",
     kRs,
     {{"category", "laboratory"}, {"status", "final"}},
     false},
    {"system/Observation.rs?code:in=http://valueset.example.org/ValueSet/diabetes",
     "Observation",
     kRs,
     {{"code:in", "http://valueset.example.org/ValueSet/diabetes"}},
     false},
    {"system/Observation.rs?_security=R", "Observation", kRs, {{"_security", "R"}}, false},
    {"system/Observation.rs?subject.identifier=abc", "Observation", kRs, {{"subject.identifier", "abc"}}, false},
    {"system/Observation.rs?value-quantity=gt5.4", "Observation", kRs, {{"value-quantity", "gt5.4"}}, false},
    {"system/*.rs?category=laboratory", "*", kRs, {{"category", "laboratory"}}, false},
    {"system/Observation.cruds?c=3&b=2&a=1", "Observation", kAllPermissions, {{"a", "1"}, {"b", "2"}, {"c", "3"}},
     false},
    // Only the first `?` starts the query; a later `?` is an ordinary value character.
    {"system/Observation.s?a=b?c", "Observation", kSearch, {{"a", "b?c"}}, false},
    // Every scope-token character except the separators `&` and `=` may appear in a value.
    {"system/Observation.rs?k=!#$%'()*+,-./09:;<>?@AZ[]^_`az{|}~", "Observation", kRs,
     {{"k", "!#$%'()*+,-./09:;<>?@AZ[]^_`az{|}~"}}, false},
    {"system/Observation.rs?K-1.a_b:c=v", "Observation", kRs, {{"K-1.a_b:c", "v"}}, false},
    {scopeOfLength(256), "Observation", kRs, {{"category", std::string(225, 'x')}}, false},
};

const std::vector<std::string> kInvalidRows = {
    // not a system/ scope
    "",
    "launch",
    "launch/patient",
    "openid",
    "fhirUser",
    "offline_access",
    "online_access",
    "profile",
    "patient/Observation.rs",
    "patient/*.rs",
    "user/*.cruds",
    "user/Observation.read",
    "Observation.rs",
    "System/Observation.rs",
    "SYSTEM/Observation.rs",
    "system",
    "system/",
    "/system/Observation.rs",
    "system//Observation.rs",
    "garbage",
    // resource
    "system/.rs",
    "system/observation.rs",
    "system/1Observation.rs",
    "system/Observation1.rs",
    "system/Obs_ervation.rs",
    "system/Obs-ervation.rs",
    "system/Obs*.rs",
    "system/**.rs",
    "system/Observation/1.rs",
    resourceOfLength(65),
    // permissions
    "system/*",
    "system/Observation",
    "system/Observation.",
    "system/Observation.RS",
    "system/Observation.Read",
    "system/Observation.READ",
    "system/Observation.reads",
    "system/Observation.rea",
    "system/Observation.Write",
    "system/Observation.x",
    "system/Observation.rsx",
    "system/Observation.crudss",
    "system/Observation.scrud",
    "system/Observation.**",
    "system/Observation.*rs",
    "system/Observation.rs*",
    "system/Observation.r.s",
    "system/Observation.rs.",
    "system/Observation..rs",
    "system/Observation.all",
    // constraints
    "system/Observation.read?category=laboratory",
    "system/Observation.write?a=b",
    "system/Observation.*?a=b",
    "system/Observation.rs?",
    "system/Observation.rs?category",
    "system/Observation.rs?category=",
    "system/Observation.rs?=laboratory",
    "system/Observation.rs?=",
    "system/Observation.rs?a=b&",
    "system/Observation.rs?&a=b",
    "system/Observation.rs?a=b&&c=d",
    "system/Observation.rs?a=b=c",
    "system/Observation.rs?a==b",
    "system/Observation.rs?a=b&a=c",
    "system/Observation.rs?a=b&a=b",
    "system/Observation.rs?ca+t=x",
    "system/Observation.rs?c/t=x",
    "system/Observation.rs?c|t=x",
    "system/Observation.?a=b",
    "system/?a=b",
    // RFC 6749 §3.3 alphabet and size
    "system/Observation.rs?category=\"lab\"",
    "system/Observation.rs?category=lab\\x",
    "system/Observation\".rs",
    "system/Observation.rs?category=a b",
    "system/Observation.rs system/Patient.rs",
    " system/Observation.rs",
    "system/Observation.rs ",
    "system/Observation.rs\t",
    "system/Observation.rs\n",
    "system/Observation.rs\r",
    std::string("system/Observation.rs\0", 22),
    std::string("system/Obs\0ervation.rs", 22),
    "system/Observation.rs\x7f",
    "system/Obs\xc3\xa9rvation.rs",
    "system/Observation.rs?category=lab\xc3\xb6",
    "system/\xef\xbc\xafservation.rs",
    "system/Observation.rs\xe2\x80\x8b",
    scopeOfLength(257),
    scopeOfLength(4096),
};

struct ContainmentRow {
  std::string inner;
  std::string outer;
  bool contained;
};

std::ostream& operator<<(std::ostream& os, const ContainmentRow& row) {
  return os << row.inner << (row.contained ? " within " : " not within ") << row.outer;
}

const std::vector<ContainmentRow> kContainmentRows = {
    {"system/Observation.rs", "system/Observation.rs", true},
    // v1 and v2 spellings of one permission set contain each other
    {"system/Observation.read", "system/Observation.rs", true},
    {"system/Observation.rs", "system/Observation.read", true},
    {"system/Observation.write", "system/Observation.cud", true},
    {"system/Observation.cud", "system/Observation.write", true},
    {"system/Observation.*", "system/Observation.cruds", true},
    {"system/Observation.cruds", "system/Observation.*", true},
    {"system/*.*", "system/*.cruds", true},
    {"system/*.read", "system/*.rs", true},
    // permissions
    {"system/Observation.r", "system/Observation.rs", true},
    {"system/Observation.rs", "system/Observation.r", false},
    {"system/Observation.c", "system/Observation.write", true},
    {"system/Observation.cruds", "system/Observation.write", false},
    {"system/Observation.read", "system/Observation.write", false},
    {"system/Observation.write", "system/Observation.read", false},
    {"system/Observation.read", "system/Observation.*", true},
    {"system/*.cruds", "system/*.read", false},
    // resources
    {"system/Observation.rs", "system/*.rs", true},
    {"system/*.rs", "system/Observation.rs", false},
    {"system/*.rs", "system/*.cruds", true},
    {"system/Observation.rs", "system/Patient.rs", false},
    {"system/Observation.read", "system/*.*", true},
    // constraints: an unconstrained scope contains a constrained one, never the reverse
    {"system/Observation.rs?category=laboratory", "system/*.cruds", true},
    {"system/Observation.rs?category=laboratory", "system/Observation.rs", true},
    {"system/Observation.rs", "system/Observation.rs?category=laboratory", false},
    {"system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory", true},
    {"system/Observation.rs?category=laboratory", "system/Observation.rs?category=vital-signs", false},
    {"system/Observation.rs?category=laboratory&status=final", "system/Observation.rs?category=laboratory", true},
    {"system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory&status=final", false},
    {"system/Observation.rs?category=laboratory", "system/Observation.r?category=laboratory", false},
    {"system/Observation.s?category=laboratory", "system/Observation.read", true},
    {"system/*.rs?category=laboratory", "system/Observation.rs?category=laboratory", false},
    {"system/Observation.rs?category=laboratory", "system/*.rs?category=laboratory", true},
    {"system/Observation.rs?category=laboratory", "system/Observation.rs?status=laboratory", false},
    {"system/Observation.rs?code:in=http://x", "system/Observation.rs?code=http://x", false},
};

struct RenderRow {
  std::string text;
  std::string canonical;
};

std::ostream& operator<<(std::ostream& os, const RenderRow& row) { return os << row.text << " -> " << row.canonical; }

const std::vector<RenderRow> kRenderRows = {
    {"system/Observation.read", "system/Observation.read"},
    {"system/Observation.write", "system/Observation.write"},
    {"system/Observation.*", "system/Observation.*"},
    {"system/*.*", "system/*.*"},
    {"system/Observation.rs", "system/Observation.rs"},
    {"system/Observation.cruds", "system/Observation.cruds"},
    {"system/Observation.rs?status=final&category=laboratory", "system/Observation.rs?category=laboratory&status=final"},
    {"system/Observation.cruds?c=3&b=2&a=1", "system/Observation.cruds?a=1&b=2&c=3"},
};

struct GrantRow {
  std::string behaviour;
  std::string requested;
  std::string preauthorized;
  std::string granted;  ///< expected scopeString()
  std::string dropped;  ///< expected dropped, space-joined
  std::size_t maxScopes = 64;
};

std::ostream& operator<<(std::ostream& os, const GrantRow& row) {
  return os << row.behaviour << ": [" << row.requested << "] against [" << row.preauthorized << "]";
}

const std::vector<GrantRow> kGrantRows = {
    {"exact v2 grant", "system/Observation.rs", "system/Observation.rs", "system/Observation.rs", ""},
    {"v1 request is echoed in v1", "system/Observation.read", "system/Observation.rs", "system/Observation.read",
     ""},
    {"v1 write against v1 write", "system/Patient.write", "system/Patient.write", "system/Patient.write", ""},
    {"v1 star against v2 cruds", "system/Observation.*", "system/Observation.cruds", "system/Observation.*", ""},
    {"v2 request against v1 preauthorization stays v2", "system/Observation.rs", "system/Observation.read",
     "system/Observation.rs", ""},
    {"v2 subset of a wildcard star", "system/Observation.cud", "system/*.*", "system/Observation.cud", ""},
    {"wildcard request narrows to each preauthorized resource", "system/*.rs",
     "system/Observation.rs system/Patient.read", "system/Observation.rs system/Patient.rs", "system/*.rs"},
    {"v1 wildcard request narrows and stays v1", "system/*.read", "system/Observation.rs system/Patient.cruds",
     "system/Observation.read system/Patient.read", "system/*.read"},
    {"wildcard within wildcard", "system/*.rs", "system/*.cruds", "system/*.rs", ""},
    {"escalation of permissions is cut back", "system/Observation.cruds", "system/Observation.rs",
     "system/Observation.rs", "system/Observation.cruds"},
    {"another resource is not granted", "system/Patient.rs", "system/Observation.rs", "", "system/Patient.rs"},
    {"v1 write is not granted by v1 read", "system/Observation.write", "system/Observation.read", "",
     "system/Observation.write"},
    {"v1 star cut back to read stays v1", "system/Observation.*", "system/Observation.rs",
     "system/Observation.read", "system/Observation.*"},
    {"v1 read cut back to r falls back to v2", "system/Observation.read", "system/Observation.r",
     "system/Observation.r", "system/Observation.read"},
    {"granular request within a wildcard is granted as is", "system/Observation.rs?category=laboratory",
     "system/*.cruds", "system/Observation.rs?category=laboratory", ""},
    {"unconstrained request gets the preauthorized constraint", "system/Observation.rs",
     "system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory",
     "system/Observation.rs"},
    {"v1 request against granular preauthorization is rendered v2", "system/Observation.read",
     "system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory",
     "system/Observation.read"},
    {"conflicting constraint values grant nothing", "system/Observation.rs?category=laboratory",
     "system/Observation.rs?category=vital-signs", "", "system/Observation.rs?category=laboratory"},
    {"constraints on different keys are combined", "system/Observation.rs?status=final",
     "system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory&status=final",
     "system/Observation.rs?status=final"},
    {"constrained wildcard request narrows to the resource", "system/*.rs?category=laboratory",
     "system/Observation.cruds", "system/Observation.rs?category=laboratory", "system/*.rs?category=laboratory"},
    {"wildcard request against constrained and plain preauthorizations", "system/*.cruds",
     "system/Observation.rs?category=laboratory system/Patient.read",
     "system/Observation.rs?category=laboratory system/Patient.rs", "system/*.cruds"},
    {"garbage next to a valid scope is dropped", "system/Observation.rs garbage system/Patient.sr",
     "system/*.cruds", "system/Observation.rs", "garbage system/Patient.sr"},
    {"non-system scopes are dropped", "patient/*.rs user/Observation.read system/Observation.rs",
     "system/*.cruds", "system/Observation.rs", "patient/*.rs user/Observation.read"},
    {"launch and identity scopes are dropped", "launch openid fhirUser offline_access", "system/*.cruds", "",
     "launch openid fhirUser offline_access"},
    {"textual duplicates collapse", "system/Observation.rs system/Observation.rs", "system/*.cruds",
     "system/Observation.rs", ""},
    {"v1 and v2 duplicates collapse to the first", "system/Observation.read system/Observation.rs",
     "system/*.cruds", "system/Observation.read", ""},
    {"v2 and v1 duplicates collapse to the first", "system/Observation.rs system/Observation.read",
     "system/*.cruds", "system/Observation.rs", ""},
    {"a scope contained in a later one is removed", "system/Observation.r system/Observation.rs", "system/*.cruds",
     "system/Observation.rs", ""},
    {"a resource scope within a requested wildcard is removed", "system/Observation.rs system/*.rs",
     "system/*.cruds", "system/*.rs", ""},
    {"a granular scope within a plain one is removed", "system/Observation.rs?category=laboratory system/Observation.rs",
     "system/*.*", "system/Observation.rs", ""},
    {"overlapping preauthorizations yield one scope", "system/Observation.cruds",
     "system/Observation.rs system/*.read", "system/Observation.rs", "system/Observation.cruds"},
    {"several preauthorizations together grant a scope fully", "system/Observation.rs",
     "system/Observation.r system/Observation.s", "system/Observation.r system/Observation.s", ""},
    {"empty request grants nothing", "", "system/*.cruds", "", ""},
    {"request of spaces grants nothing", "    ", "system/*.cruds", "", ""},
    {"runs of spaces separate scopes", "  system/Observation.rs   system/Patient.rs ", "system/*.cruds",
     "system/Observation.rs system/Patient.rs", ""},
    {"tabs do not separate scopes", "system/Observation.rs\tsystem/Patient.rs", "system/*.cruds", "",
     "system/Observation.rs\tsystem/Patient.rs"},
    {"empty preauthorization grants nothing", "system/Observation.rs", "", "", "system/Observation.rs"},
    {"scopes beyond maxScopes are dropped", "system/Observation.rs system/Patient.rs system/Encounter.rs",
     "system/*.cruds", "system/Observation.rs system/Patient.rs", "system/Encounter.rs", 2},
    {"maxScopes zero grants nothing", "system/Observation.rs system/Patient.rs", "system/*.cruds", "",
     "system/Observation.rs system/Patient.rs", 0},
    {"garbage counts toward maxScopes", "garbage system/Observation.rs", "system/*.cruds", "",
     "garbage system/Observation.rs", 1},
    {"separators do not count toward maxScopes", "   system/Observation.rs    ", "system/*.cruds",
     "system/Observation.rs", "", 1},
    {"out of order letters are never granted", "system/Observation.sr system/Observation.rr",
     "system/*.cruds", "", "system/Observation.sr system/Observation.rr"},
};

bool sameAccess(const SystemScope& a, const SystemScope& b) { return a.containedIn(b) && b.containedIn(a); }

}  // namespace

BOOST_AUTO_TEST_SUITE(parse_system_scope)

BOOST_DATA_TEST_CASE(accepts_each_well_formed_system_scope, bdata::make(kValidRows), row) {
  const auto parsed = parseSystemScope(row.text);
  BOOST_TEST_REQUIRE(parsed.has_value());
  BOOST_TEST(parsed->resource == row.resource);
  BOOST_TEST(parsed->permissions == row.permissions);
  BOOST_TEST(rendered(parsed->constraints) == rendered(row.constraints));
  BOOST_TEST(parsed->v1 == row.v1);
}

BOOST_DATA_TEST_CASE(accepts_every_v2_permission_subsequence_of_cruds, bdata::make(allValidV2Scopes()), text) {
  const auto parsed = parseSystemScope(text);
  BOOST_TEST_REQUIRE(parsed.has_value());
  BOOST_TEST(!parsed->v1);
  BOOST_TEST(parsed->str() == text);
}

BOOST_AUTO_TEST_CASE(maps_each_v2_letter_combination_to_its_bits) {
  const auto all = allV2Permissions();
  BOOST_TEST(all.size() == 31U);
  for (const auto& [letters, bits] : all) {
    BOOST_TEST_CONTEXT(letters) {
      const auto parsed = parseSystemScope("system/Observation." + letters);
      BOOST_TEST_REQUIRE(parsed.has_value());
      BOOST_TEST(parsed->permissions == bits);
    }
  }
}

BOOST_DATA_TEST_CASE(rejects_each_malformed_or_non_system_scope, bdata::make(kInvalidRows), text) {
  BOOST_TEST(!parseSystemScope(text).has_value());
}

BOOST_DATA_TEST_CASE(rejects_every_repeated_or_reordered_pair_of_letters, bdata::make(allInvalidTwoLetterScopes()),
                     text) {
  BOOST_TEST(!parseSystemScope(text).has_value());
}

BOOST_AUTO_TEST_CASE(generates_fifteen_invalid_letter_pairs) {
  // 5 repeats + 10 reversed pairs: every pair that is not a strictly increasing subsequence of c r u d s.
  BOOST_TEST(allInvalidTwoLetterScopes().size() == 15U);
}

BOOST_AUTO_TEST_CASE(refuses_any_byte_outside_the_scope_token_alphabet) {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    const std::string text = std::string("system/Observation.rs?k=a") + c;
    const bool legal = b == 0x21 || (b >= 0x23 && b <= 0x5B) || (b >= 0x5D && b <= 0x7E);
    const bool separator = c == '&' || c == '=';
    BOOST_TEST_CONTEXT("byte " << b) { BOOST_TEST(parseSystemScope(text).has_value() == (legal && !separator)); }
  }
}

BOOST_AUTO_TEST_CASE(stores_constraints_sorted_by_key) {
  const auto parsed = mustParse("system/Observation.rs?z=1&m=2&a=3");
  const Constraints expected = {{"a", "3"}, {"m", "2"}, {"z", "1"}};
  BOOST_TEST(rendered(parsed.constraints) == rendered(expected));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(system_scope_str)

BOOST_DATA_TEST_CASE(renders_each_scope_canonically, bdata::make(kRenderRows), row) {
  BOOST_TEST(mustParse(row.text).str() == row.canonical);
}

BOOST_DATA_TEST_CASE(round_trips_every_valid_scope_through_str, bdata::make(kValidRows), row) {
  const auto parsed = mustParse(row.text);
  const auto reparsed = parseSystemScope(parsed.str());
  BOOST_TEST_REQUIRE(reparsed.has_value());
  BOOST_TEST((*reparsed == parsed));
}

BOOST_AUTO_TEST_CASE(renders_v2_when_v1_permissions_are_not_read_write_or_all) {
  SystemScope scope{"Observation", kRead, {}, true};
  BOOST_TEST(scope.str() == "system/Observation.r");
  scope.permissions = kRs;
  BOOST_TEST(scope.str() == "system/Observation.read");
  scope.permissions = kCud;
  BOOST_TEST(scope.str() == "system/Observation.write");
  scope.permissions = kAllPermissions;
  BOOST_TEST(scope.str() == "system/Observation.*");
}

BOOST_AUTO_TEST_CASE(renders_v2_for_a_constrained_scope_even_when_flagged_v1) {
  const SystemScope scope{"Observation", kRs, {{"category", "laboratory"}}, true};
  BOOST_TEST(scope.str() == "system/Observation.rs?category=laboratory");
}

BOOST_AUTO_TEST_CASE(renders_v2_letters_in_cruds_order) {
  const SystemScope scope{"*", static_cast<std::uint8_t>(kSearch | kCreate | kDelete), {}, false};
  BOOST_TEST(scope.str() == "system/*.cds");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(system_scope_contained_in)

BOOST_DATA_TEST_CASE(decides_containment_for_each_pair, bdata::make(kContainmentRows), row) {
  BOOST_TEST(mustParse(row.inner).containedIn(mustParse(row.outer)) == row.contained);
}

BOOST_AUTO_TEST_CASE(contains_exactly_the_permission_subsets_among_all_v2_combinations) {
  const auto all = allV2Permissions();
  for (const auto& [innerLetters, innerBits] : all) {
    for (const auto& [outerLetters, outerBits] : all) {
      BOOST_TEST_CONTEXT(innerLetters << " within " << outerLetters) {
        const bool subset = (innerBits & ~outerBits) == 0;
        BOOST_TEST(mustParse("system/Observation." + innerLetters)
                       .containedIn(mustParse("system/*." + outerLetters)) == subset);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(grant_scopes)

BOOST_DATA_TEST_CASE(grants_each_request_against_its_preauthorization, bdata::make(kGrantRows), row) {
  const ScopeGrant grant = grantScopes(row.requested, scopes(row.preauthorized), row.maxScopes);
  BOOST_TEST(grant.scopeString() == row.granted);
  BOOST_TEST(joined(grant.dropped) == row.dropped);
}

BOOST_DATA_TEST_CASE(grants_only_scopes_within_the_preauthorization_that_parse_back_identically,
                     bdata::make(kGrantRows), row) {
  const auto preauthorized = scopes(row.preauthorized);
  const ScopeGrant grant = grantScopes(row.requested, preauthorized, row.maxScopes);
  for (const auto& granted : grant.granted) {
    BOOST_TEST_CONTEXT(granted.str()) {
      const auto reparsed = parseSystemScope(granted.str());
      BOOST_TEST_REQUIRE(reparsed.has_value());
      BOOST_TEST((*reparsed == granted));
      bool within = false;
      for (const auto& allowed : preauthorized) {
        within = within || granted.containedIn(allowed);
      }
      BOOST_TEST(within);
    }
  }
  // No granted scope is redundant with another.
  for (std::size_t i = 0; i < grant.granted.size(); ++i) {
    for (std::size_t j = 0; j < grant.granted.size(); ++j) {
      if (i != j) {
        BOOST_TEST(!grant.granted[i].containedIn(grant.granted[j]));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(returns_the_same_grant_for_the_same_input) {
  const auto preauthorized = scopes("system/Observation.rs system/Patient.read system/*.s?_security=R");
  const std::string request = "system/*.cruds system/Observation.read junk system/Patient.rs system/*.s";
  const ScopeGrant first = grantScopes(request, preauthorized);
  for (int i = 0; i < 10; ++i) {
    const ScopeGrant again = grantScopes(request, preauthorized);
    BOOST_TEST(again.scopeString() == first.scopeString());
    BOOST_TEST(again.dropped == first.dropped, boost::test_tools::per_element());
  }
}

BOOST_AUTO_TEST_CASE(stops_parsing_after_max_scopes_in_a_huge_request) {
  std::string request;
  for (int i = 0; i < 10000; ++i) {
    request += "system/Observation.rs ";
  }
  const ScopeGrant grant = grantScopes(request, scopes("system/*.cruds"), 64);
  BOOST_TEST(grant.scopeString() == "system/Observation.rs");
  BOOST_TEST(grant.dropped.size() == 10000U - 64U);
}

BOOST_AUTO_TEST_CASE(drops_an_intersection_whose_merged_constraints_exceed_the_scope_size_limit) {
  const std::string requested = "system/Observation.rs?a=" + std::string(200, 'x');
  const std::string allowed = "system/Observation.rs?b=" + std::string(200, 'y');
  const ScopeGrant grant = grantScopes(requested, scopes(allowed));
  BOOST_TEST(grant.granted.empty());
  BOOST_TEST(joined(grant.dropped) == requested);
}

BOOST_AUTO_TEST_CASE(keeps_v1_only_where_the_granted_permissions_are_expressible_in_v1) {
  const ScopeGrant grant =
      grantScopes("system/*.*", scopes("system/Observation.rs system/Patient.cud system/Encounter.rd"));
  BOOST_TEST(grant.scopeString() == "system/Observation.read system/Patient.write system/Encounter.rd");
  BOOST_TEST(grant.granted.at(0).v1);
  BOOST_TEST(grant.granted.at(1).v1);
  BOOST_TEST(!grant.granted.at(2).v1);
}

BOOST_AUTO_TEST_CASE(grants_equivalent_access_whichever_order_the_preauthorization_is_listed_in) {
  const std::string request = "system/*.rs system/Observation.cruds";
  const ScopeGrant a = grantScopes(request, scopes("system/Observation.read system/Patient.rs system/*.s"));
  const ScopeGrant b = grantScopes(request, scopes("system/*.s system/Patient.rs system/Observation.read"));
  BOOST_TEST_REQUIRE(a.granted.size() == b.granted.size());
  for (const auto& g : a.granted) {
    bool found = false;
    for (const auto& h : b.granted) {
      found = found || sameAccess(g, h);
    }
    BOOST_TEST(found, g.str());
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(grant_permissions)

const std::vector<std::string> kPermissions{"smart-broker:introspect", "smart-broker:consent-admin"};

BOOST_AUTO_TEST_CASE(grants_a_preauthorized_permission_by_exact_name_after_the_system_scopes) {
  const ScopeGrant grant = grantScopes("smart-broker:introspect system/Observation.rs",
                                       scopes("system/*.rs"), kPermissions, 64);
  BOOST_TEST(grant.scopeString() == "system/Observation.rs smart-broker:introspect");
  BOOST_TEST(grant.permissions == (std::vector<std::string>{"smart-broker:introspect"}), boost::test_tools::per_element());
  BOOST_TEST(grant.dropped.empty());
}

BOOST_AUTO_TEST_CASE(grants_nothing_but_the_exact_preauthorized_names) {
  const std::vector<std::string> introspectOnly{"smart-broker:introspect"};
  for (const std::string requested : {"smart-broker:consent-admin", "smart-broker:*", "smart-broker:Introspect",
                                      "smart-broker:introspect2", "smart-broker", "smart-broker:introspect/x"}) {
    BOOST_TEST_CONTEXT(requested) {
      const ScopeGrant grant = grantScopes(requested, scopes("system/*.cruds"), introspectOnly, 64);
      BOOST_TEST(grant.scopeString().empty());
      BOOST_TEST(joined(grant.dropped) == requested);
    }
  }
  // Without pre-authorized permissions the name is just an unparseable scope.
  const ScopeGrant none = grantScopes("smart-broker:introspect", scopes("system/*.cruds"), {}, 64);
  BOOST_TEST(none.scopeString().empty());
  BOOST_TEST(joined(none.dropped) == "smart-broker:introspect");
}

BOOST_AUTO_TEST_CASE(deduplicates_permissions_keeps_request_order_and_does_not_count_them_against_the_bound) {
  const ScopeGrant grant =
      grantScopes("smart-broker:consent-admin smart-broker:introspect smart-broker:consent-admin system/Patient.rs",
                  scopes("system/*.rs"), kPermissions, 1);
  BOOST_TEST(grant.scopeString() == "system/Patient.rs smart-broker:consent-admin smart-broker:introspect");
  BOOST_TEST(grant.dropped.empty());
}

BOOST_AUTO_TEST_SUITE_END()
