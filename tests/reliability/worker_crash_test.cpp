// DESIGN.md §9 "Kill workers: nothing happens to anyone else." Worker processes (read-only
// mappings) are SIGKILLed while blocked in Token::wait and while reading settings and tokens in a
// loop; the writer and the other workers go on without a hang or an error.
//
// The store plays pkgctxd (the segment is marked daemon-served, so writers wake only counted
// waits), but waiters here are not registered: nobody counts their sleep, so a killed waiter
// leaves nothing behind — the slot's waiter count stays 0 and writers make no futex-wake
// syscall (the segment's `wakes` statistic does not move) — and the live ones still wake within
// their re-check slice. Registered waiters killed with a daemon watching: task_drain_test and
// wait_count_test (which also covers a segment no daemon served: there every cancellation wakes).
#define BOOST_TEST_MODULE worker_crash
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <chrono>
#include <csignal>
#include <random>
#include <string>
#include <sys/mman.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::Pipe;

namespace {

Settings S(const std::string& json) { return Settings::parse(json).value(); }

// Exit code of `pid` if it has exited within `limit`, else -1 (and it is killed).
int exit_within(pid_t pid, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      ::kill(pid, SIGKILL);
      test::wait_exit(pid);
      return -1;
    }
    std::this_thread::sleep_for(1ms);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

}  // namespace

BOOST_AUTO_TEST_CASE(waiters_killed_while_waiting) {
  test::SegmentName seg{"wkill"};
  Store store = Store::create(seg.str()).value();
  store.segment().mark_daemon_running(::getpid(), 50'000'000);
  store.update("app", "1", S(R"({"a":1})")).value();
  store.update("other", "1", Settings()).value();
  store.handle_event(kEventSchedule, "app").value();
  const std::uint32_t slot = store.view().find("app").value();
  const std::atomic<std::uint32_t>* counts = store.segment().waiter_counts();

  // Waiters on the child token (key 2) and on the root; half of each are killed in their sleep.
  constexpr int kWaiters = 6;
  Pipe ready;
  std::vector<pid_t> pids;
  for (int i = 0; i < kWaiters; ++i) {
    const int event = i % 2 == 0 ? kEventSchedule : kEventUpdate;
    pids.push_back(test::spawn([&, event] {
      View view = View::open(seg.str()).value();
      core::Token t = view.token("app", event).value();
      core::Token bystander = view.token("other", kEventSchedule).value();
      ready.send('r');
      if (!t.wait(30s)) return 10;
      if (bystander.cancelled()) return 11;
      return t.cause() == Cause::kRescheduled || t.cause() == Cause::kUpdateEvent ? 0 : 12;
    }));
  }
  for (int i = 0; i < kWaiters; ++i) BOOST_REQUIRE(ready.recv() == 'r');
  for (pid_t p : pids) BOOST_REQUIRE(test::await_futex_sleep(p));

  std::vector<pid_t> killed, alive;
  for (int i = 0; i < kWaiters; ++i) (i < kWaiters / 2 ? killed : alive).push_back(pids[static_cast<std::size_t>(i)]);
  for (pid_t p : killed) {
    ::kill(p, SIGKILL);
    BOOST_TEST(test::wait_exit(p) == 128 + SIGKILL);
  }
  // Nothing counted, nothing left behind; nothing else changed.
  BOOST_TEST(counts[slot].load() == 0u);
  BOOST_TEST(store.view().read("app").value().version == "1");
  const std::uint64_t wakes = store.segment().info().wakes;

  // The writer is not held up, makes no wake syscall, and every live waiter (on either token
  // kind) wakes.
  auto t0 = std::chrono::steady_clock::now();
  store.handle_event(kEventSchedule, "app").value();
  store.handle_event(kEventUpdate, "app").value();
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < 1s));
  BOOST_TEST(store.segment().info().wakes == wakes);
  for (pid_t p : alive) BOOST_TEST(exit_within(p, 10s) == 0);

  // A new waiter still sleeps and wakes.
  Pipe ready2;
  const pid_t late = test::spawn([&] {
    View view = View::open(seg.str()).value();
    core::Token t = view.token("app", kEventSchedule).value();
    ready2.send('r');
    return t.wait(30s) && t.cause() == Cause::kRescheduled ? 0 : 20;
  });
  BOOST_REQUIRE(ready2.recv() == 'r');
  BOOST_REQUIRE(test::await_futex_sleep(late));
  store.handle_event(kEventSchedule, "app").value();
  BOOST_TEST(exit_within(late, 10s) == 0);
  BOOST_TEST(counts[slot].load() == 0u);
  BOOST_TEST(store.update("app", "2", S(R"({"a":2})")).value().token.has_value());
  BOOST_TEST(store.pending_settings("app").value().canonical() == R"({"a":2})");
}

// Readers loop over lookups, settings, token checks and short waits while the writer churns;
// the test keeps killing readers at random moments and starting new ones. The writer never fails
// or stalls, and the readers that are left alive never see an error or a torn record.
BOOST_AUTO_TEST_CASE(readers_killed_while_reading) {
  test::SegmentName seg{"rkill"};
  Store store = Store::create(seg.str(), test::segment_options(16, 1 << 16)).value();
  store.update("hot", "v0", S(R"({"n":0})")).value();
  store.update("calm", "1", S(R"({"keep":true})")).value();

  // Each reader's loop count, so a reader is killed only once it is inside its loop.
  void* mem = test::shared_memory(4096);
  auto* loops = static_cast<std::atomic<std::uint64_t>*>(mem);
  auto reader = [&](int id) {
    loops[id].store(0);
    return test::spawn([&, id] {
      View view = View::open(seg.str()).value();
      core::Token calm = view.token("calm", kEventSchedule).value();
      for (long i = 0;; ++i) {
        loops[id].fetch_add(1, std::memory_order_relaxed);
        auto r = view.read("hot");
        if (!r) return 30;
        if (r->version == "stop") break;
        const std::string want = r->version.empty() ? "{}" : R"({"n":)" + r->version.substr(1) + "}";
        if (r->settings != want) return 31;
        if (checksum_bytes(r->settings) != r->checksum) return 32;
        auto t = view.token("hot", (id + static_cast<int>(i)) % 3);
        if (!t) return 33;
        if (i % 16 == 0) t->wait(std::chrono::microseconds(200));  // sometimes killed inside a wait
        if (calm.cancelled()) return 34;
        auto c = view.read("calm");
        if (!c || c->settings != R"({"keep":true})") return 35;
      }
      return 0;
    });
  };

  std::mt19937_64 rng(std::random_device{}());
  std::vector<pid_t> readers;
  std::vector<int> ids;
  int next_id = 0, kills = 0;
  std::uint64_t loops_before_kill = 0;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(next_id);
    readers.push_back(reader(next_id++));
  }
  const core::Token calm = store.view().token("calm", kEventSchedule).value();
  std::chrono::nanoseconds slowest{0};
  for (int round = 0; round < 60; ++round) {
    const std::size_t victim = rng() % readers.size();
    const int extra = static_cast<int>(rng() % 200);
    for (int i = 0; i < 100 + extra || loops[ids[victim]].load(std::memory_order_relaxed) == 0; ++i) {
      const int n = round * 1000 + i + 1;
      const auto t0 = std::chrono::steady_clock::now();
      store.update("hot", "v" + std::to_string(n), S(R"({"n":)" + std::to_string(n) + "}")).value();
      store.handle_event(n % 3, "hot").value();  // update, remove (then re-created), schedule
      slowest = std::max<std::chrono::nanoseconds>(slowest, std::chrono::steady_clock::now() - t0);
    }
    // Kill the reader at a random moment of its loop and start another.
    loops_before_kill += loops[ids[victim]].load(std::memory_order_relaxed);
    ::kill(readers[victim], SIGKILL);
    const int code = test::wait_exit(readers[victim]);
    BOOST_TEST((code == 128 + SIGKILL), "reader exited with " << code << " before it was killed");
    ++kills;
    ids[victim] = next_id;
    readers[victim] = reader(next_id++);
  }
  store.update("hot", "stop", S(R"({"n":0})")).value();
  for (pid_t p : readers) BOOST_TEST(exit_within(p, 20s) == 0);
  BOOST_TEST(!calm.cancelled());
  BOOST_TEST((slowest < 2s));
  ::munmap(mem, 4096);
  BOOST_TEST_MESSAGE("readers killed while reading: " << kills << " (after " << loops_before_kill / kills
                                                      << " read loops on average), slowest write pair "
                                                      << std::chrono::duration_cast<std::chrono::microseconds>(slowest).count()
                                                      << " us");
}
