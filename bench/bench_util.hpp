// bench/bench_util.hpp — helpers shared by the benchmark programs: unique segment names, child
// processes, "is that process asleep" gating, a syscall counter and percentiles.
//
// Nothing here is part of pkgctx; it exists so the benchmarks measure pkgctx and not their own
// scaffolding.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <dirent.h>
#include <fcntl.h>
#include <functional>
#include <linux/perf_event.h>
#include <sched.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace bench {

inline std::uint64_t now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

// "pkgctx-bench-<what>-<pid>": one per program run, removed by the program.
inline std::string segment_name(const char* what) {
  return "pkgctx-bench-" + std::string(what) + "-" + std::to_string(::getpid());
}

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "bench: %s: %s\n", what, std::strerror(errno));
  std::_Exit(70);
}

// Forks a child that runs `body` and _exits with its result (no atexit handlers, no flushing of
// the parent's stdio buffers).
inline pid_t spawn(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) die("fork");
  if (pid == 0) ::_exit(body());
  return pid;
}

inline int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

struct Pipe {
  int rd = -1, wr = -1;
  Pipe() {
    int fd[2];
    if (::pipe(fd) != 0) die("pipe");
    rd = fd[0];
    wr = fd[1];
  }
  void close_rd() { if (rd >= 0) ::close(rd), rd = -1; }
  void close_wr() { if (wr >= 0) ::close(wr), wr = -1; }
  ~Pipe() { close_rd(); close_wr(); }
  void send(char c = '.') const { (void)!::write(wr, &c, 1); }
  bool recv() const {
    char c;
    ssize_t n;
    while ((n = ::read(rd, &c, 1)) < 0 && errno == EINTR) {
    }
    return n == 1;
  }
};

// An anonymous MAP_SHARED region of T, shared with forked children.
template <class T>
T* shared_anon(std::size_t n = 1) {
  void* p = ::mmap(nullptr, sizeof(T) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return new (p) T[n]();
}

// Watches another process's scheduler state through /proc/<pid>/stat, re-read with pread.
class ProcState {
 public:
  explicit ProcState(pid_t pid) {
    const std::string path = "/proc/" + std::to_string(pid) + "/stat";
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) die("open /proc/<pid>/stat");
  }
  ~ProcState() { ::close(fd_); }
  ProcState(const ProcState&) = delete;
  ProcState& operator=(const ProcState&) = delete;

  // 'R' running, 'S' sleeping, …
  char state() const {
    char buf[512];
    const char* f = fields(buf);
    return f ? f[0] : '?';
  }
  // The CPU it last ran on (field 39, "processor"), -1 if unreadable.
  int cpu() const {
    char buf[512];
    const char* f = fields(buf);
    for (int field = 3; f && field < 39; ++field) {
      f = std::strchr(f, ' ');
      if (f) ++f;
    }
    return f ? std::atoi(f) : -1;
  }
 private:
  // Reads the stat line into `buf`: its fields from the third (state) on, or nullptr.
  const char* fields(char (&buf)[512]) const {
    const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
    if (n <= 0) return nullptr;
    buf[n] = '\0';
    const char* paren = std::strrchr(buf, ')');  // the command name may contain spaces
    return paren && paren[1] == ' ' ? paren + 2 : nullptr;
  }
  int fd_ = -1;
};

// Where the processes of a measurement run. Unix-socket and futex round trips on this 2-vCPU VM
// depend on placement more than on anything the server does: two processes on one CPU hand over
// in a context switch (~10 µs echo round trip); on two CPUs each hop wakes an idle vCPU (~50 µs).
// Left alone, the scheduler settles a pair in either placement, run by run, so a comparison
// between two servers is only fair when both run in the same one.
struct Placement {
  const char* name;  // "same_cpu", "cross_cpu", "unpinned"
  int client, server;  // CPU numbers, -1: any CPU
};
inline std::vector<Placement> placements() {
  std::vector<Placement> p{{"same_cpu", 0, 0}};
  if (::sysconf(_SC_NPROCESSORS_ONLN) >= 2) p.push_back({"cross_cpu", 0, 1});
  p.push_back({"unpinned", -1, -1});
  return p;
}

// Pins every thread of `pid` (0: this process) to `cpu`, or lets them run anywhere (-1).
inline void set_affinity(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  for (long c = 0; c < n; ++c)
    if (cpu < 0 || c == cpu) CPU_SET(static_cast<int>(c), &set);
  const std::string dir = "/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/task";
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ::sched_setaffinity(static_cast<pid_t>(std::atoi(e->d_name)), sizeof set, &set);
    ::closedir(d);
  }
}

// Spins (yielding the CPU) until `cond()` holds: true, or false when `limit_ns` passed first.
// For "is the other process asleep yet", which no event announces.
template <class Cond>
bool spin_until(Cond cond, std::uint64_t limit_ns) {
  const std::uint64_t end = now_ns() + limit_ns;
  while (!cond()) {
    if (now_ns() > end) return false;
    ::sched_yield();
  }
  return true;
}

// Counts this thread's system calls with the raw_syscalls:sys_enter tracepoint (perf_event_open).
// available() is false where the kernel or the permissions do not allow it.
class SyscallCounter {
 public:
  SyscallCounter() {
    long id = -1;
    for (const char* p : {"/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
                          "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id"}) {
      if (FILE* f = std::fopen(p, "r")) {
        if (std::fscanf(f, "%ld", &id) != 1) id = -1;
        std::fclose(f);
        if (id >= 0) break;
      }
    }
    if (id < 0) return;
    perf_event_attr attr{};
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof attr;
    attr.config = static_cast<std::uint64_t>(id);
    attr.disabled = 1;
    attr.sample_period = 0;
    fd_ = static_cast<int>(::syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
  }
  ~SyscallCounter() { if (fd_ >= 0) ::close(fd_); }
  SyscallCounter(const SyscallCounter&) = delete;
  SyscallCounter& operator=(const SyscallCounter&) = delete;
  bool available() const { return fd_ >= 0; }
  void start() const {
    ::ioctl(fd_, PERF_EVENT_IOC_RESET, 0);
    ::ioctl(fd_, PERF_EVENT_IOC_ENABLE, 0);  // this ioctl's own entry is not counted: disabled
  }
  // Syscalls since start(), minus the disabling ioctl itself.
  std::int64_t stop() const {
    ::ioctl(fd_, PERF_EVENT_IOC_DISABLE, 0);
    std::uint64_t v = 0;
    if (::read(fd_, &v, sizeof v) != sizeof v) return -1;
    return static_cast<std::int64_t>(v) - 1;
  }

 private:
  int fd_ = -1;
};

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

}  // namespace bench
