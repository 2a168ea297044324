// Tests of the signing-key lifecycle: the pure state machine under an injected clock, the files on disk
// (permissions, encryption at rest), and the broker's manager and an operator's commands working at the same time.
#define BOOST_TEST_MODULE keyring_lifecycle
#include <boost/test/unit_test.hpp>

#include <sys/file.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "smartbroker/jwks/base64url.hpp"
#include "smartbroker/jwks/jwk.hpp"
#include "smartbroker/keyring/keyring.hpp"
#include "smartbroker/keyring/lifecycle.hpp"
#include "smartbroker/keyring/manager.hpp"
#include "smartbroker/keyring/signing_key.hpp"

#include "test_support.hpp"

// Boost.Test printers for failure messages (internal linkage, found by ADL).
namespace smartbroker::jwks {
[[maybe_unused]] static std::ostream& boost_test_print_type(std::ostream& os, Alg alg) { return os << algName(alg); }
}  // namespace smartbroker::jwks
namespace smartbroker::keyring {
[[maybe_unused]] static std::ostream& boost_test_print_type(std::ostream& os, KeyState s) {
  return os << keyStateName(s);
}
}  // namespace smartbroker::keyring

namespace {

namespace fs = std::filesystem;
namespace jw = smartbroker::jwks;
namespace kr = smartbroker::keyring;
using kr::KeyState;

constexpr std::int64_t kT0 = test_support::kFixedNow;

/// A policy with small numbers: rotate every 100 s, publish 20 s ahead, cache 10 s, tokens 30 s, skew 5 s, grace 7 s.
kr::Policy smallPolicy() {
  kr::Policy p;
  p.rotation_period = 100;
  p.lead_time = 20;
  p.jwks_max_age = 10;
  p.max_token_lifetime = 30;
  p.clock_skew = 5;
  p.retirement_grace = 7;
  return p;
}

/// Mints records without key material (the lifecycle never looks at it): kid-1, kid-2, ...
struct FakeMint {
  int made = 0;
  bool fail = false;
  kr::MintKey fn() {
    return [this](jw::Alg alg, std::int64_t now) -> std::expected<kr::KeyRecord, std::string> {
      if (fail) {
        return std::unexpected("no entropy today");
      }
      kr::KeyRecord k;
      k.kid = "kid-" + std::to_string(++made);
      k.alg = alg;
      k.public_jwk = "{}";
      k.created_at = now;
      return k;
    };
  }
};

const kr::KeyRecord& key(const kr::RingState& s, const std::string& kid) {
  const kr::KeyRecord* k = s.find(kid);
  BOOST_REQUIRE_MESSAGE(k != nullptr, "no record " << kid);
  return *k;
}

std::size_t countIn(const kr::RingState& s, KeyState state) {
  return static_cast<std::size_t>(std::ranges::count(s.keys, state, &kr::KeyRecord::state));
}

kr::PolicyResult tickAt(kr::RingState& s, const kr::Policy& p, std::int64_t now, FakeMint& mint) {
  auto r = kr::applyPolicy(s, p, now, mint.fn());
  BOOST_REQUIRE_MESSAGE(r.has_value(), r.error());
  return *r;
}

bool hasEvent(const kr::PolicyResult& r, const std::string& name, bool warning = false) {
  return std::ranges::any_of(r.events, [&](const kr::Event& e) { return e.name == name && e.warning == warning; });
}

/// A ring with kid-1 active since kT0 (first tick at kT0).
kr::RingState startedRing(const kr::Policy& p, FakeMint& mint) {
  kr::RingState s;
  tickAt(s, p, kT0, mint);
  return s;
}

/// A state directory; the keyring keeps its files in keys/.
class TempDir : public test_support::TempDir {
 public:
  fs::path keys() const { return path() / "keys"; }
};

unsigned modeOf(const fs::path& p) {
  struct stat st{};
  BOOST_REQUIRE(::stat(p.c_str(), &st) == 0);
  return static_cast<unsigned>(st.st_mode & 07777);
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void writeFile(const fs::path& p, const std::string& content, unsigned mode = 0600) {
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << content;
  }
  fs::permissions(p, static_cast<fs::perms>(mode));
}

using FakeClock = test_support::FakeClock<>;  ///< starts at kT0

kr::KeyringOptions options(const TempDir& dir, FakeClock& clock, kr::Policy p = smallPolicy(), std::string kek = {}) {
  kr::KeyringOptions o;
  o.state_directory = dir.path().string();
  o.policy = p;
  o.kek = std::move(kek);
  o.now = clock.fn();
  return o;
}

std::unique_ptr<kr::KeyringManager> openManager(kr::KeyringOptions o) {
  auto m = kr::KeyringManager::open(std::move(o));
  BOOST_REQUIRE_MESSAGE(m.has_value(), m.error());
  return std::move(*m);
}

std::set<std::string> publishedKids(const kr::KeySet& set) {
  std::set<std::string> out;
  for (const auto& k : set.published) {
    out.insert(k.kid);
  }
  return out;
}

std::string kek(char fill) { return std::string(32, fill); }

std::vector<fs::path> keyFiles(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.ends_with(".pem") || name.ends_with(".pem.sealed")) {
      out.push_back(e.path());
    }
  }
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(lifecycle_policy)

BOOST_AUTO_TEST_CASE(first_tick_on_an_empty_ring_creates_and_activates_one_key_without_warning) {
  FakeMint mint;
  kr::RingState s;
  const auto r = tickAt(s, smallPolicy(), kT0, mint);
  BOOST_TEST(r.changed);
  BOOST_REQUIRE_EQUAL(s.keys.size(), 1U);
  BOOST_TEST(s.keys[0].state == KeyState::Active);
  BOOST_TEST(s.keys[0].activated_at.value_or(-1) == kT0);
  BOOST_TEST(s.keys[0].published_at.value_or(-1) == kT0);
  BOOST_TEST(hasEvent(r, "key_activated"));
  BOOST_TEST(std::ranges::none_of(r.events, &kr::Event::warning));
}

BOOST_AUTO_TEST_CASE(walks_a_key_through_pending_active_retired_removed_on_schedule) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  // The successor is staged so that it has been published for the lead time (+1 s) when the period ends.
  const std::int64_t stageAt = kT0 + p.rotation_period - p.lead_time - 1;
  for (std::int64_t t = kT0 + 1; t < stageAt; ++t) {
    BOOST_TEST_REQUIRE(!tickAt(s, p, t, mint).changed, "t=" << t - kT0);
  }
  auto r = tickAt(s, p, stageAt, mint);
  BOOST_TEST(hasEvent(r, "key_created"));
  BOOST_TEST(key(s, "kid-2").state == KeyState::Pending);
  BOOST_TEST(key(s, "kid-2").published_at.value_or(-1) == stageAt);
  // Pending: published, not signing, until the period of kid-1 has ended.
  for (std::int64_t t = stageAt + 1; t < kT0 + p.rotation_period; ++t) {
    tickAt(s, p, t, mint);
    BOOST_TEST_REQUIRE(key(s, "kid-2").state == KeyState::Pending, "t=" << t - kT0);
    BOOST_TEST_REQUIRE(key(s, "kid-1").state == KeyState::Active);
  }
  r = tickAt(s, p, kT0 + p.rotation_period, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Retired);
  BOOST_TEST(key(s, "kid-1").retired_at.value_or(-1) == kT0 + p.rotation_period);
  BOOST_TEST(hasEvent(r, "key_activated"));
  BOOST_TEST(hasEvent(r, "key_retired"));
  // The new key has been published for longer than the lead time before it signed.
  BOOST_TEST(*key(s, "kid-2").activated_at - *key(s, "kid-2").published_at > p.lead_time);
  // Retired: stays published for token lifetime + skew + grace + margin after its last signature.
  const std::int64_t removeAt = kT0 + p.rotation_period + p.retention();
  BOOST_TEST(p.retention() == 30 + 5 + 7 + kr::kPropagationMargin);
  for (std::int64_t t = kT0 + p.rotation_period + 1; t < removeAt; ++t) {
    tickAt(s, p, t, mint);
    BOOST_TEST_REQUIRE(key(s, "kid-1").state == KeyState::Retired, "t=" << t - kT0);
  }
  r = tickAt(s, p, removeAt, mint);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Removed);
  BOOST_TEST(key(s, "kid-1").ended_at.value_or(-1) == removeAt);
  BOOST_TEST(!key(s, "kid-1").published());
  BOOST_TEST(hasEvent(r, "key_removed"));
}

BOOST_AUTO_TEST_CASE(exactly_one_key_is_active_and_none_signs_before_its_lead_time_over_many_rotations) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  std::string lastActive = "kid-1";
  int rotations = 0;
  for (std::int64_t t = kT0 + 1; t < kT0 + 1000; ++t) {
    tickAt(s, p, t, mint);
    BOOST_TEST_REQUIRE(countIn(s, KeyState::Active) == 1U, "t=" << t - kT0);
    const kr::KeyRecord& active = *s.active();
    if (active.kid != lastActive) {
      ++rotations;
      BOOST_TEST_REQUIRE(t - *active.published_at > p.lead_time);
      BOOST_TEST_REQUIRE(t - *active.published_at > p.jwks_max_age);
      lastActive = active.kid;
    }
  }
  BOOST_TEST(rotations == 9);
  // Only the keys whose tokens may still be live are published: the active one, its successor, one retiree at most.
  BOOST_TEST(std::ranges::count_if(s.keys, &kr::KeyRecord::published) <= 3);
}

BOOST_AUTO_TEST_CASE(a_shared_keyring_stages_and_activates_with_the_propagation_delay_and_keeps_the_schedule) {
  FakeMint mint;
  kr::Policy p = smallPolicy();
  p.propagation_delay = kr::kSharedPropagationDelay;
  kr::RingState s = startedRing(p, mint);
  // Staged lead + 1 + delay before the period ends, so that it still takes over on time.
  BOOST_TEST(!hasEvent(tickAt(s, p, kT0 + 100 - 20 - 1 - 3, mint), "key_created"));
  BOOST_TEST(hasEvent(tickAt(s, p, kT0 + 100 - 20 - 1 - 2, mint), "key_created"));
  const kr::KeyRecord& staged = key(s, "kid-2");
  BOOST_TEST(kr::readyAt(staged, p).value_or(0) == kT0 + 77 + 20 + 1 + 2);
  // Never before every instance has served it for the whole lead time.
  BOOST_TEST(!hasEvent(tickAt(s, p, kT0 + 99, mint), "key_activated"));
  BOOST_TEST(hasEvent(tickAt(s, p, kT0 + 100, mint), "key_activated"));
  kr::Policy negative = smallPolicy();
  negative.propagation_delay = -1;
  BOOST_TEST(negative.problem().value_or("").find("propagation delay") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_pending_key_never_activates_before_the_lead_time_even_when_asked_to_as_soon_as_safe) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  auto out = kr::rotateKeys(s, p, kT0 + 5, false);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(out->needs_broker);
  BOOST_TEST(s.rotation_request.has_value());
  tickAt(s, p, kT0 + 6, mint);  // the broker fulfils the request: kid-2 staged and published at +6
  BOOST_TEST(!s.rotation_request.has_value());
  BOOST_TEST(key(s, "kid-2").state == KeyState::Pending);
  BOOST_TEST(key(s, "kid-2").activate_after == 0);
  for (std::int64_t t = kT0 + 7; t <= kT0 + 6 + p.lead_time; ++t) {
    tickAt(s, p, t, mint);
    BOOST_TEST_REQUIRE(key(s, "kid-2").state == KeyState::Pending, "t=" << t - kT0);
  }
  tickAt(s, p, kT0 + 6 + p.lead_time + 1, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Retired);
}

BOOST_AUTO_TEST_CASE(rotate_asks_a_scheduled_pending_key_to_activate_as_soon_as_it_is_safe) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);  // staged for kT0 + 100
  BOOST_REQUIRE(key(s, "kid-2").activate_after == kT0 + 100);
  auto out = kr::rotateKeys(s, p, kT0 + 80, false);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(out->summary.find("already staged") != std::string::npos, out->summary);
  BOOST_TEST(key(s, "kid-2").activate_after == 0);
  tickAt(s, p, kT0 + 79 + p.lead_time, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Pending);
  tickAt(s, p, kT0 + 79 + p.lead_time + 1, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(rotate_now_with_a_ready_pending_key_activates_it_without_a_warning) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);
  auto out = kr::rotateKeys(s, p, kT0 + 79 + p.lead_time + 1, true);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(out->warnings.empty());
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Retired);
}

BOOST_AUTO_TEST_CASE(rotate_now_with_an_unready_pending_key_activates_it_and_warns_about_cached_jwks) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);
  auto out = kr::rotateKeys(s, p, kT0 + 82, true);
  BOOST_REQUIRE(out.has_value());
  BOOST_REQUIRE_EQUAL(out->warnings.size(), 1U);
  BOOST_TEST(out->warnings[0].find("reject") != std::string::npos, out->warnings[0]);
  BOOST_TEST(out->warnings[0].find("refetch") != std::string::npos, out->warnings[0]);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(countIn(s, KeyState::Active) == 1U);
}

BOOST_AUTO_TEST_CASE(rotate_now_without_a_pending_key_has_the_broker_activate_a_new_key_at_once_with_a_warning) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  auto out = kr::rotateKeys(s, p, kT0 + 10, true);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(out->needs_broker);
  BOOST_REQUIRE_EQUAL(out->warnings.size(), 1U);
  BOOST_TEST(out->warnings[0].find("resource servers caching the old JWKS") != std::string::npos, out->warnings[0]);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);  // nothing changes until the broker has the new key
  const auto r = tickAt(s, p, kT0 + 11, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Retired);
  BOOST_TEST(hasEvent(r, "key_activated_early", true));
  BOOST_TEST(!s.rotation_request.has_value());
}

BOOST_AUTO_TEST_CASE(repeated_rotate_requests_are_one_request) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  BOOST_REQUIRE(kr::rotateKeys(s, p, kT0 + 1, false).has_value());
  auto again = kr::rotateKeys(s, p, kT0 + 2, false);
  BOOST_REQUIRE(again.has_value());
  BOOST_TEST(!again->changed);
  BOOST_TEST(again->summary.find("already requested") != std::string::npos);
  tickAt(s, p, kT0 + 3, mint);
  BOOST_TEST(countIn(s, KeyState::Pending) == 1U);
}

BOOST_AUTO_TEST_CASE(retire_withdraws_a_pending_key_that_never_signed) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);
  auto out = kr::retireKey(s, p, "kid-2", kT0 + 80);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(key(s, "kid-2").state == KeyState::Removed);
  BOOST_TEST(!key(s, "kid-2").published());
  // The schedule stages another one.
  tickAt(s, p, kT0 + 81, mint);
  BOOST_TEST(key(s, "kid-3").state == KeyState::Pending);
}

BOOST_AUTO_TEST_CASE(retire_refuses_the_active_key_without_a_ready_successor_and_hands_over_to_a_ready_one) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  auto refused = kr::retireKey(s, p, "kid-1", kT0 + 10);
  BOOST_REQUIRE(!refused.has_value());
  BOOST_TEST(refused.error().find("active signing key") != std::string::npos, refused.error());
  BOOST_TEST(refused.error().find("keys rotate") != std::string::npos, refused.error());
  tickAt(s, p, kT0 + 79, mint);
  refused = kr::retireKey(s, p, "kid-1", kT0 + 80);  // staged, not ready yet
  BOOST_REQUIRE(!refused.has_value());
  BOOST_TEST(refused.error().find("ready at") != std::string::npos, refused.error());
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);
  auto out = kr::retireKey(s, p, "kid-1", kT0 + 79 + p.lead_time + 1);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(key(s, "kid-1").state == KeyState::Retired);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(retire_refuses_retired_revoked_removed_and_unknown_keys) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  for (std::int64_t t = kT0 + 1; t <= kT0 + 100; ++t) {
    tickAt(s, p, t, mint);
  }
  BOOST_REQUIRE(key(s, "kid-1").state == KeyState::Retired);
  auto r = kr::retireKey(s, p, "kid-1", kT0 + 101);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("already retired") != std::string::npos, r.error());
  BOOST_REQUIRE(kr::revokeKey(s, p, "kid-1", kT0 + 102, false).has_value());
  r = kr::retireKey(s, p, "kid-1", kT0 + 103);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("already revoked") != std::string::npos, r.error());
  r = kr::retireKey(s, p, "nope", kT0 + 103);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("no key nope") != std::string::npos, r.error());
  tickAt(s, p, kT0 + 179, mint);
  BOOST_REQUIRE(kr::retireKey(s, p, "kid-3", kT0 + 180).has_value());  // withdrawn: removed
  r = kr::retireKey(s, p, "kid-3", kT0 + 181);
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("already removed") != std::string::npos, r.error());
}

BOOST_AUTO_TEST_CASE(revoke_removes_pending_and_retired_keys_from_the_jwks_at_once) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  for (std::int64_t t = kT0 + 1; t <= kT0 + 100; ++t) {
    tickAt(s, p, t, mint);
  }
  auto out = kr::revokeKey(s, p, "kid-1", kT0 + 101, false);  // retired 1 s ago: its tokens are live
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(key(s, "kid-1").state == KeyState::Revoked);
  BOOST_TEST(!key(s, "kid-1").published());
  BOOST_REQUIRE_EQUAL(out->warnings.size(), 1U);
  BOOST_TEST(out->warnings[0].find("stop verifying") != std::string::npos, out->warnings[0]);
  tickAt(s, p, kT0 + 179, mint);
  out = kr::revokeKey(s, p, "kid-3", kT0 + 180, false);
  BOOST_REQUIRE(out.has_value());
  BOOST_TEST(out->warnings.empty());
  BOOST_TEST(key(s, "kid-3").state == KeyState::Revoked);
  auto again = kr::revokeKey(s, p, "kid-3", kT0 + 181, true);
  BOOST_REQUIRE(!again.has_value());
  BOOST_TEST(again.error().find("already revoked") != std::string::npos);
  BOOST_TEST(!kr::revokeKey(s, p, "unknown", kT0 + 181, true).has_value());
}

BOOST_AUTO_TEST_CASE(revoke_refuses_the_active_key_unless_forced_and_then_a_new_key_signs_at_once) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  auto refused = kr::revokeKey(s, p, "kid-1", kT0 + 10, false);
  BOOST_REQUIRE(!refused.has_value());
  BOOST_TEST(refused.error().find("--force") != std::string::npos, refused.error());
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);

  auto forced = kr::revokeKey(s, p, "kid-1", kT0 + 10, true);
  BOOST_REQUIRE(forced.has_value());
  BOOST_TEST(forced->needs_broker);
  BOOST_TEST(forced->warnings.size() == 2U);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Revoked);
  BOOST_TEST(s.active() == nullptr);
  const auto r = tickAt(s, p, kT0 + 11, mint);
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
  BOOST_TEST(hasEvent(r, "key_activated_early", true));
}

BOOST_AUTO_TEST_CASE(forced_revoke_of_the_active_key_promotes_a_staged_key) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);
  auto forced = kr::revokeKey(s, p, "kid-1", kT0 + 79 + p.lead_time + 1, true);
  BOOST_REQUIRE(forced.has_value());
  BOOST_TEST(!forced->needs_broker);
  BOOST_TEST(forced->warnings.size() == 1U);  // only the tokens of kid-1; kid-2 was ready
  BOOST_TEST(key(s, "kid-2").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(a_changed_algorithm_withdraws_the_staged_key_and_stages_one_of_the_new_alg) {
  kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  tickAt(s, p, kT0 + 79, mint);
  p.algorithm = jw::Alg::RS256;
  const auto r = tickAt(s, p, kT0 + 80, mint);
  BOOST_TEST(hasEvent(r, "key_withdrawn"));
  BOOST_TEST(key(s, "kid-2").state == KeyState::Removed);
  BOOST_TEST(key(s, "kid-3").alg == jw::Alg::RS256);
  BOOST_TEST(key(s, "kid-3").activate_after == 0);
  tickAt(s, p, kT0 + 80 + p.lead_time + 1, mint);
  BOOST_TEST(key(s, "kid-3").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(a_failed_key_generation_is_an_error_and_changes_nothing_visible) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  mint.fail = true;
  auto r = kr::applyPolicy(s, p, kT0 + 79, mint.fn());
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("no entropy today") != std::string::npos);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(a_state_with_two_active_keys_or_a_duplicate_kid_is_refused) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  kr::RingState two = s;
  two.keys.push_back(two.keys[0]);
  two.keys[1].kid = "kid-x";
  auto r = kr::applyPolicy(two, p, kT0 + 1, mint.fn());
  BOOST_REQUIRE(!r.has_value());
  BOOST_TEST(r.error().find("2 keys are active") != std::string::npos, r.error());
  BOOST_TEST(!kr::rotateKeys(two, p, kT0 + 1, false).has_value());
  kr::RingState dup = s;
  dup.keys.push_back(dup.keys[0]);
  dup.keys[1].state = KeyState::Pending;
  BOOST_TEST(kr::invariantProblem(dup).value_or("").find("appears twice") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(inconsistent_policies_are_refused) {
  kr::Policy p = smallPolicy();
  BOOST_TEST(!p.problem().has_value());
  p.jwks_max_age = p.lead_time + 1;
  BOOST_TEST(p.problem().value_or("").find("JWKS max-age") != std::string::npos);
  p = smallPolicy();
  p.rotation_period = p.lead_time;
  BOOST_TEST(p.problem().value_or("").find("rotation period") != std::string::npos);
  p.rotation_period = 0;  // rotation by command only
  BOOST_TEST(!p.problem().has_value());
}

BOOST_AUTO_TEST_CASE(with_rotation_by_command_only_the_active_key_stays) {
  kr::Policy p = smallPolicy();
  p.rotation_period = 0;
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  for (std::int64_t t = kT0 + 1; t < kT0 + 500; t += 7) {
    tickAt(s, p, t, mint);
  }
  BOOST_TEST(s.keys.size() == 1U);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(tombstones_are_capped_and_live_keys_are_kept) {
  const kr::Policy p = smallPolicy();
  FakeMint mint;
  kr::RingState s = startedRing(p, mint);
  for (int i = 0; i < 60; ++i) {
    kr::KeyRecord k;
    k.kid = "old-" + std::to_string(i);
    k.state = KeyState::Removed;
    k.created_at = kT0 - 1000 + i;
    k.ended_at = kT0 - 500 + i;
    s.keys.push_back(k);
  }
  tickAt(s, p, kT0 + 1, mint);
  BOOST_TEST(countIn(s, KeyState::Removed) == 50U);
  BOOST_TEST(s.find("old-59") != nullptr);
  BOOST_TEST(s.find("old-0") == nullptr);
  BOOST_TEST(key(s, "kid-1").state == KeyState::Active);
}

BOOST_AUTO_TEST_CASE(times_and_durations_are_formatted_for_people) {
  BOOST_TEST(kr::formatTime(0) == "1970-01-01T00:00:00Z");
  BOOST_TEST(kr::formatDuration(45) == "45s");
  BOOST_TEST(kr::formatDuration(3600) == "1h");
  BOOST_TEST(kr::formatDuration(9000) == "2h30m");
  BOOST_TEST(kr::formatDuration(30 * 86400) == "30d");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(keyring_files)

BOOST_AUTO_TEST_CASE(first_open_creates_a_private_layout_and_serves_the_new_key) {
  const TempDir dir;
  FakeClock clock;
  const auto m = openManager(options(dir, clock));
  BOOST_TEST(modeOf(dir.keys()) == 0700U);
  BOOST_TEST(modeOf(dir.keys() / "keyring.json") == 0600U);
  BOOST_TEST(modeOf(dir.keys() / ".lock") == 0600U);
  const auto files = keyFiles(dir.keys());
  BOOST_REQUIRE_EQUAL(files.size(), 1U);
  BOOST_TEST(modeOf(files[0]) == 0600U);
  const auto set = m->current();
  BOOST_REQUIRE(set && set->active);
  BOOST_TEST(files[0].filename().string() == set->active->kid() + ".pem");
  BOOST_TEST(publishedKids(*set) == std::set<std::string>{set->active->kid()});
  BOOST_TEST(readFile(dir.keys() / "keyring.json").find("PRIVATE") == std::string::npos);
  auto parsed = jw::parseJwkSet(set->jwksJson);
  BOOST_REQUIRE_MESSAGE(parsed.has_value(), parsed.error());
}

BOOST_AUTO_TEST_CASE(manager_publishes_the_successor_before_it_signs_and_drops_private_keys_it_no_longer_needs) {
  const TempDir dir;
  FakeClock clock;
  const kr::Policy p = smallPolicy();
  const auto m = openManager(options(dir, clock, p));
  const std::string first = m->current()->active->kid();
  std::map<std::string, std::int64_t> firstServed{{first, kT0}};
  int snapshots = 0;
  for (std::int64_t t = kT0 + 1; t <= kT0 + 250; ++t) {
    clock.set(t);
    const auto tick = m->tick();
    BOOST_TEST_REQUIRE(!tick.error.has_value(), tick.error.value_or(""));
    if (tick.published) {
      ++snapshots;
      for (const auto& kid : publishedKids(*tick.published)) {
        firstServed.try_emplace(kid, t);
      }
      const std::string active = tick.published->active->kid();
      // Never sign with a key that was not served for longer than the lead time.
      if (active != first) {
        BOOST_TEST_REQUIRE(t - firstServed.at(active) > p.lead_time);
      }
      BOOST_TEST_REQUIRE(publishedKids(*tick.published).contains(active));
    }
  }
  BOOST_TEST(snapshots >= 4);
  BOOST_TEST(m->current()->active->kid() != first);
  // Only pending and active keys keep a private key on disk.
  for (const auto& f : keyFiles(dir.keys())) {
    BOOST_TEST(f.filename().string() != first + ".pem");
  }
  BOOST_TEST(keyFiles(dir.keys()).size() <= 2U);
}

BOOST_AUTO_TEST_CASE(refuses_a_keys_directory_open_to_others) {
  const TempDir dir;
  FakeClock clock;
  { openManager(options(dir, clock)); }
  fs::permissions(dir.keys(), static_cast<fs::perms>(0750));
  auto m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("permissions 750 are too open") != std::string::npos, m.error());
  BOOST_TEST(!kr::KeyringAdmin::open(dir.path().string(), smallPolicy()).has_value());
}

BOOST_AUTO_TEST_CASE(refuses_a_state_file_or_private_key_file_readable_by_others) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  {
    const auto m = openManager(options(dir, clock));
    kid = m->current()->active->kid();
  }
  fs::permissions(dir.keys() / "keyring.json", static_cast<fs::perms>(0644));
  auto m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("keyring.json: permissions 644") != std::string::npos, m.error());
  fs::permissions(dir.keys() / "keyring.json", static_cast<fs::perms>(0600));
  fs::permissions(dir.keys() / (kid + ".pem"), static_cast<fs::perms>(0640));
  m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find(kid + ".pem: permissions 640") != std::string::npos, m.error());
}

BOOST_AUTO_TEST_CASE(refuses_a_symlinked_key_file) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  {
    const auto m = openManager(options(dir, clock));
    kid = m->current()->active->kid();
  }
  fs::rename(dir.keys() / (kid + ".pem"), dir.path() / "elsewhere.pem");
  fs::create_symlink(dir.path() / "elsewhere.pem", dir.keys() / (kid + ".pem"));
  auto m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("symbolic link") != std::string::npos, m.error());
}

BOOST_AUTO_TEST_CASE(tampered_permissions_while_running_are_reported_once_and_the_served_keys_are_kept) {
  const TempDir dir;
  FakeClock clock;
  const auto m = openManager(options(dir, clock));
  const auto before = m->current();
  fs::permissions(dir.keys() / (before->active->kid() + ".pem"), static_cast<fs::perms>(0644));
  clock.set(kT0 + 1);
  auto tick = m->tick();
  BOOST_REQUIRE(tick.error.has_value());
  BOOST_TEST(tick.error->find("too open") != std::string::npos, *tick.error);
  clock.set(kT0 + 2);
  tick = m->tick();
  BOOST_TEST(!tick.error.has_value());  // the same problem is not repeated every second
  BOOST_TEST(m->current() == before);
  fs::permissions(dir.keys() / (before->active->kid() + ".pem"), static_cast<fs::perms>(0600));
  clock.set(kT0 + 3);
  tick = m->tick();
  BOOST_TEST(!tick.error.has_value());
  BOOST_TEST(std::ranges::any_of(tick.events, [](const kr::Event& e) { return e.name == "keyring_recovered"; }));
}

BOOST_AUTO_TEST_CASE(a_damaged_state_file_is_refused_with_its_name) {
  const TempDir dir;
  FakeClock clock;
  { openManager(options(dir, clock)); }
  writeFile(dir.keys() / "keyring.json", "{\"format\":\"smart-broker-keyring\",\"version\":1,\"keys\":[{\"kid\":1}]}");
  auto m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("keyring.json: keys[0]") != std::string::npos, m.error());
  writeFile(dir.keys() / "keyring.json", "{\"format\":\"smart-broker-keyring\",\"version\":2,\"keys\":[]}");
  m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("unsupported version") != std::string::npos, m.error());
}

BOOST_AUTO_TEST_CASE(a_key_file_holding_another_key_is_refused) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  {
    const auto m = openManager(options(dir, clock));
    kid = m->current()->active->kid();
  }
  auto other = kr::SigningKey::generate(jw::Alg::ES256);
  BOOST_REQUIRE(other.has_value());
  writeFile(dir.keys() / (kid + ".pem"), other->privatePem());
  auto m = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("holds a different key") != std::string::npos, m.error());
}

BOOST_AUTO_TEST_CASE(adopts_a_keyring_of_the_earlier_layout_keeping_its_key_active) {
  const TempDir dir;
  auto legacy = kr::openKeyring(dir.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(legacy.has_value(), legacy.error());
  FakeClock clock;
  const auto m = openManager(options(dir, clock));
  BOOST_TEST(m->current()->active->kid() == legacy->active->kid());
  BOOST_TEST(std::ranges::any_of(m->startupEvents(), [](const kr::Event& e) { return e.name == "key_adopted"; }));
  // openKeyring on a managed keyring serves the manager's view: its active key.
  auto again = kr::openKeyring(dir.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(again.has_value(), again.error());
  BOOST_TEST(again->active->kid() == legacy->active->kid());
}

BOOST_AUTO_TEST_CASE(open_keyring_on_a_managed_keyring_never_signs_with_a_pending_key) {
  const TempDir dir;
  FakeClock clock;
  const kr::Policy p = smallPolicy();
  const auto m = openManager(options(dir, clock, p));
  clock.set(kT0 + 79);
  m->tick();
  BOOST_REQUIRE_EQUAL(m->current()->published.size(), 2U);
  auto view = kr::openKeyring(dir.path().string(), jw::Alg::ES256);
  BOOST_REQUIRE_MESSAGE(view.has_value(), view.error());
  BOOST_TEST(view->active->kid() == m->current()->active->kid());
  BOOST_TEST(view->published.size() == 2U);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(encryption_at_rest)

BOOST_AUTO_TEST_CASE(sealed_private_keys_round_trip_and_contain_no_pem) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  std::string signature;
  {
    const auto m = openManager(options(dir, clock, smallPolicy(), kek('k')));
    kid = m->current()->active->kid();
    signature = m->current()->active->signCompact("at+jwt", "{}");
  }
  const auto files = keyFiles(dir.keys());
  BOOST_REQUIRE_EQUAL(files.size(), 1U);
  BOOST_TEST(files[0].filename().string() == kid + ".pem.sealed");
  BOOST_TEST(modeOf(files[0]) == 0600U);
  const std::string content = readFile(files[0]);
  BOOST_TEST(content.find("PRIVATE KEY") == std::string::npos);
  BOOST_TEST(content.find("BEGIN") == std::string::npos);
  const auto m = openManager(options(dir, clock, smallPolicy(), kek('k')));
  BOOST_TEST(m->current()->active->kid() == kid);
  auto parsed = jw::parseJwkSet(m->current()->jwksJson);
  BOOST_REQUIRE(parsed.has_value());
  const auto dot = signature.rfind('.');
  BOOST_TEST(jw::verifySignature(parsed->set.keys[0], jw::Alg::ES256, signature.substr(0, dot),
                                 jw::base64urlDecode(signature.substr(dot + 1)).value_or("")));
}

BOOST_AUTO_TEST_CASE(a_wrong_or_missing_kek_is_refused_with_a_clear_message) {
  const TempDir dir;
  FakeClock clock;
  { openManager(options(dir, clock, smallPolicy(), kek('k'))); }
  auto wrong = kr::KeyringManager::open(options(dir, clock, smallPolicy(), kek('x')));
  BOOST_REQUIRE(!wrong.has_value());
  BOOST_TEST(wrong.error().find("wrong key-encryption key") != std::string::npos, wrong.error());
  auto missing = kr::KeyringManager::open(options(dir, clock));
  BOOST_REQUIRE(!missing.has_value());
  BOOST_TEST(missing.error().find("no key-encryption key is configured") != std::string::npos, missing.error());
  auto shortKek = kr::KeyringManager::open(options(dir, clock, smallPolicy(), "short"));
  BOOST_REQUIRE(!shortKek.has_value());
  BOOST_TEST(shortKek.error().find("32 bytes") != std::string::npos, shortKek.error());
}

BOOST_AUTO_TEST_CASE(a_flipped_bit_or_a_sealed_file_under_another_kid_is_refused) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  {
    const auto m = openManager(options(dir, clock, smallPolicy(), kek('k')));
    kid = m->current()->active->kid();
  }
  const fs::path file = dir.keys() / (kid + ".pem.sealed");
  const std::string original = readFile(file);
  for (const std::size_t at : {original.size() / 2, original.size() - 1, std::size_t{10}}) {
    std::string flipped = original;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x01);
    writeFile(file, flipped);
    auto m = kr::KeyringManager::open(options(dir, clock, smallPolicy(), kek('k')));
    BOOST_REQUIRE(!m.has_value());
    BOOST_TEST(m.error().find("cannot decrypt") != std::string::npos, m.error());
  }
  // The kid is authenticated: the sealed file of one key does not open under another key's name.
  writeFile(file, original);
  FakeClock other;
  const TempDir second;
  std::string otherKid;
  {
    const auto m = openManager(options(second, other, smallPolicy(), kek('k')));
    otherKid = m->current()->active->kid();
  }
  writeFile(second.keys() / (otherKid + ".pem.sealed"), original);
  auto m = kr::KeyringManager::open(options(second, other, smallPolicy(), kek('k')));
  BOOST_REQUIRE(!m.has_value());
  BOOST_TEST(m.error().find("cannot decrypt") != std::string::npos, m.error());
}

BOOST_AUTO_TEST_CASE(plain_keys_are_sealed_when_a_kek_is_configured_later) {
  const TempDir dir;
  FakeClock clock;
  std::string kid;
  {
    const auto m = openManager(options(dir, clock));
    kid = m->current()->active->kid();
  }
  BOOST_REQUIRE(fs::exists(dir.keys() / (kid + ".pem")));
  { openManager(options(dir, clock, smallPolicy(), kek('k'))); }
  BOOST_TEST(!fs::exists(dir.keys() / (kid + ".pem")));
  BOOST_TEST(fs::exists(dir.keys() / (kid + ".pem.sealed")));
}

BOOST_AUTO_TEST_CASE(key_encryption_key_files_are_32_bytes_or_64_hex_and_private) {
  const TempDir dir;
  writeFile(dir.path() / "raw", std::string(32, '\x07'));
  auto raw = kr::loadKeyEncryptionKey((dir.path() / "raw").string());
  BOOST_REQUIRE_MESSAGE(raw.has_value(), raw.error());
  BOOST_TEST(*raw == std::string(32, '\x07'));
  writeFile(dir.path() / "hex", std::string(64, 'a') + "\n", 0400);
  auto hex = kr::loadKeyEncryptionKey((dir.path() / "hex").string());
  BOOST_REQUIRE_MESSAGE(hex.has_value(), hex.error());
  BOOST_TEST(*hex == std::string(32, '\xaa'));
  writeFile(dir.path() / "short", "0123456789\n");
  auto bad = kr::loadKeyEncryptionKey((dir.path() / "short").string());
  BOOST_REQUIRE(!bad.has_value());
  BOOST_TEST(bad.error().find("exactly 32 bytes") != std::string::npos, bad.error());
  BOOST_TEST(bad.error().find("0123456789") == std::string::npos);  // never quotes the content
  writeFile(dir.path() / "open", std::string(32, '\x07'), 0644);
  auto open = kr::loadKeyEncryptionKey((dir.path() / "open").string());
  BOOST_REQUIRE(!open.has_value());
  BOOST_TEST(open.error().find("too open") != std::string::npos, open.error());
  BOOST_TEST(!kr::loadKeyEncryptionKey((dir.path() / "absent").string()).has_value());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(keyring_admin)

BOOST_AUTO_TEST_CASE(refuses_a_state_directory_without_a_keyring) {
  const TempDir dir;
  auto admin = kr::KeyringAdmin::open(dir.path().string(), smallPolicy());
  BOOST_REQUIRE(!admin.has_value());
  BOOST_TEST(admin.error().find("no keyring") != std::string::npos, admin.error());
}

BOOST_AUTO_TEST_CASE(sees_the_running_manager_and_exports_the_jwks_it_serves) {
  const TempDir dir;
  FakeClock clock;
  auto admin = kr::KeyringAdmin::open(dir.path().string(), smallPolicy(), clock.fn());
  BOOST_REQUIRE(!admin.has_value());
  {
    const auto m = openManager(options(dir, clock));
    admin = kr::KeyringAdmin::open(dir.path().string(), smallPolicy(), clock.fn());
    BOOST_REQUIRE_MESSAGE(admin.has_value(), admin.error());
    BOOST_TEST(admin->brokerRunning());
    auto jwks = admin->exportJwks();
    BOOST_REQUIRE(jwks.has_value());
    BOOST_TEST(*jwks == m->current()->jwksJson);
  }
  BOOST_TEST(!admin->brokerRunning());
}

BOOST_AUTO_TEST_CASE(revoke_destroys_the_private_key_and_the_manager_drops_the_key_at_its_next_tick) {
  const TempDir dir;
  FakeClock clock;
  const kr::Policy p = smallPolicy();
  const auto m = openManager(options(dir, clock, p));
  clock.set(kT0 + 79);
  m->tick();
  const auto staged = m->current();
  BOOST_REQUIRE_EQUAL(staged->published.size(), 2U);
  std::string pending;
  for (const auto& k : staged->published) {
    if (k.kid != staged->active->kid()) {
      pending = k.kid;
    }
  }
  auto admin = kr::KeyringAdmin::open(dir.path().string(), p, clock.fn());
  BOOST_REQUIRE(admin.has_value());
  auto out = admin->revoke(pending, false);
  BOOST_REQUIRE_MESSAGE(out.has_value(), out.error());
  BOOST_TEST(!fs::exists(dir.keys() / (pending + ".pem")));
  clock.set(kT0 + 80);
  const auto tick = m->tick();
  BOOST_REQUIRE(tick.published);
  BOOST_TEST(!publishedKids(*tick.published).contains(pending));
  BOOST_TEST(tick.published->jwksJson.find(pending) == std::string::npos);
}

BOOST_AUTO_TEST_CASE(forced_revoke_of_the_active_key_is_followed_by_a_new_active_key_at_the_next_tick) {
  const TempDir dir;
  FakeClock clock;
  const auto m = openManager(options(dir, clock));
  const std::string old = m->current()->active->kid();
  auto admin = kr::KeyringAdmin::open(dir.path().string(), smallPolicy(), clock.fn());
  BOOST_REQUIRE(admin.has_value());
  BOOST_TEST(!admin->revoke(old, false).has_value());
  auto out = admin->revoke(old, true);
  BOOST_REQUIRE_MESSAGE(out.has_value(), out.error());
  BOOST_TEST(out->needs_broker);
  clock.set(kT0 + 1);
  const auto tick = m->tick();
  BOOST_REQUIRE(tick.published);
  BOOST_TEST(tick.published->active->kid() != old);
  BOOST_TEST(!publishedKids(*tick.published).contains(old));
}

BOOST_AUTO_TEST_CASE(a_held_lock_makes_the_manager_skip_its_tick_and_a_command_wait_then_give_up) {
  const TempDir dir;
  FakeClock clock;
  const auto m = openManager(options(dir, clock));
  const int fd = ::open((dir.keys() / ".lock").c_str(), O_RDWR | O_CLOEXEC);
  BOOST_REQUIRE(fd >= 0);
  BOOST_REQUIRE(::flock(fd, LOCK_EX) == 0);
  clock.set(kT0 + 79);  // a successor is due, but the keyring is locked
  auto tick = m->tick();
  BOOST_TEST(!tick.published);
  BOOST_TEST(!tick.error.has_value());
  auto admin = kr::KeyringAdmin::open(dir.path().string(), smallPolicy(), clock.fn(), std::chrono::milliseconds(200));
  BOOST_REQUIRE(admin.has_value());
  auto refused = admin->rotate(false);
  BOOST_REQUIRE(!refused.has_value());
  BOOST_TEST(refused.error().find("locked by another") != std::string::npos, refused.error());
  ::close(fd);
  tick = m->tick();
  BOOST_REQUIRE(tick.published);
  BOOST_TEST(tick.published->published.size() == 2U);
}

BOOST_AUTO_TEST_CASE(manager_and_commands_at_the_same_time_never_corrupt_the_keyring_or_sign_with_an_unpublished_key) {
  const TempDir dir;
  FakeClock clock;
  kr::Policy p = smallPolicy();
  p.rotation_period = 30;
  p.lead_time = 5;
  p.jwks_max_age = 3;
  const auto m = openManager(options(dir, clock, p));
  std::atomic<bool> stop{false};
  std::atomic<int> commands{0};
  std::atomic<int> refusals{0};
  std::atomic<int> corrupt{0};

  // Two operators at once: rotations and withdrawals/revocations of whatever is not active (all safe commands).
  auto operatorLoop = [&](int seed) {
    auto admin = kr::KeyringAdmin::open(dir.path().string(), p, clock.fn());
    if (!admin) {
      ++corrupt;
      return;
    }
    int i = seed;
    while (!stop) {
      auto state = admin->read();
      if (!state || kr::invariantProblem(*state)) {
        ++corrupt;
        break;
      }
      std::expected<kr::CommandOutcome, std::string> r;
      if (i % 3 == 0) {
        r = admin->rotate(false);
      } else {
        std::string victim;
        for (const auto& k : state->keys) {
          if (k.state == KeyState::Pending || k.state == KeyState::Retired) {
            victim = k.kid;
          }
        }
        if (victim.empty()) {
          r = admin->rotate(false);
        } else if (i % 3 == 1) {
          r = admin->retire(victim);
        } else {
          r = admin->revoke(victim, false);
        }
      }
      ++commands;
      if (!r) {
        ++refusals;  // e.g. the other operator already revoked it: refused, never corrupted
      }
      ++i;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  struct Operators {
    std::atomic<bool>& stop;
    std::thread a;
    std::thread b;
    ~Operators() {  // also on a failed BOOST_TEST_REQUIRE: never leave a joinable thread behind
      stop = true;
      a.join();
      b.join();
    }
  } operators{stop, std::thread(operatorLoop, 0), std::thread(operatorLoop, 1)};

  std::map<std::string, std::int64_t> firstServed;
  const std::string first = m->current()->active->kid();
  int rotations = 0;
  std::string lastActive = first;
  for (std::int64_t t = kT0 + 1; t <= kT0 + 400; ++t) {
    clock.set(t);
    const auto tick = m->tick();
    BOOST_TEST_REQUIRE(!tick.error.has_value(), tick.error.value_or(""));
    const auto set = m->current();
    for (const auto& kid : publishedKids(*set)) {
      firstServed.try_emplace(kid, t);
    }
    const std::string active = set->active->kid();
    BOOST_TEST_REQUIRE(publishedKids(*set).contains(active));
    if (active != lastActive) {
      ++rotations;
      BOOST_TEST_REQUIRE(t - firstServed.at(active) > p.lead_time, "kid " << active << " at t=" << t - kT0);
      lastActive = active;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  stop = true;
  BOOST_TEST(corrupt.load() == 0);
  BOOST_TEST(commands.load() > 20);
  BOOST_TEST(rotations >= 5);
  BOOST_TEST_MESSAGE("concurrent: " << commands.load() << " commands (" << refusals.load() << " refused), "
                                    << rotations << " rotations");
  auto admin = kr::KeyringAdmin::open(dir.path().string(), p, clock.fn());
  BOOST_REQUIRE(admin.has_value());
  auto state = admin->read();
  BOOST_REQUIRE_MESSAGE(state.has_value(), state.error());
  BOOST_TEST(!kr::invariantProblem(*state).has_value());
  BOOST_TEST(countIn(*state, KeyState::Active) == 1U);
}

BOOST_AUTO_TEST_SUITE_END()
