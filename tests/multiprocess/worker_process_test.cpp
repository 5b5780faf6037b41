// The worker SDK across real processes: the mapping is read-only (a write faults), blocking
// waits wake on root and child cancellation and time out correctly, reads are never torn while
// another process writes, and retirement by another process wakes waiters and re-attaches.
#define BOOST_TEST_MODULE worker_process
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "pkgctx/worker.hpp"
#include "test_support.hpp"

#include <csignal>
#include <thread>
#include <unistd.h>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::Pipe;
using pkgctx::test::SegmentName;
using pkgctx::test::shared_block;
using pkgctx::test::spawn;
using pkgctx::test::wait_exit;

namespace {

SegmentOptions small() { return test::segment_options(64, 256 * 1024); }

Store make_store(const SegmentName& n) { return test::create_store_with(n, small(), "1"); }

// Blocks until process `pid` sleeps in its wait (an unregistered one: no daemon here, so it
// re-checks every kWaitSlice; a write wakes it within that).
void await_sleeper(pid_t pid) { BOOST_TEST_REQUIRE(test::await_futex_sleep(pid), "no process started waiting"); }

bool faulted(int code) { return code == 128 + SIGSEGV || code == 128 + SIGBUS; }

}  // namespace

BOOST_AUTO_TEST_CASE(a_worker_cannot_write_the_table) {
  SegmentName n;
  Store store = make_store(n);

  // Each child writes through a read-only mapping: the one the SDK hands out (a token's watched
  // word) and the core's read-only open that the SDK uses (header, settings arena). It must die.
  auto write_header = [&]() -> int {
    auto v = View::open(n);
    if (!v) return 2;
    v->segment().header().prefix.state.store(static_cast<std::uint32_t>(layout::State::kRetired));
    return 0;  // reached only if the write went through
  };
  auto write_generation = [&]() -> int {
    auto w = Worker::attach(n);
    if (!w) return 2;
    auto t = w->token("pkg", kEventUpdate);
    if (!t) return 2;
    pkgctx_check_t check;
    if (pkgctx_token_check(t->c_handle(), &check) != PKGCTX_OK) return 2;
    __atomic_fetch_add(const_cast<std::uint64_t*>(check.word), 1, __ATOMIC_SEQ_CST);
    return 0;
  };
  auto write_settings = [&]() -> int {
    auto v = View::open(n);
    if (!v) return 2;
    v->segment().arena()[0].store(42);
    return 0;
  };
  const int a = wait_exit(spawn(write_header));
  const int b = wait_exit(spawn(write_generation));
  const int c = wait_exit(spawn(write_settings));
  BOOST_TEST(faulted(a), "header write: exit " << a);
  BOOST_TEST(faulted(b), "generation write: exit " << b);
  BOOST_TEST(faulted(c), "settings write: exit " << c);
  // Nothing changed.
  BOOST_TEST(static_cast<int>(store.segment().info().state) == static_cast<int>(layout::State::kLive));
  auto t = store.view().token("pkg", 0).value();
  BOOST_TEST(!t.cancelled());
}

BOOST_AUTO_TEST_CASE(wait_wakes_on_root_cancellation) {
  SegmentName n;
  Store store = make_store(n);
  const std::uint32_t slot = store.view().find("pkg").value();
  Pipe ready;
  const pid_t pid = spawn([&]() -> int {
    auto w = Worker::attach(n);
    if (!w) return 2;
    auto t = w->token("pkg", kEventUpdate);
    if (!t) return 3;
    ready.signal();
    if (!t->wait(30s)) return 4;
    return t->cause() == Cause::kUpdateEvent ? 0 : 5;
  });
  BOOST_TEST_REQUIRE(ready.await());
  await_sleeper(pid);
  BOOST_TEST_REQUIRE(store.handle_event(kEventUpdate, "pkg").has_value());
  BOOST_TEST(wait_exit(pid) == 0);
  BOOST_TEST(store.segment().waiter_counts()[slot].load() == 0u);  // only the daemon counts waits
}

BOOST_AUTO_TEST_CASE(wait_wakes_on_child_cancellation_and_root_ignores_it) {
  SegmentName n;
  Store store = make_store(n);
  Pipe ready;
  // Child 1 waits on a schedule (key 2) context; child 2 on the root with a short timeout.
  const pid_t child_waiter = spawn([&]() -> int {
    auto w = Worker::attach(n);
    auto t = w ? w->token("pkg", kEventSchedule) : Result<Token>(make_error(Errc::io_error, ""));
    if (!t) return 2;
    ready.signal();
    if (!t->wait(30s)) return 4;
    return t->cause() == Cause::kRescheduled ? 0 : 5;
  });
  BOOST_TEST_REQUIRE(ready.await());
  const pid_t root_waiter = spawn([&]() -> int {
    auto w = Worker::attach(n);
    auto t = w ? w->token("pkg", kEventUpdate) : Result<Token>(make_error(Errc::io_error, ""));
    if (!t) return 2;
    ready.signal();
    const auto t0 = std::chrono::steady_clock::now();
    if (t->wait(500ms)) return 6;  // a child event must not cancel the root
    return std::chrono::steady_clock::now() - t0 >= 500ms ? 0 : 7;
  });
  BOOST_TEST_REQUIRE(ready.await());
  await_sleeper(child_waiter);
  await_sleeper(root_waiter);
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  BOOST_TEST(wait_exit(child_waiter) == 0);
  BOOST_TEST(wait_exit(root_waiter) == 0);

  // A child context is also cancelled through its root, with the root's cause.
  const pid_t via_root = spawn([&]() -> int {
    auto w = Worker::attach(n);
    auto t = w ? w->token("pkg", 5) : Result<Token>(make_error(Errc::io_error, ""));
    if (!t) return 2;
    ready.signal();
    if (!t->wait(30s)) return 4;
    return t->cause() == Cause::kVersionChanged ? 0 : 5;
  });
  BOOST_TEST_REQUIRE(ready.await());
  await_sleeper(via_root);
  BOOST_TEST_REQUIRE(store.update("pkg", "2", Settings()).has_value());
  BOOST_TEST(wait_exit(via_root) == 0);
}

BOOST_AUTO_TEST_CASE(wait_times_out_correctly) {
  SegmentName n;
  Store store = make_store(n);
  const pid_t pid = spawn([&]() -> int {
    auto w = Worker::attach(n);
    if (!w) return 2;
    auto t = w->token("pkg", kEventUpdate).value();
    // Zero and negative timeouts do not sleep.
    auto t0 = std::chrono::steady_clock::now();
    if (t.wait(0ms) || t.wait(-5ms)) return 3;
    if (std::chrono::steady_clock::now() - t0 > 100ms) return 4;
    for (auto timeout : {20ms, 200ms}) {
      t0 = std::chrono::steady_clock::now();
      if (t.wait(timeout)) return 5;
      const auto took = std::chrono::steady_clock::now() - t0;
      if (took < timeout || took > timeout + 1s) return 6;
    }
    return 0;
  });
  BOOST_TEST(wait_exit(pid) == 0);
}

BOOST_AUTO_TEST_CASE(reads_are_never_torn_across_processes) {
  SegmentName n;
  Store store = make_store(n);
  struct Shared {
    std::atomic<int> stop{0};
    std::atomic<long> writes{0};
    std::atomic<long> reads{0};
    std::atomic<long> distinct{0};
  };
  Shared* sh = shared_block<Shared>();
  Pipe ready;

  // Writer: version "v<i>" and settings {"n":i,"pad":"…"} always carry the same counter; the
  // padding length varies so the settings move between arena chunks.
  const pid_t writer = spawn([&]() -> int {
    auto s = Store::open(n);
    if (!s) return 2;
    ready.await();
    for (long i = 1; !sh->stop.load(); ++i) {
      const std::string pad(static_cast<std::size_t>(i % 97) * 7, 'x');
      auto st = Settings::parse("{\"n\":" + std::to_string(i) + ",\"pad\":\"" + pad + "\"}");
      if (!st) return 3;
      if (!s->update("pkg", "v" + std::to_string(i), *st)) return 4;
      sh->writes.store(i);
    }
    return 0;
  });
  const pid_t reader = spawn([&]() -> int {
    auto w = Worker::attach(n);
    if (!w) return 2;
    ready.signal();
    long last = -1, reads = 0, distinct = 0;
    while (!sh->stop.load()) {
      auto r = w->read("pkg");
      if (!r) return 3;
      ++reads;
      if (r->checksum != checksum_bytes(r->settings)) return 10;  // settings and checksum torn
      if (r->version == "1") continue;                            // before the first write
      if (r->version.empty() || r->version[0] != 'v') return 11;
      const std::string& js = r->settings;
      const auto at = js.find("\"n\":");
      if (at == std::string::npos) return 12;
      const long sn = std::stol(js.substr(at + 4));
      const long vn = std::stol(r->version.substr(1));
      if (sn != vn) {
        std::fprintf(stderr, "torn read: version %s, settings %s\n", r->version.c_str(), js.c_str());
        return 13;
      }
      const std::size_t pad = js.size() - js.find("\"pad\":\"") - 9;  // between "pad":" and "}
      if (pad != static_cast<std::size_t>(vn % 97) * 7) return 14;
      if (vn < last) return 15;  // committed states never go back
      if (vn != last) sh->distinct.store(++distinct);
      last = vn;
    }
    sh->reads.store(reads);
    return 0;
  });
  // Let them race for 2 s, and on a starved machine until the writer has made more than 1000
  // writes and the reader has seen 200 states (at most 30 s); then stop both. This is the test's
  // duration, not a synchronisation.
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < 2s ||
         ((sh->writes.load() <= 1000 || sh->distinct.load() < 200) && std::chrono::steady_clock::now() - start < 30s))
    std::this_thread::sleep_for(10ms);
  sh->stop.store(1);
  BOOST_TEST(wait_exit(writer) == 0);
  BOOST_TEST(wait_exit(reader) == 0);
  BOOST_TEST_MESSAGE("torn-read stress: " << sh->writes.load() << " writes, " << sh->reads.load() << " reads, "
                                          << sh->distinct.load() << " distinct states seen");
  BOOST_TEST(sh->writes.load() > 1000);
  BOOST_TEST(sh->distinct.load() >= 200);
}

BOOST_AUTO_TEST_CASE(retirement_by_another_process_wakes_and_reattaches) {
  SegmentName n;
  std::optional<Store> store = make_store(n);
  Worker w = Worker::attach(n).value();
  const Token t = w.token("pkg", kEventSchedule).value();
  Pipe go, created;
  // The "daemon" in another process: an incompatible restart retires and re-creates.
  const pid_t daemon = spawn([&]() -> int {
    auto s = Store::open(n);
    if (!s) return 2;
    go.await();
    s->retire();
    auto fresh = Store::create(n, small());
    if (!fresh || !fresh->update("pkg", "2", Settings())) return 3;
    fresh->segment().mark_daemon_running(::getpid(), 1'000'000'000);
    created.signal();
    go.await();  // keep the new segment until the parent is done
    return 0;
  });
  std::thread trigger([&] {
    test::await_futex_sleep(::getpid());  // the main thread sleeps in t.wait() below
    go.signal();
  });
  BOOST_TEST(t.wait(30s));
  trigger.join();
  BOOST_TEST(t.cause() == Cause::kSegmentRetired);
  BOOST_TEST_REQUIRE(created.await());
  auto fresh = w.token("pkg", kEventSchedule);
  BOOST_TEST_REQUIRE(fresh.has_value(), (fresh ? "" : fresh.error().message));
  BOOST_TEST(!fresh->cancelled());
  BOOST_TEST(w.read("pkg").value().version == "2");
  BOOST_TEST(w.daemon().value().liveness == Liveness::alive);
  go.signal();
  BOOST_TEST(wait_exit(daemon) == 0);
}
