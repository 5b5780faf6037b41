// pkgctx/daemon/test_harness.hpp — run a real pkgctxd from a test (header-only, tests only).
//
// DaemonProcess forks and execs the built pkgctxd with a fake $NOTIFY_SOCKET (a datagram socket
// the test binds) and waits for READY=1 on it — or for the process to exit — so tests sequence
// on the daemon's own word rather than on sleeps. stderr goes to a file the test can read.
// Tests that link pkgctxd_test_harness get PKGCTXD_PATH (the built binary) and this include path.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <optional>
#include <poll.h>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace pkgctx::daemon::testing {

inline std::string daemon_path() {
#ifdef PKGCTXD_PATH
  return PKGCTXD_PATH;
#else
  return std::string(PKGCTX_BINARY_DIR) + "/daemon/pkgctxd";
#endif
}

// A private directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/pkgctxd-test-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const noexcept { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A fake $NOTIFY_SOCKET: receives what the daemon sends with sd_notify(). A reader thread
// drains it at once, as the service manager does: sd_notify() blocks once the receiver's
// datagram queue (net.unix.max_dgram_qlen, often 10) is full.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    ::unlink(path_.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("cannot bind notify socket " + path_ + ": " + std::strerror(errno));
    reader_ = std::thread([this] { drain(); });
  }
  ~NotifySocket() {
    stop_ = true;
    reader_.join();
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  const std::string& path() const noexcept { return path_; }

  // The next datagram not yet returned, or nullopt after `timeout`.
  std::optional<std::string> receive(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, timeout, [&] { return next_ < log_.size(); })) return std::nullopt;
    return log_[next_++];
  }

  // Waits for a datagram with the line `line` (e.g. "READY=1"); returns that datagram.
  std::optional<std::string> wait_for(const std::string& line, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      auto msg = receive(left);
      if (!msg) return std::nullopt;
      if (has_line(*msg, line)) return msg;
    }
  }

  static bool has_line(const std::string& msg, const std::string& line) {
    std::istringstream in(msg);
    for (std::string l; std::getline(in, l);) {
      if (l == line) return true;
    }
    return false;
  }

  // Everything received so far.
  std::vector<std::string> log() const {
    std::lock_guard lock(mu_);
    return log_;
  }

 private:
  void drain() {
    char buf[4096];
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n < 0) continue;
      std::lock_guard lock(mu_);
      log_.emplace_back(buf, static_cast<std::size_t>(n));
      cv_.notify_all();
    }
  }

  std::string path_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> log_;
  std::size_t next_ = 0;
  std::atomic<bool> stop_{false};
  std::thread reader_;
};

struct DaemonOptions {
  std::vector<std::string> args;                            // after argv[0]
  std::vector<std::pair<std::string, std::string>> env;     // extra environment
  std::chrono::microseconds watchdog{0};                    // WATCHDOG_USEC (0: unset)
  std::chrono::milliseconds ready_timeout{20000};
};

class DaemonProcess {
 public:
  // Starts pkgctxd in `dir` (its notify socket and stderr file live there). Returns once the
  // daemon sent READY=1 (ready() true) or exited (ready() false, exit_code() set).
  DaemonProcess(const TempDir& dir, const DaemonOptions& opts)
      : notify_(dir / ("notify-" + std::to_string(counter()++))), stderr_path_(notify_.path() + ".stderr") {
    std::vector<std::string> argv_s{daemon_path()};
    argv_s.insert(argv_s.end(), opts.args.begin(), opts.args.end());
    std::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      // If the test process dies (a failed assertion aborting it), take the daemon along.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      for (int sig = 1; sig < NSIG; ++sig) {
        if (sig != SIGKILL && sig != SIGSTOP) std::signal(sig, SIG_DFL);
      }
      const int err = ::open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (err >= 0) ::dup2(err, STDERR_FILENO);
      ::setenv("NOTIFY_SOCKET", notify_.path().c_str(), 1);
      if (opts.watchdog.count() > 0) {
        ::setenv("WATCHDOG_USEC", std::to_string(opts.watchdog.count()).c_str(), 1);
        ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
      } else {
        ::unsetenv("WATCHDOG_USEC");
        ::unsetenv("WATCHDOG_PID");
      }
      ::unsetenv("PKGCTX_SEGMENT");
      ::unsetenv("PKGCTX_SOCKET");
      for (const auto& [k, v] : opts.env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> argv;
      for (auto& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      std::fprintf(stderr, "exec %s: %s\n", argv[0], std::strerror(errno));
      ::_exit(127);
    }
    ready_timeout_ = opts.ready_timeout;
    const auto deadline = std::chrono::steady_clock::now() + opts.ready_timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto msg = notify_.receive(std::chrono::milliseconds(50))) {
        if (NotifySocket::has_line(*msg, "READY=1")) {
          ready_ = true;
          ready_message_ = *msg;
          return;
        }
        continue;
      }
      if (poll_exit()) return;
    }
  }

  ~DaemonProcess() {
    if (running()) {
      ::kill(pid_, SIGKILL);
      wait();
    }
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  pid_t pid() const noexcept { return pid_; }
  bool ready() const noexcept { return ready_; }
  const std::string& ready_message() const noexcept { return ready_message_; }
  bool running() const noexcept { return pid_ > 0 && !exit_code_; }
  NotifySocket& notify() noexcept { return notify_; }

  void signal(int sig) const { ::kill(pid_, sig); }

  // Exit code, or 128+signal; blocks until the process exits.
  int wait() {
    if (exit_code_) return *exit_code_;
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return *exit_code_;
  }

  // Waits at most `timeout` for the process to exit.
  std::optional<int> wait_for(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    do {
      if (poll_exit()) return exit_code_;
      ::usleep(5000);
    } while (std::chrono::steady_clock::now() < deadline);
    return std::nullopt;
  }
  std::optional<int> exit_code() const noexcept { return exit_code_; }

  std::string stderr_text() const {
    std::ifstream in(stderr_path_);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Why the daemon is not ready, for a failed start's message: it exited (and how), or it sent
  // no READY=1 in time (and where each of its threads is); then its stderr.
  std::string start_failure() const {
    std::string why = exit_code_ ? "pkgctxd exited with " + std::to_string(*exit_code_) + " before READY=1"
                                 : "pkgctxd (pid " + std::to_string(pid_) + ") sent no READY=1 within " +
                                       std::to_string(ready_timeout_.count()) + " ms; threads:" + threads_text();
    const std::string err = stderr_text();
    return why + (err.empty() ? "; its stderr is empty" : "; its stderr:\n" + err);
  }

 private:
  // Each thread of the running daemon: id, name, state and the kernel function it sleeps in
  // (/proc), to tell a hang from a slow start.
  std::string threads_text() const {
    std::string out;
    std::error_code ec;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/task", ec)) {
      const auto first_line = [&](const char* file) {
        std::ifstream in(t.path() / file);
        std::string line;
        std::getline(in, line);
        return line;
      };
      const std::string stat = first_line("stat");  // "tid (comm) S …"
      const std::size_t paren = stat.rfind(')');
      const std::string state = paren != std::string::npos && paren + 2 < stat.size() ? stat.substr(paren + 2, 1) : "?";
      out += (out.empty() ? " " : ", ") + t.path().filename().string() + " " + first_line("comm") + " " + state + " in " +
             first_line("wchan");
    }
    return out.empty() ? " none left" : out;
  }

  static int& counter() {
    static int n = 0;
    return n;
  }
  bool poll_exit() {
    if (exit_code_) return true;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return true;
    }
    return false;
  }

  NotifySocket notify_;
  std::string stderr_path_;
  pid_t pid_ = -1;
  bool ready_ = false;
  std::string ready_message_;
  std::chrono::milliseconds ready_timeout_{0};
  std::optional<int> exit_code_;
};

}  // namespace pkgctx::daemon::testing
