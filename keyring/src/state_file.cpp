// The keyring state file (keys/keyring.json): the lifecycle records as strict, versioned JSON.
#include "state_file.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Parser.h>
#include <Poco/JSON/Stringifier.h>

#include <sstream>

namespace smartbroker::keyring::state_file {
namespace {

constexpr std::string_view kFormat = "smart-broker-keyring";
constexpr int kVersion = 1;

void appendTime(std::string& out, std::string_view name, const std::optional<std::int64_t>& value) {
  out += ",\"";
  out += name;
  out += "\":";
  out += value ? std::to_string(*value) : "null";
}

/// Reads an optional integer member; a present member of another type is an error.
std::expected<std::optional<std::int64_t>, std::string> timeOf(const Poco::JSON::Object& o, const std::string& name) {
  if (!o.has(name) || o.isNull(name)) {
    return std::nullopt;
  }
  const Poco::Dynamic::Var v = o.get(name);
  if (!v.isInteger()) {
    return std::unexpected(name + " is not an integer");
  }
  return v.convert<std::int64_t>();
}

std::expected<std::string, std::string> stringOf(const Poco::JSON::Object& o, const std::string& name) {
  if (!o.has(name) || !o.get(name).isString()) {
    return std::unexpected(name + " is missing or not a string");
  }
  return o.getValue<std::string>(name);
}

std::expected<KeyRecord, std::string> parseRecord(const Poco::JSON::Object& o) {
  KeyRecord k;
  auto kid = stringOf(o, "kid");
  auto alg = stringOf(o, "alg");
  auto state = stringOf(o, "state");
  if (!kid || !alg || !state) {
    return std::unexpected(!kid ? kid.error() : !alg ? alg.error() : state.error());
  }
  k.kid = *kid;
  const auto parsedAlg = jwks::algFromName(*alg);
  if (!parsedAlg) {
    return std::unexpected("unknown alg " + *alg);
  }
  k.alg = *parsedAlg;
  const auto parsedState = keyStateFromName(*state);
  if (!parsedState) {
    return std::unexpected("unknown state " + *state);
  }
  k.state = *parsedState;
  for (auto [name, field] : {std::pair{"published_at", &k.published_at}, std::pair{"activated_at", &k.activated_at},
                             std::pair{"retired_at", &k.retired_at}, std::pair{"ended_at", &k.ended_at}}) {
    auto t = timeOf(o, name);
    if (!t) {
      return std::unexpected(t.error());
    }
    *field = *t;
  }
  auto created = timeOf(o, "created_at");
  auto after = timeOf(o, "activate_after");
  if (!created || !*created) {
    return std::unexpected(created ? "created_at is missing" : created.error());
  }
  if (!after) {
    return std::unexpected(after.error());
  }
  k.created_at = **created;
  k.activate_after = after->value_or(0);
  if (o.has("jwk") && !o.isNull("jwk")) {
    const auto jwk = o.getObject("jwk");
    if (!jwk) {
      return std::unexpected("jwk is not an object");
    }
    std::ostringstream text;
    Poco::JSON::Stringifier::stringify(jwk, text);
    // The JWKS is built from this: it must be a valid public key, and its thumbprint must be the kid.
    auto pub = jwks::parseJwk(text.str());
    if (!pub) {
      return std::unexpected("jwk: " + pub.error());
    }
    if (pub->thumbprint != k.kid) {
      return std::unexpected("jwk does not match the kid (thumbprint " + pub->thumbprint + ")");
    }
    if (!pub->fits(k.alg)) {
      return std::unexpected("jwk does not fit " + *alg);
    }
    k.public_jwk = text.str();
  }
  return k;
}

}  // namespace

std::string serialize(const RingState& state) {
  std::string out = "{\"format\":\"" + std::string(kFormat) + "\",\"version\":" + std::to_string(kVersion);
  out += ",\"rotation_request\":";
  if (state.rotation_request) {
    out += "{\"requested_at\":" + std::to_string(state.rotation_request->requested_at) +
           ",\"immediate\":" + (state.rotation_request->immediate ? "true" : "false") + "}";
  } else {
    out += "null";
  }
  out += ",\"keys\":[";
  bool first = true;
  for (const KeyRecord& k : state.keys) {
    out += first ? "\n" : ",\n";
    first = false;
    // kid is a base64url thumbprint and alg/state fixed tokens: none needs JSON escaping.
    out += "{\"kid\":\"" + k.kid + "\",\"alg\":\"" + std::string(jwks::algName(k.alg)) + "\",\"state\":\"" +
           std::string(keyStateName(k.state)) + "\"";
    appendTime(out, "created_at", k.created_at);
    appendTime(out, "published_at", k.published_at);
    appendTime(out, "activated_at", k.activated_at);
    appendTime(out, "retired_at", k.retired_at);
    appendTime(out, "ended_at", k.ended_at);
    appendTime(out, "activate_after", k.activate_after);
    // Tombstones keep no key material at all, not even the public half.
    out += ",\"jwk\":" + (k.published() && !k.public_jwk.empty() ? k.public_jwk : std::string("null")) + "}";
  }
  out += "\n]}\n";
  return out;
}

std::expected<RingState, std::string> parse(std::string_view json) {
  Poco::JSON::Object::Ptr root;
  try {
    Poco::JSON::Parser parser;
    root = parser.parse(std::string(json)).extract<Poco::JSON::Object::Ptr>();
  } catch (const Poco::Exception& e) {
    return std::unexpected("not JSON: " + e.displayText());
  } catch (const std::exception&) {
    return std::unexpected("not a JSON object");
  }
  if (!root || !root->has("format") || root->get("format").toString() != kFormat) {
    return std::unexpected("not a smart-broker keyring state file");
  }
  if (!root->get("version").isInteger() || root->getValue<int>("version") != kVersion) {
    return std::unexpected("unsupported version (this smart-broker reads version " + std::to_string(kVersion) + ")");
  }
  RingState state;
  if (root->has("rotation_request") && !root->isNull("rotation_request")) {
    const auto request = root->getObject("rotation_request");
    auto at = request ? timeOf(*request, "requested_at") : std::unexpected(std::string("not an object"));
    if (!at || !*at || !request->has("immediate") || !request->get("immediate").isBoolean()) {
      return std::unexpected("rotation_request is malformed");
    }
    state.rotation_request = RotationRequest{**at, request->getValue<bool>("immediate")};
  }
  const auto keys = root->getArray("keys");
  if (!keys) {
    return std::unexpected("keys is missing or not an array");
  }
  for (std::size_t i = 0; i < keys->size(); ++i) {
    const auto record = keys->getObject(static_cast<unsigned>(i));
    if (!record) {
      return std::unexpected("keys[" + std::to_string(i) + "] is not an object");
    }
    auto parsed = parseRecord(*record);
    if (!parsed) {
      return std::unexpected("keys[" + std::to_string(i) + "]: " + parsed.error());
    }
    state.keys.push_back(std::move(*parsed));
  }
  if (auto problem = invariantProblem(state)) {
    return std::unexpected(*problem);
  }
  return state;
}

}  // namespace smartbroker::keyring::state_file
