// bench/fanout_bench.cpp — one cancel waking many blocked workers (DESIGN §8: ≤ 1.3× a raw futex
// broadcast to 1,000 processes), and the comparison with what a user would pick instead (ask the
// daemon per check, a D-Bus signal, inotify on a rewritten file), measured in the same run.
//
// One harness for every notification mechanism: N forked children each block in the mechanism
// (pkgctx_wait on a schedule token of one package; FUTEX_WAIT on one shared word; sd_bus_wait for
// a signal from a private dbus-daemon; a blocking read of an inotify watch on a directory whose
// file the controller renames over). A round starts only once every child announced itself and
// /proc/<pid>/stat says it sleeps (for the futex mechanisms /proc/<pid>/wchan also names a futex
// wait); the parent then stamps CLOCK_MONOTONIC, notifies once, and each child stamps when it
// runs again. A round's figure is the last child's stamp minus the parent's. Mechanisms alternate
// round by round in the same children, so all see the same load. Nothing is pinned.
//
// Usage: pkgctx_fanout_bench [--n 1000] [--rounds 15] [--compare-rounds 3] [--notify1-rounds 200]
//                            [--daemon-checks 2000] [--inotify-n N] [--no-dbus] [--out FILE]
#include "bench_util.hpp"

#include "pkgctx.h"
#include "pkgctx/client.hpp"
#include "pkgctx/daemon/test_harness.hpp"
#include "pkgctx/futex.hpp"
#include "pkgctx/store.hpp"
#include "pkgctx/view.hpp"

#include <boost/json.hpp>
#include <systemd/sd-bus.h>

#include <array>
#include <climits>
#include <csignal>
#include <fstream>
#include <optional>
#include <sstream>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

using namespace pkgctx;

namespace {

enum Mode : int { kPkgctx, kRawFutex, kDbus, kInotify, kModes };
constexpr const char* kModeName[kModes] = {"pkgctx", "raw_futex", "dbus", "inotify"};
constexpr std::uint64_t kLimitNs = 60'000'000'000;  // any single wait: the run is broken past this

struct Header {
  std::atomic<std::uint32_t> gate{0}, arrivals{0}, woke{0}, mode{0}, stop{0}, word{0}, failed{0};
};
struct alignas(64) PerChild {
  std::atomic<std::uint64_t> stamp{0};
  std::atomic<std::int64_t> rss_delta_kb[kModes]{};      // resident growth from setting the mechanism up
  std::atomic<std::int64_t> private_delta_kb[kModes]{};  // of it, the pages no other process shares
};

std::int64_t rss_kb(pid_t pid = 0) {
  const std::string path = pid ? "/proc/" + std::to_string(pid) + "/statm" : "/proc/self/statm";
  FILE* f = std::fopen(path.c_str(), "r");
  long size = 0, resident = 0;
  if (!f) return -1;
  const int n = std::fscanf(f, "%ld %ld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * (::sysconf(_SC_PAGESIZE) / 1024) : -1;
}

// This process's private resident memory (Private_Clean + Private_Dirty of smaps_rollup).
std::int64_t private_kb() {
  FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  std::int64_t sum = 0;
  long v = 0;
  while (std::fgets(line, sizeof line, f))
    if ((std::sscanf(line, "Private_Clean: %ld kB", &v) == 1) || (std::sscanf(line, "Private_Dirty: %ld kB", &v) == 1)) sum += v;
  std::fclose(f);
  return sum;
}

// The parent's view of one child: scheduler state and the kernel function it sleeps in.
struct Proc {
  int stat = -1, wchan = -1;
  explicit Proc(pid_t pid) {
    const std::string base = "/proc/" + std::to_string(pid) + "/";
    stat = ::open((base + "stat").c_str(), O_RDONLY | O_CLOEXEC);
    wchan = ::open((base + "wchan").c_str(), O_RDONLY | O_CLOEXEC);
    if (stat < 0) bench::die("open /proc/<pid>/stat");
  }
  ~Proc() { ::close(stat), ::close(wchan); }
  Proc(const Proc&) = delete;
  Proc& operator=(const Proc&) = delete;
  // Asleep ('S'); for the futex mechanisms also in a futex wait (when wchan is readable).
  bool asleep(bool futex) const {
    char buf[512];
    ssize_t n = ::pread(stat, buf, sizeof buf - 1, 0);
    if (n <= 0) return false;
    buf[n] = '\0';
    const char* paren = std::strrchr(buf, ')');
    if (!paren || paren[1] != ' ' || paren[2] != 'S') return false;
    if (!futex || wchan < 0) return true;
    n = ::pread(wchan, buf, sizeof buf - 1, 0);
    if (n <= 0 || (n == 1 && buf[0] == '0')) return true;  // hidden from us: the state must do
    return std::strncmp(buf, "futex", 5) == 0;
  }
};

// A private session bus for the D-Bus comparison; killed on scope exit.
struct DbusDaemon {
  pid_t pid = -1;
  std::string address, reason;
  DbusDaemon() {
    int fd[2];
    if (::pipe2(fd, O_CLOEXEC) != 0) bench::die("pipe");
    pid = bench::spawn([&] {
      ::dup2(fd[1], 3);  // dup2 clears FD_CLOEXEC on the copy
      const int null = ::open("/dev/null", O_WRONLY);
      if (null >= 0) ::dup2(null, 1), ::dup2(null, 2);
      ::execlp("dbus-daemon", "dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=3",
               static_cast<char*>(nullptr));
      return 127;
    });
    ::close(fd[1]);
    char buf[512];
    std::size_t len = 0;
    while (len < sizeof buf - 1) {
      const ssize_t r = ::read(fd[0], buf + len, sizeof buf - 1 - len);
      if (r <= 0) break;
      len += static_cast<std::size_t>(r);
      if (std::memchr(buf, '\n', len)) break;
    }
    ::close(fd[0]);
    address.assign(buf, len);
    if (const auto nl = address.find('\n'); nl != std::string::npos) address.resize(nl);
    if (address.empty()) reason = "dbus-daemon did not start (is the dbus package installed?)";
  }
  ~DbusDaemon() {
    if (pid > 0) ::kill(pid, SIGTERM), bench::reap(pid);
  }
};

sd_bus* bus_connect(const std::string& address) {
  sd_bus* bus = nullptr;
  if (sd_bus_new(&bus) < 0) return nullptr;
  if (sd_bus_set_address(bus, address.c_str()) < 0 || sd_bus_set_bus_client(bus, 1) < 0 || sd_bus_start(bus) < 0) {
    sd_bus_unref(bus);
    return nullptr;
  }
  return bus;
}

constexpr const char* kBusPath = "/org/pkgctx/bench";
constexpr const char* kBusInterface = "org.pkgctx.Bench";
constexpr const char* kBusMember = "Cancelled";

struct Setup {
  std::string segment, dir, state_file, bus_address;
};

// One child: blocks in the round's mechanism, stamps when it runs again, then waits at the gate.
int child_main(const Setup& su, Header& h, PerChild* per, std::uint32_t i, std::uint32_t n) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  pkgctx_worker_t* worker = nullptr;
  pkgctx_token_t* token = nullptr;
  sd_bus* bus = nullptr;
  int ino = -1;
  std::atomic<bool> signalled{false};
  const auto arrive = [&] {
    if (h.arrivals.fetch_add(1) + 1 == n) futex::wake(&h.arrivals);
  };
  std::uint32_t round = 0;
  while (true) {
    const std::uint64_t gate_end = bench::now_ns() + kLimitNs;
    while (h.gate.load() == round) {
      if (bench::now_ns() > gate_end) return 3;  // the parent is gone
      futex::wait(&h.gate, round, std::chrono::seconds(5));
    }
    round = h.gate.load();
    if (h.stop.load()) break;
    const auto mode = static_cast<Mode>(h.mode.load());
    const std::int64_t rss0 = rss_kb(), private0 = private_kb();
    const auto record = [&] {
      per[i].rss_delta_kb[mode].store(rss_kb() - rss0);
      per[i].private_delta_kb[mode].store(private_kb() - private0);
    };
    bool set_up = false;
    switch (mode) {
      case kPkgctx:
        if (!worker) {
          if (pkgctx_attach(su.segment.c_str(), &worker) != PKGCTX_OK) return 10;
          set_up = true;
        }
        break;
      case kDbus:
        if (!bus) {
          bus = bus_connect(su.bus_address);
          if (!bus) return 11;
          const std::string match = std::string("type='signal',interface='") + kBusInterface + "',member='" + kBusMember + "'";
          const auto handler = [](sd_bus_message*, void* flag, sd_bus_error*) {
            static_cast<std::atomic<bool>*>(flag)->store(true, std::memory_order_release);
            return 0;
          };
          if (sd_bus_add_match(bus, nullptr, match.c_str(), handler, &signalled) < 0) return 12;
          set_up = true;
        }
        break;
      case kInotify:
        if (ino < 0) {
          ino = inotify_init1(IN_CLOEXEC);
          if (ino < 0 || inotify_add_watch(ino, su.dir.c_str(), IN_MOVED_TO) < 0) return 13;
          set_up = true;
        }
        break;
      default:
        break;
    }
    switch (mode) {
      case kPkgctx:
        pkgctx_token_free(token);
        if (pkgctx_token(worker, "app", PKGCTX_EVENT_SCHEDULE, &token) != PKGCTX_OK) return 14;
        if (set_up) record();
        arrive();
        if (pkgctx_wait(token, static_cast<int64_t>(kLimitNs / 1'000'000)) != PKGCTX_OK) return 15;
        break;
      case kRawFutex: {
        const std::uint32_t seen = h.word.load();
        arrive();
        while (h.word.load() == seen) futex::wait(&h.word, seen, std::chrono::nanoseconds(kLimitNs));
        break;
      }
      case kDbus:
        if (set_up) record();
        signalled.store(false);
        arrive();
        while (!signalled.load(std::memory_order_acquire)) {
          const int r = sd_bus_process(bus, nullptr);
          if (r < 0) return 16;
          if (r == 0 && sd_bus_wait(bus, UINT64_MAX) < 0) return 17;
        }
        break;
      case kInotify: {
        if (set_up) record();
        arrive();
        alignas(inotify_event) char buf[4096];
        bool seen = false;
        while (!seen) {
          const ssize_t r = ::read(ino, buf, sizeof buf);
          if (r <= 0) return 18;
          for (ssize_t off = 0; off < r;) {
            const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
            if ((e->mask & IN_MOVED_TO) && e->len && std::strcmp(e->name, "state") == 0) seen = true;
            off += static_cast<ssize_t>(sizeof *e + e->len);
          }
        }
        break;
      }
      default:
        return 19;
    }
    per[i].stamp.store(bench::now_ns());
    if (h.woke.fetch_add(1) + 1 == n) futex::wake(&h.woke);
  }
  pkgctx_token_free(token);
  pkgctx_detach(worker);
  if (bus) sd_bus_flush_close_unref(bus);
  if (ino >= 0) ::close(ino);
  return 0;
}

struct RoundFigures {
  std::vector<double> last, first, write;  // ns from the parent's stamp: last/first child running; the notify call
  std::int64_t syscalls = -1;              // the parent's, during the notify call of the first round
};

// N children and the parent's side of each round.
class Fleet {
 public:
  Fleet(const Setup& su, std::uint32_t n) : su_(su), n_(n) {
    h_ = bench::shared_anon<Header>();
    per_ = bench::shared_anon<PerChild>(n);
    for (std::uint32_t i = 0; i < n; ++i) pids_.push_back(bench::spawn([&, i] { return child_main(su_, *h_, per_, i, n_); }));
    for (pid_t p : pids_) procs_.push_back(std::make_unique<Proc>(p));
  }
  ~Fleet() {
    // After a failed round children may still block in the mechanism, away from the gate.
    if (!failure_.empty())
      for (pid_t p : pids_) ::kill(p, SIGKILL);
    h_->stop.store(1);
    h_->gate.fetch_add(1);
    futex::wake(&h_->gate);
    for (pid_t p : pids_)
      if (const int rc = bench::reap(p); rc != 0 && failure_.empty()) std::fprintf(stderr, "fanout: child exited %d\n", rc);
    ::munmap(h_, sizeof *h_);
    ::munmap(per_, sizeof(PerChild) * n_);
  }
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  // One round of `mode`; `notify` is the controller's one action. False (and failure()) if a child
  // did not arrive, sleep or wake within the limits.
  template <class Notify>
  bool round(Mode mode, RoundFigures& f, Notify notify, bench::SyscallCounter* sc = nullptr) {
    h_->mode.store(mode);
    h_->arrivals.store(0);
    h_->woke.store(0);
    for (std::uint32_t i = 0; i < n_; ++i) per_[i].stamp.store(0);
    h_->gate.fetch_add(1);
    futex::wake(&h_->gate);
    if (!wait_count(h_->arrivals, "arrive")) return false;
    // Every child asleep: those seen asleep are not looked at again until a last full pass.
    const bool fx = mode == kPkgctx || mode == kRawFutex;
    std::vector<char> seen(n_, 0);
    const auto all_asleep = [&] {
      for (std::uint32_t i = 0; i < n_; ++i)
        if (!seen[i] && !(seen[i] = procs_[i]->asleep(fx))) return false;
      for (std::uint32_t i = 0; i < n_; ++i)
        if (!procs_[i]->asleep(fx)) return seen[i] = 0, false;
      return true;
    };
    if (!bench::spin_until(all_asleep, 10'000'000'000)) return fail("a child never went to sleep");
    if (sc) sc->start();
    const std::uint64_t t0 = bench::now_ns();
    notify();
    const std::uint64_t t1 = bench::now_ns();
    if (sc) f.syscalls = sc->stop();
    if (!wait_count(h_->woke, "wake")) return false;
    std::uint64_t first = UINT64_MAX, last = 0;
    for (std::uint32_t i = 0; i < n_; ++i) {
      const std::uint64_t s = per_[i].stamp.load();
      first = std::min(first, s), last = std::max(last, s);
    }
    f.last.push_back(static_cast<double>(last - t0));
    f.first.push_back(static_cast<double>(first - t0));
    f.write.push_back(static_cast<double>(t1 - t0));
    return true;
  }

  Header& header() { return *h_; }
  // Median over children of the resident growth from setting `mode` up.
  double rss_delta_kb(Mode mode, bool only_private = false) const {
    std::vector<double> v;
    for (std::uint32_t i = 0; i < n_; ++i)
      v.push_back(static_cast<double>((only_private ? per_[i].private_delta_kb : per_[i].rss_delta_kb)[mode].load()));
    return bench::percentile(v, 50);
  }
  const std::string& failure() const { return failure_; }

 private:
  bool fail(std::string why) {
    failure_ = std::move(why);
    return false;
  }
  bool wait_count(std::atomic<std::uint32_t>& c, const char* what) {
    const std::uint64_t end = bench::now_ns() + kLimitNs;
    for (std::uint32_t v; (v = c.load()) < n_;) {
      if (bench::now_ns() > end) return fail(std::string("children did not ") + what + " within 60 s");
      for (pid_t p : pids_)
        if (::waitpid(p, nullptr, WNOHANG) == p) return fail(std::string("a child exited before it could ") + what);
      futex::wait(&c, v, std::chrono::milliseconds(200));
    }
    return true;
  }

  const Setup& su_;
  std::uint32_t n_;
  Header* h_ = nullptr;
  PerChild* per_ = nullptr;
  std::vector<pid_t> pids_;
  std::vector<std::unique_ptr<Proc>> procs_;
  std::string failure_;
};

// The controller's side of each mechanism.
struct Controller {
  Store* store = nullptr;
  Header* h = nullptr;
  sd_bus* bus = nullptr;
  std::string dir;
  int generation = 0;
  void operator()(Mode m) {
    switch (m) {
      case kPkgctx:
        store->handle_event(kEventSchedule, "app").value();
        break;
      case kRawFutex:
        h->word.fetch_add(1);
        futex::wake(&h->word, INT_MAX);
        break;
      case kDbus:
        if (sd_bus_emit_signal(bus, kBusPath, kBusInterface, kBusMember, "s", "app") < 0 || sd_bus_flush(bus) < 0)
          bench::die("sd_bus_emit_signal");
        break;
      case kInotify: {
        // The file a controller rewrites: a new copy renamed over the old (atomic for readers).
        const std::string tmp = dir + "/state.tmp", text = "generation " + std::to_string(++generation) + "\n";
        const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::close(fd) != 0 ||
            ::rename(tmp.c_str(), (dir + "/state").c_str()) != 0)
          bench::die("rewrite state file");
        break;
      }
      default:
        break;
    }
  }
};

// ns per call: the fastest of `batches` batches of `n` calls (stable on a loaded machine).
template <class F>
double per_call_ns(F f, int n, int batches) {
  double best = 1e300;
  for (int b = 0; b < batches; ++b) {
    const std::uint64_t t0 = bench::now_ns();
    for (int i = 0; i < n; ++i) f();
    best = std::min(best, static_cast<double>(bench::now_ns() - t0) / n);
  }
  return best;
}

std::string series_json(const std::vector<double>& v) {
  std::ostringstream o;
  o << "{\"n\":" << v.size() << ",\"p50_ns\":" << bench::percentile(v, 50) << ",\"p99_ns\":" << bench::percentile(v, 99)
    << ",\"max_ns\":" << bench::percentile(v, 100) << ",\"samples_ns\":[";
  for (std::size_t i = 0; i < v.size(); ++i) o << (i ? "," : "") << static_cast<std::uint64_t>(v[i]);
  o << "]}";
  return o.str();
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) >= 0x20) o += c;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint32_t n = 1000, inotify_n = 0;
  int rounds = 15, compare_rounds = 3, notify1_rounds = 200, daemon_checks = 2000;
  bool use_dbus = true;
  std::string out;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s: %s needs a value\n", argv[0], k.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (k == "--n") n = static_cast<std::uint32_t>(std::stoul(next()));
    else if (k == "--rounds") rounds = std::stoi(next());
    else if (k == "--compare-rounds") compare_rounds = std::stoi(next());
    else if (k == "--notify1-rounds") notify1_rounds = std::stoi(next());
    else if (k == "--daemon-checks") daemon_checks = std::stoi(next());
    else if (k == "--inotify-n") inotify_n = static_cast<std::uint32_t>(std::stoul(next()));
    else if (k == "--no-dbus") use_dbus = false;
    else if (k == "--out") out = next();
    else {
      std::fprintf(stderr,
                   "usage: %s [--n N] [--rounds N] [--compare-rounds N] [--notify1-rounds N] [--daemon-checks N] "
                   "[--inotify-n N] [--no-dbus] [--out FILE]\n",
                   argv[0]);
      return 2;
    }
  }
  if (n < 1 || rounds < 1) return std::fprintf(stderr, "%s: --n and --rounds must be at least 1\n", argv[0]), 2;
  std::signal(SIGPIPE, SIG_IGN);
  // Every child keeps two /proc files open in the parent.
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = nofile.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &nofile);

  Setup su;
  su.segment = bench::segment_name("fanout");
  char tmpl[] = "/tmp/pkgctx-bench-fanout.XXXXXX";
  if (!::mkdtemp(tmpl)) bench::die("mkdtemp");
  su.dir = tmpl;
  su.state_file = su.dir + "/state";
  Segment::remove(su.segment);
  SegmentOptions o;
  o.capacity = 64;
  o.settings_bytes = 4096;
  Store store = Store::create(su.segment, o).value();
  store.update("app", "1.0", Settings()).value();
  {
    std::ofstream(su.state_file) << "generation 0\n";
  }
  std::optional<DbusDaemon> dbus;
  std::string dbus_reason = "disabled (--no-dbus)";
  if (use_dbus) {
    dbus.emplace();
    dbus_reason = dbus->reason;
    su.bus_address = dbus->address;
  }
  const bool have_dbus = dbus && dbus->reason.empty();
  const std::int64_t bus_rss0 = have_dbus ? rss_kb(dbus->pid) : -1;

  std::ostringstream js;
  std::string failure;
  const std::string load0 = [] {
    std::ifstream f("/proc/loadavg");
    std::string s;
    std::getline(f, s);
    return s;
  }();
  std::fprintf(stderr, "fanout: %u children, load %s\n", n, load0.c_str());

  // 1. The headline: pkgctx against the raw broadcast, alternating, `rounds` each; then the
  //    D-Bus and inotify rounds of the comparison in the same children.
  RoundFigures fan[kModes];
  double rss_delta[kModes] = {-1, -1, -1, -1}, private_delta[kModes] = {-1, -1, -1, -1};
  std::int64_t bus_rss_growth = -1;
  {
    Fleet fleet(su, n);
    Controller ctl{&store, &fleet.header(), nullptr, su.dir};
    bench::SyscallCounter sc;
    bool ok = true;
    // One warm-up round each (attach, first faults) before the timed ones.
    RoundFigures warm;
    ok = fleet.round(kPkgctx, warm, [&] { ctl(kPkgctx); }) && fleet.round(kRawFutex, warm, [&] { ctl(kRawFutex); });
    // Alternating which goes first (ABBA), so neither always follows the other.
    for (int r = 0; ok && r < rounds; ++r) {
      for (const Mode m : r % 2 ? std::array{kRawFutex, kPkgctx} : std::array{kPkgctx, kRawFutex})
        ok = ok && fleet.round(m, fan[m], [&] { ctl(m); }, r == 0 && sc.available() ? &sc : nullptr);
      if (ok) std::fprintf(stderr, "  round %d: last awake pkgctx %.2f ms, raw futex %.2f ms\n", r,
                           fan[kPkgctx].last.back() / 1e6, fan[kRawFutex].last.back() / 1e6);
    }
    sd_bus* pbus = have_dbus ? bus_connect(su.bus_address) : nullptr;
    ctl.bus = pbus;
    for (int r = 0; ok && pbus && r < compare_rounds; ++r) {
      ok = fleet.round(kDbus, fan[kDbus], [&] { ctl(kDbus); });
      if (ok && r == 0) bus_rss_growth = rss_kb(dbus->pid) - bus_rss0;
    }
    if (!ok) failure = "fan-out: " + fleet.failure();
    for (int m = 0; m < kModes; ++m) {
      rss_delta[m] = fleet.rss_delta_kb(static_cast<Mode>(m));
      private_delta[m] = fleet.rss_delta_kb(static_cast<Mode>(m), true);
    }
    if (pbus) sd_bus_flush_close_unref(pbus);
  }
  // inotify instances are limited per user (fs.inotify.max_user_instances, 128 by default) and
  // shared with every other process of this user: the fan-out takes a quarter of the limit
  // unless told otherwise, so it cannot starve anyone else's watches.
  if (inotify_n == 0) {
    std::ifstream f("/proc/sys/fs/inotify/max_user_instances");
    std::uint32_t limit = 128;
    f >> limit;
    inotify_n = std::max<std::uint32_t>(1, std::min(n, limit / 4));
  }
  if (failure.empty()) {
    Fleet fleet(su, inotify_n);
    Controller ctl{&store, &fleet.header(), nullptr, su.dir};
    bool ok = true;
    for (int r = 0; ok && r < compare_rounds; ++r) ok = fleet.round(kInotify, fan[kInotify], [&] { ctl(kInotify); });
    if (!ok) failure = "inotify fan-out: " + fleet.failure();
    rss_delta[kInotify] = fleet.rss_delta_kb(kInotify);
    private_delta[kInotify] = fleet.rss_delta_kb(kInotify, true);
  }
  const auto p50 = [](const std::vector<double>& v) { return bench::percentile(v, 50); };
  std::fprintf(stderr, "fanout %u: last awake p50 pkgctx %.2f ms vs raw futex %.2f ms (worst %.2f vs %.2f)\n", n,
               p50(fan[kPkgctx].last) / 1e6, p50(fan[kRawFutex].last) / 1e6, bench::percentile(fan[kPkgctx].last, 100) / 1e6,
               bench::percentile(fan[kRawFutex].last, 100) / 1e6);

  // 2. Notify one: the same harness with one child, every mechanism in turn.
  RoundFigures one[kModes];
  if (failure.empty()) {
    Fleet fleet(su, 1);
    Controller ctl{&store, &fleet.header(), nullptr, su.dir};
    sd_bus* pbus = have_dbus ? bus_connect(su.bus_address) : nullptr;
    ctl.bus = pbus;
    bool ok = true;
    for (int r = 0; ok && r < notify1_rounds + 5; ++r) {
      for (int m = 0; ok && m < kModes; ++m) {
        if (m == kDbus && !pbus) continue;
        RoundFigures warm;
        ok = fleet.round(static_cast<Mode>(m), r < 5 ? warm : one[m], [&] { ctl(static_cast<Mode>(m)); });
      }
    }
    if (!ok) failure = "notify one: " + fleet.failure();
    if (pbus) sd_bus_flush_close_unref(pbus);
  }

  // 3. Check cost: what a worker pays to ask "am I cancelled?" with each mechanism.
  double check_pkgctx = -1, check_flag = -1, check_stat = -1;
  {
    pkgctx_worker_t* w = nullptr;
    pkgctx_token_t* t = nullptr;
    if (pkgctx_attach(su.segment.c_str(), &w) == PKGCTX_OK && pkgctx_token(w, "app", PKGCTX_EVENT_SCHEDULE, &t) == PKGCTX_OK) {
      int sink = 0;
      check_pkgctx = per_call_ns([&] { sink += pkgctx_cancelled(t); }, 1'000'000, 20);
      std::atomic<bool> flag{false};
      check_flag = per_call_ns([&] { sink += flag.load(std::memory_order_acquire); }, 1'000'000, 20);
      struct stat st {};
      check_stat = per_call_ns([&] { sink += ::stat(su.state_file.c_str(), &st); }, 20'000, 10);
      if (sink == INT_MIN) std::fputs("", stderr);  // keeps the loops' results alive
    }
    pkgctx_token_free(t);
    pkgctx_detach(w);
  }

  // 4. Ask the daemon per check: need_update (does my version and checksum still hold) over a
  //    persistent connection — the read op closest to "is my context still valid".
  std::vector<double> ask;
  std::string daemon_reason;
  try {
    daemon::testing::TempDir dir;
    const std::string seg = bench::segment_name("fanout-d");
    daemon::testing::DaemonOptions dopt;
    dopt.args = {"--segment", seg, "--socket", dir / "ctl.sock", "--capacity", "64"};
    daemon::testing::DaemonProcess d(dir, dopt);
    if (!d.ready()) throw std::runtime_error("pkgctxd did not start");
    auto c = Client::connect(dir / "ctl.sock").value();
    c.send_line(R"({"op":"update","name":"app","version":"1.0","settings":{}})").value();
    c.receive().value();
    c.send_line(R"({"op":"settings","name":"app"})").value();
    const std::string sum = boost::json::value_to<std::string>(c.receive().value().at("checksum"));
    const std::string line = R"({"op":"need_update","name":"app","version":"1.0","checksum":")" + sum + "\"}";
    for (int i = 0; i < daemon_checks + 100; ++i) {
      const std::uint64_t t0 = bench::now_ns();
      c.send_line(line).value();
      const auto a = c.receive().value();
      const std::uint64_t t1 = bench::now_ns();
      if (a.at("need_update") != false) throw std::runtime_error("need_update answered " + boost::json::serialize(a));
      if (i >= 100) ask.push_back(static_cast<double>(t1 - t0));
    }
    Segment::remove(seg);
  } catch (const std::exception& e) {
    daemon_reason = e.what();
  }

  // The report's JSON.
  js << "{\"n\":" << n << ",\"inotify_n\":" << inotify_n << ",\"rounds\":" << rounds << ",\"load\":\"" << load0 << "\",\"failure\":\"" << escape(failure)
     << "\",\n\"fanout\":{";
  for (int m = 0; m < kModes; ++m)
    js << (m ? ",\n" : "") << "\"" << kModeName[m] << "\":{\"last\":" << series_json(fan[m].last)
       << ",\"first\":" << series_json(fan[m].first) << ",\"notify_call\":" << series_json(fan[m].write)
       << ",\"notify_syscalls\":" << fan[m].syscalls << "}";
  js << "},\n\"notify1\":{";
  for (int m = 0; m < kModes; ++m) js << (m ? ",\n" : "") << "\"" << kModeName[m] << "\":" << series_json(one[m].last);
  js << "},\n\"notify1_call\":{";  // the waker's own call, stamp to return
  for (int m = 0; m < kModes; ++m) js << (m ? ",\n" : "") << "\"" << kModeName[m] << "\":" << series_json(one[m].write);
  js << "},\n\"check_ns\":{\"pkgctx\":" << check_pkgctx << ",\"local_flag\":" << check_flag << ",\"stat\":" << check_stat
     << ",\"daemon\":" << series_json(ask) << "},\n\"rss_delta_kb\":{";
  for (int m = 0; m < kModes; ++m) js << (m ? "," : "") << "\"" << kModeName[m] << "\":" << rss_delta[m];
  js << "},\"private_delta_kb\":{";
  for (int m = 0; m < kModes; ++m) js << (m ? "," : "") << "\"" << kModeName[m] << "\":" << private_delta[m];
  js << "},\"dbus\":{\"available\":" << (have_dbus ? "true" : "false") << ",\"reason\":\"" << escape(dbus_reason)
     << "\",\"daemon_rss_growth_kb\":" << bus_rss_growth << "},\"daemon_reason\":\"" << escape(daemon_reason) << "\"}\n";
  if (out.empty()) std::fputs(js.str().c_str(), stdout);
  else std::ofstream(out) << js.str();

  std::fprintf(stderr, "notify one p50: pkgctx %.1f us, raw futex %.1f us, dbus %.1f us, inotify %.1f us\n",
               p50(one[kPkgctx].last) / 1e3, p50(one[kRawFutex].last) / 1e3, p50(one[kDbus].last) / 1e3,
               p50(one[kInotify].last) / 1e3);
  std::fprintf(stderr, "notify one, the waker's call p50: pkgctx %.1f us, raw futex %.1f us\n",
               p50(one[kPkgctx].write) / 1e3, p50(one[kRawFutex].write) / 1e3);
  std::fprintf(stderr, "check: pkgctx %.2f ns, local flag %.2f ns, stat %.0f ns, daemon need_update p50 %.1f us\n",
               check_pkgctx, check_flag, check_stat, p50(ask) / 1e3);
  dbus.reset();
  Segment::remove(su.segment);
  ::unlink(su.state_file.c_str());
  ::rmdir(su.dir.c_str());
  if (!failure.empty()) std::fprintf(stderr, "fanout: FAILED: %s\n", failure.c_str());
  return failure.empty() ? 0 : 1;
}
