// The worker SDK's C++ API in one process: attach errors, tokens, consistent reads, token
// parsing (refusing garbage and forgeries), liveness and re-attachment.
#define BOOST_TEST_MODULE worker_api
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "pkgctx/worker.hpp"
#include "test_support.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <xxhash.h>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::SegmentName;

namespace {

SegmentOptions small() { return test::segment_options(64, 64 * 1024); }

Settings settings(const std::string& json) { return Settings::parse(json).value(); }

Store make_store(const SegmentName& n) {
  return test::create_store_with(n, small(), "1.0", settings(R"({"b":2,"a":1})"));
}

Worker attach(const std::string& n, WorkerOptions o = {}) {
  auto w = Worker::attach(n, o);
  BOOST_TEST_REQUIRE(w.has_value(), (w ? "" : w.error().message));
  return std::move(*w);
}

// The printable token with one field replaced and the check digits recomputed: a forgery by
// someone who knows the format.
std::string forge(const Token& t, std::uint64_t epoch, std::uint32_t slot, std::uint32_t key, std::uint64_t root,
                  std::uint64_t child) {
  const std::uint64_t fields[] = {epoch, slot, key, root, child};
  const auto check = static_cast<std::uint32_t>(XXH3_64bits(fields, sizeof fields));
  char buf[160];
  std::snprintf(buf, sizeof buf, "pkgctx1:%016llx:%u:%u:%llx:%llx:%08x", static_cast<unsigned long long>(epoch), slot,
                key, static_cast<unsigned long long>(root), static_cast<unsigned long long>(child), check);
  (void)t;
  return buf;
}

}  // namespace

BOOST_AUTO_TEST_CASE(attach_errors_name_the_problem) {
  SegmentName n("missing");
  auto w = Worker::attach(n);
  BOOST_TEST_REQUIRE(!w.has_value());
  BOOST_TEST(static_cast<int>(w.error().code) == static_cast<int>(Errc::segment_missing));
  BOOST_TEST(w.error().message.find(n.str()) != std::string::npos);

  BOOST_TEST(Worker::attach("").error().code == Errc::invalid_name);
  BOOST_TEST(Worker::attach("a/b").error().code == Errc::invalid_name);

  // A shared-memory object that is not a pkgctx segment.
  SegmentName foreign("foreign");
  {
    int fd = ::open(test::segment_path(foreign.str()).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    BOOST_TEST_REQUIRE(fd >= 0);
    std::string junk(8192, 'x');
    BOOST_TEST_REQUIRE(::write(fd, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
    ::close(fd);
  }
  auto f = Worker::attach(foreign);
  BOOST_TEST_REQUIRE(!f.has_value());
  BOOST_TEST(static_cast<int>(f.error().code) == static_cast<int>(Errc::segment_foreign));

  // A pkgctx segment of another layout version.
  SegmentName other("version");
  auto seg = Segment::create(other, small());
  BOOST_TEST_REQUIRE(seg.has_value());
  test::set_layout_version(other, layout::kLayoutVersion + 1);
  auto v = Worker::attach(other);
  BOOST_TEST_REQUIRE(!v.has_value());
  BOOST_TEST(static_cast<int>(v.error().code) == static_cast<int>(Errc::segment_version));
}

BOOST_AUTO_TEST_CASE(tokens_follow_the_semantics) {
  SegmentName n;
  Store store = make_store(n);
  Worker w = attach(n);

  auto root = w.token("pkg", kEventUpdate);
  auto child = w.token("pkg", kEventSchedule);
  auto other_child = w.token("pkg", 3);
  BOOST_TEST_REQUIRE(root.has_value());
  BOOST_TEST_REQUIRE(child.has_value());
  BOOST_TEST_REQUIRE(other_child.has_value());
  BOOST_TEST(!root->cancelled());
  BOOST_TEST(root->cause() == Cause::kNone);

  // A child event cancels only that key's child.
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  BOOST_TEST(child->cancelled());
  BOOST_TEST(child->cause() == Cause::kRescheduled);
  BOOST_TEST(!other_child->cancelled());
  BOOST_TEST(!root->cancelled());

  // A root event cancels the root and every child, with the root's cause.
  BOOST_TEST_REQUIRE(store.handle_event(kEventUpdate, "pkg").has_value());
  BOOST_TEST(root->cancelled());
  BOOST_TEST(root->cause() == Cause::kUpdateEvent);
  BOOST_TEST(other_child->cause() == Cause::kUpdateEvent);

  // A version change, then deletion.
  auto t2 = w.token("pkg", kEventUpdate);
  BOOST_TEST_REQUIRE(store.update("pkg", "2.0", Settings()).has_value());
  BOOST_TEST(t2->cause() == Cause::kVersionChanged);
  BOOST_TEST_REQUIRE(store.handle_event(kEventRemove, "pkg").has_value());  // only a removed package is deleted
  auto t3 = w.token("pkg", kEventUpdate);
  BOOST_TEST_REQUIRE(store.erase("pkg").value());
  BOOST_TEST(t3->cause() == Cause::kDeleted);

  BOOST_TEST(w.token("pkg", 0).error().code == Errc::no_such_package);
  BOOST_TEST(w.token("pkg", 8).error().code == Errc::invalid_event);
  BOOST_TEST(w.token("pkg", -1).error().code == Errc::invalid_event);
  BOOST_TEST(w.token("a b", 0).error().code == Errc::invalid_name);

  // A default token never cancels; its wait just times out.
  Token never;
  BOOST_TEST(!never.cancelled());
  BOOST_TEST(!never.wait(1ms));
}

BOOST_AUTO_TEST_CASE(read_returns_one_consistent_state) {
  SegmentName n;
  Store store = make_store(n);
  Worker w = attach(n);
  auto r = w.read("pkg");
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->version == "1.0");
  BOOST_TEST(r->settings == R"({"a":1,"b":2})");
  BOOST_TEST(r->checksum == checksum_bytes(r->settings));

  BOOST_TEST(w.need_update("pkg", "1.0", r->checksum).value() == false);
  BOOST_TEST(w.need_update("pkg", "1.1", r->checksum).value() == true);
  BOOST_TEST(w.need_update("pkg", "1.0", r->checksum ^ 1).value() == true);
  BOOST_TEST(w.need_update("absent", "1.0", r->checksum).value() == true);

  // After remove: version "" and settings {}.
  BOOST_TEST_REQUIRE(store.handle_event(kEventRemove, "pkg").has_value());
  r = w.read("pkg");
  BOOST_TEST_REQUIRE(r.has_value());
  BOOST_TEST(r->version == "");
  BOOST_TEST(r->settings == "{}");
  BOOST_TEST(w.read("absent").error().code == Errc::no_such_package);
}

BOOST_AUTO_TEST_CASE(tokens_round_trip_through_text) {
  SegmentName n;
  Store store = make_store(n);
  Worker w = attach(n);
  for (int event = 0; event <= kMaxEvent; ++event) {
    auto t = w.token("pkg", event);
    BOOST_TEST_REQUIRE(t.has_value());
    const std::string text = t->str();
    BOOST_TEST(text.size() <= 128u);
    BOOST_TEST(text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") ==
               std::string::npos);
    auto p = w.parse_token(text);
    BOOST_TEST_REQUIRE(p.has_value(), text << ": " << (p ? "" : p.error().message));
    BOOST_TEST(p->slot() == t->slot());
    BOOST_TEST(p->key() == t->key());
    BOOST_TEST(p->root_generation() == t->root_generation());
    BOOST_TEST(p->child_generation() == t->child_generation());
    BOOST_TEST(p->str() == text);
  }
  // A parsed token observes cancellation like the original.
  auto t = w.token("pkg", kEventSchedule).value();
  auto p = w.parse_token(t.str()).value();
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  BOOST_TEST(p.cancelled());
  BOOST_TEST(p.cause() == Cause::kRescheduled);
  // A token of an already-cancelled context parses, and says so.
  auto again = w.parse_token(t.str());
  BOOST_TEST_REQUIRE(again.has_value());
  BOOST_TEST(again->cancelled());
}

BOOST_AUTO_TEST_CASE(parsing_refuses_garbage_and_forgeries) {
  SegmentName n, other_name("other");
  Store store = make_store(n);
  Store other = make_store(other_name);
  Worker w = attach(n);
  const Token t = w.token("pkg", kEventSchedule).value();
  const std::string good = t.str();
  const std::uint64_t epoch = w.epoch();

  std::vector<std::string> bad = {
      "",
      "x",
      "pkgctx1",
      "pkgctx1:none",
      "pkgctx2" + good.substr(7),
      good + ":",
      good + "0",
      good.substr(0, good.size() - 1),
      std::string(200, 'a'),
      std::string("pkgctx1:\n\x01\xff:0:0:0:0:0"),
      "pkgctx1:0000000000000000:0:0:0:0:00000000",
      "pkgctx1:" + std::string(16, 'g') + ":0:0:0:0:00000000",
      "pkgctx1:-000000000000001:0:0:0:0:00000000",
      "pkgctx1:0000000000000000:+1:0:0:0:00000000",
      "pkgctx1:0000000000000000:0:0:0:0:0000000",
      "pkgctx1:0000000000000000:99999999999:0:0:0:00000000",
      "pkgctx1:0000000000000000:0:0:0:0:00000000:extra",
  };
  // Every single-character change of a good token is refused (garbled in transit).
  for (std::size_t i = 0; i < good.size(); ++i) {
    std::string g = good;
    g[i] = g[i] == '1' ? '2' : '1';
    if (g != good) bad.push_back(g);
  }
  // Forgeries with valid check digits: a generation in the future, a slot beyond the table, a
  // key out of range, a root token claiming a child generation, and another segment's epoch.
  bad.push_back(forge(t, epoch, t.slot(), t.key(), t.root_generation() + 1, t.child_generation()));
  bad.push_back(forge(t, epoch, t.slot(), t.key(), t.root_generation(), t.child_generation() + 5));
  bad.push_back(forge(t, epoch, 64, t.key(), 0, 0));
  bad.push_back(forge(t, epoch, 0xffffffffu, t.key(), 0, 0));
  bad.push_back(forge(t, epoch, t.slot(), 8, 0, 0));
  bad.push_back(forge(t, epoch, t.slot(), 0, t.root_generation(), 1));
  bad.push_back(forge(t, epoch ^ 1, t.slot(), t.key(), t.root_generation(), t.child_generation()));
  bad.push_back(other.view().token("pkg", 0).value().str());  // a real token of another segment

  for (const std::string& text : bad) {
    auto p = w.parse_token(text);
    BOOST_TEST(!p.has_value(), "accepted: " << text);
    if (!p) {
      BOOST_TEST(static_cast<int>(p.error().code) == static_cast<int>(Errc::invalid_token), text);
      BOOST_TEST(p.error().message.find('\n') == std::string::npos);
    }
  }
  BOOST_TEST(w.parse_token(good).has_value());
}

BOOST_AUTO_TEST_CASE(daemon_liveness_from_the_header) {
  SegmentName n;
  Store store = make_store(n);
  Worker w = attach(n);
  BOOST_TEST(w.daemon().value().liveness == Liveness::none);

  store.segment().mark_daemon_running(4242, 1'000'000'000);
  auto d = w.daemon().value();
  BOOST_TEST(d.liveness == Liveness::alive);
  BOOST_TEST(d.pid == 4242);
  BOOST_TEST(d.heartbeat_interval_ns == 1'000'000'000u);

  // A 1 ms heartbeat interval, then no heartbeat for well over 3 intervals: stale.
  store.segment().mark_daemon_running(4242, 1'000'000);
  std::this_thread::sleep_for(20ms);  // the condition is the passage of time itself
  d = w.daemon().value();
  BOOST_TEST(d.liveness == Liveness::stale);
  BOOST_TEST(d.heartbeat_age_ns >= 20'000'000u);
  store.segment().heartbeat();
  BOOST_TEST(w.daemon().value().liveness == Liveness::alive);

  store.segment().mark_daemon_stopped();
  BOOST_TEST(w.daemon().value().liveness == Liveness::stopped);
}

BOOST_AUTO_TEST_CASE(reattaches_after_retirement) {
  SegmentName n;
  std::optional<Store> first = make_store(n);
  Worker w = attach(n);
  const std::uint64_t old_epoch = w.epoch();
  const Token old_root = w.token("pkg", kEventUpdate).value();
  const Token old_child = w.token("pkg", kEventSchedule).value();
  const std::string old_text = old_root.str();

  first->retire();  // marks retired, wakes waiters, unlinks
  BOOST_TEST(old_root.cancelled());
  BOOST_TEST(old_root.cause() == Cause::kSegmentRetired);
  BOOST_TEST(old_child.cause() == Cause::kSegmentRetired);

  // No new segment yet: lookups fail (never a live token of a dead segment).
  auto none = w.token("pkg", kEventUpdate);
  BOOST_TEST_REQUIRE(!none.has_value());
  BOOST_TEST(static_cast<int>(none.error().code) == static_cast<int>(Errc::segment_missing));
  BOOST_TEST(none.error().message.find("retired") != std::string::npos);
  BOOST_TEST(!w.read("pkg").has_value());

  // The daemon creates the new one: the next lookup re-attaches.
  auto second = Store::create(n, small());
  BOOST_TEST_REQUIRE(second.has_value());
  BOOST_TEST_REQUIRE(second->update("pkg", "2.0", Settings()).has_value());
  auto fresh = w.token("pkg", kEventUpdate);
  BOOST_TEST_REQUIRE(fresh.has_value(), (fresh ? "" : fresh.error().message));
  BOOST_TEST(w.epoch() != old_epoch);
  BOOST_TEST(!fresh->cancelled());
  BOOST_TEST(w.read("pkg").value().version == "2.0");

  // Old tokens keep working: the old printed form still parses and says why it died.
  auto parsed = w.parse_token(old_text);
  BOOST_TEST_REQUIRE(parsed.has_value(), (parsed ? "" : parsed.error().message));
  BOOST_TEST(parsed->cause() == Cause::kSegmentRetired);

  BOOST_TEST_REQUIRE(second->handle_event(kEventUpdate, "pkg").has_value());
  BOOST_TEST(fresh->cause() == Cause::kUpdateEvent);
  BOOST_TEST(w.refresh().value() == false);
}

BOOST_AUTO_TEST_CASE(notices_a_segment_replaced_without_retirement) {
  SegmentName n;
  WorkerOptions never;
  never.recheck_interval = std::chrono::milliseconds(-1);
  std::optional<Store> first = make_store(n);
  Worker w = attach(n, never);
  WorkerOptions always;
  always.recheck_interval = 0ms;
  Worker eager = attach(n, always);
  const std::uint64_t old_epoch = w.epoch();

  Segment::remove(n);  // removed by hand, then re-created: nobody retired the old one
  auto second = Store::create(n, small());
  BOOST_TEST_REQUIRE(second.has_value());
  BOOST_TEST_REQUIRE(second->update("pkg", "2.0", Settings()).has_value());
  BOOST_TEST_REQUIRE(second->update("newcomer", "1", Settings()).has_value());

  // Without the periodic check, a hit on the old table is served from it …
  BOOST_TEST(w.read("pkg").value().version == "1.0");
  // … a miss makes it look …
  BOOST_TEST(w.token("newcomer", 0).has_value());
  BOOST_TEST(w.epoch() != old_epoch);
  BOOST_TEST(w.read("pkg").value().version == "2.0");
  // … and with recheck_interval 0 the very next lookup re-attaches.
  BOOST_TEST(eager.read("pkg").value().version == "2.0");
  BOOST_TEST(eager.epoch() == w.epoch());

  // refresh() reports whether it moved.
  Worker lazy = attach(n, never);
  BOOST_TEST(lazy.refresh().value() == false);
  Segment::remove(n);
  auto third = Store::create(n, small());
  BOOST_TEST_REQUIRE(third.has_value());
  BOOST_TEST(lazy.refresh().value() == true);
  BOOST_TEST(lazy.epoch() == third->segment().header().prefix.epoch);
}

BOOST_AUTO_TEST_CASE(a_worker_is_shared_by_threads_across_a_reattachment) {
  SegmentName n;
  std::optional<Store> store = make_store(n);
  Worker w = attach(n);
  std::atomic<bool> stop{false};
  std::atomic<long> ok{0}, errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        auto t = w.token("pkg", kEventUpdate);
        if (t) {
          ok.fetch_add(1);
        } else {
          errors.fetch_add(1);
        }
      }
    });
  }
  // Start re-attaching only once the threads are running (on a loaded machine they may not be
  // scheduled before twenty rounds are over).
  while (ok.load() == 0) std::this_thread::yield();
  for (int round = 0; round < 20; ++round) {
    store->retire();
    store.reset();
    auto s = Store::create(n, small());
    BOOST_TEST_REQUIRE(s.has_value());
    BOOST_TEST_REQUIRE(s->update("pkg", std::to_string(round), Settings()).has_value());
    store.emplace(std::move(*s));
  }
  stop = true;
  for (auto& t : threads) t.join();
  BOOST_TEST(ok.load() > 0);
  // After the last re-creation, every thread's next lookup lands on the live segment.
  auto t = w.token("pkg", kEventUpdate);
  BOOST_TEST_REQUIRE(t.has_value());
  BOOST_TEST(!t->cancelled());
  BOOST_TEST(w.read("pkg").value().version == "19");
}

// Strings cross the C ABI by pointer and length: a NUL byte inside is a bad byte, never the end.
BOOST_AUTO_TEST_CASE(embedded_nul_bytes_are_refused_not_cut) {
  SegmentName n;
  Store store = make_store(n);
  Worker w = attach(n);
  using namespace std::string_literals;
  BOOST_TEST(Worker::attach(n.str() + "\0x"s).error().code == Errc::invalid_name);
  BOOST_TEST(w.token("pkg\0x"s, kEventUpdate).error().code == Errc::invalid_name);
  BOOST_TEST(w.read("pkg\0"s).error().code == Errc::invalid_name);
  BOOST_TEST(w.need_update("pkg\0"s, "1.0", 0).error().code == Errc::invalid_name);
  const auto t = w.token("pkg", kEventUpdate).value();
  BOOST_TEST(w.parse_token(t.str()).has_value());
  BOOST_TEST(w.parse_token(t.str() + "\0"s).error().code == Errc::invalid_token);
  // A version with a NUL byte is not the version stored (nothing is cut at the NUL).
  BOOST_TEST(w.need_update("pkg", "1.0\0"s, w.read("pkg").value().checksum).value() == true);
  BOOST_TEST(w.need_update("pkg", "1.0", w.read("pkg").value().checksum).value() == false);
}

// DESIGN §2.1 through the C++ SDK: read() returns settings_version and maintenance; a token
// names a caller-named cause; checksum() computes what the store does.
BOOST_AUTO_TEST_CASE(v2_reads_named_causes_and_checksums) {
  SegmentName n("v2");
  Store store = make_store(n);
  UpdateOptions o;
  o.settings_version = 11;
  o.maintenance = "paused";
  BOOST_REQUIRE(store.update("pkg", "1.0", settings(R"({"b":2,"a":1})"), o));
  Worker w = attach(n);
  const auto p = w.read("pkg");
  BOOST_TEST_REQUIRE(p.has_value());
  BOOST_TEST(p->settings_version == 11u);
  BOOST_TEST(p->maintenance == "paused");
  BOOST_TEST(p->version == "1.0");

  const Token t = w.token("pkg", kEventSchedule).value();
  BOOST_TEST(t.cause_text().value() == "none");
  BOOST_REQUIRE(store.handle_event(kEventSchedule, "pkg", "operator_disable"));
  BOOST_TEST(t.cause() == Cause::kNamed);
  BOOST_TEST(cause_name(t.cause()) == "named");
  BOOST_TEST(t.cause_text().value() == "operator_disable");

  const auto c = checksum(R"({ "b" : 2, "a" : 1 })");
  BOOST_TEST_REQUIRE(c.has_value());
  BOOST_TEST(c->canonical == R"({"a":1,"b":2})");
  BOOST_TEST(c->hex == p->checksum_hex);
  BOOST_TEST(c->value == p->checksum);
  BOOST_TEST(checksum("[1]").error().code == Errc::invalid_settings);
}
