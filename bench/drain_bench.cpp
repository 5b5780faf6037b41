// Drain latency (DESIGN §8, issue 12): how soon pkgctxd answers a pending drain after the last
// holder's task ends. A worker process holds a task on a context; the bench cancels it, sends
// a drain, waits until the daemon reports the drain pending (dump's "drains", a real condition),
// then tells the worker to end its task. The worker stamps CLOCK_MONOTONIC just before
// pkgctx_task_end(); the time is from that stamp to the drain's answer in the bench process
// (the end's one byte, the daemon's re-check, the answer's way back).
#include "pkgctx/client.hpp"
#include "pkgctx/daemon/test_harness.hpp"
#include "pkgctx/worker.hpp"

#include <benchmark/benchmark.h>

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <ctime>
#include <vector>
#include <unistd.h>

namespace {

namespace json = boost::json;
using namespace pkgctx;

std::uint64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::read(fd, b, n);
    if (r <= 0) return false;
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void drain_after_last_holder(benchmark::State& st) {
  daemon::testing::TempDir dir;
  const std::string seg = "drain-bench-" + std::to_string(::getpid());
  const std::string sock = dir / "ctl.sock";
  daemon::testing::DaemonOptions o;
  o.args = {"--segment", seg, "--socket", sock, "--capacity", "64", "--heartbeat-ms", "1000"};
  daemon::testing::DaemonProcess d(dir, o);
  auto c = Client::connect(sock).value();
  auto probe = Client::connect(sock).value();
  int version = 0;
  const auto update = [&] {
    c.send_line(R"({"op":"update","name":"app","version":")" + std::to_string(++version) + R"("})").value();
    c.receive().value();
  };
  update();
  int to[2], from[2];
  if (::pipe(to) != 0 || ::pipe(from) != 0) return st.SkipWithError("pipe");
  const pid_t child = ::fork();
  if (child == 0) {
    // Our copy of the command pipe's write end would keep the parent's final close from being EOF.
    ::close(to[1]);
    ::close(from[0]);
    auto w = Worker::attach(seg);
    if (!w || !w->register_daemon(sock)) ::_exit(1);
    for (char cmd; ::read(to[0], &cmd, 1) == 1;) {
      auto task = w->begin("app", 0);
      if (!task) ::_exit(2);
      [[maybe_unused]] auto n = ::write(from[1], "k", 1);
      if (::read(to[0], &cmd, 1) != 1) break;
      const std::uint64_t t = mono_ns();
      task->end();
      n = ::write(from[1], &t, sizeof t);
    }
    ::_exit(0);
  }
  std::vector<double> us;
  for (auto _ : st) {
    char k = 0;
    if (::write(to[1], "b", 1) != 1 || ::read(from[0], &k, 1) != 1) return st.SkipWithError("worker gone");
    update();  // cancels the task's context
    c.send_line(R"({"op":"drain","name":"app","timeout_ms":10000})").value();
    for (;;) {  // until the daemon holds the drain
      probe.send_line(R"({"op":"dump"})").value();
      if (probe.receive().value().at("daemon").at("drains").to_number<std::uint64_t>() == 1) break;
    }
    if (::write(to[1], "e", 1) != 1) return st.SkipWithError("worker gone");
    auto a = c.receive().value();
    const std::uint64_t t1 = mono_ns();
    std::uint64_t t0 = 0;
    if (!read_all(from[0], &t0, sizeof t0)) return st.SkipWithError("worker gone");
    if (a.at("drained") != true) return st.SkipWithError(json::serialize(a).c_str());
    st.SetIterationTime(static_cast<double>(t1 - t0) / 1e9);
    us.push_back(static_cast<double>(t1 - t0) / 1e3);
  }
  std::sort(us.begin(), us.end());
  if (!us.empty()) {
    st.counters["p50_us"] = us[us.size() / 2];  // DESIGN: ≤ 100 µs
    st.counters["p90_us"] = us[us.size() * 9 / 10];
  }
  ::close(to[1]);
  ::waitpid(child, nullptr, 0);
}

}  // namespace

BENCHMARK(drain_after_last_holder)->UseManualTime()->Iterations(300)->Unit(benchmark::kMicrosecond);
BENCHMARK_MAIN();
