#include "test_support.hpp"

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace pkgctx::test {

namespace {
std::atomic<int> counter{0};
}

SegmentName::SegmentName(const std::string& tag)
    : name_("t-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag) {
  remove_segment(name_);
}

SegmentName::~SegmentName() { remove_segment(name_); }

void remove_segment(const std::string& name) {
  for (const char* suffix : {"", ".waiters", ".lock"}) {
    std::string obj = "/" + name + suffix;
    ::shm_unlink(obj.c_str());
  }
}

pid_t spawn(const std::function<int()>& body) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  // Child: Boost.Test's handlers survived fork(); restore defaults so a crash is a crash.
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) std::signal(sig, SIG_DFL);
  }
  int code = 99;
  try {
    code = body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
  } catch (...) {
    std::fprintf(stderr, "child %d: unknown exception\n", ::getpid());
  }
  std::fflush(nullptr);
  ::_exit(code);
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

std::string shared_testdata() {
  std::filesystem::path p = PKGCTX_SHARED_TESTDATA;
  return std::filesystem::is_directory(p) ? p.string() : std::string();
}

}  // namespace pkgctx::test
