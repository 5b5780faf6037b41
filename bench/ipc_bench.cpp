// bench/ipc_bench.cpp — the cross-process measures of DESIGN.md §8, timed by hand, with their
// floors in the same run. Writes one JSON object (see main) for bench/report.py.
//
//   wake             a child blocks in Token::wait; the parent stamps CLOCK_MONOTONIC, cancels
//                    (Store::handle_event(schedule)); the child stamps when wait() returns.
//                    Both processes pinned to CPU 0 (see pin()).
//   futex_floor      the same with a bare futex word in shared memory: stamp, bump, FUTEX_WAKE.
//   wake_unpinned, futex_floor_unpinned
//                    the same two, nothing pinned: wherever the scheduler puts them, usually
//                    across CPUs (what users get).
//   socket_echo      a raw Unix stream socket echo server (a forked child) answering each line.
//   daemon           pkgctxd's control socket, the same client code, one "schedule" event a line.
//   echo_work        the raw echo again, spending pkgctxd's CPU per request before each answer
//                    (measured first: both servers' CPU time per request on CPU 0, from
//                    /proc/<pid>/schedstat; the difference, busy-waited). Not a floor of any row: it
//                    shows what the placement does to any server that works that long per request.
//                    Sequential round trips of the three servers in each placement
//                    (bench::placements: client and server on one CPU, on two CPUs, unpinned),
//                    interleaved in rounds.
//
// Every wake is taken only once the sleeper is really asleep (/proc/<pid>/stat says 'S').
//
// Usage: pkgctx_ipc_bench [--wakes N] [--requests N] [--pipelined N] [--daemon PATH] [--out FILE]
#include "bench_util.hpp"

#include "pkgctx/futex.hpp"
#include "pkgctx/store.hpp"
#include "pkgctx/view.hpp"

#include <algorithm>
#include <csignal>
#include <poll.h>
#include <sched.h>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>

using namespace pkgctx;

namespace {

struct Samples {
  std::vector<double> ns;
  double p(double q) const { return bench::percentile(ns, q); }
};

// Waker and sleeper both on CPU 0: both wake measures get the same placement instead of whatever
// the scheduler picked for each forked child. The sleeper runs as soon as the waker blocks on the
// acknowledgement. (Pinned to different CPUs of this 2-CPU machine, the wake waits for whatever
// else runs on the other CPU to be preempted: milliseconds at p99 while others compile, for the
// raw futex as much as for the token.)
void pin(int cpu) { bench::set_affinity(0, cpu); }

struct Stamp {
  std::atomic<std::uint64_t> t1{0};
  std::atomic<int> stop{0};
  std::atomic<std::uint32_t> word{0};
};

// The sleeper's side of one wake, once it is awake: stamp, acknowledge. True when the waker
// marked this wake the last.
bool stamp_wake(Stamp& sh, const bench::Pipe& ack) {
  sh.t1.store(bench::now_ns());
  ack.send();
  return sh.stop.load() != 0;
}

// The waker's side, the same for every wake measure: `warmup + n` wakes, each taken once
// `asleep()` holds (else, after 5 s, exit naming `what`), each timed from just before `wake()`
// to the sleeper's stamp. Stops early if the sleeper's acknowledgement does not come.
template <class Asleep, class Wake>
Samples time_wakes(const char* what, Stamp& sh, const bench::Pipe& ack, int warmup, int n, Asleep asleep, Wake wake) {
  Samples s;
  for (int i = 0; i < warmup + n; ++i) {
    if (!bench::spin_until(asleep, 5'000'000'000)) {
      std::fprintf(stderr, "%s: the waiter never went to sleep\n", what);
      std::exit(1);
    }
    if (i == warmup + n - 1) sh.stop.store(1);
    const std::uint64_t t0 = bench::now_ns();
    wake();
    if (!ack.recv()) break;
    if (i >= warmup) s.ns.push_back(static_cast<double>(sh.t1.load() - t0));
  }
  return s;
}

// --- wake of a blocked Token::wait ------------------------------------------------------------

// `pinned`: the child runs on CPU 0, as its parent then does (else both go where they are put).
Samples token_wake(int warmup, int n, bool pinned) {
  const std::string name = bench::segment_name("wake");
  Segment::remove(name);
  SegmentOptions o;
  o.capacity = 64;
  o.settings_bytes = 4096;
  Store store = Store::create(name, o).value();
  store.update("app", "1.0", Settings()).value();
  // An embedded store (no daemon ever served the segment): every cancellation wakes the slot's
  // word, as pkgctxd's does for a registered worker's counted wait.

  auto* sh = bench::shared_anon<Stamp>();
  bench::Pipe ack;
  const pid_t child = bench::spawn([&] {
    if (pinned) pin(0);
    View v = View::open(name).value();
    while (true) {
      auto t = v.token("app", kEventSchedule);
      if (!t) return 1;
      if (!t->wait(std::chrono::seconds(10))) return 2;
      if (stamp_wake(*sh, ack)) return 0;
    }
  });
  bench::ProcState ps(child);
  Samples s = time_wakes("wake", *sh, ack, warmup, n, [&] { return ps.state() == 'S'; },
                         [&] { store.handle_event(kEventSchedule, "app").value(); });
  if (const int rc = bench::reap(child); rc != 0) std::fprintf(stderr, "wake: child exited %d\n", rc);
  Segment::remove(name);
  ::munmap(sh, sizeof *sh);
  return s;
}

// --- the floor: a bare futex word -------------------------------------------------------------

Samples futex_floor(int warmup, int n, bool pinned) {
  auto* sh = bench::shared_anon<Stamp>();
  bench::Pipe ack;
  const pid_t child = bench::spawn([&] {
    if (pinned) pin(0);
    while (true) {
      const std::uint32_t seen = sh->word.load();
      while (sh->word.load() == seen) futex::wait(&sh->word, seen, std::chrono::seconds(10));
      if (stamp_wake(*sh, ack)) return 0;
    }
  });
  bench::ProcState ps(child);
  Samples s = time_wakes("futex floor", *sh, ack, warmup, n, [&] { return ps.state() == 'S'; }, [&] {
    sh->word.fetch_add(1);
    futex::wake(&sh->word);
  });
  bench::reap(child);
  ::munmap(sh, sizeof *sh);
  return s;
}

// --- sockets ----------------------------------------------------------------------------------

sockaddr_un unix_addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  return a;
}

int connect_unix(const std::string& path, std::uint64_t limit_ns) {
  const std::uint64_t end = bench::now_ns() + limit_ns;
  while (true) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const sockaddr_un a = unix_addr(path);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) return fd;
    ::close(fd);
    if (bench::now_ns() > end) return -1;
    ::usleep(10'000);
  }
}

// Busy for `ns` of this thread's CPU time: the stand-in for a server's work on a request.
void burn(std::uint64_t ns) {
  if (ns == 0) return;
  timespec t{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  const std::uint64_t end = static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(t.tv_nsec) + ns;
  do ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  while (static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(t.tv_nsec) < end);
}

// The raw floor: a forked server that writes back every complete line it has read, after
// `work_ns` of CPU time for each read that completed a line (0: the raw echo).
pid_t start_echo_server(const std::string& path, std::uint64_t work_ns = 0) {
  ::unlink(path.c_str());
  const int lfd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const sockaddr_un a = unix_addr(path);
  if (::bind(lfd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, 4) != 0) bench::die("echo bind");
  const pid_t pid = bench::spawn([&] {
    while (true) {
      const int fd = ::accept(lfd, nullptr, nullptr);
      if (fd < 0) return 0;
      std::string buf;
      char in[65536];
      while (true) {
        const ssize_t r = ::read(fd, in, sizeof in);
        if (r <= 0) break;
        buf.append(in, static_cast<std::size_t>(r));
        const std::size_t end = buf.rfind('\n');
        if (end == std::string::npos) continue;
        burn(work_ns);
        std::size_t off = 0;
        while (off < end + 1) {
          const ssize_t w = ::write(fd, buf.data() + off, end + 1 - off);
          if (w <= 0) return 1;
          off += static_cast<std::size_t>(w);
        }
        buf.erase(0, end + 1);
      }
      ::close(fd);
    }
  });
  ::close(lfd);
  return pid;
}

// Reads answers line by line.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // Reads until `lines` newlines have arrived; false on EOF, error, or no byte for `stall_ms`.
  // Keeps the last line.
  bool lines(std::size_t lines, int stall_ms = 10'000) {
    while (lines > 0) {
      for (; pos_ < len_ && lines > 0; ++pos_) {
        if (buf_[pos_] == '\n') {
          --lines;
          last_.append(buf_ + start_, pos_ - start_);
          if (lines == 0) kept_ = last_;
          last_.clear();
          start_ = pos_ + 1;
        }
      }
      if (lines == 0) break;
      last_.append(buf_ + start_, len_ - start_);
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, stall_ms) <= 0) return false;
      const ssize_t r = ::read(fd_, buf_, sizeof buf_);
      if (r <= 0) return false;
      len_ = static_cast<std::size_t>(r);
      pos_ = start_ = 0;
    }
    return true;
  }
  const std::string& last() const { return kept_; }

 private:
  int fd_;
  char buf_[65536];
  std::size_t len_ = 0, pos_ = 0, start_ = 0;
  std::string last_, kept_;
};

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

struct SocketFigures {
  Samples rtt;                      // every timed sequential round trip
  std::vector<double> round_rps;    // sequential requests/s of each round
  double pipelined_rps = 0;
  std::string sample_answer;
  bool seq_ok = false, ok = false;  // ok: the pipelined run completed too
  std::string failure;
  double seq_rps() const { return bench::percentile(round_rps, 50); }
};

// One client connection driven in rounds (so two servers can be interleaved under the same load).
class Client {
 public:
  Client(int fd, std::string line) : fd_(fd), reader_(std::make_unique<LineReader>(fd)), msg_(std::move(line) + "\n") {}
  ~Client() { ::close(fd_); }

  // `n` sequential round trips; false (with f.failure) if an answer does not come.
  bool sequential(int n, SocketFigures* f) {
    const std::uint64_t begin = bench::now_ns();
    for (int i = 0; i < n; ++i) {
      const std::uint64_t t0 = bench::now_ns();
      if (!write_all(fd_, msg_.data(), msg_.size()) || !reader_->lines(1)) {
        if (f) f->failure = "no answer to a sequential request";
        return false;
      }
      if (f) f->rtt.ns.push_back(static_cast<double>(bench::now_ns() - t0));
    }
    if (f) {
      f->round_rps.push_back(n / (static_cast<double>(bench::now_ns() - begin) * 1e-9));
      f->sample_answer = reader_->last();
      f->seq_ok = true;
    }
    return true;
  }

  // Pipelined: up to kWindow requests in flight, written in batches of up to kBatch, answers read
  // as they come. A bounded window keeps any server's output within its socket buffers and
  // high-water marks, so this measures throughput rather than a server's backpressure policy.
  void pipelined(int n, SocketFigures& f) {
    constexpr int kBatch = 64, kWindow = 512;
    std::string batch;
    for (int i = 0; i < kBatch; ++i) batch += msg_;
    int sent = 0, answered = 0;
    const std::uint64_t p0 = bench::now_ns();
    while (answered < n) {
      while (sent < n && sent - answered <= kWindow - kBatch) {
        const int k = std::min(kBatch, n - sent);
        if (!write_all(fd_, batch.data(), msg_.size() * static_cast<std::size_t>(k))) {
          f.failure = "pipelined: write failed after " + std::to_string(sent) + " requests";
          return;
        }
        sent += k;
      }
      if (!reader_->lines(1)) {
        f.failure = "pipelined: no answer for 10 s after " + std::to_string(answered) + " of " + std::to_string(n) +
                    " answers (" + std::to_string(sent - answered) + " in flight)";
        return;
      }
      ++answered;
    }
    f.pipelined_rps = n / (static_cast<double>(bench::now_ns() - p0) * 1e-9);
    f.ok = true;
  }

 private:
  int fd_;
  std::unique_ptr<LineReader> reader_;
  std::string msg_;
};

const std::string kRequest = R"({"op":"event","event":"schedule","name":"app"})";

// A running pkgctxd with a fresh segment and socket; stopped (and its objects removed) on scope exit.
struct Daemon {
  std::string seg = bench::segment_name("daemon");
  std::string path = "/tmp/pkgctx-bench-d-" + std::to_string(::getpid()) + ".sock";
  pid_t pid = -1;
  std::string reason;  // why it is not usable, if it is not
  std::unique_ptr<Client> client;

  Daemon(const std::string& exe, const std::string& log) {
    if (exe.empty() || ::access(exe.c_str(), X_OK) != 0) {
      reason = "pkgctxd not built (" + (exe.empty() ? std::string("no --daemon given") : exe) + ")";
      return;
    }
    Segment::remove(seg);
    ::unlink(path.c_str());
    pid = bench::spawn([&] {
      const int lfd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (lfd >= 0) ::dup2(lfd, 2), ::dup2(lfd, 1);
      ::execl(exe.c_str(), exe.c_str(), "--segment", seg.c_str(), "--socket", path.c_str(), "--capacity", "1024",
              static_cast<char*>(nullptr));
      return 127;
    });
    const int fd = connect_unix(path, 10'000'000'000);
    if (fd < 0) {
      reason = "pkgctxd did not open its socket within 10 s (log: " + log + ")";
      return;
    }
    const std::string create = R"({"op":"update","name":"app","version":"1.0","settings":{}})" "\n";
    LineReader r(fd);
    if (!write_all(fd, create.data(), create.size()) || !r.lines(1) || r.last().find("\"ok\":true") == std::string::npos) {
      reason = "pkgctxd refused the setup update: " + r.last();
      ::close(fd);
      return;
    }
    client = std::make_unique<Client>(fd, kRequest);
  }
  ~Daemon() {
    client.reset();
    if (pid > 0) {
      ::kill(pid, SIGTERM);
      bench::reap(pid);
    }
    Segment::remove(seg);
    ::unlink(pkgctx::object_path(seg + ".lock").c_str());  // the daemon's ownership lock, if it made one
    ::unlink(path.c_str());
  }
};

struct SocketRun {
  SocketFigures echo, daemon;  // unpinned (and the pipelined runs)
  struct Placed {
    std::string name;
    SocketFigures echo, daemon, echo_work;
  };
  std::vector<Placed> placed;  // the sequential rounds in each bench::placements() placement
  // CPU time per request on CPU 0 (client and server there), and what echo_work spends.
  double echo_cpu_ns = 0, daemon_cpu_ns = 0, work_ns = 0;
  bool daemon_available = false;
  std::string daemon_reason;
};

// CPU time the thread `pid` (a single-threaded server) has run, in ns.
std::uint64_t cpu_ns(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/schedstat");
  std::uint64_t ns = 0;
  f >> ns;
  return ns;
}

// A server's CPU time per request while `requests(n)` sends it `n` sequential requests.
double cpu_per_request(pid_t pid, const std::function<bool(int)>& requests, int n) {
  const std::uint64_t before = cpu_ns(pid);
  if (!requests(n)) return 0;
  return static_cast<double>(cpu_ns(pid) - before) / n;
}

// The raw floor, the daemon and the work-matched echo, interleaved in rounds so all see the same
// background load.
SocketRun sockets(int requests, int pipelined, const std::string& exe, const std::string& log) {
  SocketRun run;
  const std::string path = "/tmp/pkgctx-bench-echo-" + std::to_string(::getpid()) + ".sock";
  const pid_t server = start_echo_server(path);
  const int efd = connect_unix(path, 5'000'000'000);
  if (efd < 0) bench::die("connect echo");
  Client echo(efd, kRequest);
  Daemon d(exe, log);
  auto daemon_round = [&](int n, SocketFigures* f) {
    if (!d.reason.empty() || !d.client) return false;
    SocketFigures scratch;
    if (!d.client->sequential(n, f ? f : &scratch)) d.reason = "pkgctxd: " + (f ? f : &scratch)->failure;
    return d.reason.empty();
  };

  // What each server spends per request, everything on CPU 0, warm (after 1000 requests each).
  bench::set_affinity(0, 0);
  for (const pid_t pid : {server, d.pid})
    if (pid > 0) bench::set_affinity(pid, 0);
  constexpr int kCpuRequests = 3000;
  echo.sequential(1000, nullptr);
  run.echo_cpu_ns = cpu_per_request(server, [&](int n) { return echo.sequential(n, nullptr); }, kCpuRequests);
  if (daemon_round(1000, nullptr))
    run.daemon_cpu_ns = cpu_per_request(d.pid, [&](int n) { return daemon_round(n, nullptr); }, kCpuRequests);
  run.work_ns = std::max(0.0, run.daemon_cpu_ns - run.echo_cpu_ns);
  const std::string work_path = path + ".work";
  const pid_t work_server = start_echo_server(work_path, static_cast<std::uint64_t>(run.work_ns));
  const int wfd = connect_unix(work_path, 5'000'000'000);
  if (wfd < 0) bench::die("connect work-matched echo");
  Client echo_work(wfd, kRequest);

  constexpr int kRounds = 10;
  // Each placement in turn: client (this process) and the servers pinned alike, a warm-up, then
  // the servers interleaved in rounds.
  for (const bench::Placement& pl : bench::placements()) {
    bench::set_affinity(0, pl.client);
    for (const pid_t pid : {server, work_server, d.pid})
      if (pid > 0) bench::set_affinity(pid, pl.server);
    SocketRun::Placed& p = run.placed.emplace_back(SocketRun::Placed{pl.name, {}, {}, {}});
    echo.sequential(1000, nullptr);
    echo_work.sequential(1000, nullptr);
    daemon_round(1000, nullptr);
    for (int r = 0; r < kRounds; ++r) {
      const int n = requests / kRounds;
      echo.sequential(n, &p.echo);
      echo_work.sequential(n, &p.echo_work);
      daemon_round(n, &p.daemon);
    }
  }
  run.echo = run.placed.back().echo;  // unpinned, as users get it
  run.daemon = run.placed.back().daemon;
  echo.pipelined(pipelined, run.echo);
  if (d.reason.empty() && d.client) {
    d.client->pipelined(pipelined, run.daemon);
    if (run.daemon.sample_answer.find("\"ok\":true") == std::string::npos)
      d.reason = "pkgctxd answered: " + run.daemon.sample_answer;
  }
  run.daemon_available = d.reason.empty() && run.daemon.seq_ok;
  run.daemon_reason = d.reason;
  for (const pid_t pid : {server, work_server}) {
    ::kill(pid, SIGTERM);
    bench::reap(pid);
  }
  ::unlink(path.c_str());
  ::unlink(work_path.c_str());
  return run;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

std::string samples_json(const Samples& s) {
  std::ostringstream o;
  o << "{\"n\":" << s.ns.size() << ",\"p50_ns\":" << s.p(50) << ",\"p90_ns\":" << s.p(90) << ",\"p99_ns\":" << s.p(99)
    << ",\"max_ns\":" << s.p(100) << ",\"samples_ns\":[";
  for (std::size_t i = 0; i < s.ns.size(); ++i) o << (i ? "," : "") << static_cast<std::uint64_t>(s.ns[i]);
  o << "]}";
  return o.str();
}

std::string socket_json(const SocketFigures& f) {
  std::ostringstream o;
  o << "{\"rtt_p50_ns\":" << f.rtt.p(50) << ",\"rtt_p99_ns\":" << f.rtt.p(99) << ",\"seq_rps\":" << f.seq_rps()
    << ",\"seq_rps_rounds\":[";
  for (std::size_t i = 0; i < f.round_rps.size(); ++i) o << (i ? "," : "") << f.round_rps[i];
  o << "],\"pipelined_rps\":" << f.pipelined_rps << ",\"ok\":" << (f.ok ? "true" : "false") << ",\"failure\":\""
    << json_escape(f.failure) << "\"}";
  return o.str();
}

}  // namespace

int main(int argc, char** argv) {
  int wakes = 3000, requests = 20000, pipelined = 200000;
  std::string daemon, out, daemon_log = "/tmp/pkgctx-bench-daemon.log";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--wakes") wakes = std::stoi(v);
    else if (k == "--requests") requests = std::stoi(v);
    else if (k == "--pipelined") pipelined = std::stoi(v);
    else if (k == "--daemon") daemon = v;
    else if (k == "--daemon-log") daemon_log = v;
    else if (k == "--out") out = v;
    else {
      std::fprintf(stderr, "usage: %s [--wakes N] [--requests N] [--pipelined N] [--daemon PATH] [--out FILE]\n", argv[0]);
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  // Interleave token and floor wakes in rounds so both see the same background load.
  // Pinned first (both on CPU 0), then unpinned, each pair interleaved.
  Samples wake, floor, wake_free, floor_free;
  cpu_set_t all;
  ::sched_getaffinity(0, sizeof all, &all);
  const int rounds = 5;
  for (const bool pinned : {true, false}) {
    if (pinned) pin(0);
    for (int r = 0; r < rounds; ++r) {
      const int n = wakes / rounds + (r < wakes % rounds ? 1 : 0);
      auto a = token_wake(50, n, pinned);
      auto b = futex_floor(50, n, pinned);
      Samples& w = pinned ? wake : wake_free;
      Samples& f = pinned ? floor : floor_free;
      w.ns.insert(w.ns.end(), a.ns.begin(), a.ns.end());
      f.ns.insert(f.ns.end(), b.ns.begin(), b.ns.end());
    }
    ::sched_setaffinity(0, sizeof all, &all);
  }
  std::fprintf(stderr, "wake: p50 %.1f us p99 %.1f us | futex floor: p50 %.1f us p99 %.1f us (pinned to one CPU)\n",
               wake.p(50) / 1e3, wake.p(99) / 1e3, floor.p(50) / 1e3, floor.p(99) / 1e3);
  std::fprintf(stderr, "wake: p50 %.1f us p99 %.1f us | futex floor: p50 %.1f us p99 %.1f us (unpinned)\n",
               wake_free.p(50) / 1e3, wake_free.p(99) / 1e3, floor_free.p(50) / 1e3, floor_free.p(99) / 1e3);
  const SocketRun sr = sockets(requests, pipelined, daemon, daemon_log);
  std::fprintf(stderr, "echo: rtt p50 %.1f us, %.0f req/s sequential (median of rounds), %.0f req/s pipelined\n",
               sr.echo.rtt.p(50) / 1e3, sr.echo.seq_rps(), sr.echo.pipelined_rps);
  if (sr.daemon_available) {
    std::fprintf(stderr, "daemon: rtt p50 %.1f us, %.0f req/s sequential, %.0f req/s pipelined%s%s\n",
                 sr.daemon.rtt.p(50) / 1e3, sr.daemon.seq_rps(), sr.daemon.pipelined_rps, sr.daemon.ok ? "" : " FAILED: ",
                 sr.daemon.failure.c_str());
    std::fprintf(stderr, "  CPU per request on CPU 0: echo %.2f us, daemon %.2f us; echo_work spends %.2f us more\n",
                 sr.echo_cpu_ns / 1e3, sr.daemon_cpu_ns / 1e3, sr.work_ns / 1e3);
    for (const auto& p : sr.placed)
      std::fprintf(stderr,
                   "  %-9s rtt p50: echo %.1f us, echo_work %.1f us, daemon %.1f us; sequential %.2fx echo, %.2fx "
                   "echo_work\n",
                   p.name.c_str(), p.echo.rtt.p(50) / 1e3, p.echo_work.rtt.p(50) / 1e3, p.daemon.rtt.p(50) / 1e3,
                   p.daemon.seq_rps() / p.echo.seq_rps(), p.daemon.seq_rps() / p.echo_work.seq_rps());
  } else {
    std::fprintf(stderr, "daemon: pending: %s\n", sr.daemon_reason.c_str());
  }

  std::ostringstream o;
  o << "{\"wake\":" << samples_json(wake) << ",\n\"futex_floor\":" << samples_json(floor)
    << ",\n\"wake_unpinned\":" << samples_json(wake_free) << ",\n\"futex_floor_unpinned\":" << samples_json(floor_free)
    << ",\n\"socket_echo\":" << socket_json(sr.echo) << ",\n\"daemon\":{\"available\":"
    << (sr.daemon_available ? "true" : "false") << ",\"reason\":\"" << json_escape(sr.daemon_reason)
    << "\",\"figures\":" << socket_json(sr.daemon) << "},\n\"socket_cpu_per_request_ns\":{\"echo\":" << sr.echo_cpu_ns
    << ",\"daemon\":" << sr.daemon_cpu_ns << ",\"echo_work_extra\":" << sr.work_ns << "},\n\"socket_placements\":{";
  for (std::size_t i = 0; i < sr.placed.size(); ++i)
    o << (i ? "," : "") << "\"" << sr.placed[i].name << "\":{\"echo\":" << socket_json(sr.placed[i].echo)
      << ",\"daemon\":" << socket_json(sr.placed[i].daemon) << ",\"echo_work\":" << socket_json(sr.placed[i].echo_work)
      << "}";
  o << "}}\n";
  if (out.empty()) {
    std::fputs(o.str().c_str(), stdout);
  } else {
    std::ofstream(out) << o.str();
  }
  return 0;
}
