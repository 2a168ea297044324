// Unit tests for the JWK Set cache: HTTP freshness rules, stale window, kid-miss cooldown and single flight.
#define BOOST_TEST_MODULE jwks_cache
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "smartbroker/jwks/cache.hpp"
#include "smartbroker/jwks/fetch.hpp"

namespace smartbroker::jwks {
// For Boost.Test's messages.
inline std::ostream& operator<<(std::ostream& out, FetchFailure f) { return out << failureName(f); }
inline std::ostream& operator<<(std::ostream& out, FetchTrigger t) { return out << triggerName(t); }
}  // namespace smartbroker::jwks

namespace jw = smartbroker::jwks;
using namespace std::chrono_literals;
using jw::FetchFailure;

namespace {

const std::string kUri = "https://client.example.org/jwks.json";
const std::string kOtherUri = "https://other.example.org/jwks.json";

/// The single key of a TEST-ONLY JWK Set file in tests/data/keys, as JSON text.
std::string keyJson(const std::string& name) {
  std::ifstream in(std::string(SMARTBROKER_TEST_DATA) + "/keys/" + name + ".jwks.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  const std::size_t open = text.find('[');
  const std::size_t close = text.rfind(']');
  BOOST_REQUIRE(open != std::string::npos && close != std::string::npos);
  return text.substr(open + 1, close - open - 1);
}

std::string setOf(const std::vector<std::string>& names) {
  std::string out = R"({"keys":[)";
  for (std::size_t i = 0; i < names.size(); ++i) {
    out += (i == 0 ? "" : ",") + keyJson(names[i]);
  }
  return out + "]}";
}

std::set<std::string> kids(const jw::JwksCache::Result& r) {
  std::set<std::string> out;
  if (r && r->set) {
    for (const auto& key : r->set->keys) {
      out.insert(key.kid);
    }
  }
  return out;
}

class FakeClock final : public jw::SteadyClock {
 public:
  std::chrono::steady_clock::time_point now() const override {
    const std::lock_guard lock(mutex_);
    return now_;
  }
  void advance(std::chrono::steady_clock::duration d) {
    const std::lock_guard lock(mutex_);
    now_ += d;
  }

 private:
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point now_{std::chrono::hours(1000)};
};

jw::FetchedDocument document(std::string body, std::string cacheControl, std::optional<std::string> expires = {},
                             std::optional<std::string> date = std::string("Sun, 06 Nov 1994 08:49:37 GMT")) {
  jw::FetchedDocument d;
  d.body = std::move(body);
  d.cache.cache_control = std::move(cacheControl);
  d.cache.expires = std::move(expires);
  d.cache.date = std::move(date);
  return d;
}

/// Answers from `respond`; counts calls; can hold a fetch until released (for single-flight tests).
class FakeFetcher final : public jw::JwksFetcher {
 public:
  using Answer = std::expected<jw::FetchedDocument, jw::FetchError>;

  Answer fetch(const std::string& uri) override {
    ++calls_;
    {
      std::unique_lock lock(mutex_);
      ++started_;
      changed_.notify_all();
      changed_.wait(lock, [&] { return !held_.contains(uri); });
    }
    const std::lock_guard lock(respondMutex_);
    return respond_(uri);
  }

  void answer(std::function<Answer(const std::string&)> respond) {
    const std::lock_guard lock(respondMutex_);
    respond_ = std::move(respond);
  }
  void answer(Answer fixed) {
    answer([fixed](const std::string&) { return fixed; });
  }
  void hold(const std::string& uri) {
    const std::lock_guard lock(mutex_);
    held_.insert(uri);
  }
  void release(const std::string& uri) {
    const std::lock_guard lock(mutex_);
    held_.erase(uri);
    changed_.notify_all();
  }
  void waitForStarted(int n) {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return started_ >= n; });
  }
  int calls() const { return calls_.load(); }

 private:
  std::atomic<int> calls_{0};
  std::mutex mutex_;
  std::condition_variable changed_;
  std::set<std::string> held_;
  int started_ = 0;
  std::mutex respondMutex_;
  std::function<Answer(const std::string&)> respond_ = [](const std::string&) -> Answer {
    return std::unexpected(jw::FetchError{FetchFailure::Connect, "no answer configured", 0, 0});
  };
};

jw::FetchError failure(FetchFailure reason, int status = 0) { return jw::FetchError{reason, "test", status, 0}; }

struct Fixture {
  explicit Fixture(jw::CacheOptions o = options()) : cache(o, fetcher, clock, [this](const jw::FetchEvent& e) {
    const std::lock_guard lock(eventsMutex);
    events.push_back(Seen{e.error ? std::optional<FetchFailure>(e.error->reason) : std::nullopt, e.trigger,
                          e.skipped ? e.skipped->size() : 0, e.served_stale, std::string(e.client_id)});
  }) {}

  static jw::CacheOptions options() {
    jw::CacheOptions o;
    o.max_lifetime = 3600s;
    o.kid_miss_cooldown = 30s;
    o.serve_stale = 0s;
    return o;
  }

  jw::JwksCache::Result get() { return cache.get(kUri, "client-a"); }

  struct Seen {
    std::optional<FetchFailure> failure;
    jw::FetchTrigger trigger;
    std::size_t skipped;
    bool servedStale;
    std::string clientId;
  };
  FakeClock clock;
  FakeFetcher fetcher;
  std::mutex eventsMutex;
  std::vector<Seen> events;
  jw::JwksCache cache;
};

jw::CacheOptions withStale(std::chrono::seconds window) {
  auto o = Fixture::options();
  o.serve_stale = window;
  return o;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ freshness

BOOST_AUTO_TEST_SUITE(freshness)

jw::Freshness of(std::string cc, std::optional<std::string> expires = {},
                 std::optional<std::string> date = std::string("Sun, 06 Nov 1994 08:49:37 GMT"),
                 std::optional<std::string> age = {}) {
  return jw::freshnessOf(jw::CacheHeaders{std::move(cc), std::move(expires), std::move(date), std::move(age)});
}

BOOST_AUTO_TEST_CASE(takes_the_lifetime_from_max_age) {
  const auto f = of("public, max-age=300");
  BOOST_TEST(f.store);
  BOOST_TEST(f.may_serve_stale);
  BOOST_TEST(f.lifetime.value_or(-1s).count() == 300);
}

BOOST_AUTO_TEST_CASE(reads_directives_in_any_case_with_quoted_values_and_several_field_lines) {
  BOOST_TEST(of("Max-Age=\"120\"").lifetime.value_or(-1s).count() == 120);
  BOOST_TEST(!of("public,  MAX-AGE=60 , No-Store").store);
}

BOOST_AUTO_TEST_CASE(takes_the_smallest_of_repeated_max_age) {
  BOOST_TEST(of("max-age=600, max-age=60").lifetime.value_or(-1s).count() == 60);
}

BOOST_AUTO_TEST_CASE(treats_an_invalid_max_age_as_already_stale) {
  BOOST_TEST(of("max-age=-5").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("max-age=1.5").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("max-age=").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("max-age=300, max-age=abc").lifetime.value_or(-1s).count() == 0);
}

BOOST_AUTO_TEST_CASE(caps_a_huge_max_age_instead_of_overflowing) {
  BOOST_TEST(of("max-age=99999999999999999999999").lifetime.value_or(-1s).count() == 2147483648LL);
}

BOOST_AUTO_TEST_CASE(no_store_forbids_storing_and_serving_stale) {
  const auto f = of("max-age=300, no-store");
  BOOST_TEST(!f.store);
  BOOST_TEST(!f.may_serve_stale);
  BOOST_TEST(f.lifetime.value_or(-1s).count() == 0);
}

BOOST_AUTO_TEST_CASE(no_cache_means_revalidate_so_lifetime_zero_without_stale) {
  for (const std::string cc : {"no-cache", "max-age=300, no-cache", "no-cache=\"Set-Cookie\", max-age=300"}) {
    const auto f = of(cc);
    BOOST_TEST(f.store, cc);
    BOOST_TEST(!f.may_serve_stale, cc);
    BOOST_TEST(f.lifetime.value_or(-1s).count() == 0, cc);
  }
}

BOOST_AUTO_TEST_CASE(must_revalidate_forbids_serving_stale) {
  const auto f = of("max-age=300, must-revalidate");
  BOOST_TEST(f.lifetime.value_or(-1s).count() == 300);
  BOOST_TEST(!f.may_serve_stale);
  BOOST_TEST(!of("max-age=300, proxy-revalidate").may_serve_stale);
}

BOOST_AUTO_TEST_CASE(uses_expires_minus_date_without_max_age) {
  const auto f = of("", "Sun, 06 Nov 1994 08:59:37 GMT");
  BOOST_TEST(f.lifetime.value_or(-1s).count() == 600);
}

BOOST_AUTO_TEST_CASE(prefers_max_age_over_expires) {
  BOOST_TEST(of("max-age=30", "Sun, 06 Nov 1994 08:59:37 GMT").lifetime.value_or(-1s).count() == 30);
}

BOOST_AUTO_TEST_CASE(treats_an_unparsable_or_past_expires_as_already_expired) {
  BOOST_TEST(of("", "0").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("", "-1").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("", "Sun, 06 Nov 1994 08:00:00 GMT").lifetime.value_or(-1s).count() == 0);
  BOOST_TEST(of("", "Sun, 06 Nov 1994 08:59:37 GMT", std::nullopt).lifetime.value_or(-1s).count() == 0);
}

BOOST_AUTO_TEST_CASE(subtracts_the_age_the_response_already_has) {
  BOOST_TEST(of("max-age=300", {}, {}, "100").lifetime.value_or(-1s).count() == 200);
  BOOST_TEST(of("max-age=300", {}, {}, "400").lifetime.value_or(-1s).count() == 0);
}

BOOST_AUTO_TEST_CASE(reports_no_lifetime_when_the_response_states_none) {
  const auto f = of("public");
  BOOST_TEST(f.store);
  BOOST_TEST(!f.lifetime.has_value());
}

BOOST_AUTO_TEST_CASE(parses_the_three_http_date_forms) {
  const std::int64_t expected = 784111777;  // 1994-11-06T08:49:37Z
  BOOST_TEST(jw::parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT").value_or(0) == expected);
  BOOST_TEST(jw::parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT").value_or(0) == expected);
  BOOST_TEST(jw::parseHttpDate("Sun Nov  6 08:49:37 1994").value_or(0) == expected);
  BOOST_TEST(!jw::parseHttpDate("yesterday").has_value());
  BOOST_TEST(!jw::parseHttpDate("").has_value());
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------ content types

BOOST_AUTO_TEST_SUITE(content_type)

BOOST_AUTO_TEST_CASE(accepts_json_and_jwk_set_json_with_parameters) {
  BOOST_TEST(jw::acceptableJwksContentType("application/json"));
  BOOST_TEST(jw::acceptableJwksContentType("application/jwk-set+json"));
  BOOST_TEST(jw::acceptableJwksContentType("Application/JSON; charset=utf-8"));
  BOOST_TEST(jw::acceptableJwksContentType(" application/jwk-set+json ;charset=UTF-8"));
}

BOOST_AUTO_TEST_CASE(refuses_every_other_media_type) {
  BOOST_TEST(!jw::acceptableJwksContentType(""));
  BOOST_TEST(!jw::acceptableJwksContentType("text/html"));
  BOOST_TEST(!jw::acceptableJwksContentType("text/plain; charset=utf-8"));
  BOOST_TEST(!jw::acceptableJwksContentType("application/jsonp"));
  BOOST_TEST(!jw::acceptableJwksContentType("application/jwk+json"));
}

BOOST_AUTO_TEST_SUITE_END()

// ------------------------------------------------------------------------------------------------ cache

BOOST_AUTO_TEST_SUITE(caching)

BOOST_AUTO_TEST_CASE(reuses_a_set_exactly_as_long_as_max_age_allows) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=300"));
  BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});
  f.clock.advance(299s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 1);
  f.clock.advance(1s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(fetches_for_every_use_under_no_store) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "no-store, max-age=300"));
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});
  }
  BOOST_TEST(f.fetcher.calls() == 3);
}

BOOST_AUTO_TEST_CASE(fetches_for_every_use_under_no_cache) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "no-cache, max-age=300"));
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(reuses_a_set_until_expires_without_max_age) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "", "Sun, 06 Nov 1994 08:50:37 GMT"));  // Date + 60 s
  BOOST_TEST(f.get().has_value());
  f.clock.advance(59s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 1);
  f.clock.advance(1s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(never_reuses_a_set_beyond_the_configured_ceiling) {
  auto o = Fixture::options();
  o.max_lifetime = 60s;
  Fixture f(o);
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=86400"));
  BOOST_TEST(f.get().has_value());
  f.clock.advance(59s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 1);
  f.clock.advance(1s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(a_zero_ceiling_means_no_reuse_at_all) {
  auto o = Fixture::options();
  o.max_lifetime = 0s;
  Fixture f(o);
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=86400"));
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(does_not_reuse_a_response_without_freshness_information_by_default) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), ""));
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(applies_the_default_lifetime_only_when_the_response_states_none) {
  auto o = Fixture::options();
  o.default_lifetime = 120s;
  Fixture f(o);
  f.fetcher.answer(document(setOf({"rs384-client"}), "public"));
  BOOST_TEST(f.get().has_value());
  f.clock.advance(119s);
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 1);
  f.clock.advance(1s);
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=0"));
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.get().has_value());  // max-age=0 is a stated lifetime: the default does not lengthen it
  BOOST_TEST(f.fetcher.calls() == 3);
}

BOOST_AUTO_TEST_CASE(keeps_urls_apart) {
  Fixture f;
  f.fetcher.answer([](const std::string& uri) -> FakeFetcher::Answer {
    return document(setOf({uri == kUri ? "rs384-client" : "es384-client"}), "max-age=300");
  });
  BOOST_TEST(kids(f.cache.get(kUri, "a")) == std::set<std::string>{"rs384-client"});
  BOOST_TEST(kids(f.cache.get(kOtherUri, "b")) == std::set<std::string>{"es384-client"});
  BOOST_TEST(kids(f.cache.get(kUri, "a")) == std::set<std::string>{"rs384-client"});
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(stops_verifying_a_removed_key_once_the_set_expires) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client", "es384-client"}), "max-age=60"));
  BOOST_TEST(kids(f.get()).contains("es384-client"));
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
  f.clock.advance(59s);
  BOOST_TEST(kids(f.get()).contains("es384-client"));  // still allowed: the response said 60 s
  f.clock.advance(1s);
  BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});
}

BOOST_AUTO_TEST_CASE(drops_an_expired_set_when_the_refetch_fails) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
  BOOST_TEST(f.get().has_value());
  f.clock.advance(60s);
  f.fetcher.answer(std::unexpected(failure(FetchFailure::Connect)));
  const auto r = f.get();
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().reason == FetchFailure::Connect);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(serve_stale)

BOOST_AUTO_TEST_CASE(serves_an_expired_set_within_the_window_while_unreachable) {
  for (const auto& unreachable : {failure(FetchFailure::Dns), failure(FetchFailure::Connect),
                                  failure(FetchFailure::Timeout), failure(FetchFailure::Io),
                                  failure(FetchFailure::HttpStatus, 503)}) {
    Fixture f(withStale(120s));
    f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
    BOOST_TEST(f.get().has_value());
    f.clock.advance(61s);
    f.fetcher.answer(std::unexpected(unreachable));
    const auto r = f.get();
    BOOST_TEST_REQUIRE(r.has_value(), jw::failureName(unreachable.reason));
    BOOST_TEST(r->stale);
    BOOST_TEST(kids(r) == std::set<std::string>{"rs384-client"});
    BOOST_TEST(f.cache.stats().stale_served == 1U);
    BOOST_TEST(f.cache.stats().failed(unreachable.reason) == 1U);
    BOOST_TEST(f.events.back().servedStale);
  }
}

BOOST_AUTO_TEST_CASE(stops_serving_stale_when_the_window_ends) {
  Fixture f(withStale(120s));
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
  BOOST_TEST(f.get().has_value());
  f.fetcher.answer(std::unexpected(failure(FetchFailure::Connect)));
  f.clock.advance(61s);
  BOOST_TEST(f.get().has_value());   // fetch 2 fails; stale served
  f.clock.advance(29s);
  BOOST_TEST(f.get().has_value());   // failure remembered (cooldown 30 s): stale served without a fetch
  BOOST_TEST(f.fetcher.calls() == 2);
  f.clock.advance(91s);              // 181 s after the fetch: past max-age 60 + window 120
  const auto r = f.get();
  BOOST_TEST(!r.has_value());
  BOOST_TEST(f.fetcher.calls() == 3);
}

BOOST_AUTO_TEST_CASE(never_serves_stale_with_the_default_window_of_zero) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
  BOOST_TEST(f.get().has_value());
  f.clock.advance(60s);
  f.fetcher.answer(std::unexpected(failure(FetchFailure::Connect)));
  BOOST_TEST(!f.get().has_value());
}

BOOST_AUTO_TEST_CASE(never_serves_stale_when_the_url_answered) {
  for (const auto& answered : {failure(FetchFailure::HttpStatus, 404), failure(FetchFailure::Tls),
                               failure(FetchFailure::Redirect, 302), failure(FetchFailure::TooLarge),
                               failure(FetchFailure::ContentType), failure(FetchFailure::InvalidJwkSet)}) {
    Fixture f(withStale(120s));
    f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
    BOOST_TEST(f.get().has_value());
    f.clock.advance(61s);
    f.fetcher.answer(std::unexpected(answered));
    const auto r = f.get();
    BOOST_TEST_REQUIRE(!r.has_value(), jw::failureName(answered.reason));
    BOOST_TEST((r.error().reason == answered.reason));
  }
}

BOOST_AUTO_TEST_CASE(never_serves_stale_what_the_response_forbade) {
  for (const std::string cc : {"max-age=60, must-revalidate", "max-age=60, no-cache", "max-age=60, no-store"}) {
    Fixture f(withStale(120s));
    f.fetcher.answer(document(setOf({"rs384-client"}), cc));
    BOOST_TEST(f.get().has_value());
    f.clock.advance(61s);
    f.fetcher.answer(std::unexpected(failure(FetchFailure::Connect)));
    BOOST_TEST(!f.get().has_value(), cc);
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(failures)

BOOST_AUTO_TEST_CASE(remembers_a_failure_for_the_cooldown) {
  Fixture f;
  f.fetcher.answer(std::unexpected(failure(FetchFailure::HttpStatus, 500)));
  for (int i = 0; i < 5; ++i) {
    const auto r = f.get();
    BOOST_TEST_REQUIRE(!r.has_value());
    BOOST_TEST(r.error().status == 500);
  }
  BOOST_TEST(f.fetcher.calls() == 1);
  f.clock.advance(30s);
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=300"));
  BOOST_TEST(f.get().has_value());
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(reports_a_document_that_is_not_a_jwk_set) {
  Fixture f;
  f.fetcher.answer(document("<html>not json</html>", "max-age=300"));
  const auto r = f.get();
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST((r.error().reason == FetchFailure::InvalidJwkSet));
  BOOST_TEST(f.cache.stats().failed(FetchFailure::InvalidJwkSet) == 1U);
}

BOOST_AUTO_TEST_CASE(reports_a_set_with_duplicate_kids_as_invalid) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client", "rs384-client"}), "max-age=300"));
  const auto r = f.get();
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST((r.error().reason == FetchFailure::InvalidJwkSet));
}

BOOST_AUTO_TEST_CASE(reports_a_set_without_usable_keys) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rsa1024", "p521"}), "max-age=300"));
  auto r = f.get();
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST((r.error().reason == FetchFailure::NoUsableKeys));
  f.clock.advance(30s);
  f.fetcher.answer(document(R"({"keys":[]})", "max-age=300"));
  r = f.get();
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST((r.error().reason == FetchFailure::NoUsableKeys));
  BOOST_TEST(f.cache.stats().failed(FetchFailure::NoUsableKeys) == 2U);
}

BOOST_AUTO_TEST_CASE(skips_and_reports_bad_keys_next_to_good_ones) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rsa1024", "rs384-client"}), "max-age=300"));
  BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});
  BOOST_TEST_REQUIRE(f.events.size() == 1U);
  BOOST_TEST(f.events[0].skipped == 1U);
  BOOST_TEST(!f.events[0].failure.has_value());
  BOOST_TEST(f.events[0].clientId == "client-a");
}

BOOST_AUTO_TEST_CASE(counts_each_failure_reason_separately) {
  Fixture f;
  const std::vector<FetchFailure> reasons{FetchFailure::Dns, FetchFailure::Connect, FetchFailure::Tls,
                                          FetchFailure::Timeout, FetchFailure::Redirect, FetchFailure::TooLarge};
  for (const FetchFailure reason : reasons) {
    f.fetcher.answer(std::unexpected(failure(reason)));
    BOOST_TEST(!f.get().has_value());
    f.clock.advance(30s);
  }
  const auto stats = f.cache.stats();
  BOOST_TEST(stats.fetches == reasons.size());
  BOOST_TEST(stats.successes == 0U);
  for (const FetchFailure reason : reasons) {
    BOOST_TEST(stats.failed(reason) == 1U, jw::failureName(reason));
  }
  BOOST_TEST(stats.failed(FetchFailure::HttpStatus) == 0U);
  BOOST_TEST(f.events.size() == reasons.size());
}

BOOST_AUTO_TEST_CASE(names_every_failure_reason_distinctly) {
  std::set<std::string_view> names;
  for (std::size_t i = 0; i < jw::kFetchFailureCount; ++i) {
    names.insert(jw::failureName(static_cast<FetchFailure>(i)));
  }
  BOOST_TEST(names.size() == jw::kFetchFailureCount);
  BOOST_TEST(!names.contains("unknown"));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(kid_miss)

BOOST_AUTO_TEST_CASE(a_new_kid_works_on_first_use_after_rotation) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=3600"));
  const auto first = f.get();
  BOOST_TEST(kids(first) == std::set<std::string>{"rs384-client"});
  f.fetcher.answer(document(setOf({"rs384-client", "es384-client"}), "max-age=3600"));
  f.clock.advance(31s);
  const auto seen = f.get();  // still fresh: no fetch
  BOOST_TEST(f.fetcher.calls() == 1);
  const auto refreshed = f.cache.refreshAfterMiss(kUri, "client-a", *seen);
  BOOST_TEST(kids(refreshed).contains("es384-client"));
  BOOST_TEST(f.fetcher.calls() == 2);
  BOOST_TEST((f.events.back().trigger == jw::FetchTrigger::KidMiss));
  BOOST_TEST(f.cache.stats().kid_miss_refetches == 1U);
}

BOOST_AUTO_TEST_CASE(refetches_at_most_once_per_cooldown_and_caches_the_miss) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=3600"));
  auto seen = *f.get();
  f.clock.advance(31s);
  for (int i = 0; i < 10; ++i) {
    seen = *f.cache.refreshAfterMiss(kUri, "client-a", seen);
    f.clock.advance(1s);
  }
  BOOST_TEST(f.fetcher.calls() == 2);  // the first miss refetched; nine more within 30 s did not
  f.clock.advance(21s);                // 31 s after the refetch
  (void)f.cache.refreshAfterMiss(kUri, "client-a", seen);
  BOOST_TEST(f.fetcher.calls() == 3);
}

BOOST_AUTO_TEST_CASE(does_not_refetch_on_a_miss_right_after_a_fetch) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "no-store"));
  const auto seen = *f.get();  // fetched now, for this use
  const auto again = f.cache.refreshAfterMiss(kUri, "client-a", seen);
  BOOST_TEST(f.fetcher.calls() == 1);
  BOOST_TEST_REQUIRE(again.has_value());
  BOOST_TEST(again->generation == seen.generation);
}

BOOST_AUTO_TEST_CASE(uses_a_set_fetched_since_the_caller_looked) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=60"));
  const auto old = *f.get();
  f.clock.advance(60s);
  f.fetcher.answer(document(setOf({"rs384-client", "es384-client"}), "max-age=60"));
  BOOST_TEST(f.get().has_value());  // another request refetched
  const auto r = f.cache.refreshAfterMiss(kUri, "client-a", old);
  BOOST_TEST(kids(r).contains("es384-client"));
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(reports_a_failed_refresh_and_keeps_the_fresh_set) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=3600"));
  const auto seen = *f.get();
  f.clock.advance(31s);
  f.fetcher.answer(std::unexpected(failure(FetchFailure::Timeout)));
  const auto r = f.cache.refreshAfterMiss(kUri, "client-a", seen);
  BOOST_TEST_REQUIRE(!r.has_value());
  BOOST_TEST((r.error().reason == FetchFailure::Timeout));
  BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});  // the fresh set still serves known kids
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(single_flight)

BOOST_AUTO_TEST_CASE(fifty_concurrent_kid_misses_cause_one_fetch) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=3600"));
  const auto seen = *f.get();
  f.clock.advance(31s);
  f.fetcher.answer(document(setOf({"rs384-client", "es384-client"}), "max-age=3600"));
  f.fetcher.hold(kUri);
  std::atomic<int> found{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      if (kids(f.cache.refreshAfterMiss(kUri, "client-a", seen)).contains("es384-client")) {
        ++found;
      }
    });
  }
  f.fetcher.waitForStarted(2);  // the initial fetch was 1
  std::this_thread::sleep_for(100ms);  // let the other 49 reach the wait (late ones find the new set instead)
  f.fetcher.release(kUri);
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST_MESSAGE("fetches for 50 concurrent kid misses: " << f.fetcher.calls() - 1);
  BOOST_TEST(f.fetcher.calls() == 2);
  BOOST_TEST(found.load() == 50);
}

BOOST_AUTO_TEST_CASE(fifty_concurrent_first_uses_cause_one_fetch_even_under_no_store) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "no-store"));
  f.fetcher.hold(kUri);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 50; ++i) {
    threads.emplace_back([&] {
      if (f.get().has_value()) {
        ++ok;
      }
    });
  }
  f.fetcher.waitForStarted(1);
  std::this_thread::sleep_for(200ms);
  f.fetcher.release(kUri);
  for (auto& t : threads) {
    t.join();
  }
  // Threads that had not yet reached the cache when the fetch completed fetch again (no-store), so the count is
  // at least 1; all that waited shared the one in flight.
  BOOST_TEST(ok.load() == 50);
  BOOST_TEST(f.fetcher.calls() >= 1);
  BOOST_TEST(f.fetcher.calls() < 50);
}

BOOST_AUTO_TEST_CASE(concurrent_waiters_share_a_failure) {
  Fixture f;
  f.fetcher.answer(std::unexpected(failure(FetchFailure::Timeout)));
  f.fetcher.hold(kUri);
  std::atomic<int> timeouts{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 20; ++i) {
    threads.emplace_back([&] {
      const auto r = f.get();
      if (!r && r.error().reason == FetchFailure::Timeout) {
        ++timeouts;
      }
    });
  }
  f.fetcher.waitForStarted(1);
  std::this_thread::sleep_for(100ms);
  f.fetcher.release(kUri);
  for (auto& t : threads) {
    t.join();
  }
  BOOST_TEST(timeouts.load() == 20);
  BOOST_TEST(f.fetcher.calls() == 1);  // late arrivals hit the remembered failure
}

BOOST_AUTO_TEST_CASE(a_slow_fetch_does_not_block_other_urls) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=300"));
  f.fetcher.hold(kUri);
  std::thread slow([&] { (void)f.cache.get(kUri, "slow-client"); });
  f.fetcher.waitForStarted(1);
  const auto other = f.cache.get(kOtherUri, "other-client");  // must complete while kUri's fetch is held
  BOOST_TEST(other.has_value());
  f.fetcher.release(kUri);
  slow.join();
  BOOST_TEST(f.fetcher.calls() == 2);
}

BOOST_AUTO_TEST_CASE(a_fresh_set_is_served_while_a_refresh_is_in_flight) {
  Fixture f;
  f.fetcher.answer(document(setOf({"rs384-client"}), "max-age=3600"));
  const auto seen = *f.get();
  f.clock.advance(31s);
  f.fetcher.hold(kUri);
  std::thread refresher([&] { (void)f.cache.refreshAfterMiss(kUri, "client-a", seen); });
  f.fetcher.waitForStarted(2);
  BOOST_TEST(kids(f.get()) == std::set<std::string>{"rs384-client"});  // known kids are not held up
  f.fetcher.release(kUri);
  refresher.join();
}

BOOST_AUTO_TEST_SUITE_END()
