// Outbound HTTP of the consent module: the FHIR Consent read and the withdrawal notification POST.
#pragma once

#include <memory>

#include "smartbroker/broker/consent.hpp"
#include "smartbroker/config/config.hpp"

namespace smartbroker::broker {

/// GET {fhir_base_url}/Consent/{id} with `Accept: application/fhir+json`: https with certificate and host name
/// verification (system CAs, TLS 1.2+), plain http only to loopback hosts when allowed, no redirects, no proxy,
/// connect/read timeouts, the body capped at max_resource_bytes. 200 with a Consent whose id is the one asked
/// for: Found; 404: NotFound; 410: Gone; anything else (other statuses, wrong media type, bad JSON, another id,
/// network errors): Failed.
std::unique_ptr<ConsentSource> makeFhirConsentSource(const config::ConsentSettings& settings,
                                                     ConsentMapping mapping);

/// POSTs a notification body (application/json) to notification_url with the same transport rules; a 2xx
/// answer is delivery.
ConsentNotifier::Sender makeNotificationSender(const config::ConsentSettings& settings);

}  // namespace smartbroker::broker
