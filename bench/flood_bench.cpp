// bench/flood_bench.cpp — "write latency under dump flood" (DESIGN §4.1, §8): root's update
// round trip on pkgctxd's socket while N readers (nobody, off the write allow-list) pipeline
// dumps of a 100k-package table, next to the same update on an idle daemon (the floor).
// DESIGN's promise: the flood delays a write by at most 50 ms (compare p99 with the floor's).
//
// update_idle is the floor; update_under_dump_flood has 6 readers. Counters: p50_ms, p99_ms,
// max_ms of the round trips, dumps_per_s the readers got meanwhile (they are slowed, not starved).
//
// dump_memory (DESIGN §8 "dump of 100k packages"), on the same daemon before any flood: a fresh
// `pkgctl dump --json` (its peak RSS from wait4 against the bytes it wrote), and pkgctxd's own
// resident memory (VmRSS − RssShmem: the shared table is not its) before and after 3 socket dumps.
//
// Needs root (the readers drop to nobody; a peer with the daemon's own uid counts as a writer)
// and the built pkgctxd: PKGCTXD (environment) or build/daemon/pkgctxd next to this binary.
#include "bench_util.hpp"

#include "pkgctx/client.hpp"
#include "pkgctx/segment.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <grp.h>
#include <memory>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
constexpr int kPackages = 100000;
constexpr uid_t kNobody = 65534;

std::string daemon_exe() {
  if (const char* p = std::getenv("PKGCTXD")) return p;
  return (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "daemon" / "pkgctxd").string();
}

std::string pkgctl_exe() {
  if (const char* p = std::getenv("PKGCTL")) return p;
  return (std::filesystem::canonical("/proc/self/exe").parent_path().parent_path() / "tools" / "pkgctl").string();
}

// A field of /proc/PID/status in KiB ("VmRSS", "RssShmem"); -1 if absent.
long status_kib(pid_t pid, const char* field) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/status").c_str(), "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  const std::size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') v = std::strtol(line + n + 1, nullptr, 10);
  std::fclose(f);
  return v;
}

// One pkgctxd holding kPackages packages, for the whole program.
struct Daemon {
  std::string seg = bench::segment_name("flood");
  std::string dir, sock;
  pid_t pid = -1;
  std::string error;

  Daemon() {
    char tmpl[] = "/tmp/pkgctx-flood-XXXXXX";
    if (!::mkdtemp(tmpl)) bench::die("mkdtemp");
    dir = tmpl;
    ::chmod(dir.c_str(), 0755);  // nobody reaches the socket (0666) through it
    sock = dir + "/ctl.sock";
    const std::string exe = daemon_exe();
    const std::string cap = std::to_string(kPackages + 16);
    const std::string log = dir + "/pkgctxd.log";
    pid = bench::spawn([&] {
      const int lfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (lfd >= 0) ::dup2(lfd, 2);
      ::execl(exe.c_str(), exe.c_str(), "--segment", seg.c_str(), "--socket", sock.c_str(), "--capacity", cap.c_str(),
              "--socket-mode", "0666", static_cast<char*>(nullptr));
      return 127;
    });
    auto c = connect(20s);
    if (!c) return;
    c->set_timeout(60s);
    for (int base = 0; base < kPackages && error.empty(); base += 1000) {
      std::string batch;
      for (int i = base; i < base + 1000; ++i)
        batch += R"({"op":"update","name":"p)" + std::to_string(i) + R"(","version":"1"})" "\n";
      if (!c->send_raw(batch)) error = "populate: send failed";
      for (int i = 0; i < 1000 && error.empty(); ++i) {
        auto r = c->receive_line();
        if (!r || r->rfind("{\"ok\":true", 0) != 0) error = "populate: " + (r ? *r : r.error().message);
      }
    }
  }
  ~Daemon() {
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      bench::reap(pid);
    }
    pkgctx::Segment::remove(seg);
    ::shm_unlink(("/" + seg + ".lock").c_str());
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  std::unique_ptr<pkgctx::Client> connect(std::chrono::milliseconds wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (true) {
      auto c = pkgctx::Client::connect(sock, 5000ms);
      if (c) return std::make_unique<pkgctx::Client>(std::move(*c));
      if (std::chrono::steady_clock::now() > deadline) {
        error = "pkgctxd did not serve " + sock + ": " + c.error().message;
        return nullptr;
      }
      std::this_thread::sleep_for(20ms);
    }
  }
};

Daemon& the_daemon() {
  static Daemon d;
  return d;
}

// Readers as nobody, each pipelining 4 dumps at a time until stopped.
struct Flood {
  struct Shared {
    std::atomic<int> stop{0};
    std::atomic<long> dumps{0};
  };
  Shared* shared;
  std::vector<pid_t> readers;

  Flood(const std::string& sock, int n) {
    void* mem = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) bench::die("mmap");
    shared = new (mem) Shared();
    for (int k = 0; k < n; ++k) {
      readers.push_back(bench::spawn([this, &sock] {
        if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 90;
        auto c = pkgctx::Client::connect(sock, 10000ms);
        if (!c) return 10;
        c->set_timeout(120s);
        const std::string four = "{\"op\":\"dump\"}\n{\"op\":\"dump\"}\n{\"op\":\"dump\"}\n{\"op\":\"dump\"}\n";
        while (shared->stop.load() == 0) {
          if (!c->send_raw(four)) return 11;
          for (int i = 0; i < 4; ++i) {
            if (!c->receive_line()) return 12;
            ++shared->dumps;
          }
        }
        return 0;
      }));
    }
    // Under way once every reader could have had a dump.
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    while (shared->dumps.load() < n && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
  }
  ~Flood() {
    shared->stop.store(1);
    for (pid_t p : readers) bench::reap(p);
    ::munmap(shared, sizeof(Shared));
  }
};

// Update round trips by root; `readers` flood the daemon with dumps meanwhile.
void update_latency(benchmark::State& state, int readers) {
  if (::geteuid() != 0) return state.SkipWithError("needs root: the flooding readers run as nobody");
  Daemon& d = the_daemon();
  if (!d.error.empty()) return state.SkipWithError(d.error.c_str());
  auto writer = d.connect(5s);
  if (!writer) return state.SkipWithError(d.error.c_str());
  writer->set_timeout(30s);
  std::unique_ptr<Flood> flood;
  if (readers > 0) flood = std::make_unique<Flood>(d.sock, readers);
  const long dumps_before = flood ? flood->shared->dumps.load() : 0;
  const std::uint64_t t_start = bench::now_ns();
  std::vector<double> ns;
  long n = 0;
  for (auto _ : state) {
    const std::string req = R"({"op":"update","name":"p7","version":"v)" + std::to_string(n++) + "\"}\n";
    const std::uint64_t t0 = bench::now_ns();
    auto ok = writer->send_raw(req);
    auto answer = ok ? writer->receive_line() : pkgctx::Result<std::string>(ok.error());
    const std::uint64_t t1 = bench::now_ns();
    if (!answer || answer->rfind("{\"ok\":true", 0) != 0)
      return state.SkipWithError(("update failed: " + (answer ? *answer : answer.error().message)).c_str());
    ns.push_back(static_cast<double>(t1 - t0));
    state.SetIterationTime(static_cast<double>(t1 - t0) * 1e-9);
    state.PauseTiming();
    std::this_thread::sleep_for(2ms);  // spread the writes over the flood
    state.ResumeTiming();
  }
  state.counters["p50_ms"] = bench::percentile(ns, 50) / 1e6;
  state.counters["p99_ms"] = bench::percentile(ns, 99) / 1e6;
  state.counters["max_ms"] = bench::percentile(ns, 100) / 1e6;
  if (flood)
    state.counters["dumps_per_s"] = static_cast<double>(flood->shared->dumps.load() - dumps_before) /
                                    (static_cast<double>(bench::now_ns() - t_start) * 1e-9);
}
void dump_memory(benchmark::State& state) {
  Daemon& d = the_daemon();
  if (!d.error.empty()) return state.SkipWithError(d.error.c_str());
  const auto own = [&] { return status_kib(d.pid, "VmRSS") - status_kib(d.pid, "RssShmem"); };
  double out_bytes = 0, peak_kib = 0, daemon_before = 0, daemon_after = 0, socket_bytes = 0;
  for (auto _ : state) {
    // pkgctl dump --json into a pipe we count; its peak RSS from the kernel's accounting.
    int fd[2];
    if (::pipe(fd) != 0) bench::die("pipe");
    const std::string exe = pkgctl_exe(), seg = d.seg;
    const pid_t pid = bench::spawn([&] {
      ::dup2(fd[1], 1);
      ::close(fd[0]);
      ::close(fd[1]);
      ::execl(exe.c_str(), exe.c_str(), "--segment", seg.c_str(), "dump", "--json", static_cast<char*>(nullptr));
      return 127;
    });
    ::close(fd[1]);
    char buf[1 << 16];
    std::size_t total = 0;
    for (ssize_t r; (r = ::read(fd[0], buf, sizeof buf)) != 0;) {
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) break;
      total += static_cast<std::size_t>(r);
    }
    ::close(fd[0]);
    int status = 0;
    rusage ru{};
    while (::wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return state.SkipWithError("pkgctl dump --json failed");
    out_bytes = static_cast<double>(total);
    peak_kib = static_cast<double>(ru.ru_maxrss);
    // pkgctxd: three dumps over its socket (pipelined, read to the end).
    auto c = d.connect(5s);
    if (!c) return state.SkipWithError(d.error.c_str());
    c->set_timeout(60s);
    daemon_before = static_cast<double>(own());
    if (!c->send_raw("{\"op\":\"dump\"}\n{\"op\":\"dump\"}\n{\"op\":\"dump\"}\n"))
      return state.SkipWithError("dump request failed");
    for (int i = 0; i < 3; ++i) {
      auto line = c->receive_line();
      if (!line || line->rfind("{\"ok\":true", 0) != 0) return state.SkipWithError("socket dump failed");
      socket_bytes = static_cast<double>(line->size());
    }
    daemon_after = static_cast<double>(own());
  }
  state.counters["pkgctl_output_bytes"] = out_bytes;
  state.counters["pkgctl_peak_rss_bytes"] = peak_kib * 1024;
  state.counters["daemon_own_rss_before_bytes"] = daemon_before * 1024;
  state.counters["daemon_own_rss_after_bytes"] = daemon_after * 1024;
  state.counters["socket_dump_bytes"] = socket_bytes;
}

void update_idle(benchmark::State& state) { update_latency(state, 0); }
void update_under_dump_flood(benchmark::State& state) { update_latency(state, 6); }
BENCHMARK(dump_memory)->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(update_idle)->Iterations(300)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(update_under_dump_flood)->Iterations(300)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
