// POCO HTTP(S) client for the consent module: verified TLS, loopback-only plain http, no redirects, capped bodies.
#include "consent_http.hpp"

#include <Poco/Exception.h>
#include <Poco/Net/Context.h>
#include <Poco/Net/HTTPClientSession.h>
#include <Poco/Net/HTTPRequest.h>
#include <Poco/Net/HTTPResponse.h>
#include <Poco/Net/HTTPSClientSession.h>
#include <Poco/Net/NetSSL.h>
#include <Poco/String.h>
#include <Poco/Timespan.h>
#include <Poco/URI.h>

#include <array>
#include <expected>
#include <string>

namespace smartbroker::broker {
namespace {

struct Answer {
  int status = 0;
  std::string content_type;
  std::string body;
};

bool isLoopbackName(const std::string& host) {
  const std::string h = Poco::toLower(host);
  return h == "127.0.0.1" || h == "::1" || h == "localhost";
}

/// One request per call, no connection reuse: these calls are rare (cache misses, withdrawals).
/// Timeouts bound the connect and each read; a peer trickling bytes is bounded by the body cap.
class HttpClient {
 public:
  explicit HttpClient(const config::ConsentSettings& settings)
      : connect_(settings.connect_timeout.count(), 0),
        read_(settings.read_timeout.count(), 0),
        maxBytes_(settings.max_resource_bytes),
        allowHttpLoopback_(settings.allow_http_loopback) {
    Poco::Net::initializeSSL();
    Poco::Net::Context::Params params;
    // Why: the consent answer decides who gets tokens; an unverified peer could forge it.
    params.verificationMode = Poco::Net::Context::VERIFY_STRICT;
    params.loadDefaultCAs = true;
    params.verificationDepth = 9;
    params.cipherList = "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES";
    context_ = new Poco::Net::Context(Poco::Net::Context::TLS_CLIENT_USE, params);
    context_->requireMinimumProtocol(Poco::Net::Context::PROTO_TLSV1_2);
  }
  ~HttpClient() {
    context_.reset();
    Poco::Net::uninitializeSSL();
  }
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  std::expected<Answer, std::string> send(const std::string& method, const std::string& url, const std::string& body,
                                          const std::string& contentType, const std::string& accept) const {
    try {
      return sendUnguarded(method, url, body, contentType, accept);
    } catch (const Poco::Exception& e) {
      return std::unexpected(e.displayText());
    } catch (const std::exception& e) {
      return std::unexpected(std::string("unexpected: ") + e.what());
    }
  }

 private:
  std::expected<Answer, std::string> sendUnguarded(const std::string& method, const std::string& url,
                                                   const std::string& body, const std::string& contentType,
                                                   const std::string& accept) const {
    const Poco::URI uri(url);
    const bool https = uri.getScheme() == "https";
    if (!https && uri.getScheme() != "http") {
      return std::unexpected("scheme must be https");
    }
    // Configuration refuses these already; checked again so that this client is safe on its own.
    if (!https && (!allowHttpLoopback_ || !isLoopbackName(uri.getHost()))) {
      return std::unexpected("plain http is allowed only to loopback hosts, and only when configured");
    }
    std::unique_ptr<Poco::Net::HTTPClientSession> session;
    if (https) {
      // The session verifies the certificate against the URL's host name and sends it as SNI.
      session = std::make_unique<Poco::Net::HTTPSClientSession>(uri.getHost(), uri.getPort(), context_);
    } else {
      session = std::make_unique<Poco::Net::HTTPClientSession>(uri.getHost(), uri.getPort());
    }
    session->setProxyConfig(Poco::Net::HTTPClientSession::ProxyConfig());
    session->setKeepAlive(false);
    session->setTimeout(connect_, read_, read_);
    const std::string target = uri.getPathAndQuery().empty() ? "/" : uri.getPathAndQuery();
    Poco::Net::HTTPRequest request(method, target, Poco::Net::HTTPMessage::HTTP_1_1);
    request.setHost(uri.getHost(), uri.getPort());
    request.set("Accept", accept);
    request.set("User-Agent", "smart-broker");
    request.setKeepAlive(false);
    if (!contentType.empty()) {
      request.setContentType(contentType);
    }
    if (method == Poco::Net::HTTPRequest::HTTP_POST || !body.empty()) {
      request.setContentLength64(static_cast<Poco::Int64>(body.size()));
    }
    session->sendRequest(request) << body;
    Poco::Net::HTTPResponse response;
    std::istream& in = session->receiveResponse(response);
    Answer answer;
    answer.status = static_cast<int>(response.getStatus());
    answer.content_type = response.getContentType();
    if (response.hasContentLength() && response.getContentLength64() > static_cast<Poco::Int64>(maxBytes_)) {
      return std::unexpected("response body over " + std::to_string(maxBytes_) + " bytes");
    }
    std::array<char, 8192> buffer{};
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      answer.body.append(buffer.data(), static_cast<std::size_t>(in.gcount()));
      if (answer.body.size() > maxBytes_) {
        return std::unexpected("response body over " + std::to_string(maxBytes_) + " bytes");
      }
    }
    return answer;
  }

  Poco::Timespan connect_;
  Poco::Timespan read_;
  std::size_t maxBytes_;
  bool allowHttpLoopback_;
  Poco::Net::Context::Ptr context_;
};

bool isFhirJson(const std::string& contentType) {
  std::string type = Poco::toLower(contentType.substr(0, contentType.find(';')));
  Poco::trimInPlace(type);
  return type == "application/fhir+json" || type == "application/json";
}

class FhirConsentSource final : public ConsentSource {
 public:
  FhirConsentSource(const config::ConsentSettings& settings, ConsentMapping mapping)
      : base_(settings.fhir_base_url), mapping_(std::move(mapping)), http_(settings) {}

  ConsentLookup fetch(const std::string& id) override {
    ConsentLookup out;
    out.id = id;
    // Ids were validated as FHIR ids ([A-Za-z0-9.-]) at registration and in tokens we signed: safe in a path.
    const auto answer = http_.send("GET", base_ + "/Consent/" + id, "", "", "application/fhir+json");
    if (!answer) {
      out.detail = answer.error();
      return out;
    }
    if (answer->status == 404) {
      out.outcome = ConsentLookup::Outcome::NotFound;
      return out;
    }
    if (answer->status == 410) {
      out.outcome = ConsentLookup::Outcome::Gone;
      return out;
    }
    if (answer->status != 200) {
      // 3xx included: a redirect is never followed.
      out.detail = "HTTP " + std::to_string(answer->status);
      return out;
    }
    if (!isFhirJson(answer->content_type)) {
      out.detail = "Content-Type " + answer->content_type.substr(0, 64);
      return out;
    }
    auto record = parseConsentResource(answer->body, mapping_);
    if (!record) {
      out.detail = record.error();
      return out;
    }
    if (record->id != id) {
      out.detail = "the server returned a Consent with another id";
      return out;
    }
    out.outcome = ConsentLookup::Outcome::Found;
    out.record = std::move(*record);
    return out;
  }

 private:
  std::string base_;
  ConsentMapping mapping_;
  HttpClient http_;
};

}  // namespace

std::unique_ptr<ConsentSource> makeFhirConsentSource(const config::ConsentSettings& settings,
                                                     ConsentMapping mapping) {
  return std::make_unique<FhirConsentSource>(settings, std::move(mapping));
}

ConsentNotifier::Sender makeNotificationSender(const config::ConsentSettings& settings) {
  auto http = std::make_shared<HttpClient>(settings);
  const std::string url = settings.notification_url.value_or("");
  return [http, url](const std::string& body) -> std::expected<void, std::string> {
    const auto answer = http->send("POST", url, body, "application/json", "application/json");
    if (!answer) {
      return std::unexpected(answer.error());
    }
    if (answer->status < 200 || answer->status > 299) {
      return std::unexpected("HTTP " + std::to_string(answer->status));
    }
    return {};
  };
}

}  // namespace smartbroker::broker
