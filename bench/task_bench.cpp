// Tasks (DESIGN §2.2, §8): a task's begin+end against the acquire-load floor. Begin and end
// write only the worker's own lease page; with no drain waiting, no syscall at all. The worker
// is registered with no daemon (an unused socket path): registration is retried in the
// background and the task path is the same. Drain latency (the answer after the last holder
// ends) is measured with a real daemon by tests/multiprocess/task_drain_test.cpp.
#include "bench_util.hpp"

#include "pkgctx.h"
#include "pkgctx/store.hpp"
#include "pkgctx/view.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <optional>

using namespace pkgctx;

namespace {

struct Env {
  std::string name = bench::segment_name("task");
  std::optional<Store> store;
  pkgctx_worker_t* worker = nullptr;
  pkgctx_token_t* token = nullptr;

  Env() {
    Segment::remove(name);
    store.emplace(Store::create(name, SegmentOptions{}).value());
    store->update("app", "1", Settings()).value();
    if (pkgctx_attach(name.c_str(), &worker) != PKGCTX_OK) return;
    pkgctx_register(worker, "/nonexistent/pkgctx-bench.sock");  // no daemon: the same task path
    pkgctx_token(worker, "app", PKGCTX_EVENT_UPDATE, &token);
  }
  ~Env() {
    pkgctx_token_free(token);
    pkgctx_detach(worker);
    Segment::remove(name);
  }
};

Env& env() {
  static Env e;
  return e;
}

void floor_acquire_load(benchmark::State& st) {
  Env& e = env();
  pkgctx_check_t check{};
  pkgctx_token_check(e.token, &check);
  for (auto _ : st) {
    const int v = pkgctx_check_cancelled(&check);
    benchmark::DoNotOptimize(v);
  }
}

void task_begin_end(benchmark::State& st) {
  Env& e = env();
  if (!e.token) return st.SkipWithError("no token");
  for (auto _ : st) {
    pkgctx_task_t* t = nullptr;
    pkgctx_task_begin_token(e.worker, e.token, &t);
    benchmark::DoNotOptimize(t);
    pkgctx_task_end(t);
  }
}

void task_begin_end_by_name(benchmark::State& st) {
  Env& e = env();
  for (auto _ : st) {
    pkgctx_task_t* t = nullptr;
    pkgctx_task_begin(e.worker, "app", 3, PKGCTX_EVENT_UPDATE, &t);
    benchmark::DoNotOptimize(t);
    pkgctx_task_end(t);
  }
}

}  // namespace

BENCHMARK(floor_acquire_load);
BENCHMARK(task_begin_end);
BENCHMARK(task_begin_end_by_name);
BENCHMARK_MAIN();
