// `pkgctl run`: CMD as a task on a package's current context (DESIGN §7).
#include "pkgctl/cli.hpp"

#include "pkgctx/segment.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/worker.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <csignal>
#include <cstring>
#include <ostream>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pkgctl {

namespace {

int fail(const pkgctx::Error& e, const std::string& what, Io io) {
  io.err << "pkgctl: " << what << ": " << e.message << '\n';
  return exit_code_for(pkgctx::errc_name(e.code));
}

// Exit status as a shell reports it.
int status_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

int run_task(const std::string& segment, const std::string& socket, const std::string& name, const std::string& event,
             double grace_s, const std::vector<std::string>& cmd, Io io) {
  auto key = pkgctx::parse_event(event);
  if (!key) return fail(key.error(), "run", io);
  auto worker = pkgctx::Worker::attach(segment);
  if (!worker) return fail(worker.error(), "run: segment " + segment, io);
  // Registration failing is not fatal: the task still runs, and is reported once pkgctxd is back.
  if (auto r = worker->register_daemon(socket); !r)
    io.err << "pkgctl: run: " << r.error().message << "; running unregistered\n";
  auto task = worker->begin(name, *key);
  if (!task) return fail(task.error(), "run: " + name, io);
  auto cancel = pkgctx::CancelFd::create(task->token());
  if (!cancel) return fail(cancel.error(), "run", io);
  const std::string token = task->token().str();

  std::vector<char*> argv;
  for (const std::string& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  // The lease is held while CMD runs, so pkgctl does not leave CMD running without it: SIGINT,
  // SIGTERM, SIGHUP and SIGQUIT sent to pkgctl stop CMD as a cancellation does (the signal passed
  // on, SIGKILL after the grace), and pkgctl ends the task once CMD has exited. Should pkgctl be
  // killed outright, CMD gets SIGKILL (PR_SET_PDEATHSIG). The registration thread blocks every
  // signal, so the signalfd below sees them all.
  sigset_t stop_signals, old_mask;
  sigemptyset(&stop_signals);
  for (const int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&stop_signals, sig);
  ::sigprocmask(SIG_BLOCK, &stop_signals, &old_mask);
  const int sigfd = ::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK);
  const pid_t parent = ::getpid();
  io.out.flush();
  io.err.flush();
  const pid_t child = ::fork();
  if (child < 0) {
    io.err << "pkgctl: run: fork: " << std::strerror(errno) << '\n';
    if (sigfd >= 0) ::close(sigfd);
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    return kExitUnreachable;
  }
  if (child == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(128 + SIGKILL);  // pkgctl died before the line above
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    ::setenv("PKGCTX_TOKEN", token.c_str(), 1);
    ::execvp(argv[0], argv.data());
    const char msg[] = "pkgctl: run: cannot execute the command\n";
    [[maybe_unused]] const ssize_t w = ::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
  bool cancelled = false;
  int status = 0;
  std::uint64_t kill_at = 0;  // CLOCK_MONOTONIC ns of the SIGKILL once CMD is being stopped, else 0
  bool killed = false;
  const auto arm_kill = [&] {
    if (kill_at == 0) kill_at = pkgctx::mono_now_ns() + static_cast<std::uint64_t>(grace_s * 1e9);
  };
  while (true) {
    int timeout = pidfd >= 0 ? -1 : 50;  // without a pidfd, look for CMD's exit every 50 ms
    if (kill_at != 0 && !killed) {
      const std::uint64_t now = pkgctx::mono_now_ns();
      timeout = now >= kill_at ? 0 : static_cast<int>(std::min<std::uint64_t>((kill_at - now + 999'999) / 1'000'000, 50));
    }
    pollfd p[3] = {{pidfd, POLLIN, 0}, {sigfd, POLLIN, 0}, {cancelled ? -1 : cancel->fd(), POLLIN, 0}};
    if (::poll(p, 3, timeout) < 0 && errno != EINTR) break;
    if (::waitpid(child, &status, WNOHANG) == child) break;
    signalfd_siginfo si;
    while (sigfd >= 0 && ::read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
      // A key on the terminal (SI_KERNEL) signalled CMD's process group already; pass on the rest.
      if (si.ssi_code != SI_KERNEL) ::kill(child, static_cast<int>(si.ssi_signo));
      arm_kill();
    }
    if (!cancelled && (p[2].revents || task->cancelled())) {
      cancelled = true;
      ::kill(child, SIGTERM);
      arm_kill();
    }
    if (kill_at != 0 && !killed && pkgctx::mono_now_ns() >= kill_at) {
      ::kill(child, SIGKILL);
      killed = true;
    }
  }
  if (sigfd >= 0) ::close(sigfd);
  if (pidfd >= 0) ::close(pidfd);
  task->end();
  const int code = status_code(status);
  boost::json::object report;
  report["name"] = name;
  report["cancelled"] = cancelled || task->cancelled();
  auto cause = task->token().cause_text();
  if (cause && task->token().cancelled()) {
    report["cause"] = *cause;
  } else {
    report["cause"] = nullptr;
  }
  report["exit"] = code;
  io.err << boost::json::serialize(report) << '\n';
  return code;
}

}  // namespace pkgctl
