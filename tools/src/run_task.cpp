// `pkgctl run`: CMD as a task on a package's current context (DESIGN §7).
#include "pkgctl/cli.hpp"

#include "pkgctx/token.hpp"
#include "pkgctx/worker.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <ostream>
#include <poll.h>
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
  io.out.flush();
  io.err.flush();
  const pid_t child = ::fork();
  if (child < 0) {
    io.err << "pkgctl: run: fork: " << std::strerror(errno) << '\n';
    return kExitUnreachable;
  }
  if (child == 0) {
    ::setenv("PKGCTX_TOKEN", token.c_str(), 1);
    ::execvp(argv[0], argv.data());
    const char msg[] = "pkgctl: run: cannot execute the command\n";
    [[maybe_unused]] const ssize_t w = ::write(2, msg, sizeof msg - 1);
    ::_exit(127);
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
  bool cancelled = false;
  int status = 0;
  long long kill_at_ms = -1;  // SIGKILL deadline, relative to the SIGTERM
  while (true) {
    pollfd p[2] = {{pidfd, POLLIN, 0}, {cancel->fd(), POLLIN, 0}};
    const int timeout = kill_at_ms >= 0 ? static_cast<int>(kill_at_ms) : -1;
    const int n = ::poll(p, cancelled ? 1 : 2, pidfd >= 0 ? timeout : 50);
    if (n < 0 && errno != EINTR) break;
    if (::waitpid(child, &status, WNOHANG) == child) break;
    if (!cancelled && (p[1].revents || task->cancelled())) {
      cancelled = true;
      ::kill(child, SIGTERM);
      kill_at_ms = static_cast<long long>(grace_s * 1000);
      continue;
    }
    if (cancelled && n == 0 && kill_at_ms >= 0) {
      ::kill(child, SIGKILL);
      kill_at_ms = -1;
    }
  }
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
