// The single mapping from DenyReason to the RFC 6749 §5.2 error, HTTP status and a safe description.
#include "smartbroker/broker/errors.hpp"

#include "smartbroker/broker/http.hpp"

namespace smartbroker::broker {

namespace {
constexpr std::string_view kInvalidRequest = "invalid_request";
constexpr std::string_view kInvalidClient = "invalid_client";
constexpr std::string_view kInvalidScope = "invalid_scope";

WireError request(std::string_view description) { return {400, kInvalidRequest, description}; }
// Every failure to authenticate the client is invalid_client with 401 (RFC 6749 §5.2, SPEC "Authenticating").
WireError client(std::string_view description) { return {401, kInvalidClient, description}; }
}  // namespace

WireError wireError(DenyReason reason) {
  using R = DenyReason;
  switch (reason) {
    case R::MethodNotAllowed: return {405, kInvalidRequest, "Method not allowed on this endpoint"};
    case R::UnsupportedMediaType: return request("Content-Type must be application/x-www-form-urlencoded");
    case R::BodyTooLarge: return {413, kInvalidRequest, "Request body is too large"};
    case R::MalformedForm: return request("Request body is not valid application/x-www-form-urlencoded");
    case R::TooManyParameters: return request("Too many request parameters");
    case R::ParameterTooLong: return request("A request parameter is too long");
    case R::RepeatedParameter: return request("A request parameter is repeated");
    case R::MissingGrantType: return request("Missing grant_type parameter");
    case R::UnsupportedGrantType: return {400, "unsupported_grant_type", "grant_type must be client_credentials"};
    case R::MissingAssertionType: return request("Missing client_assertion_type parameter");
    case R::WrongAssertionType:
      return request("client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
    case R::MissingAssertion: return request("Missing client_assertion parameter");
    case R::AssertionTooLarge: return client("client_assertion is too large");
    case R::MalformedJwt: return client("client_assertion is not a compact JWS with three base64url parts");
    case R::MalformedHeader: return client("client_assertion header is not a JSON object");
    case R::MalformedPayload: return client("client_assertion payload is not a JSON object");
    case R::AlgMissing: return client("client_assertion header has no alg");
    case R::AlgNone: return client("client_assertion must be signed; alg none is not accepted");
    case R::AlgSymmetric: return client("client_assertion alg must be asymmetric; HMAC algorithms are not accepted");
    case R::AlgUnsupported: return client("client_assertion alg is not supported");
    case R::AlgNotAllowedForClient: return client("client_assertion alg is not allowed for this client");
    case R::KidMissing: return client("client_assertion header has no kid");
    case R::TypInvalid: return client("client_assertion header typ must be JWT");
    case R::CritUnsupported: return client("client_assertion header has crit extensions that are not supported");
    case R::IssMissing: return client("client_assertion has no iss claim");
    case R::SubMissing: return client("client_assertion has no sub claim");
    case R::SubMismatch: return client("client_assertion sub must equal iss");
    case R::ClientIdMismatch: return client("client_id parameter does not match the client_assertion iss");
    case R::UnknownClient: return client("Unknown client");
    case R::ClientDisabled: return client("Client is disabled");
    case R::ClientSuspended: return client("Client is suspended");
    case R::JkuNotRegistered: return client("client_assertion jku is not accepted for a client without a jwks_uri");
    case R::JkuMismatch: return client("client_assertion jku does not match the registered jwks_uri");
    case R::KeysUnavailable: return client("The client's keys could not be obtained");
    case R::NoKeyForKid: return client("No registered key matches the client_assertion kid and alg");
    case R::AmbiguousKey: return client("More than one registered key matches the client_assertion kid and alg");
    case R::SignatureInvalid: return client("client_assertion signature is invalid");
    case R::AudMissing: return client("client_assertion has no aud claim");
    case R::AudMismatch: return client("client_assertion aud must be the token endpoint URL");
    case R::ExpMissing: return client("client_assertion has no exp claim");
    case R::ExpNotNumeric: return client("client_assertion exp must be a NumericDate");
    case R::Expired: return client("client_assertion has expired");
    case R::ExpTooFarAhead: return client("client_assertion exp is more than 300 seconds in the future");
    case R::NbfNotNumeric: return client("client_assertion nbf must be a NumericDate");
    case R::NotYetValid: return client("client_assertion is not yet valid (nbf)");
    case R::IatNotNumeric: return client("client_assertion iat must be a NumericDate");
    case R::IatInFuture: return client("client_assertion iat is in the future");
    case R::JtiMissing: return client("client_assertion has no jti claim");
    case R::JtiInvalid: return client("client_assertion jti must be a non-empty string of at most 255 bytes");
    case R::JtiReplayed: return client("client_assertion jti has already been used");
    case R::ScopeMissing: return {400, kInvalidScope, "Missing scope parameter"};
    case R::NoScopeGranted: return {400, kInvalidScope, "None of the requested scopes can be granted to this client"};
    // Why unauthorized_client: the client authenticated, but is not authorized to obtain tokens right now.
    // invalid_client would send integrators after their keys, invalid_scope suggests another scope would do,
    // and access_denied is an authorization endpoint code (RFC 6749 §4.1.2.1), not a token endpoint one (§5.2).
    case R::ConsentRequired: return {400, "unauthorized_client", "No active consent authorizes this client"};
    case R::ConsentScopeNotPermitted:
      return {400, kInvalidScope, "The active consent permits none of the requested scopes"};
    case R::ConsentUnavailable:
      return {503, "temporarily_unavailable", "The consent record could not be checked; try again later"};
    case R::StoreUnavailable: return {503, "temporarily_unavailable", "The service is temporarily unavailable"};
    case R::InternalError: return {500, "server_error", "Internal server error"};
  }
  return {500, "server_error", "Internal server error"};
}

std::string_view reasonName(DenyReason reason) {
  using R = DenyReason;
  switch (reason) {
    case R::MethodNotAllowed: return "method_not_allowed";
    case R::UnsupportedMediaType: return "unsupported_media_type";
    case R::BodyTooLarge: return "body_too_large";
    case R::MalformedForm: return "malformed_form";
    case R::TooManyParameters: return "too_many_parameters";
    case R::ParameterTooLong: return "parameter_too_long";
    case R::RepeatedParameter: return "repeated_parameter";
    case R::MissingGrantType: return "missing_grant_type";
    case R::UnsupportedGrantType: return "unsupported_grant_type";
    case R::MissingAssertionType: return "missing_assertion_type";
    case R::WrongAssertionType: return "wrong_assertion_type";
    case R::MissingAssertion: return "missing_assertion";
    case R::AssertionTooLarge: return "assertion_too_large";
    case R::MalformedJwt: return "malformed_jwt";
    case R::MalformedHeader: return "malformed_header";
    case R::MalformedPayload: return "malformed_payload";
    case R::AlgMissing: return "alg_missing";
    case R::AlgNone: return "alg_none";
    case R::AlgSymmetric: return "alg_symmetric";
    case R::AlgUnsupported: return "alg_unsupported";
    case R::AlgNotAllowedForClient: return "alg_not_allowed_for_client";
    case R::KidMissing: return "kid_missing";
    case R::TypInvalid: return "typ_invalid";
    case R::CritUnsupported: return "crit_unsupported";
    case R::IssMissing: return "iss_missing";
    case R::SubMissing: return "sub_missing";
    case R::SubMismatch: return "sub_mismatch";
    case R::ClientIdMismatch: return "client_id_mismatch";
    case R::UnknownClient: return "unknown_client";
    case R::ClientDisabled: return "client_disabled";
    case R::ClientSuspended: return "client_suspended";
    case R::JkuNotRegistered: return "jku_not_registered";
    case R::JkuMismatch: return "jku_mismatch";
    case R::KeysUnavailable: return "keys_unavailable";
    case R::NoKeyForKid: return "no_key_for_kid";
    case R::AmbiguousKey: return "ambiguous_key";
    case R::SignatureInvalid: return "signature_invalid";
    case R::AudMissing: return "aud_missing";
    case R::AudMismatch: return "aud_mismatch";
    case R::ExpMissing: return "exp_missing";
    case R::ExpNotNumeric: return "exp_not_numeric";
    case R::Expired: return "expired";
    case R::ExpTooFarAhead: return "exp_too_far_ahead";
    case R::NbfNotNumeric: return "nbf_not_numeric";
    case R::NotYetValid: return "not_yet_valid";
    case R::IatNotNumeric: return "iat_not_numeric";
    case R::IatInFuture: return "iat_in_future";
    case R::JtiMissing: return "jti_missing";
    case R::JtiInvalid: return "jti_invalid";
    case R::JtiReplayed: return "jti_replayed";
    case R::ScopeMissing: return "scope_missing";
    case R::NoScopeGranted: return "no_scope_granted";
    case R::ConsentRequired: return "consent_required";
    case R::ConsentScopeNotPermitted: return "consent_scope_not_permitted";
    case R::ConsentUnavailable: return "consent_unavailable";
    case R::StoreUnavailable: return "store_unavailable";
    case R::InternalError: return "internal_error";
  }
  return "unknown";
}

std::string errorBody(const WireError& error) {
  // Codes and descriptions are compile-time constants within the RFC 6749 §5.2 character set: no escaping.
  std::string body = "{\"error\":\"";
  body += error.error;
  body += "\",\"error_description\":\"";
  body += error.description;
  body += "\"}";
  return body;
}

HttpReply HttpReply::noStoreJson(int status, std::string body) {
  HttpReply reply;
  reply.status = status;
  reply.body = std::move(body);
  reply.headers = {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}};
  return reply;
}

}  // namespace smartbroker::broker
