// Tests of the consent module: FHIR R4 Consent mapping, FHIR dateTime, the issuance and introspection decisions,
// the notification format and retry schedule. The consent tables of both store backends are covered by
// store_contract_tests.
#define BOOST_TEST_MODULE consent
#include <boost/test/unit_test.hpp>

#include <Poco/JSON/Parser.h>

#include <string>
#include <vector>

#include "smartbroker/broker/consent.hpp"
#include "smartbroker/broker/store.hpp"

namespace sb = smartbroker::broker;
using sb::ConsentLookup;
using sb::ConsentRecord;
using sb::ConsentStatus;
using sb::DenyReason;

namespace {

constexpr std::int64_t kNow = 1767225600;  // 2026-01-01T00:00:00Z

const sb::ConsentMapping kMapping{"urn:smart-broker:client-id", 64 * 1024};

/// A FHIR R4 Consent naming `grantee` (by client-id identifier, role IRCP), with optional extra members.
std::string consentJson(const std::string& id, const std::string& status, const std::string& grantee,
                        const std::string& extraTop = "", const std::string& extraProvision = "") {
  return R"({"resourceType":"Consent","id":")" + id + R"(","status":")" + status + R"(",)" +
         R"("scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope",)" +
         R"("code":"patient-privacy"}]},)" +
         R"("category":[{"coding":[{"system":"http://loinc.org","code":"59284-0"}]}],)" +
         R"("patient":{"reference":"Patient/example"},"dateTime":"2025-06-01T10:00:00Z",)" + extraTop +
         R"("provision":{"type":"permit",)" + extraProvision +
         R"("actor":[{"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType",)" +
         R"("code":"IRCP"}]},"reference":{"identifier":{"system":"urn:smart-broker:client-id","value":")" + grantee +
         R"("}}}]}})";
}

std::string scopeExtension(const std::string& scope) {
  return R"({"url":"urn:smart-broker:fhir:permitted-scope","valueString":")" + scope + R"("})";
}

ConsentLookup found(const std::string& json) {
  auto record = sb::parseConsentResource(json, kMapping);
  BOOST_TEST_REQUIRE(record.has_value(), (record ? "" : record.error()));
  return ConsentLookup{record->id, ConsentLookup::Outcome::Found, *record, {}};
}

ConsentLookup outcome(const std::string& id, ConsentLookup::Outcome o) { return ConsentLookup{id, o, std::nullopt, {}}; }

std::string errorOf(const std::string& json) {
  auto record = sb::parseConsentResource(json, kMapping);
  return record ? std::string("parsed") : record.error();
}

}  // namespace

BOOST_AUTO_TEST_SUITE(consent_resource)

BOOST_AUTO_TEST_CASE(maps_status_grantee_period_and_permitted_scopes) {
  const std::string json = consentJson("c-1", "active", "exporter",
                                       R"("extension":[)" + scopeExtension("system/Observation.rs") + "," +
                                           scopeExtension("system/Patient.read") + "],",
                                       R"("period":{"start":"2025-01-01","end":"2026-06-30"},)");
  auto record = sb::parseConsentResource(json, kMapping);
  BOOST_TEST_REQUIRE(record.has_value());
  BOOST_TEST(record->id == "c-1");
  BOOST_TEST((record->status == ConsentStatus::Active));
  BOOST_TEST(record->grantees == std::vector<std::string>{"exporter"}, boost::test_tools::per_element());
  BOOST_TEST(record->not_before.value_or(0) == 1735689600);  // 2025-01-01T00:00:00Z
  BOOST_TEST(record->not_after.value_or(0) == 1782864000);   // 2026-07-01T00:00:00Z: the end day is inclusive
  BOOST_TEST_REQUIRE(record->permitted_scopes.has_value());
  BOOST_TEST(record->permitted_scopes->size() == 2U);
  BOOST_TEST(record->permitted_scopes->at(1).str() == "system/Patient.read");
  BOOST_TEST(record->authorizes("exporter", kNow));
  BOOST_TEST(!record->authorizes("someone-else", kNow));
}

BOOST_AUTO_TEST_CASE(reads_every_fhir_consent_status) {
  for (const std::string status : {"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}) {
    auto record = sb::parseConsentResource(consentJson("c", status, "x"), kMapping);
    BOOST_TEST_REQUIRE(record.has_value(), status);
    BOOST_TEST(sb::consentStatusCode(record->status) == status);
    BOOST_TEST(record->activeAt(kNow) == (status == "active"), status);
  }
}

BOOST_AUTO_TEST_CASE(ignores_actors_without_the_grantee_role_or_identifier_system) {
  const std::string json = R"({"resourceType":"Consent","id":"c","status":"active","provision":{"actor":[
    {"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PRCP"}]},
     "reference":{"identifier":{"system":"urn:smart-broker:client-id","value":"not-recipient-role"}}},
    {"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},
     "reference":{"identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"other-system"}}},
    {"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},
     "reference":{"reference":"Device/literal-only"}},
    {"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP"}]},
     "reference":{"identifier":{"system":"urn:smart-broker:client-id","value":"grantee"}}}]}})";
  auto record = sb::parseConsentResource(json, kMapping);
  BOOST_TEST_REQUIRE(record.has_value());
  BOOST_TEST(record->grantees == std::vector<std::string>{"grantee"}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_deny_provision_never_authorizes) {
  std::string json = consentJson("c", "active", "exporter");
  json.replace(json.find("\"permit\""), 8, "\"deny\"");
  auto record = sb::parseConsentResource(json, kMapping);
  BOOST_TEST_REQUIRE(record.has_value());
  BOOST_TEST(!record->permit);
  BOOST_TEST(!record->authorizes("exporter", kNow));
}

BOOST_AUTO_TEST_CASE(a_consent_outside_its_period_is_not_active) {
  const auto future = sb::parseConsentResource(
      consentJson("c", "active", "x", "", R"("period":{"start":"2030-01-01T00:00:00+01:00"},)"), kMapping);
  const auto past = sb::parseConsentResource(
      consentJson("c", "active", "x", "", R"("period":{"end":"2025-12-31T23:59:59Z"},)"), kMapping);
  BOOST_TEST_REQUIRE(future.has_value());
  BOOST_TEST_REQUIRE(past.has_value());
  BOOST_TEST(!future->activeAt(kNow));
  BOOST_TEST(!past->activeAt(kNow));
  BOOST_TEST(past->activeAt(kNow - 1));
}

BOOST_AUTO_TEST_CASE(refuses_resources_that_are_not_valid_consents) {
  BOOST_TEST(errorOf("[]") == "the body must be a JSON object (a FHIR R4 Consent resource)");
  BOOST_TEST(errorOf("{") == "the body is not a well-formed FHIR R4 Consent resource in JSON");
  BOOST_TEST(errorOf(R"({"resourceType":"Patient","id":"c","status":"active"})") == "resourceType must be Consent");
  BOOST_TEST(errorOf(R"({"resourceType":"Consent","id":"a/b","status":"active"})") ==
             "id must be a FHIR id of 1 to 64 characters A-Z a-z 0-9 - .");
  BOOST_TEST(errorOf(R"({"resourceType":"Consent","id":"c","status":"revoked"})").starts_with("status must be"));
  BOOST_TEST(errorOf(R"({"resourceType":"Consent","id":"c"})").starts_with("status must be"));
  BOOST_TEST(errorOf(consentJson("c", "active", "x", R"("extension":[)" + scopeExtension("patient/*.rs") + "],")) ==
             "a permitted-scope extension must have a valueString that is a valid system/ scope");
  BOOST_TEST(errorOf(consentJson("c", "active", "x", "", R"("period":{"start":"2025-13-01"},)")) ==
             "provision.period.start is not a FHIR dateTime");
  BOOST_TEST(errorOf(consentJson("c", "active", "x", "", R"("provision":[{"type":"deny"}],)")) ==
             "nested provisions are not supported");
  BOOST_TEST(errorOf(R"({"resourceType":"Consent","id":"c","status":"active","provision":"x"})") ==
             "extension must be an array and provision an object");
  BOOST_TEST(errorOf(R"({"resourceType":"Consent","id":"c","status":"active","provision":{"actor":{}}})") ==
             "provision.period must be an object and provision.actor an array");
  sb::ConsentMapping small = kMapping;
  small.max_bytes = 16;
  BOOST_TEST(sb::parseConsentResource(consentJson("c", "active", "x"), small).error() ==
             "the Consent resource is too large");
}

BOOST_AUTO_TEST_CASE(parses_fhir_datetimes_at_every_precision) {
  BOOST_TEST(sb::parseFhirDateTime("2026", false).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2025", true).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2025-12", true).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2025-12-31", true).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2025-12-31T23:59:59Z", true).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2026-01-01T01:00:00.123+01:00", false).value_or(0) == kNow);
  BOOST_TEST(sb::parseFhirDateTime("2025-12-31T19:00:00-05:00", false).value_or(0) == kNow);
  for (const char* bad : {"", "26", "2026-1", "2026-02-30", "2026-01-01T10:00", "2026-01-01T10:00:00",
                          "2026-01-01T25:00:00Z", "2026-01-01T10:00:00Zjunk", "2026-01-01T10:00:00.Z"}) {
    BOOST_TEST(!sb::parseFhirDateTime(bad, false).has_value(), bad);
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(consent_decision)

BOOST_AUTO_TEST_CASE(refuses_issuance_without_an_active_consent_for_the_client) {
  const auto refused = sb::decideIssuance("exporter", "system/*.rs",
                                          {found(consentJson("c1", "inactive", "exporter")),
                                           found(consentJson("c2", "active", "another-client")),
                                           outcome("c3", ConsentLookup::Outcome::NotFound)},
                                          kNow, 64);
  BOOST_TEST_REQUIRE(!refused.has_value());
  BOOST_TEST((refused.error().reason == DenyReason::ConsentRequired));
  BOOST_TEST(refused.error().detail == "c1:inactive c2:not_grantee c3:not_found");
  const auto none = sb::decideIssuance("exporter", "system/*.rs", {}, kNow, 64);
  BOOST_TEST((none.error().reason == DenyReason::ConsentRequired));
}

BOOST_AUTO_TEST_CASE(a_source_failure_without_another_active_consent_is_unavailable) {
  const auto refused =
      sb::decideIssuance("exporter", "system/*.rs", {outcome("c1", ConsentLookup::Outcome::Failed)}, kNow, 64);
  BOOST_TEST_REQUIRE(!refused.has_value());
  BOOST_TEST((refused.error().reason == DenyReason::ConsentUnavailable));
  BOOST_TEST((sb::wireError(DenyReason::ConsentUnavailable).status == 503));
}

BOOST_AUTO_TEST_CASE(an_unlimited_consent_keeps_the_registration_grant_and_links_the_token) {
  const auto grant = sb::decideIssuance(
      "exporter", "system/*.rs smart-broker:introspect",
      {found(consentJson("c1", "active", "exporter")), outcome("c2", ConsentLookup::Outcome::Failed)}, kNow, 64);
  BOOST_TEST_REQUIRE(grant.has_value());
  BOOST_TEST(grant->scope == "system/*.rs smart-broker:introspect");
  BOOST_TEST(grant->consent_ids == std::vector<std::string>{"c1"}, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(limits_scopes_to_the_union_of_what_the_consents_permit) {
  const auto grant = sb::decideIssuance(
      "exporter", "system/*.rs system/Encounter.read",
      {found(consentJson("c1", "active", "exporter", R"("extension":[)" + scopeExtension("system/Observation.r") + "],")),
       found(consentJson("c2", "active", "exporter",
                         R"("extension":[)" + scopeExtension("system/Patient.rs?identifier=x") + "],"))},
      kNow, 64);
  BOOST_TEST_REQUIRE(grant.has_value());
  BOOST_TEST(grant->scope == "system/Observation.r system/Patient.rs?identifier=x");
  BOOST_TEST(grant->consent_ids == (std::vector<std::string>{"c1", "c2"}), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(refuses_when_the_consent_permits_none_of_the_granted_scopes) {
  const auto refused = sb::decideIssuance(
      "exporter", "system/Patient.rs",
      {found(consentJson("c1", "active", "exporter", R"("extension":[)" + scopeExtension("system/Observation.rs") + "],"))},
      kNow, 64);
  BOOST_TEST_REQUIRE(!refused.has_value());
  BOOST_TEST((refused.error().reason == DenyReason::ConsentScopeNotPermitted));
  BOOST_TEST(sb::wireError(DenyReason::ConsentScopeNotPermitted).error == "invalid_scope");
  BOOST_TEST(sb::wireError(DenyReason::ConsentRequired).error == "unauthorized_client");
}

BOOST_AUTO_TEST_CASE(introspection_recheck_follows_status_grantee_and_narrowed_scopes) {
  const auto active = found(consentJson("c1", "active", "exporter"));
  BOOST_TEST(sb::consentsStillAuthorize("exporter", "system/*.rs", {active}, kNow));
  BOOST_TEST(sb::consentsStillAuthorize("exporter", "system/*.rs", {}, kNow));
  BOOST_TEST(!sb::consentsStillAuthorize("exporter", "system/*.rs", {found(consentJson("c1", "inactive", "exporter"))},
                                         kNow));
  BOOST_TEST(!sb::consentsStillAuthorize("exporter", "system/*.rs", {found(consentJson("c1", "active", "other"))}, kNow));
  BOOST_TEST(!sb::consentsStillAuthorize("exporter", "system/*.rs", {outcome("c1", ConsentLookup::Outcome::Failed)},
                                         kNow));
  BOOST_TEST(!sb::consentsStillAuthorize("exporter", "system/*.rs", {active, outcome("c2", ConsentLookup::Outcome::Gone)},
                                         kNow));
  const auto narrowed =
      found(consentJson("c1", "active", "exporter", R"("extension":[)" + scopeExtension("system/Observation.rs") + "],"));
  BOOST_TEST(sb::consentsStillAuthorize("exporter", "system/Observation.rs", {narrowed}, kNow));
  BOOST_TEST(!sb::consentsStillAuthorize("exporter", "system/Observation.rs system/Patient.rs", {narrowed}, kNow));
}

BOOST_AUTO_TEST_CASE(only_a_status_change_or_gone_counts_as_a_withdrawal) {
  BOOST_TEST(found(consentJson("c1", "inactive", "x")).withdrawnAt(kNow));
  BOOST_TEST(outcome("c1", ConsentLookup::Outcome::Gone).withdrawnAt(kNow));
  BOOST_TEST(!found(consentJson("c1", "active", "x")).withdrawnAt(kNow));
  BOOST_TEST(!outcome("c1", ConsentLookup::Outcome::Failed).withdrawnAt(kNow));
  BOOST_TEST(!outcome("c1", ConsentLookup::Outcome::NotFound).withdrawnAt(kNow));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(consent_notification)

BOOST_AUTO_TEST_CASE(the_body_names_the_consent_the_revoked_tokens_and_the_time) {
  const sb::ConsentNotification n{7, "c-1", {"jti-a", "jti-b"}, kNow, 0};
  const std::string body = sb::notificationBody(n);
  BOOST_TEST(body ==
             R"({"id":"7","consent_id":"c-1","revoked_token_ids":["jti-a","jti-b"],"time":"2026-01-01T00:00:00Z"})");
  Poco::JSON::Parser parser;
  BOOST_CHECK_NO_THROW(parser.parse(body));
}

BOOST_AUTO_TEST_CASE(retries_back_off_exponentially_up_to_the_ceiling) {
  BOOST_TEST(sb::retryDelay(1, 1, 300) == 1);
  BOOST_TEST(sb::retryDelay(2, 1, 300) == 2);
  BOOST_TEST(sb::retryDelay(5, 1, 300) == 16);
  BOOST_TEST(sb::retryDelay(30, 1, 300) == 300);
  BOOST_TEST(sb::retryDelay(1000, 2, 60) == 60);
}

BOOST_AUTO_TEST_SUITE_END()
