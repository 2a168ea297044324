// Verifying the broker's own access tokens (RFC 9068) for introspection and revocation, with a bounded cache.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <expected>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "smartbroker/broker/clock.hpp"
#include "smartbroker/broker/token_endpoint.hpp"

namespace smartbroker::broker {

/// The claims of an access token whose signature, type, issuer and key were verified.
struct TokenClaims {
  std::string jti;
  std::string client_id;
  std::string sub;
  std::string scope;
  std::string iss;
  std::string aud_json;  ///< the aud claim as JSON text (a string or an array)
  std::string kid;
  std::int64_t iat = 0;
  std::int64_t exp = 0;
  std::vector<std::string> consent_ids{};  ///< the `consent` claim (README "Consent"); empty when absent
};

enum class TokenRejection : std::uint8_t {
  Malformed,     ///< not a compact JWS of JSON objects
  NotAccessToken,  ///< typ is not at+jwt
  UnknownKey,    ///< kid not published (never ours, or revoked)
  BadSignature,
  WrongIssuer,
  MissingClaim,
  Expired,
  NotYetValid,   ///< iat in the future
};
std::string_view rejectionName(TokenRejection rejection);

/// Verifies tokens against the keys currently published. Verified claims are cached under the SHA-256 of the
/// token (never the token itself), so a repeated introspection costs a hash and a lookup; a cached entry is
/// used only while its token is unexpired and its key is still published, so a revoked key takes effect at
/// once. Revocation and suspension are not this class's business (TokenState). Thread-safe, sharded.
class AccessTokenVerifier {
 public:
  AccessTokenVerifier(std::string issuer, const KeyringHolder& keys, const Clock& clock, std::int64_t clockSkew,
                      std::size_t cacheCapacity = 100000);

  /// `allowExpired`: revocation accepts an expired token of the caller's (nothing to do, but not an error).
  std::expected<std::shared_ptr<const TokenClaims>, TokenRejection> verify(std::string_view token,
                                                                           bool allowExpired = false) const;

 private:
  std::expected<std::shared_ptr<const TokenClaims>, TokenRejection> verifyUncached(std::string_view token) const;
  bool keyPublished(const std::string& kid) const;

  static constexpr std::size_t kShards = 16;
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::shared_ptr<const TokenClaims>> entries;
    std::deque<std::string> order;  ///< insertion order, for eviction
  };

  std::string issuer_;
  const KeyringHolder& keys_;
  const Clock& clock_;
  std::int64_t skew_;
  std::size_t perShard_;
  mutable std::array<Shard, kShards> shards_;
};

}  // namespace smartbroker::broker
