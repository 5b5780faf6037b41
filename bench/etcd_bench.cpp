// etcd put → blocked worker awake (DESIGN §10 target: p50 ≤ etcd's own watch latency + 1 ms),
// beside etcd's own watch latency measured in the same run: one etcd member and a pkgctxd
// following it; per sample, a worker thread sleeps in Token::wait on the package's context, a
// plain watcher (a second watch stream on the same prefix) waits on etcd, and the bench stamps
// CLOCK_MONOTONIC just before sending the put. Wake: stamp → the worker running again; watch:
// stamp → the watcher holding the event. Writes JSON {"etcd_put_wake":{p50_ns,p99_ns,n},
// "etcd_watch":{…}} to --out.
#include "bench_util.hpp"
#include "pkgctx/daemon/etcd.hpp"
#include "pkgctx/daemon/test_harness.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"
#include "pkgctx/worker.hpp"

#include <arpa/inet.h>
#include <atomic>
#include <chrono>
#include <csignal>
#include <fstream>
#include <iostream>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <thread>

namespace {

using namespace pkgctx;

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    bench::die("free port");
  ::close(fd);
  return ntohs(a.sin_port);
}

struct Stats {
  std::uint64_t p50 = 0, p99 = 0;
  std::size_t n = 0;
};
Stats stats(std::vector<std::uint64_t> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return {};
  return {v[v.size() / 2], v[std::min(v.size() - 1, v.size() * 99 / 100)], v.size()};
}

}  // namespace

int main(int argc, char** argv) {
  int samples = 300;
  std::string out, daemon_log;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--samples") samples = std::atoi(argv[i + 1]);
    else if (a == "--out") out = argv[i + 1];
  }
  daemon::testing::TempDir dir;
  const int client_port = free_port(), peer_port = free_port();
  const std::string url = "http://127.0.0.1:" + std::to_string(client_port);
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port);
  const pid_t etcd_pid = bench::spawn([&] {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const std::string data = dir / "etcd", log = dir / "etcd.log";
    std::freopen(log.c_str(), "w", stderr);
    std::freopen(log.c_str(), "a", stdout);
    ::execlp("etcd", "etcd", "--name", "b", "--data-dir", data.c_str(), "--listen-client-urls", url.c_str(),
             "--advertise-client-urls", url.c_str(), "--listen-peer-urls", peer.c_str(),
             "--initial-advertise-peer-urls", peer.c_str(), "--initial-cluster", ("b=" + peer).c_str(), "--log-level",
             "warn", static_cast<char*>(nullptr));
    return 127;
  });
  etcd::Client c({url}, -1, std::chrono::milliseconds(3000));
  for (int i = 0; !c.range_prefix("/").has_value(); ++i) {
    if (i > 2000) bench::die("etcd did not come up");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const std::string prefix = "/bench-" + std::to_string(::getpid());
  const std::string seg = bench::segment_name("etcd");
  daemon::testing::DaemonOptions o;
  o.args = {"--segment", seg, "--socket", dir / "ctl.sock", "--follow", "etcd", "--etcd-endpoints", url, "--prefix",
            prefix, "--log-level", "warning"};
  daemon::testing::DaemonProcess d(dir, o);
  if (!d.ready()) bench::die("pkgctxd did not start");
  if (!c.put(prefix + "/packages/p", R"({"version":"0"})")) bench::die("put");
  // A worker as a plugin runs one: the SDK, registered, so pkgctxd counts its waits.
  auto attached = pkgctx::Worker::attach(seg);
  if (!attached) bench::die("attach");
  pkgctx::Worker& plugin = *attached;
  if (!plugin.register_daemon(dir / "ctl.sock")) bench::die("register");
  while (!plugin.token("p", kEventUpdate)) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  // The plain watcher: the time each revision's event reached it.
  std::atomic<std::int64_t> watched_rev{0};
  std::atomic<std::uint64_t> watched_ns{0};
  const int stop = ::eventfd(0, EFD_CLOEXEC);
  std::thread watcher([&] {
    etcd::Client w({url}, stop, std::chrono::milliseconds(3000));
    if (!w.watch(prefix + "/packages/", 0)) bench::die("watch");
    while (auto r = w.next()) {
      if (r->events.empty()) continue;
      watched_ns = bench::now_ns();
      watched_rev = r->events.back().kv.mod_revision;
    }
  });
  std::vector<std::uint64_t> wake, watch;
  for (int i = 1; i <= samples; ++i) {
    auto token = plugin.token("p", kEventUpdate);
    if (!token) bench::die("token");
    std::atomic<std::uint64_t> woke_ns{0};
    std::atomic<bool> armed{false};
    std::thread worker([&] {
      armed = true;
      token->wait(std::chrono::seconds(10));
      woke_ns = bench::now_ns();
    });
    while (!armed) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // asleep in the futex by now
    const std::uint64_t t0 = bench::now_ns();
    auto rev = c.put(prefix + "/packages/p", R"({"version":")" + std::to_string(i) + "\"}");
    if (!rev) bench::die("put");
    worker.join();
    while (watched_rev.load() < *rev) std::this_thread::yield();
    if (woke_ns.load() > t0) wake.push_back(woke_ns.load() - t0);
    watch.push_back(watched_ns.load() - t0);
  }
  const std::uint64_t one = 1;
  [[maybe_unused]] const auto n = ::write(stop, &one, sizeof one);
  watcher.join();
  const Stats a = stats(wake), b = stats(watch);
  std::printf("etcd put -> worker awake: p50 %.1f us, p99 %.1f us (n=%zu); etcd's own watch: p50 %.1f us, p99 %.1f us; "
              "target p50 <= watch + 1 ms: %s\n",
              static_cast<double>(a.p50) / 1e3, static_cast<double>(a.p99) / 1e3, a.n, static_cast<double>(b.p50) / 1e3,
              static_cast<double>(b.p99) / 1e3, a.p50 <= b.p50 + 1'000'000 ? "met" : "MISSED");
  if (!out.empty()) {
    std::ofstream f(out);
    f << R"({"etcd_put_wake":{"p50_ns":)" << a.p50 << R"(,"p99_ns":)" << a.p99 << R"(,"n":)" << a.n
      << R"(},"etcd_watch":{"p50_ns":)" << b.p50 << R"(,"p99_ns":)" << b.p99 << R"(,"n":)" << b.n << "}}\n";
  }
  ::kill(etcd_pid, SIGKILL);
  bench::reap(etcd_pid);
  Segment::remove(seg);
  return 0;
}
