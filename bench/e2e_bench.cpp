// bench/e2e_bench.cpp — two DESIGN §8 rows measured as a user meets them, each beside floors
// taken in the same run, interleaved in rounds so all see the same background load:
//
//   spawn         a fresh `pkgctl update app 1.0`, from posix_spawn to its exit (the answer
//                 printed), against pkgctx_min_client (bench/min_client.c) sending the same line
//                 to the same daemon. Start-up alone: `pkgctl checksum {}` (no socket, no
//                 segment; --version would time CLI11's exception instead) and min_client doing
//                 nothing (the exec floor).
//   request_wake  a controller's {"op":"event","event":"schedule"} on a persistent connection,
//                 after 2 ms idle, until a worker blocked in Token::wait runs; against a raw echo
//                 round trip after the same idle plus a raw futex wake after the same idle. The
//                 path in parts: send → server read (the echo server's own stamp: the floor of
//                 the daemon's), futex wake → sleeper running, and the remainder (the daemon's
//                 handling, from its read to its FUTEX_WAKE). Beside it, not a DESIGN floor but a
//                 diagnostic: the raw chain, the path's own three-process shape doing no work
//                 (controller → relay that bumps a shared futex word, FUTEX_WAKEs it and answers →
//                 sleeper in FUTEX_WAIT), which shows how much of a gap to the two-pair floor is the
//                 chain's placement rather than pkgctxd; for both, the share of samples in which
//                 all three ran on one CPU (unpinned, each settles by itself). In three layouts,
//                 each with its floors and chain placed alike (bench_util.hpp says why placement
//                 decides these numbers):
//                   one_cpu    controller, daemon and worker on CPU 0 (floors: all on CPU 0);
//                   cross_cpu  controller and worker on CPU 0, the daemon on CPU 1: every hop
//                              crosses (floors: echo server and futex waker on CPU 1; the
//                              chain's relay on CPU 1, its sleeper on CPU 0);
//                   unpinned   nothing pinned: what users get, wherever the scheduler puts them.
//
// Usage: pkgctx_e2e_bench --daemon PKGCTXD --pkgctl PKGCTL --min-client MIN
//                         [--spawns N] [--wakes N] [--daemon-log FILE] [--out FILE]
#include "bench_util.hpp"

#include "pkgctx/futex.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"
#include "pkgctx/worker.hpp"

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <vector>

extern char** environ;

using namespace pkgctx;

namespace {

struct Samples {
  std::vector<double> ns;
  int placed = 0, together = 0;  // samples whose three parties' CPUs were seen; of them on one CPU
  double p(double q) const { return bench::percentile(ns, q); }
  void add(std::uint64_t v) { ns.push_back(static_cast<double>(v)); }
  // Where a chain's controller, server and sleeper ran: unpinned, they settle by themselves.
  void placement(int controller, int server, int sleeper) {
    ++placed;
    together += controller == server && server == sleeper;
  }
  double together_share() const { return placed ? static_cast<double>(together) / placed : 0; }
};

std::string samples_json(const Samples& s) {
  std::ostringstream o;
  o << "{\"n\":" << s.ns.size() << ",\"p50_ns\":" << s.p(50) << ",\"p99_ns\":" << s.p(99);
  if (s.placed) o << ",\"one_cpu_share\":" << s.together_share();
  o << "}";
  return o.str();
}

int connect_unix(const std::string& path, std::uint64_t limit_ns) {
  const std::uint64_t end = bench::now_ns() + limit_ns;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  while (true) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return fd;
    ::close(fd);
    if (bench::now_ns() > end) return -1;
    ::usleep(10'000);
  }
}

bool write_all(int fd, const std::string& s) {
  for (std::size_t off = 0; off < s.size();) {
    const ssize_t w = ::write(fd, s.data() + off, s.size() - off);
    if (w <= 0) return false;
    off += static_cast<std::size_t>(w);
  }
  return true;
}

// Reads one answer line (answers here are small and one at a time).
std::string read_line(int fd) {
  std::string line;
  char buf[4096];
  while (line.empty() || line.back() != '\n') {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r <= 0) bench::die("read answer");
    line.append(buf, static_cast<std::size_t>(r));
  }
  return line;
}

void idle_2ms() {
  timespec ts{0, 2'000'000};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// posix_spawn → waitpid of `argv`, stdout to /dev/null; the time, or dies if it failed.
std::uint64_t timed_spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  const std::uint64_t t0 = bench::now_ns();
  pid_t pid = -1;
  if (::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) bench::die("posix_spawn");
  const int rc = bench::reap(pid);
  const std::uint64_t t = bench::now_ns() - t0;
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    std::fprintf(stderr, "e2e: %s exited %d\n", args[0].c_str(), rc);
    std::exit(1);
  }
  return t;
}

struct Stamp {
  std::atomic<std::uint64_t> woke{0};   // the sleeper running again
  std::atomic<std::uint64_t> read{0};   // the echo server's read returned
  std::atomic<int> stop{0};
  std::atomic<std::uint32_t> word{0};
  std::atomic<int> woke_cpu{-1};   // where the sleeper ran when it stamped
  std::atomic<int> server_cpu{-1};  // where the echo server or the relay read the line
};

// pkgctxd on a fresh segment and socket, with "app" created; stopped on scope exit.
struct Daemon {
  std::string seg = bench::segment_name("e2e");
  std::string path = "/tmp/pkgctx-bench-e2e-" + std::to_string(::getpid()) + ".sock";
  pid_t pid = -1;
  Daemon(const std::string& exe, const std::string& log) {
    Segment::remove(seg);
    ::unlink(path.c_str());
    pid = bench::spawn([&] {
      const int lfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (lfd >= 0) ::dup2(lfd, 2), ::dup2(lfd, 1);
      ::execl(exe.c_str(), exe.c_str(), "--config", "/dev/null", "--segment", seg.c_str(), "--socket", path.c_str(),
              "--capacity", "1024", static_cast<char*>(nullptr));
      return 127;
    });
    const int fd = connect_unix(path, 10'000'000'000);
    if (fd < 0) {
      std::fprintf(stderr, "e2e: pkgctxd did not open its socket within 10 s (log: %s)\n", log.c_str());
      std::exit(1);
    }
    write_all(fd, R"({"op":"update","name":"app","version":"1.0","settings":{}})" "\n");
    if (read_line(fd).rfind("{\"ok\":true", 0) != 0) bench::die("setup update refused");
    ::close(fd);
  }
  ~Daemon() {
    ::kill(pid, SIGTERM);
    bench::reap(pid);
    Segment::remove(seg);
    ::unlink(path.c_str());
  }
};

// --- request → worker awake -------------------------------------------------------------------

// Where each party of the request → wake path runs (-1: anywhere).
struct Layout {
  const char* name;
  int controller, daemon, worker;
};

struct PathSamples {
  Samples e2e, answer, rtt, oneway, fwake, chain;
};

// The worker: blocks on the schedule token of "app", stamps when it runs again.
pid_t start_worker(const std::string& seg, const std::string& socket, Stamp& sh, const bench::Pipe& ack, int cpu) {
  return bench::spawn([&] {
    bench::set_affinity(0, cpu);
    // A registered worker: pkgctxd counts its wait, so the write wakes it at once.
    Worker w = Worker::attach(seg).value();
    (void)w.register_daemon(socket);
    while (true) {
      auto t = w.token("app", kEventSchedule);
      if (!t) return 1;
      if (!t->wait(std::chrono::seconds(10))) return 2;
      sh.woke.store(bench::now_ns());
      sh.woke_cpu.store(::sched_getcpu());
      ack.send();
      if (sh.stop.load()) return 0;
    }
  });
}

// `n` controller requests, each after the worker is asleep and 2 ms of idle.
void request_wakes(const Daemon& d, int n, const Layout& l, Samples& e2e, Samples& answer) {
  auto* sh = bench::shared_anon<Stamp>();
  bench::Pipe ack;
  bench::set_affinity(0, l.controller);
  bench::set_affinity(d.pid, l.daemon);
  const pid_t worker = start_worker(d.seg, d.path, *sh, ack, l.worker);
  bench::ProcState ps(worker), dps(d.pid);
  View v = View::open(d.seg).value();
  const std::uint32_t slot = v.find("app").value();
  const auto* waiting = &v.segment().waiter_counts()[slot];  // pkgctxd counts it before it sleeps
  const int fd = connect_unix(d.path, 5'000'000'000);
  const std::string req = R"({"op":"event","event":"schedule","name":"app"})" "\n";
  for (int i = 0; i < n; ++i) {
    if (!bench::spin_until([&] { return waiting->load() != 0 && ps.state() == 'S'; }, 5'000'000'000))
      bench::die("the worker never went to sleep");
    idle_2ms();
    if (i == n - 1) sh->stop.store(1);
    const int cpu = ::sched_getcpu();
    const std::uint64_t t0 = bench::now_ns();
    if (!write_all(fd, req)) bench::die("write request");
    read_line(fd);
    const std::uint64_t ta = bench::now_ns();
    if (!ack.recv()) bench::die("worker ack");
    e2e.add(sh->woke.load() - t0);
    e2e.placement(cpu, dps.cpu(), sh->woke_cpu.load());  // pkgctxd's: where it last ran, having answered
    answer.add(ta - t0);
  }
  ::close(fd);
  bench::reap(worker);
  ::munmap(sh, sizeof *sh);
}

// A child on `cpu` serving sv[1]: it stamps when its read returns (time and CPU), bumps and
// FUTEX_WAKEs sh.word when `wake_word` (the raw chain's relay), then writes the bytes back.
pid_t start_line_server(Stamp& sh, const int (&sv)[2], int cpu, bool wake_word) {
  return bench::spawn([&] {
    bench::set_affinity(0, cpu);
    ::close(sv[0]);
    char buf[4096];
    for (;;) {
      const ssize_t r = ::read(sv[1], buf, sizeof buf);
      if (r <= 0) return 0;
      sh.read.store(bench::now_ns());
      sh.server_cpu.store(::sched_getcpu());
      if (wake_word) {
        sh.word.fetch_add(1);
        futex::wake(&sh.word);
      }
      if (::write(sv[1], buf, static_cast<std::size_t>(r)) != r) return 1;
    }
  });
}

// The raw echo after 2 ms idle: the server stamps when its read returns, then writes back.
void echo_floor(int n, const Layout& l, Samples& rtt, Samples& oneway) {
  auto* sh = bench::shared_anon<Stamp>();
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) bench::die("socketpair");
  bench::set_affinity(0, l.controller);
  const pid_t server = start_line_server(*sh, sv, l.daemon, false);
  ::close(sv[1]);
  const std::string req = R"({"op":"event","event":"schedule","name":"app"})" "\n";
  for (int i = 0; i < n; ++i) {
    idle_2ms();
    const std::uint64_t t0 = bench::now_ns();
    if (!write_all(sv[0], req)) bench::die("echo write");
    read_line(sv[0]);
    rtt.add(bench::now_ns() - t0);
    oneway.add(sh->read.load() - t0);
  }
  ::close(sv[0]);
  bench::reap(server);
  ::munmap(sh, sizeof *sh);
}

// A child on `cpu` (-1: anywhere) blocked in FUTEX_WAIT on sh.word; it stamps when it runs again
// (time and CPU), acknowledges, and waits again until the waker marks the last wake.
pid_t start_futex_sleeper(Stamp& sh, const bench::Pipe& ack, int cpu) {
  return bench::spawn([&] {
    bench::set_affinity(0, cpu);
    while (true) {
      const std::uint32_t seen = sh.word.load();
      while (sh.word.load() == seen) futex::wait(&sh.word, seen, std::chrono::seconds(10));
      sh.woke.store(bench::now_ns());
      sh.woke_cpu.store(::sched_getcpu());
      ack.send();
      if (sh.stop.load()) return 0;
    }
  });
}

// The raw futex wake after 2 ms idle, the waker placed as the daemon, the sleeper as the worker.
void futex_floor(int n, const Layout& l, Samples& wake) {
  auto* sh = bench::shared_anon<Stamp>();
  bench::Pipe ack;
  bench::set_affinity(0, l.daemon);
  const pid_t child = start_futex_sleeper(*sh, ack, l.worker);
  bench::ProcState ps(child);
  for (int i = 0; i < n; ++i) {
    if (!bench::spin_until([&] { return ps.state() == 'S'; }, 5'000'000'000)) bench::die("futex sleeper");
    idle_2ms();
    if (i == n - 1) sh->stop.store(1);
    const std::uint64_t t0 = bench::now_ns();
    sh->word.fetch_add(1);
    futex::wake(&sh->word);
    if (!ack.recv()) bench::die("futex ack");
    wake.add(sh->woke.load() - t0);
  }
  bench::reap(child);
  ::munmap(sh, sizeof *sh);
}

// The raw chain after 2 ms idle: the controller (this process) sends a line to a relay placed as
// the daemon, which bumps a shared futex word, FUTEX_WAKEs it and answers, like pkgctxd with no
// work; a sleeper placed as the worker, blocked in FUTEX_WAIT on the word, stamps when it runs.
void chain_floor(int n, const Layout& l, Samples& chain) {
  auto* sh = bench::shared_anon<Stamp>();
  bench::Pipe ack;
  bench::set_affinity(0, l.controller);
  // The sleeper first, so it holds no end of the socket pair (the relay's read must see EOF).
  const pid_t sleeper = start_futex_sleeper(*sh, ack, l.worker);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) bench::die("socketpair");
  const pid_t relay = start_line_server(*sh, sv, l.daemon, true);
  ::close(sv[1]);
  bench::ProcState ps(sleeper);
  const std::string req = R"({"op":"event","event":"schedule","name":"app"})" "\n";
  for (int i = 0; i < n; ++i) {
    if (!bench::spin_until([&] { return ps.state() == 'S'; }, 5'000'000'000)) bench::die("chain sleeper");
    idle_2ms();
    if (i == n - 1) sh->stop.store(1);
    const int cpu = ::sched_getcpu();
    const std::uint64_t t0 = bench::now_ns();
    if (!write_all(sv[0], req)) bench::die("chain write");
    read_line(sv[0]);
    if (!ack.recv()) bench::die("chain ack");
    chain.add(sh->woke.load() - t0);
    chain.placement(cpu, sh->server_cpu.load(), sh->woke_cpu.load());
  }
  ::close(sv[0]);
  bench::reap(relay);
  bench::reap(sleeper);
  ::munmap(sh, sizeof *sh);
}

}  // namespace

int main(int argc, char** argv) {
  int spawns = 300, wakes = 1000;
  std::string daemon_exe, pkgctl, min_client, out, log = "/tmp/pkgctx-bench-e2e-daemon.log";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--spawns") spawns = std::stoi(v);
    else if (k == "--wakes") wakes = std::stoi(v);
    else if (k == "--daemon") daemon_exe = v;
    else if (k == "--pkgctl") pkgctl = v;
    else if (k == "--min-client") min_client = v;
    else if (k == "--daemon-log") log = v;
    else if (k == "--out") out = v;
    else {
      std::fprintf(stderr, "usage: %s --daemon P --pkgctl P --min-client P [--spawns N] [--wakes N] [--out F]\n",
                   argv[0]);
      return 2;
    }
  }
  if (daemon_exe.empty() || pkgctl.empty() || min_client.empty()) {
    std::fprintf(stderr, "e2e: --daemon, --pkgctl and --min-client are required\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  Daemon d(daemon_exe, log);

  // Spawn: the four programs in turn, so each sees the same load.
  Samples upd, minc, start, exec_floor;
  const std::string line = R"({"op":"update","name":"app","version":"1.0","settings":{}})";
  for (int i = 0; i < spawns + 10; ++i) {
    const auto a = timed_spawn({pkgctl, "--socket", d.path, "update", "app", "1.0"});
    const auto b = timed_spawn({min_client, d.path, line});
    const auto c = timed_spawn({pkgctl, "checksum", "{}"});
    const auto e = timed_spawn({min_client, "-"});
    if (i < 10) continue;  // warm-up: page cache, dynamic loader caches
    upd.add(a), minc.add(b), start.add(c), exec_floor.add(e);
  }
  std::fprintf(stderr,
               "spawn: pkgctl update p50 %.0f us p99 %.0f us | min client p50 %.0f us p99 %.0f us | pkgctl checksum {} "
               "p50 %.0f us | exec floor p50 %.0f us\n",
               upd.p(50) / 1e3, upd.p(99) / 1e3, minc.p(50) / 1e3, minc.p(99) / 1e3, start.p(50) / 1e3,
               exec_floor.p(50) / 1e3);

  // Request → worker awake, and its floors, in rounds, every layout in each round.
  std::vector<Layout> layouts{{"one_cpu", 0, 0, 0}};
  if (::sysconf(_SC_NPROCESSORS_ONLN) >= 2) layouts.push_back({"cross_cpu", 0, 1, 0});
  layouts.push_back({"unpinned", -1, -1, -1});
  std::vector<PathSamples> paths(layouts.size());
  const int rounds = 5;
  for (int r = 0; r < rounds; ++r) {
    const int n = wakes / rounds;
    for (std::size_t i = 0; i < layouts.size(); ++i) {
      request_wakes(d, n, layouts[i], paths[i].e2e, paths[i].answer);
      echo_floor(n, layouts[i], paths[i].rtt, paths[i].oneway);
      futex_floor(n, layouts[i], paths[i].fwake);
      chain_floor(n, layouts[i], paths[i].chain);
    }
  }
  bench::set_affinity(0, -1);
  bench::set_affinity(d.pid, -1);
  for (std::size_t i = 0; i < layouts.size(); ++i) {
    const PathSamples& p = paths[i];
    std::fprintf(stderr,
                 "request->worker awake after 2 ms idle, %-9s: p50 %.1f us p99 %.1f us (answer p50 %.1f us) | echo rtt "
                 "p50 %.1f us (one way %.1f us) + futex wake p50 %.1f us: %.2fx | raw chain p50 %.1f us: %.2fx | all on one "
                 "CPU: path %.0f%%, chain %.0f%%\n",
                 layouts[i].name, p.e2e.p(50) / 1e3, p.e2e.p(99) / 1e3, p.answer.p(50) / 1e3, p.rtt.p(50) / 1e3,
                 p.oneway.p(50) / 1e3, p.fwake.p(50) / 1e3, p.e2e.p(50) / (p.rtt.p(50) + p.fwake.p(50)),
                 p.chain.p(50) / 1e3, p.e2e.p(50) / p.chain.p(50), 100 * p.e2e.together_share(),
                 100 * p.chain.together_share());
  }
  const auto path_json = [](const PathSamples& p) {
    return "{\"idle_ms\":2,\"e2e\":" + samples_json(p.e2e) + ",\"answer\":" + samples_json(p.answer) +
           ",\"echo_rtt\":" + samples_json(p.rtt) + ",\"echo_oneway\":" + samples_json(p.oneway) +
           ",\"futex_wake\":" + samples_json(p.fwake) + ",\"raw_chain\":" + samples_json(p.chain) + "}";
  };

  std::ostringstream o;
  o << "{\"spawn\":{\"pkgctl_update\":" << samples_json(upd) << ",\"min_client\":" << samples_json(minc)
    << ",\"pkgctl_checksum\":" << samples_json(start) << ",\"exec_floor\":" << samples_json(exec_floor)
    << "},\n\"request_wake\":" << path_json(paths.back()) << ",\n\"request_wake_layouts\":{";
  for (std::size_t i = 0; i < layouts.size(); ++i)
    o << (i ? "," : "") << "\"" << layouts[i].name << "\":" << path_json(paths[i]);
  o << "}}\n";
  if (out.empty())
    std::fputs(o.str().c_str(), stdout);
  else
    std::ofstream(out) << o.str();
  return 0;
}
