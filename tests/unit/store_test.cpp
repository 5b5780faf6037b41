// The store's semantics: one case (at least) per cell of DESIGN.md §2, plus limits and refusals.
#define BOOST_TEST_MODULE store
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "test_support.hpp"

namespace pkgctx {
inline std::ostream& operator<<(std::ostream& os, Change c) { return os << change_name(c); }
}

#include <array>
#include <atomic>
#include <string>
#include <vector>

using namespace pkgctx;

namespace {

Settings S(std::string_view json) { return Settings::parse(json).value(); }

struct Fixture {
  test::SegmentName seg{"store"};
  Store store = Store::create(seg.str(), small()).value();

  static SegmentOptions small() {
    SegmentOptions o;
    o.capacity = 16;
    o.settings_bytes = 4096;
    return o;
  }
  core::Token update(std::string_view name, std::string_view version, std::string_view json = "{}") {
    auto r = store.update(name, version, S(json));
    BOOST_REQUIRE(r);
    BOOST_REQUIRE(r->token);
    return *r->token;
  }
  core::Token event(int e, std::string_view name) {
    auto r = store.handle_event(e, name);
    BOOST_REQUIRE(r);
    BOOST_REQUIRE(r->has_value());
    return **r;
  }
  std::string settings(std::string_view name) { return store.pending_settings(name).value().canonical(); }
  std::string version(std::string_view name) { return store.view().read(name).value().version; }
  std::uint64_t commits() const { return store.segment().info().commits; }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(update, Fixture)

BOOST_AUTO_TEST_CASE(absent_creates_and_returns_a_root_token) {
  auto r = store.update("app", "1.0", S(R"({"b":1,"a":2})"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::created);
  BOOST_REQUIRE(r->token);
  BOOST_TEST(r->token->is_root());
  BOOST_TEST(!r->token->cancelled());
  BOOST_TEST(settings("app") == R"({"a":2,"b":1})");
  BOOST_TEST(version("app") == "1.0");
}

BOOST_AUTO_TEST_CASE(removed_package_is_recreated_and_its_tree_cancelled) {
  update("app", "1.0", R"({"x":1})");
  core::Token removal = event(kEventRemove, "app");
  core::Token child = event(kEventSchedule, "app");
  auto r = store.update("app", "1.0", S(R"({"x":2})"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::created);
  BOOST_REQUIRE(r->token);
  BOOST_TEST(!r->token->cancelled());
  BOOST_TEST(removal.cancelled());
  BOOST_TEST(cause_name(removal.cause()) == "version_changed");
  BOOST_TEST(child.cancelled());
  BOOST_TEST(cause_name(child.cause()) == "version_changed");
  BOOST_TEST(version("app") == "1.0");
  BOOST_TEST(settings("app") == R"({"x":2})");
}

BOOST_AUTO_TEST_CASE(new_version_cancels_the_whole_tree) {
  core::Token root = update("app", "1.0");
  core::Token enable = event(kEventSchedule, "app");
  core::Token other_key = event(5, "app");
  auto r = store.update("app", "2.0", S(R"({"k":"v"})"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::version);
  BOOST_REQUIRE(r->token);
  for (const core::Token* t : {&root, &enable, &other_key}) {
    BOOST_TEST(t->cancelled());
    BOOST_TEST(cause_name(t->cause()) == "version_changed");
  }
  BOOST_TEST(!r->token->cancelled());
  BOOST_TEST(settings("app") == R"({"k":"v"})");
}

BOOST_AUTO_TEST_CASE(same_version_new_settings_stores_them_without_a_token) {
  core::Token root = update("app", "1.0", R"({"a":1})");
  core::Token child = event(kEventSchedule, "app");
  auto r = store.update("app", "1.0", S(R"({"a":2})"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::settings);
  BOOST_TEST(!r->token);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(!child.cancelled());
  // Late binding: the next GetPendingSettings sees the new settings.
  BOOST_TEST(settings("app") == R"({"a":2})");
}

BOOST_AUTO_TEST_CASE(same_version_same_settings_changes_nothing) {
  core::Token root = update("app", "1.0", R"({"a":1})");
  const auto before = commits();
  auto r = store.update("app", "1.0", S(R"( { "a" : 1.0 } )"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::none);
  BOOST_TEST(!r->token);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(commits() == before);
}

BOOST_AUTO_TEST_CASE(empty_version_is_rejected_and_changes_nothing) {
  core::Token root = update("app", "1.0", R"({"a":1})");
  const auto before = commits();
  auto r = store.update("app", "", S("{}"));
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::invalid_version);
  BOOST_TEST(r.error().message.find("removed") != std::string::npos);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(version("app") == "1.0");
  BOOST_TEST(commits() == before);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(handle_event, Fixture)

BOOST_AUTO_TEST_CASE(absent_package_gets_no_token) {
  for (int e = 0; e <= kMaxEvent; ++e) {
    auto r = store.handle_event(e, "ghost");
    BOOST_REQUIRE(r);
    BOOST_TEST(!r->has_value());
  }
  BOOST_TEST(!store.view().find("ghost").has_value());
}

BOOST_AUTO_TEST_CASE(update_event_cancels_tree_and_renews_root) {
  for (std::string_view state : {"removed", "differs", "same"}) {
    BOOST_TEST_CONTEXT("package " << state) {
      test::SegmentName seg2{"ev"};
      Store s = Store::create(seg2.str(), small()).value();
      core::Token root = *s.update("p", "1", S("{}"))->token;
      if (state == "removed") root = **s.handle_event(kEventRemove, "p");
      if (state == "differs") root = *s.update("p", "2", S("{}"))->token;
      core::Token child = **s.handle_event(kEventSchedule, "p");
      core::Token fresh = **s.handle_event(kEventUpdate, "p");
      BOOST_TEST(root.cancelled());
      BOOST_TEST(child.cancelled());
      BOOST_TEST(cause_name(root.cause()) == "update_event");
      BOOST_TEST(cause_name(child.cause()) == "update_event");  // a child reports its root's cause
      BOOST_TEST(!fresh.cancelled());
      BOOST_TEST(fresh.is_root());
    }
  }
}

BOOST_AUTO_TEST_CASE(remove_event_clears_version_and_settings) {
  core::Token root = update("app", "1.0", R"({"big":[1,2,3]})");
  core::Token child = event(kEventSchedule, "app");
  core::Token removal = event(kEventRemove, "app");
  BOOST_TEST(root.cancelled());
  BOOST_TEST(child.cancelled());
  BOOST_TEST(cause_name(root.cause()) == "removed");
  BOOST_TEST(cause_name(child.cause()) == "removed");
  BOOST_TEST(!removal.cancelled());
  BOOST_TEST(version("app") == "");
  BOOST_TEST(settings("app") == "{}");
  BOOST_TEST(store.segment().info().settings_used == 0u);
  // Removing again (present, removed) still renews the root.
  core::Token again = event(kEventRemove, "app");
  BOOST_TEST(removal.cancelled());
  BOOST_TEST(!again.cancelled());
}

BOOST_AUTO_TEST_CASE(child_event_cancels_only_the_same_key) {
  core::Token root = update("app", "1.0");
  core::Token enable = event(kEventSchedule, "app");
  core::Token key3 = event(3, "app");
  core::Token disable = event(kEventSchedule, "app");  // disable cancels the pending enable
  BOOST_TEST(enable.cancelled());
  BOOST_TEST(cause_name(enable.cause()) == "rescheduled");
  BOOST_TEST(!disable.cancelled());
  BOOST_TEST(!key3.cancelled());
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(disable.key() == 2u);
}

BOOST_AUTO_TEST_CASE(child_event_works_on_removed_and_changed_packages) {
  update("app", "1.0");
  event(kEventRemove, "app");
  core::Token a = event(7, "app");
  core::Token b = event(7, "app");
  BOOST_TEST(a.cancelled());
  BOOST_TEST(!b.cancelled());
}

BOOST_AUTO_TEST_CASE(a_child_reports_the_event_that_cancelled_it) {
  update("app", "1.0");
  core::Token through_root = event(5, "app");
  core::Token by_its_key = event(kEventSchedule, "app");
  event(kEventSchedule, "app");  // cancels by_its_key
  event(kEventUpdate, "app");    // cancels through_root (and would cancel by_its_key)
  BOOST_TEST(cause_name(by_its_key.cause()) == "rescheduled");  // the first event, not the latest
  BOOST_TEST(cause_name(through_root.cause()) == "update_event");
}

BOOST_AUTO_TEST_CASE(child_generations_move_with_their_root) {
  update("app", "1.0");
  event(kEventSchedule, "app");
  event(kEventSchedule, "app");
  event(4, "app");
  event(kEventUpdate, "app");
  event(kEventRemove, "app");
  const PackageRecord r = store.view().read("app").value();
  BOOST_TEST(r.root_generation == 2u);
  // A child token watches one word: its key's generation, which every root event moves too.
  const std::array<std::uint64_t, 6> own = {2, 0, 1, 0, 0, 0};
  for (std::size_t k = 0; k < own.size(); ++k) BOOST_TEST(r.child_generations[k] == r.root_generation + own[k]);
}

BOOST_AUTO_TEST_CASE(invalid_event_numbers_are_rejected) {
  update("app", "1.0");
  for (int e : {-1, 8, 100}) {
    auto r = store.handle_event(e, "app");
    BOOST_REQUIRE(!r);
    BOOST_TEST(r.error().code == Errc::invalid_event);
  }
}

// DESIGN §2: a cause is exact while at most 8 further events of the token's kind followed. The
// ring holds 16 causes, so it stays exact through 15 further events; from the 16th on, a token
// reports the most recent cause.
BOOST_AUTO_TEST_CASE(cause_is_exact_for_eight_further_root_events_then_most_recent) {
  core::Token root = update("app", "1.0");
  core::Token child = event(kEventSchedule, "app");
  update("app", "2.0");  // cancels both: version_changed
  core::Token key3 = event(3, "app");
  event(3, "app");  // cancels key3: rescheduled
  int further = 0;  // root events since the cancellations
  auto more = [&](int upto) {
    for (; further < upto; ++further) event(kEventUpdate, "app");
  };
  for (int upto : {8, 15}) {
    more(upto);
    BOOST_TEST_CONTEXT(further << " further root events") {
      BOOST_TEST(root.cause() == Cause::kVersionChanged);
      BOOST_TEST(child.cause() == Cause::kVersionChanged);
      BOOST_TEST(key3.cause() == Cause::kRescheduled);
    }
  }
  more(16);  // the ring wrapped: the most recent cause
  BOOST_TEST(root.cause() == Cause::kUpdateEvent);
  BOOST_TEST(child.cause() == Cause::kUpdateEvent);
  BOOST_TEST(key3.cause() == Cause::kUpdateEvent);
}

BOOST_AUTO_TEST_CASE(cause_is_exact_for_eight_further_child_events_then_most_recent) {
  update("app", "1.0");
  core::Token child = event(kEventSchedule, "app");
  core::Token root = update("app", "2.0");  // cancels child: version_changed
  int further = 0;  // key-2 events since the cancellation
  auto more = [&](int upto) {
    for (; further < upto; ++further) event(kEventSchedule, "app");
  };
  for (int upto : {8, 15}) {
    more(upto);
    BOOST_TEST_CONTEXT(further << " further key-2 events") {
      BOOST_TEST(child.cause() == Cause::kVersionChanged);
      BOOST_TEST(!root.cancelled());  // child events are not root events
    }
  }
  more(16);
  BOOST_TEST(child.cause() == Cause::kRescheduled);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(need_update, Fixture)

BOOST_AUTO_TEST_CASE(every_cell) {
  const auto sum = S(R"({"a":1})").checksum();
  const auto empty = Settings().checksum();
  BOOST_TEST(store.need_update("app", "1.0", sum).value());  // absent
  update("app", "1.0", R"({"a":1})");
  BOOST_TEST(!store.need_update("app", "1.0", sum).value());   // same version, same checksum
  BOOST_TEST(store.need_update("app", "1.0", empty).value());  // same version, checksum differs
  BOOST_TEST(store.need_update("app", "2.0", sum).value());    // version differs
  event(kEventRemove, "app");
  BOOST_TEST(store.need_update("app", "1.0", empty).value());  // removed: version differs
  BOOST_TEST(store.need_update("app", "1.0", sum).value());
  auto bad = store.need_update("bad name", "1", sum);
  BOOST_REQUIRE(!bad);
  BOOST_TEST(bad.error().code == Errc::invalid_name);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(pending_settings, Fixture)

BOOST_AUTO_TEST_CASE(every_cell) {
  auto absent = store.pending_settings("app");
  BOOST_REQUIRE(!absent);
  BOOST_TEST(absent.error().code == Errc::no_such_package);
  BOOST_TEST(absent.error().message.find("app") != std::string::npos);
  update("app", "1.0", R"({"v":1})");
  BOOST_TEST(settings("app") == R"({"v":1})");
  store.update("app", "1.0", S(R"({"v":2})")).value();
  BOOST_TEST(settings("app") == R"({"v":2})");
  store.update("app", "2.0", S(R"({"v":3})")).value();
  BOOST_TEST(settings("app") == R"({"v":3})");
  BOOST_TEST(store.pending_settings("app").value().checksum() == S(R"({"v":3})").checksum());
  event(kEventRemove, "app");
  BOOST_TEST(settings("app") == "{}");
  BOOST_TEST(store.pending_settings("app").value().checksum() == Settings().checksum());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(erase, Fixture)

BOOST_AUTO_TEST_CASE(absent_is_false) { BOOST_TEST(!store.erase("app").value()); }

BOOST_AUTO_TEST_CASE(removed_is_deleted_and_tokens_cancelled) {
  update("app", "1.0");
  core::Token removal = event(kEventRemove, "app");
  core::Token child = event(kEventSchedule, "app");
  BOOST_TEST(store.erase("app").value());
  BOOST_TEST(removal.cancelled());
  BOOST_TEST(child.cancelled());
  BOOST_TEST(cause_name(removal.cause()) == "deleted");
  BOOST_TEST(cause_name(child.cause()) == "deleted");
  BOOST_TEST(store.view().find("app").error().code == Errc::no_such_package);
  BOOST_TEST(store.segment().info().used == 0u);
  BOOST_TEST(!store.erase("app").value());
}

BOOST_AUTO_TEST_CASE(recreated_in_between_is_kept) {
  update("app", "1.0");
  event(kEventRemove, "app");
  core::Token recreated = update("app", "2.0");
  BOOST_TEST(!store.erase("app").value());
  BOOST_TEST(!recreated.cancelled());
  BOOST_TEST(version("app") == "2.0");
}

BOOST_AUTO_TEST_CASE(live_package_is_kept) {
  core::Token root = update("app", "1.0");
  BOOST_TEST(!store.erase("app").value());
  BOOST_TEST(!root.cancelled());
}

BOOST_AUTO_TEST_CASE(slot_reuse_does_not_revive_old_tokens) {
  update("a", "1");
  core::Token old = event(kEventRemove, "a");
  BOOST_TEST(store.erase("a").value());
  core::Token fresh = update("b", "1");  // takes the freed slot
  BOOST_TEST(fresh.slot() == old.slot());
  BOOST_TEST(old.cancelled());
  BOOST_TEST(!fresh.cancelled());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(limits, Fixture)

BOOST_AUTO_TEST_CASE(full_table_is_refused_cleanly) {
  for (int i = 0; i < 16; ++i) update("p" + std::to_string(i), "1");
  const auto before = commits();
  auto r = store.update("one-too-many", "1", S("{}"));
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::table_full);
  BOOST_TEST(r.error().message.find("16") != std::string::npos);
  BOOST_TEST(commits() == before);
  BOOST_TEST(store.segment().info().used == 16u);
  // Deleting one makes room again.
  event(kEventRemove, "p3");
  BOOST_TEST(store.erase("p3").value());
  BOOST_TEST(store.update("one-too-many", "1", S("{}")).has_value());
}

BOOST_AUTO_TEST_CASE(full_settings_area_is_refused_cleanly) {
  const std::string big = R"({"blob":")" + std::string(3000, 'x') + R"("})";
  core::Token t = update("a", "1", big);
  const auto used = store.segment().info().settings_used;
  auto r = store.update("b", "1", S(big));
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::settings_full);
  BOOST_TEST(!store.view().find("b").has_value());  // nothing half-written
  BOOST_TEST(store.segment().info().settings_used == used);
  auto r2 = store.update("a", "2", S(R"({"blob":")" + std::string(3000, 'y') + R"("})"));
  BOOST_REQUIRE(!r2);  // the old block is still in use while the new one is written
  BOOST_TEST(r2.error().code == Errc::settings_full);
  BOOST_TEST(!t.cancelled());
  BOOST_TEST(version("a") == "1");
  BOOST_TEST(settings("a") == big);
}

BOOST_AUTO_TEST_CASE(fragmented_arena_is_reused) {
  // Fill, free every other block, then allocate into the holes.
  for (int i = 0; i < 8; ++i) update("p" + std::to_string(i), "1", R"({"s":")" + std::string(400, 'a') + R"("})");
  for (int i = 0; i < 8; i += 2) {
    event(kEventRemove, "p" + std::to_string(i));
    BOOST_TEST(store.erase("p" + std::to_string(i)).value());
  }
  for (int i = 0; i < 4; ++i) update("q" + std::to_string(i), "1", R"({"t":")" + std::string(400, 'b') + R"("})");
  for (int i = 1; i < 8; i += 2) BOOST_TEST(settings("p" + std::to_string(i)).size() == 408u);
  for (int i = 0; i < 4; ++i) BOOST_TEST(settings("q" + std::to_string(i)).size() == 408u);
}

BOOST_AUTO_TEST_CASE(too_large_settings_are_refused) {
  SegmentOptions o = small();
  o.limits.max_settings = 100;
  test::SegmentName seg2{"lim"};
  Store s = Store::create(seg2.str(), o).value();
  auto r = s.update("a", "1", S(R"({"x":")" + std::string(200, 'x') + R"("})"));
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::settings_too_large);
  BOOST_TEST(!s.view().find("a").has_value());
}

BOOST_AUTO_TEST_CASE(invalid_names_and_versions_change_nothing) {
  core::Token root = update("app", "1.0", R"({"a":1})");
  const auto before = commits();
  for (std::string_view bad : {"", "a b", "a/b", "caf\xc3\xa9", ".", "..", "x\n"}) {
    BOOST_TEST_CONTEXT("name " << bad) {
      auto r = store.update(bad, "1", S("{}"));
      BOOST_REQUIRE(!r);
      BOOST_TEST(r.error().code == Errc::invalid_name);
      BOOST_TEST(store.handle_event(0, bad).error().code == Errc::invalid_name);
      BOOST_TEST(store.erase(bad).error().code == Errc::invalid_name);
    }
  }
  BOOST_TEST(store.update(std::string(129, 'n'), "1", S("{}")).error().code == Errc::invalid_name);
  BOOST_TEST(store.update(std::string(128, 'n'), "1", S("{}")).has_value());
  for (std::string_view bad : {"", "1\t0", "v\x01", "\xc3\xa9"}) {
    auto r = store.update("app", bad, S("{}"));
    BOOST_REQUIRE(!r);
    BOOST_TEST(r.error().code == Errc::invalid_version);
  }
  BOOST_TEST(store.update("app", std::string(129, 'v'), S("{}")).error().code == Errc::invalid_version);
  BOOST_TEST(commits() == before + 1);  // only the 128-byte name was written
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(version("app") == "1.0");
  BOOST_TEST(settings("app") == R"({"a":1})");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(tokens, Fixture)

BOOST_AUTO_TEST_CASE(print_and_parse_round_trip) {
  core::Token root = update("app", "1.0");
  core::Token child = event(4, "app");
  for (const core::Token* t : {&root, &child}) {
    const std::string text = t->str();
    BOOST_TEST(text.size() <= 128u);
    BOOST_TEST(text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") ==
               std::string::npos);
    auto back = core::Token::parse(text, store.segment());
    BOOST_REQUIRE(back);
    BOOST_TEST(back->str() == text);
    BOOST_TEST(!back->cancelled());
  }
  event(4, "app");
  BOOST_TEST(core::Token::parse(child.str(), store.segment()).value().cancelled());
  BOOST_TEST(cause_name(core::Token::parse(child.str(), store.segment()).value().cause()) == "rescheduled");
}

BOOST_AUTO_TEST_CASE(garbled_and_forged_tokens_are_refused) {
  core::Token root = update("app", "1.0");
  std::string text = root.str();
  std::string flipped = text;
  flipped[10] = flipped[10] == 'a' ? 'b' : 'a';
  for (const std::string& bad :
       {std::string(""), std::string("pkgctx1"), std::string("garbage"), flipped, text + ":1", text.substr(0, text.size() - 1),
        std::string(200, 'a'), std::string("pkgctx1:0000000000000000:0:0:0:0:00000000")}) {
    auto r = core::Token::parse(bad, store.segment());
    BOOST_TEST(!r);
    if (!r) BOOST_TEST(r.error().code == Errc::invalid_token);
  }
  // A token of another segment (other epoch) is refused.
  test::SegmentName other{"other"};
  Store s2 = Store::create(other.str(), small()).value();
  auto foreign = core::Token::parse(text, s2.segment());
  BOOST_REQUIRE(!foreign);
  BOOST_TEST(foreign.error().message.find("another segment") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(view_token_matches_current_context) {
  update("app", "1.0");
  core::Token child = event(kEventSchedule, "app");
  core::Token seen = store.view().token("app", kEventSchedule).value();
  BOOST_TEST(seen.str() == child.str());
  BOOST_TEST(store.view().token("ghost", 0).error().code == Errc::no_such_package);
  BOOST_TEST(store.view().token("app", 9).error().code == Errc::invalid_event);
}

BOOST_AUTO_TEST_CASE(wait_times_out_on_a_live_token_and_returns_on_a_cancelled_one) {
  core::Token root = update("app", "1.0");
  BOOST_TEST(!root.wait(std::chrono::milliseconds(20)));
  event(kEventUpdate, "app");
  BOOST_TEST(root.wait(std::chrono::seconds(5)));
  BOOST_TEST(!core::Token().wait(std::chrono::milliseconds(1)));
  BOOST_TEST(!core::Token().cancelled());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(many_packages_and_index_churn) {
  test::SegmentName seg{"churn"};
  Store s = Store::create(seg.str(), test::segment_options(512, 1 << 20)).value();
  // Create and delete far more names than the index holds, forcing tombstone rebuilds.
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 400; ++i) {
      const std::string n = "r" + std::to_string(round) + "-p" + std::to_string(i);
      BOOST_REQUIRE(s.update(n, "1", Settings::parse(R"({"i":)" + std::to_string(i) + "}").value()).has_value());
    }
    for (int i = 0; i < 400; ++i) {
      const std::string n = "r" + std::to_string(round) + "-p" + std::to_string(i);
      if (round == 19 && i % 2 == 0) continue;  // keep some
      BOOST_REQUIRE(s.handle_event(kEventRemove, n).has_value());
      BOOST_REQUIRE(s.erase(n).value());
    }
  }
  BOOST_TEST(s.segment().info().used == 200u);
  for (int i = 0; i < 400; i += 2) {
    auto r = s.view().read("r19-p" + std::to_string(i));
    BOOST_REQUIRE(r);
    BOOST_TEST(r->settings == R"({"i":)" + std::to_string(i) + "}");
  }
  BOOST_TEST(s.view().list().value().size() == 200u);
}

BOOST_AUTO_TEST_CASE(full_table_index_churn) {
  // Every slot taken (the index at its most loaded), then names replaced one at a time at full
  // capacity: each delete leaves a tombstone until a rebuild, and every name stays found.
  test::SegmentName seg{"full"};
  constexpr int kCap = 100;
  Store s = Store::create(seg.str(), test::segment_options(kCap, 1 << 16)).value();
  std::vector<std::string> live;
  for (int i = 0; i < kCap; ++i) {
    live.push_back("f" + std::to_string(i));
    BOOST_REQUIRE(s.update(live.back(), "1", S("{}")).has_value());
  }
  BOOST_TEST(s.update("one-too-many", "1", S("{}")).error().code == Errc::table_full);
  for (int round = 0; round < 1000; ++round) {
    const std::size_t k = static_cast<std::size_t>(round * 37 % kCap);
    BOOST_REQUIRE(s.handle_event(kEventRemove, live[k]).has_value());
    BOOST_REQUIRE(s.erase(live[k]).value());
    BOOST_REQUIRE(s.view().token(live[k], kEventUpdate).error().code == Errc::no_such_package);
    live[k] = "g" + std::to_string(round);
    BOOST_REQUIRE(s.update(live[k], "1", S("{}")).has_value());
  }
  for (const std::string& n : live) {
    auto t = s.view().token(n, kEventSchedule);
    BOOST_REQUIRE(t);
    const PackageRecord r = s.view().read(n).value();
    BOOST_TEST(r.name == n);
    BOOST_TEST(r.slot == t->slot());
  }
  BOOST_TEST(s.view().read("f0-never").error().code == Errc::no_such_package);
}

BOOST_AUTO_TEST_CASE(corrupt_index_entries_never_reach_outside_the_table) {
  // A reader trusts no index entry (DESIGN §4.1): one that names a slot past the capacity is
  // skipped, one that names another package's slot is caught by the record's name, and an index
  // with no empty entry left still ends each probe after one pass.
  test::SegmentName seg{"badidx"};
  constexpr std::uint32_t kCap = 16;
  // The smallest settings area: slots 16..30 then lie past the end of the mapping.
  Store s = Store::create(seg.str(), test::segment_options(kCap, 64)).value();
  BOOST_REQUIRE(s.update("other", "1", S("{}")).has_value());
  const std::uint32_t other = s.view().token("other", kEventUpdate).value().slot();
  const std::uint64_t n = s.segment().header().index_entries;
  const unsigned bits = layout::index_slot_bits(kCap);
  const std::uint64_t h = name_hash("victim");
  std::atomic<std::uint32_t>* index = s.segment().index();
  for (std::uint64_t i = 0; i < n; ++i) {
    // The victim's fingerprint everywhere: slots 16..30 (past the table), and one at `other`.
    const std::uint32_t slot = i == n / 2 ? other : kCap + static_cast<std::uint32_t>(i % 15);
    index[i].store(layout::index_entry(h, slot, bits));
  }
  BOOST_TEST(s.view().token("victim", kEventUpdate).error().code == Errc::no_such_package);
  BOOST_TEST(s.view().read("victim").error().code == Errc::no_such_package);
  BOOST_TEST(s.view().find("other").error().code == Errc::no_such_package);  // its entry is gone
}

// --- DESIGN §2.1: what the upstream store grew (one case per row, and the refusals) ------------
BOOST_FIXTURE_TEST_SUITE(v2, Fixture)

namespace {
// The §2.1 options one at a time (designated initializers that omit trailing members warn).
UpdateOptions SV(std::uint64_t v) { UpdateOptions o; o.settings_version = v; return o; }
UpdateOptions MAINT(std::string_view m) { UpdateOptions o; o.maintenance = m; return o; }
UpdateOptions FORCE() { UpdateOptions o; o.force = true; return o; }
UpdateOptions CAUSE(std::string_view c) { UpdateOptions o; o.cause = c; return o; }
layout::Slot& slot_of(const Store& s, std::uint32_t i) {
  auto& h = const_cast<layout::Header&>(s.segment().header());
  return reinterpret_cast<layout::Slot*>(reinterpret_cast<std::byte*>(&h) + h.prefix.slots_offset)[i];
}
}  // namespace

BOOST_AUTO_TEST_CASE(settings_version_is_stored_returned_and_a_settings_only_change) {
  auto created = store.update("app", "1", S(R"({"a":1})"), SV(3));
  BOOST_REQUIRE(created);
  BOOST_TEST(store.view().read("app").value().settings_version == 3u);
  const core::Token root = *created->token;
  auto r = store.update("app", "1", S(R"({"a":1})"), SV(4));  // alone: settings-only
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::settings);
  BOOST_TEST(!r->token);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(store.view().read("app").value().settings_version == 4u);
  r = store.update("app", "1", S(R"({"a":1})"), SV(4));
  BOOST_TEST(r->change == Change::none);
  r = store.update("app", "1", S(R"({"a":1})"));  // the default, 0, is a change too
  BOOST_TEST(r->change == Change::settings);
  BOOST_TEST(store.view().read("app").value().settings_version == 0u);
}

BOOST_AUTO_TEST_CASE(remove_resets_settings_version_and_clears_maintenance) {
  update("app", "1");
  BOOST_REQUIRE(store.update("app", "2", S("{}"), [] { UpdateOptions o = SV(7); o.maintenance = "drain-1.x"; return o; }()));
  event(kEventRemove, "app");
  const auto r = store.view().read("app").value();
  BOOST_TEST(r.settings_version == 0u);
  BOOST_TEST(r.maintenance == "");
  BOOST_TEST(r.version == "");
}

BOOST_AUTO_TEST_CASE(update_settings_touches_neither_version_nor_tokens) {
  const core::Token root = update("app", "1", R"({"a":1})");
  const core::Token child = event(kEventSchedule, "app");
  const auto commits0 = commits();
  BOOST_TEST(store.update_settings("app", S(R"({"a":2})"), 0).value());          // checksum changed
  BOOST_TEST(store.update_settings("app", S(R"({"a":2})"), 5).value());          // settings_version changed
  BOOST_TEST(!store.update_settings("app", S(R"({"a":2})"), 5).value());         // no change
  BOOST_TEST(commits() == commits0 + 2);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(!child.cancelled());
  const auto r = store.view().read("app").value();
  BOOST_TEST(r.version == "1");
  BOOST_TEST(r.settings == R"({"a":2})");
  BOOST_TEST(r.settings_version == 5u);
}

BOOST_AUTO_TEST_CASE(update_settings_of_an_absent_package_creates_nothing) {
  BOOST_TEST(!store.update_settings("ghost", S(R"({"a":1})"), 1).value());
  BOOST_TEST(store.view().read("ghost").error().code == Errc::no_such_package);
  BOOST_TEST(store.segment().info().used == 0u);
  BOOST_TEST(store.update_settings("bad name", S("{}"), 0).error().code == Errc::invalid_name);
}

BOOST_AUTO_TEST_CASE(update_settings_keeps_the_maintenance_mode) {
  BOOST_REQUIRE(store.update("app", "1", S("{}"), MAINT("frozen")));
  BOOST_TEST(store.update_settings("app", S(R"({"x":true})"), 2).value());
  BOOST_TEST(store.view().read("app").value().maintenance == "frozen");
}

BOOST_AUTO_TEST_CASE(maintenance_is_a_settings_only_change_read_late_bound) {
  const core::Token root = update("app", "1");
  auto r = store.update("app", "1", S("{}"), MAINT("paused"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::settings);
  BOOST_TEST(!r->token);
  BOOST_TEST(!root.cancelled());
  BOOST_TEST(store.view().read("app").value().maintenance == "paused");
  BOOST_TEST(store.update("app", "1", S("{}"), MAINT("paused"))->change == Change::none);
  BOOST_TEST(store.update("app", "1", S("{}"))->change == Change::settings);  // back to "" (managed)
  BOOST_TEST(store.view().read("app").value().maintenance == "");
}

// A write stores only the maintenance words the old or the new mode covers (words past both are
// zero already): a shorter mode leaves no byte of the longer one behind, and update_settings
// keeps the longest version and mode as they were.
BOOST_AUTO_TEST_CASE(a_shorter_maintenance_mode_leaves_no_byte_of_the_longer_one) {
  const std::string longest(layout::kMaxMaintenance, 'm');
  const std::string version(layout::kMaxVersion, 'v');
  BOOST_REQUIRE(store.update("app", version, S("{}"), MAINT(longest)));
  const std::uint32_t s = store.view().find("app").value();
  const auto words = [&] {
    std::array<std::uint64_t, layout::kMaxMaintenance / 8> w{};
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = slot_of(store, s).data.w[layout::dw::kMaintenance + i].load();
    return w;
  };
  BOOST_TEST(store.update_settings("app", S(R"({"a":1})"), 1).value());
  BOOST_TEST(store.view().read("app").value().maintenance == longest);
  BOOST_TEST(store.view().read("app").value().version == version);
  BOOST_REQUIRE(store.update("app", version, S(R"({"a":1})"), MAINT("abcdefghij")));  // 2 words
  BOOST_TEST(store.view().read("app").value().maintenance == "abcdefghij");
  auto w = words();
  BOOST_TEST((w[1] >> 16) == 0u);  // bytes 10..15 of the mode field
  for (std::size_t i = 2; i < w.size(); ++i) BOOST_TEST(w[i] == 0u);
  BOOST_REQUIRE(store.update("app", version, S(R"({"a":1})")));  // back to "" (managed)
  BOOST_TEST(store.view().read("app").value().maintenance == "");
  w = words();
  for (std::size_t i = 0; i < w.size(); ++i) BOOST_TEST(w[i] == 0u);
}

BOOST_AUTO_TEST_CASE(need_update_compares_maintenance_only_when_given) {
  BOOST_REQUIRE(store.update("app", "1", S("{}"), MAINT("paused")));
  const auto sum = S("{}").checksum();
  BOOST_TEST(!store.need_update("app", "1", sum).value());
  BOOST_TEST(!store.need_update("app", "1", sum, "paused").value());
  BOOST_TEST(store.need_update("app", "1", sum, "").value());
  BOOST_TEST(store.need_update("app", "1", sum, "other").value());
  BOOST_TEST(store.need_update("absent", "1", sum, "paused").value());
  BOOST_TEST(store.need_update("app", "1", sum, "bad mode!").error().code == Errc::invalid_maintenance);
}

BOOST_AUTO_TEST_CASE(bad_maintenance_and_cause_are_refused_and_change_nothing) {
  update("app", "1");
  const auto commits0 = commits();
  BOOST_TEST(store.update("app", "2", S("{}"), MAINT(std::string(65, 'm'))).error().code ==
             Errc::invalid_maintenance);
  BOOST_TEST(store.update("app", "2", S("{}"), MAINT("a b")).error().code == Errc::invalid_maintenance);
  BOOST_TEST(store.update("app", "1", S("{}"), MAINT(std::string(64, 'm')))->change == Change::settings);
  for (std::string_view bad : {"Upper", "9lives", "has-dash", "_x", "a23456789012345678901234567890123"})
    BOOST_TEST(store.update("app", "2", S("{}"), CAUSE(bad)).error().code == Errc::invalid_cause, bad);
  BOOST_TEST(store.handle_event(kEventUpdate, "app", "Bad").error().code == Errc::invalid_cause);
  BOOST_TEST(commits() == commits0 + 1);
  BOOST_TEST(version("app") == "1");
}

BOOST_AUTO_TEST_CASE(force_handles_the_same_version_as_a_version_change) {
  const core::Token root = update("app", "1");
  const core::Token child = event(kEventSchedule, "app");
  auto r = store.update("app", "1", S("{}"), FORCE());
  BOOST_REQUIRE(r);
  BOOST_TEST(r->change == Change::version);
  BOOST_REQUIRE(r->token);
  BOOST_TEST(!r->token->cancelled());
  BOOST_TEST(cause_name(root.cause()) == "version_changed");
  BOOST_TEST(cause_name(child.cause()) == "version_changed");
}

BOOST_AUTO_TEST_CASE(caller_named_cause_on_update_and_every_event) {
  const core::Token first = update("app", "1");
  const core::Token child = event(kEventSchedule, "app");
  const core::Token root = *store.update("app", "2", S("{}"), CAUSE("rollout_42"))->token;
  BOOST_TEST(first.cause_text().value() == "rollout_42");
  BOOST_TEST(child.cause_text().value() == "rollout_42");  // through its root
  const core::Token c2 = *store.handle_event(kEventSchedule, "app", "operator_disable").value();
  const core::Token c3 = *store.handle_event(kEventSchedule, "app").value();
  BOOST_TEST(c2.cause_text().value() == "rescheduled");
  auto r = store.handle_event(kEventUpdate, "app", "config_push");
  BOOST_REQUIRE(r);
  BOOST_TEST(root.cause_text().value() == "config_push");
  BOOST_TEST(c3.cause_text().value() == "config_push");
  const core::Token root2 = **r;
  const core::Token c4 = event(kEventSchedule, "app");
  BOOST_REQUIRE(store.handle_event(kEventSchedule, "app", "operator_disable"));
  BOOST_TEST(c4.cause_text().value() == "operator_disable");
  BOOST_REQUIRE(store.handle_event(kEventRemove, "app", "decommission"));
  BOOST_TEST(root2.cause_text().value() == "decommission");
  BOOST_TEST(store.view().read("app").value().last_cause_name == "decommission");
  // A name already in the table is reused, not added again.
  BOOST_TEST(store.segment().header().cause_count.load() == 4u);
  // Built-in causes still read as before.
  BOOST_TEST(cause_name(first.cause()) != "version_changed");
}

BOOST_AUTO_TEST_CASE(sixty_four_names_then_too_many_causes_and_nothing_changed) {
  update("app", "1");
  for (int i = 0; i < 64; ++i) BOOST_REQUIRE(store.handle_event(kEventUpdate, "app", "c" + std::to_string(i)));
  const core::Token live = store.view().token("app", kEventUpdate).value();
  const auto commits0 = commits();
  auto r = store.handle_event(kEventUpdate, "app", "one_too_many");
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::too_many_causes);
  BOOST_TEST(store.update("app", "2", S("{}"), CAUSE("one_too_many")).error().code == Errc::too_many_causes);
  BOOST_TEST(commits() == commits0);
  BOOST_TEST(!live.cancelled());
  BOOST_TEST(version("app") == "1");
  BOOST_REQUIRE(store.handle_event(kEventUpdate, "app", "c17"));  // a known name still works
  BOOST_TEST(live.cause_text().value() == "c17");
}

BOOST_AUTO_TEST_CASE(a_named_cause_stays_exact_for_eight_further_events) {
  update("app", "1");
  const core::Token root = *store.handle_event(kEventUpdate, "app").value();
  BOOST_REQUIRE(store.handle_event(kEventUpdate, "app", "first"));
  for (int i = 0; i < 8; ++i) BOOST_REQUIRE(store.handle_event(kEventUpdate, "app", "later"));
  BOOST_TEST(root.cause_text().value() == "first");
}

BOOST_AUTO_TEST_CASE(corrupt_cause_name_or_maintenance_reads_as_corrupt) {
  const core::Token t = update("app", "1");
  BOOST_REQUIRE(store.handle_event(kEventUpdate, "app", "good"));
  auto& h = const_cast<layout::Header&>(store.segment().header());
  h.cause_names[0].w[0].store(0x21, std::memory_order_relaxed);  // "!" — not a cause name
  BOOST_TEST(t.cause_text().error().code == Errc::corrupt);
  BOOST_TEST(store.view().read("app").error().code == Errc::corrupt);
  h.cause_names[0].w[0].store(0x646f6f67, std::memory_order_relaxed);  // "good" again
  BOOST_TEST(t.cause_text().value() == "good");
  h.cause_names[0].len.store(200, std::memory_order_relaxed);  // a length past the entry
  BOOST_TEST(t.cause_text().error().code == Errc::corrupt);
  h.cause_names[0].len.store(4, std::memory_order_relaxed);
  h.cause_count.store(0, std::memory_order_relaxed);  // index past the table
  BOOST_TEST(t.cause_text().error().code == Errc::corrupt);
  h.cause_count.store(1, std::memory_order_relaxed);

  BOOST_REQUIRE(store.update("app", "1", S("{}"), MAINT("ok")));
  const std::uint32_t s = store.view().find("app").value();
  layout::SlotData& d = slot_of(store, s).data;
  d.w[layout::dw::kMaintenance].store(0x20206b6f, std::memory_order_relaxed);  // "ok  " with the length 4 below
  const std::uint64_t meta = d.w[layout::dw::kMeta].load();
  d.w[layout::dw::kMeta].store((meta & ~(std::uint64_t{0xff} << 24)) | (std::uint64_t{4} << 24));
  BOOST_TEST(store.view().read("app").error().code == Errc::corrupt);
  BOOST_TEST(store.need_update("app", "1", 0).error().code == Errc::corrupt);
  d.w[layout::dw::kMeta].store((meta & ~(std::uint64_t{0xff} << 24)) | (std::uint64_t{200} << 24));  // too long
  BOOST_TEST(store.view().read("app").error().code == Errc::corrupt);
  d.w[layout::dw::kMeta].store(meta);
  BOOST_TEST(store.view().read("app").value().maintenance == "ok");
}

// DESIGN: what dump shows for a package is its own history, not the slot's previous tenant's.
BOOST_AUTO_TEST_CASE(a_new_package_in_a_reused_slot_shows_its_own_history) {
  const core::Token old_root = update("a", "1");
  const core::Token old_child = event(kEventSchedule, "a");
  event(kEventRemove, "a");
  BOOST_REQUIRE(store.erase("a").value());
  const core::Token b = update("b", "1");
  BOOST_TEST(b.slot() == old_root.slot());  // the same slot, reused
  const auto r = store.view().read("b").value();
  BOOST_TEST(r.root_generation == 0u);
  for (const auto g : r.child_generations) BOOST_TEST(g == 0u);
  BOOST_TEST(r.last_cause == Cause::kNone);
  BOOST_TEST(r.last_cause_name == "none");
  // The old tenant's tokens still tell their story; b's token is live.
  BOOST_TEST(cause_name(old_root.cause()) == "removed");
  BOOST_TEST(cause_name(old_child.cause()) == "removed");
  BOOST_TEST(!b.cancelled());
  // b's own events count from its creation.
  event(kEventSchedule, "b");
  BOOST_REQUIRE(store.update("b", "2", S("{}")));
  const auto r2 = store.view().read("b").value();
  BOOST_TEST(r2.root_generation == 1u);
  BOOST_TEST(r2.child_generations[0] == 2u);
  BOOST_TEST(r2.child_generations[1] == 1u);
  BOOST_TEST(r2.last_cause_name == "version_changed");
  BOOST_TEST(cause_name(b.cause()) == "version_changed");
}

BOOST_AUTO_TEST_CASE(recreating_after_remove_keeps_the_package_history) {
  update("app", "1");
  event(kEventRemove, "app");
  update("app", "2");  // re-created: the same package
  const auto r = store.view().read("app").value();
  BOOST_TEST(r.root_generation == 2u);
  BOOST_TEST(r.last_cause_name == "version_changed");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_FIXTURE_TEST_SUITE(v2_removed, Fixture)

BOOST_AUTO_TEST_CASE(update_settings_of_a_removed_package_changes_nothing) {
  update("app", "1");
  event(kEventRemove, "app");
  const auto commits0 = commits();
  BOOST_TEST(!store.update_settings("app", S(R"({"a":1})"), 3).value());
  BOOST_TEST(commits() == commits0);
  BOOST_TEST(settings("app") == "{}");
  BOOST_TEST(store.view().read("app").value().settings_version == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
