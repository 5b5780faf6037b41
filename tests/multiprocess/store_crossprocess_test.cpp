// The store across real processes and real shared memory: a reader process observes root and
// child cancellation through its own read-only mapping; a reader hammers lookups and settings
// while a writer churns and never sees a torn record; a writer SIGKILLed inside the critical
// section leaves a table the next writer repairs.
#define BOOST_TEST_MODULE store_crossprocess
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <string>
#include <unistd.h>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::Pipe;

namespace {

Settings S(const std::string& json) { return Settings::parse(json).value(); }

}  // namespace

BOOST_AUTO_TEST_CASE(reader_process_sees_root_and_child_cancellation) {
  test::SegmentName seg{"xproc"};
  Store store = Store::create(seg.str()).value();
  store.update("app", "1.0", Settings()).value();
  store.handle_event(kEventSchedule, "app").value();
  Pipe ready, go;

  const pid_t child = test::spawn([&] {
    View view = View::open(seg.str()).value();
    core::Token root = view.token("app", kEventUpdate).value();
    core::Token enable = view.token("app", kEventSchedule).value();
    if (root.cancelled() || enable.cancelled()) return 10;
    ready.send('1');
    // The parent reschedules: only the child token is cancelled.
    if (!enable.wait(10s)) return 11;
    if (enable.cause() != Cause::kRescheduled) return 12;
    if (root.cancelled()) return 13;
    core::Token disable = view.token("app", kEventSchedule).value();
    ready.send('2');
    // The parent changes the version: root and the new child are cancelled, with the root's cause.
    if (!root.wait(10s)) return 14;
    if (root.cause() != Cause::kVersionChanged) return 15;
    if (!disable.cancelled() || disable.cause() != Cause::kVersionChanged) return 16;
    if (view.read("app").value().version != "2.0") return 17;
    return 0;
  });
  BOOST_REQUIRE(ready.recv() == '1');
  store.handle_event(kEventSchedule, "app").value();
  BOOST_REQUIRE(ready.recv() == '2');
  store.update("app", "2.0", Settings()).value();
  BOOST_TEST(test::wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(reader_cannot_write_the_table) {
  test::SegmentName seg{"ro"};
  Store store = Store::create(seg.str()).value();
  store.update("app", "1.0", Settings()).value();
  const pid_t child = test::spawn([&] {
    View view = View::open(seg.str()).value();
    auto& gens = view.segment().slot(0).gens;
    gens.root.store(99);  // through a read-only mapping: must fault
    return 0;
  });
  const int code = test::wait_exit(child);
  BOOST_TEST((code == 128 + SIGSEGV || code == 128 + SIGBUS));
  BOOST_TEST(store.view().read("app").value().root_generation == 0u);
}

BOOST_AUTO_TEST_CASE(no_torn_reads_while_a_writer_churns) {
  test::SegmentName seg{"torn"};
  Store store = Store::create(seg.str(), test::segment_options(64, 1 << 20)).value();
  store.update("hot", "v0", S(R"({"n":0,"pad":""})")).value();
  Pipe ready;
  // The reader's loop count, shared so the writer can go on until the reader has raced it.
  auto* reader_loops = test::shared_block<std::atomic<long>>();
  // The reader checks that version and settings always encode the same counter, and that
  // lookups of churned names never return another package's record.
  const pid_t reader = test::spawn([&] {
    View view = View::open(seg.str()).value();
    ready.send('r');
    long reads = 0;
    for (;;) {
      auto r = view.read("hot");
      if (!r) return 20;
      if (r->version == "stop") break;
      const std::string expect_prefix = R"({"n":)" + r->version.substr(1) + ",";
      if (r->settings.rfind(expect_prefix, 0) != 0) return 21;
      if (checksum_bytes(r->settings) != r->checksum) return 22;
      for (int i = 0; i < 4; ++i) {
        const std::string n = "c" + std::to_string(i);
        auto c = view.read(n);
        if (c && c->name != n) return 23;
        if (c && c->version == "1" && c->settings != R"({"name":")" + n + R"("})") return 24;
        if (c && c->version == "" && c->settings != "{}") return 26;
      }
      ++reads;
      reader_loops->store(reads, std::memory_order_relaxed);
    }
    return reads > 100 ? 0 : 25;
  });
  BOOST_REQUIRE(ready.recv() == 'r');
  // 20000 writes, and on a starved machine more, until the reader has read more than 100 times
  // during the churn (at most 60 s), so its bound does not depend on how the two are scheduled.
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  for (int i = 1; i <= 20000 || (reader_loops->load(std::memory_order_relaxed) <= 100 &&
                                 std::chrono::steady_clock::now() < deadline);
       ++i) {
    // Settings of varying size so blocks move around the arena.
    const std::string pad(static_cast<std::size_t>(i % 300), 'p');
    store.update("hot", "v" + std::to_string(i), S(R"({"n":)" + std::to_string(i) + R"(,"pad":")" + pad + R"("})")).value();
    const std::string n = "c" + std::to_string(i % 4);
    if (i % 3 == 0) {
      store.handle_event(kEventRemove, n).value();
      store.erase(n).value();
    } else {
      store.update(n, "1", S(R"({"name":")" + n + R"("})")).value();
    }
  }
  store.update("hot", "stop", Settings()).value();
  BOOST_TEST(test::wait_exit(reader) == 0);
}

#if defined(PKGCTX_FAULT_INJECTION)  // the crash points exist only in fault-injection builds
// For every step of every write path: a writer process dies there holding the mutex; the next
// writer repairs; the table holds either the old or the new state, never a mix; other
// packages' tokens are untouched.
BOOST_AUTO_TEST_CASE(writer_killed_inside_the_critical_section) {
  struct Scenario {
    const char* what;
    std::function<void(Store&)> prepare;
    std::function<void(Store&)> write;
  };
  const std::vector<Scenario> scenarios = {
      {"update", [](Store&) {}, [](Store& s) { s.update("victim", "1", S(R"({"new":1})")).value(); }},
      {"update", [](Store& s) { s.update("victim", "1", S(R"({"old":1})")).value(); },
       [](Store& s) { s.update("victim", "2", S(R"({"new":1})")).value(); }},
      {"event", [](Store& s) { s.update("victim", "1", S(R"({"old":1})")).value(); },
       [](Store& s) { s.handle_event(kEventRemove, "victim").value(); }},
      {"event", [](Store& s) { s.update("victim", "1", S(R"({"old":1})")).value(); },
       [](Store& s) { s.handle_event(kEventSchedule, "victim").value(); }},
      {"erase",
       [](Store& s) {
         s.update("victim", "1", S(R"({"old":1})")).value();
         s.handle_event(kEventRemove, "victim").value();
       },
       [](Store& s) { s.erase("victim").value(); }},
  };
  int tried = 0;
  for (const Scenario& sc : scenarios) {
    for (int step = 1; step <= fault_steps("write"); ++step) {
      BOOST_TEST_CONTEXT(sc.what << " killed at write step " << step) {
        test::SegmentName seg{"kill"};
        SegmentOptions o;
        o.capacity = 8;
        o.settings_bytes = 8192;
        Store store = Store::create(seg.str(), o).value();
        store.update("bystander", "1", S(R"({"keep":true})")).value();
        core::Token bystander = store.view().token("bystander", kEventSchedule).value();
        sc.prepare(store);
        const pid_t writer = test::spawn([&] {
          Store w = Store::open(seg.str()).value();
          set_crash_point("write", step);
          sc.write(w);
          return 0;  // the step was not on this path: the write completed
        });
        const int code = test::wait_exit(writer);
        BOOST_TEST((code == 128 + SIGKILL || code == 0));
        if (code == 128 + SIGKILL) ++tried;
        // The next writer recovers and can write.
        store.update("after", "1", Settings()).value();
        BOOST_TEST(store.segment().info().repairs == (code == 0 ? 0u : 1u));
        const auto after = store.view().list(true).value();
        // Bystander untouched.
        BOOST_TEST(!bystander.cancelled());
        BOOST_TEST(store.view().read("bystander").value().settings == R"({"keep":true})");
        // The victim holds the old or the new state, consistently.
        auto v = store.view().read("victim");
        if (v) {
          BOOST_TEST(checksum_bytes(v->settings) == v->checksum);
          BOOST_TEST((v->settings == R"({"old":1})" || v->settings == R"({"new":1})" || v->settings == "{}"));
          if (v->version == "2") BOOST_TEST(v->settings == R"({"new":1})");
          if (v->version == "") BOOST_TEST(v->settings == "{}");
        }
        // The derived structures were rebuilt: every package is still found by name, and
        // space accounting adds up.
        for (const auto& rec : after) BOOST_TEST(store.view().find(rec.name).has_value());
        std::uint64_t used = 0;
        for (const auto& rec : after) used += rec.settings_size == 2 ? 0 : (rec.settings_size + 63) / 64 * 64;
        BOOST_TEST(store.segment().info().settings_used == used);
        BOOST_TEST(store.segment().info().used == after.size());
      }
    }
  }
  BOOST_TEST(tried >= 20);
}
#endif
