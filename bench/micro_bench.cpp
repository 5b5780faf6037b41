// bench/micro_bench.cpp — Google Benchmark: the in-process costs of DESIGN.md §8 beside their
// floors, all in one run on one segment holding 100,000 packages.
//
//   floor_acquire_load_shm      one acquire load of the very word a token checks (same segment)
//   floor_stop_token            std::stop_token::stop_requested()
//   floor_random_line_shm       one dependent load of a random slot-sized (640-byte) record in shared memory
//                               the size of the slot table (a cache and TLB miss: the floor of any
//                               lookup that must look at a random package's record)
//   floor_robust_mutex          lock + unlock of a robust, process-shared pthread mutex (every
//                               write takes one)
//   check_live / check_cancelled   Token::cancelled() on a worker's read-only mapping
//   token_by_name_hot / _rotating  View::token(name, schedule) with 100k packages
//   schedule_no_waiter / update_version_no_waiter      Store::handle_event / Store::update
//   schedule_waiter / update_version_waiter            same, another process asleep in Token::wait
//   check_live_1000procs        cancelled() while 1,000 other processes have the segment attached
//
// Timing: CPU-bound benchmarks report CPU time (robust to other load on a shared machine); the
// waiter variants time each call by hand (the waiter must be asleep before each call).
#include "bench_util.hpp"

#include "pkgctx/store.hpp"
#include "pkgctx/view.hpp"

#include <benchmark/benchmark.h>

#include <cinttypes>
#include <memory>
#include <optional>
#include <random>
#include <pthread.h>
#include <stop_token>
#include <sys/stat.h>

using namespace pkgctx;

namespace {

constexpr std::uint32_t kPackages = 100'000;
constexpr std::uint32_t kCapacity = 131'072;
constexpr int kChildren = 1000;

std::string pkg(std::uint32_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "pkg-%06" PRIu32, i);
  return buf;
}

// Distinct packages so that one benchmark's writes never cancel another's tokens.
const std::string kCheckPkg = pkg(7);
const std::string kHotPkg = pkg(42);
const std::string kWritePkg = pkg(4242);
const std::string kWaitPkg = pkg(99);

struct Env {
  std::string name = bench::segment_name("micro");
  std::optional<Store> store;
  View view;  // a worker's view: its own read-only mapping
  std::vector<std::string> rotating;

  Env() {
    Segment::remove(name);
    SegmentOptions o;
    o.capacity = kCapacity;
    o.settings_bytes = 1 << 20;
    store.emplace(Store::create(name, o).value());
    // Served as pkgctxd serves it: writers wake only the waits the daemon counted (a segment no
    // daemon ever served wakes on every cancellation, a syscall the *_no_waiter rows would pay).
    store->segment().mark_daemon_running(::getpid(), 1'000'000'000);
    for (std::uint32_t i = 0; i < kPackages; ++i) store->update(pkg(i), "1.0", Settings()).value();
    view = View::open(name).value();
    rotating.reserve(kPackages);
    for (std::uint32_t i = 0; i < kPackages; ++i) rotating.push_back(pkg(i));
    std::shuffle(rotating.begin(), rotating.end(), std::mt19937(12345));
  }
  ~Env() { Segment::remove(name); }
};

Env& env() {
  static Env e;
  return e;
}

// --- timing helpers ------------------------------------------------------------------------

// Sub-nanosecond costs on a shared 2-core machine: besides Google Benchmark's medians, time the
// check and the bare load in interleaved batches (the same loop shape as the benchmark loop) and
// keep each one's fastest batch. Interference only ever adds time, so the minimum of many short
// batches is the stable estimate, and interleaving exposes both to the same conditions.
template <class Op>
[[gnu::always_inline]] inline double batch_ns(Op op, int n) {
  const std::uint64_t t0 = bench::now_ns();
  for (int i = 0; i < n; ++i) op();
  return static_cast<double>(bench::now_ns() - t0) / n;
}

// The fastest of 100 batches of 1000 calls, per call: the cost without interference from other
// processes on this shared machine (they only ever add time). Reported beside the medians.
template <class Op>
void min_batch(benchmark::State& st, Op op) {
  double best = 1e18;
  for (int b = 0; b < 100; ++b) best = std::min(best, batch_ns(op, 1000));
  st.counters["min_batch_ns"] = best;
}

// --- floors -----------------------------------------------------------------------------------

void floor_acquire_load_shm(benchmark::State& st) {
  Env& e = env();
  const core::Token t = e.view.token(kCheckPkg, kEventSchedule).value();
  const std::atomic<std::uint64_t>* word = &e.view.segment().slot(t.slot()).gens.root;
  benchmark::DoNotOptimize(word);
  for (auto _ : st) {
    const std::uint64_t v = word->load(std::memory_order_acquire);
    benchmark::DoNotOptimize(v);
  }
}

void floor_stop_token(benchmark::State& st) {
  std::stop_source src;
  const std::stop_token tok = src.get_token();
  for (auto _ : st) {
    const bool v = tok.stop_requested();
    benchmark::DoNotOptimize(v);
  }
}

void floor_random_line_shm(benchmark::State& st) {
  constexpr std::size_t kStride = sizeof(layout::Slot);
  const std::size_t bytes = std::size_t{kCapacity} * kStride;
  std::string shm = bench::segment_name("chase");
  shm.insert(shm.begin(), '/');
  const int fd = ::shm_open(shm.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(bytes)) != 0) bench::die("shm_open");
  auto* base = static_cast<char*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ::close(fd);
  ::shm_unlink(shm.c_str());
  if (base == MAP_FAILED) bench::die("mmap");
  // One random cycle through kPackages records: each load's address depends on the previous one.
  std::vector<std::uint32_t> order(kPackages);
  for (std::uint32_t i = 0; i < kPackages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937(777));
  for (std::uint32_t i = 0; i < kPackages; ++i)
    *reinterpret_cast<std::uint64_t*>(base + std::size_t{order[i]} * kStride) = std::size_t{order[(i + 1) % kPackages]} * kStride;
  std::uint64_t off = std::size_t{order[0]} * kStride;
  for (auto _ : st) {
    off = reinterpret_cast<const std::atomic<std::uint64_t>*>(base + off)->load(std::memory_order_acquire);
  }
  min_batch(st, [&] { off = reinterpret_cast<const std::atomic<std::uint64_t>*>(base + off)->load(std::memory_order_acquire); });
  benchmark::DoNotOptimize(off);
  ::munmap(base, bytes);
}

void floor_robust_mutex(benchmark::State& st) {
  auto* m = bench::shared_anon<pthread_mutex_t>();
  pthread_mutexattr_t a;
  ::pthread_mutexattr_init(&a);
  ::pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  ::pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  ::pthread_mutex_init(m, &a);
  for (auto _ : st) {
    ::pthread_mutex_lock(m);
    ::pthread_mutex_unlock(m);
  }
  min_batch(st, [&] {
    ::pthread_mutex_lock(m);
    ::pthread_mutex_unlock(m);
  });
  ::pthread_mutex_destroy(m);
  ::munmap(m, sizeof *m);
}

// --- cancelled() -------------------------------------------------------------------------------

void check_loop(benchmark::State& st, const core::Token& t) {
  for (auto _ : st) {
    const bool v = t.cancelled();
    benchmark::DoNotOptimize(v);
  }
}

// Two shapes of the check: `t` lives in memory whose address escaped (a token inside a task
// object: every call reloads the token's pointer and snapshot — DoNotOptimize's memory clobber
// forces that, as any opaque call between checks would), and a local copy kept in registers
// (the result is only pinned to a register, no memory clobber): the intrinsic cost, one load of
// the shared word and one compare. The bare load's pointer is in a register, as it is in the
// floor benchmark. The atomic loads themselves are never hoisted (checked in the disassembly).
void paired_with_load(benchmark::State& st, const core::Token& t) {
  const std::atomic<std::uint64_t>* word = &env().view.segment().slot(t.slot()).gens.root;
  benchmark::DoNotOptimize(word);
  const core::Token local = t;  // address never escapes
  double load = 1e9, check = 1e9, check_reg = 1e9;
  for (int b = 0; b < 300; ++b) {
    load = std::min(load, batch_ns([&] {
      const std::uint64_t v = word->load(std::memory_order_acquire);
      benchmark::DoNotOptimize(v);
    }, 100'000));
    check = std::min(check, batch_ns([&] {
      const bool v = t.cancelled();
      benchmark::DoNotOptimize(v);
    }, 100'000));
    check_reg = std::min(check_reg, batch_ns([&] {
      const bool v = local.cancelled();
      asm volatile("" : : "r"(v));
    }, 100'000));
  }
  st.counters["paired_load_ns"] = load;
  st.counters["paired_check_ns"] = check;
  st.counters["paired_check_reg_ns"] = check_reg;
}

void check_live(benchmark::State& st) {
  Env& e = env();
  const core::Token t = e.view.token(kCheckPkg, kEventSchedule).value();
  if (t.cancelled()) st.SkipWithError("token cancelled");
  check_loop(st, t);
  paired_with_load(st, t);
  // Syscalls made by 10M checks, counted by the kernel (raw_syscalls:sys_enter). -1: no counter.
  bench::SyscallCounter sc;
  std::int64_t calls = -1;
  if (sc.available()) {
    sc.start();
    for (int i = 0; i < 10'000'000; ++i) {
      const bool v = t.cancelled();
      benchmark::DoNotOptimize(v);
    }
    calls = sc.stop();
  }
  st.counters["syscalls_per_10M"] = static_cast<double>(calls);
}

void check_cancelled(benchmark::State& st) {
  Env& e = env();
  const core::Token t = e.view.token(kHotPkg, kEventSchedule).value();
  e.store->handle_event(kEventSchedule, kHotPkg).value();
  if (!t.cancelled()) st.SkipWithError("token not cancelled");
  check_loop(st, t);
  paired_with_load(st, t);
}

// --- token by name -----------------------------------------------------------------------------

void token_by_name_hot(benchmark::State& st) {
  Env& e = env();
  for (auto _ : st) {
    auto r = e.view.token(kHotPkg, kEventSchedule);
    benchmark::DoNotOptimize(r);
  }
  min_batch(st, [&] {
    auto r = e.view.token(kHotPkg, kEventSchedule);
    benchmark::DoNotOptimize(r);
  });
}

void token_by_name_rotating(benchmark::State& st) {
  Env& e = env();
  std::size_t i = 0;
  for (auto _ : st) {
    auto r = e.view.token(e.rotating[i], kEventSchedule);
    benchmark::DoNotOptimize(r);
    if (++i == e.rotating.size()) i = 0;
  }
  min_batch(st, [&] {
    auto r = e.view.token(e.rotating[i], kEventSchedule);
    benchmark::DoNotOptimize(r);
    if (++i == e.rotating.size()) i = 0;
  });
}

// --- writes -------------------------------------------------------------------------------------

void schedule_no_waiter(benchmark::State& st) {
  Env& e = env();
  for (auto _ : st) {
    auto r = e.store->handle_event(kEventSchedule, kWritePkg);
    benchmark::DoNotOptimize(r);
  }
  min_batch(st, [&] {
    auto r = e.store->handle_event(kEventSchedule, kWritePkg);
    benchmark::DoNotOptimize(r);
  });
}

const std::string kVersions[2] = {"1.0.1", "1.0.2"};

void update_version_no_waiter(benchmark::State& st) {
  Env& e = env();
  const Settings s;
  unsigned i = 0;
  for (auto _ : st) {
    auto r = e.store->update(kWritePkg, kVersions[++i & 1], s);
    benchmark::DoNotOptimize(r);
  }
  min_batch(st, [&] {
    auto r = e.store->update(kWritePkg, kVersions[++i & 1], s);
    benchmark::DoNotOptimize(r);
  });
}

// Another process sleeps in Token::wait on the package (re-arming with a fresh token of the
// same kind after each cancellation); each call is timed only once the waiter is asleep again.
template <class Write>
void with_waiter(benchmark::State& st, int event, Write write) {
  Env& e = env();
  auto* stop = bench::shared_anon<std::atomic<int>>();
  const std::string seg = e.name;
  const pid_t child = bench::spawn([&] {
    View v = View::open(seg).value();
    while (stop->load() == 0) {
      auto t = v.token(kWaitPkg, event);
      if (!t) return 1;
      t->wait(std::chrono::milliseconds(200));
    }
    return 0;
  });
  // Counted as pkgctxd counts a registered worker's wait (the store plays the daemon, Env), so
  // every write makes the futex wake, as it would with a registered worker waiting.
  const std::uint32_t slot = e.view.find(kWaitPkg).value();
  std::atomic<std::uint32_t>& count = e.store->segment().waiter_counts()[slot];
  count.fetch_add(1);
  bench::ProcState ps(child);
  unsigned i = 0;
  for (auto _ : st) {
    if (!bench::spin_until([&] { return ps.state() == 'S'; }, 2'000'000'000))
      st.SkipWithError("waiter never went to sleep");
    const std::uint64_t t0 = bench::now_ns();
    write(++i);
    const std::uint64_t t1 = bench::now_ns();
    st.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
  }
  count.fetch_sub(1);
  stop->store(1);
  bench::reap(child);
  ::munmap(stop, sizeof *stop);
}

void schedule_waiter(benchmark::State& st) {
  Env& e = env();
  with_waiter(st, kEventSchedule, [&](unsigned) {
    auto r = e.store->handle_event(kEventSchedule, kWaitPkg);
    benchmark::DoNotOptimize(r);
  });
}

void update_version_waiter(benchmark::State& st) {
  Env& e = env();
  const Settings s;
  with_waiter(st, kEventUpdate, [&](unsigned i) {
    auto r = e.store->update(kWaitPkg, kVersions[i & 1], s);
    benchmark::DoNotOptimize(r);
  });
}

// --- scale: 1,000 attached processes ----------------------------------------------------------

struct Crowd {
  std::vector<pid_t> pids;
  bench::Pipe ready, release;
  bool ok = true;

  explicit Crowd(const std::string& seg) {
    for (int i = 0; i < kChildren; ++i) {
      const pid_t p = bench::spawn([&] {
        release.close_wr();
        // A worker: attach read-only, take the same token, check it, then sleep.
        auto v = View::open(seg);
        if (!v) return 1;
        auto t = v->token(kCheckPkg, kEventSchedule);
        if (!t || t->cancelled()) return 2;
        ready.send();
        release.recv();  // EOF when the parent is done
        return t->cancelled() ? 3 : 0;
      });
      pids.push_back(p);
    }
    for (int i = 0; i < kChildren; ++i) {
      if (!ready.recv()) ok = false;
    }
  }
  ~Crowd() {
    release.close_wr();
    for (pid_t p : pids) bench::reap(p);
  }
};

std::unique_ptr<Crowd> crowd;

void check_live_1000procs(benchmark::State& st) {
  Env& e = env();
  if (!crowd) crowd = std::make_unique<Crowd>(e.name);
  if (!crowd->ok) st.SkipWithError("children failed to attach");
  const core::Token t = e.view.token(kCheckPkg, kEventSchedule).value();
  st.counters["attached"] = static_cast<double>(crowd->pids.size());
  check_loop(st, t);
  paired_with_load(st, t);
}

}  // namespace

BENCHMARK(floor_acquire_load_shm);
BENCHMARK(floor_stop_token);
BENCHMARK(floor_random_line_shm);
BENCHMARK(floor_robust_mutex);
BENCHMARK(check_live);
BENCHMARK(check_cancelled);
BENCHMARK(token_by_name_hot);
BENCHMARK(token_by_name_rotating);
BENCHMARK(schedule_no_waiter);
BENCHMARK(update_version_no_waiter);
BENCHMARK(schedule_waiter)->UseManualTime()->Iterations(2000);
BENCHMARK(update_version_waiter)->UseManualTime()->Iterations(2000);
BENCHMARK(check_live_1000procs);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  env();  // build the 100k-package table before any timing
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  crowd.reset();
  return 0;
}
