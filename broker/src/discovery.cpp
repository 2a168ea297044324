// The SMART configuration and RFC 8414 metadata, rendered once from what the endpoints enforce.
#include "smartbroker/broker/discovery.hpp"

#include <Poco/JSON/Array.h>
#include <Poco/JSON/Object.h>
#include <Poco/JSON/Stringifier.h>

#include <sstream>

namespace smartbroker::broker {
namespace {

Poco::JSON::Array::Ptr array(std::initializer_list<std::string> items) {
  Poco::JSON::Array::Ptr out = new Poco::JSON::Array;
  for (const std::string& item : items) {
    out->add(item);
  }
  return out;
}

std::string render(const Poco::JSON::Object& obj) {
  std::ostringstream out;
  Poco::JSON::Stringifier::stringify(obj, out, 2);
  return out.str();
}

/// Members shared by both documents.
void addCommon(Poco::JSON::Object& doc, const config::Server& server, const std::vector<jwks::Alg>& algorithms) {
  doc.set("token_endpoint", server.tokenEndpoint());
  doc.set("jwks_uri", server.jwksUri());
  doc.set("grant_types_supported", array({"client_credentials"}));
  doc.set("token_endpoint_auth_methods_supported", array({"private_key_jwt"}));
  Poco::JSON::Array::Ptr algs = new Poco::JSON::Array;
  for (const jwks::Alg alg : algorithms) {
    algs->add(std::string(jwks::algName(alg)));
  }
  doc.set("token_endpoint_auth_signing_alg_values_supported", algs);
  doc.set("introspection_endpoint", server.introspectionEndpoint());
  doc.set("introspection_endpoint_auth_methods_supported", array({"private_key_jwt"}));
  doc.set("introspection_endpoint_auth_signing_alg_values_supported", Poco::JSON::Array::Ptr(new Poco::JSON::Array(*algs)));
  doc.set("revocation_endpoint", server.revocationEndpoint());
  doc.set("revocation_endpoint_auth_methods_supported", array({"private_key_jwt"}));
  doc.set("revocation_endpoint_auth_signing_alg_values_supported", Poco::JSON::Array::Ptr(new Poco::JSON::Array(*algs)));
  doc.set("scopes_supported", array({"system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*"}));
  // Advertised because SMART requires it of every server; there is no authorization endpoint, and `plain`
  // is never offered.
  doc.set("code_challenge_methods_supported", array({"S256"}));
}

}  // namespace

DiscoveryDocuments buildDiscovery(const config::Server& server, const std::vector<jwks::Alg>& algorithms) {
  // With no system registered the endpoint accepts nothing; the SPEC's required algorithms are still the
  // ones a registration gets by default, so they are what an integrator should prepare for.
  const std::vector<jwks::Alg> advertised =
      algorithms.empty() ? std::vector<jwks::Alg>{jwks::Alg::RS384, jwks::Alg::ES384} : algorithms;

  Poco::JSON::Object smart(Poco::JSON_PRESERVE_KEY_ORDER);
  addCommon(smart, server, advertised);
  smart.set("capabilities", array({"client-confidential-asymmetric", "permission-v1", "permission-v2"}));

  Poco::JSON::Object oauth(Poco::JSON_PRESERVE_KEY_ORDER);
  oauth.set("issuer", server.issuer());
  addCommon(oauth, server, advertised);
  // RFC 8414 §2 requires response_types_supported; with no authorization endpoint the honest value is empty.
  oauth.set("response_types_supported", Poco::JSON::Array::Ptr(new Poco::JSON::Array));

  return {render(smart), render(oauth)};
}

}  // namespace smartbroker::broker
