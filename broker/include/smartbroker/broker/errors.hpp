// Every reason the broker refuses a request, and the one mapping from reason to RFC 6749 error and HTTP status.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace smartbroker::broker {

/// One value per distinct cause. The log carries the name; the wire carries the mapped error.
enum class DenyReason : std::uint8_t {
  // Transport and form (invalid_request unless noted).
  MethodNotAllowed,        ///< 405
  UnsupportedMediaType,    ///< Content-Type is not application/x-www-form-urlencoded
  BodyTooLarge,            ///< 413
  MalformedForm,           ///< bad percent-encoding, empty name, NUL
  TooManyParameters,
  ParameterTooLong,
  RepeatedParameter,
  MissingGrantType,
  UnsupportedGrantType,    ///< unsupported_grant_type
  MissingAssertionType,
  WrongAssertionType,
  MissingAssertion,
  // Client assertion (all invalid_client, 401).
  AssertionTooLarge,
  MalformedJwt,            ///< not three base64url parts, or an empty header or payload
  MalformedHeader,         ///< header is not a JSON object
  MalformedPayload,        ///< payload is not a JSON object
  AlgMissing,
  AlgNone,
  AlgSymmetric,            ///< HS256/384/512
  AlgUnsupported,          ///< anything else we do not implement
  AlgNotAllowedForClient,
  KidMissing,
  TypInvalid,
  CritUnsupported,
  IssMissing,
  SubMissing,
  SubMismatch,
  ClientIdMismatch,        ///< client_id form parameter differs from iss
  UnknownClient,
  ClientDisabled,
  ClientSuspended,         ///< an operator suspended it at run time
  JkuNotRegistered,        ///< jku present but the client has no jwks_uri
  JkuMismatch,             ///< jku differs from the registered jwks_uri
  KeysUnavailable,         ///< the client's JWKS could not be obtained
  NoKeyForKid,
  AmbiguousKey,
  SignatureInvalid,
  AudMissing,
  AudMismatch,
  ExpMissing,
  ExpNotNumeric,
  Expired,
  ExpTooFarAhead,
  NbfNotNumeric,
  NotYetValid,
  IatNotNumeric,
  IatInFuture,
  JtiMissing,
  JtiInvalid,              ///< not a string, empty or too long
  JtiReplayed,
  // Scope.
  ScopeMissing,            ///< invalid_scope
  NoScopeGranted,          ///< invalid_scope
  // Consent (README "Consent").
  ConsentRequired,         ///< unauthorized_client: no active consent authorizes this system
  ConsentScopeNotPermitted,  ///< invalid_scope: an active consent permits none of the granted scopes
  ConsentUnavailable,      ///< temporarily_unavailable, 503: the consent source could not be read (fail closed)
  // Server.
  StoreUnavailable,        ///< temporarily_unavailable, 503
  InternalError,           ///< server_error, 500
};

/// A refusal: the reason, operator-only detail for the log (never a secret), and the client if known.
struct Denial {
  DenyReason reason;
  std::string detail;
  std::string client_id;
};

/// What goes on the wire for a reason.
struct WireError {
  int status;                       ///< HTTP status
  std::string_view error;           ///< RFC 6749 §5.2 error code
  std::string_view description;     ///< printable ASCII without '"' and '\' (RFC 6749 §5.2)
};

WireError wireError(DenyReason reason);
/// snake_case name for logs, e.g. "jti_replayed".
std::string_view reasonName(DenyReason reason);

/// {"error":"...","error_description":"..."}.
std::string errorBody(const WireError& error);

}  // namespace smartbroker::broker
