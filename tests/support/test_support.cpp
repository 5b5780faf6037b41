#include "test_support.hpp"

#include <boost/test/unit_test.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fcntl.h>
#include <filesystem>
#include <grp.h>
#include <poll.h>
#include <sys/mman.h>
#include <chrono>
#include <fstream>
#include <cstring>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace pkgctx::test {

namespace {
std::atomic<int> counter{0};

// See test_support.hpp: one runtime directory per test binary. A static object (not a Boost.Test
// global fixture) so it is set before any test's static state; forked children never remove it.
struct RuntimeDir {
  std::string made;
  pid_t owner = ::getpid();
  RuntimeDir() {
    if (const char* env = std::getenv("PKGCTX_RUNTIME_DIR"); env && *env) return;
    char tmpl[] = "/dev/shm/pkgctx-test-XXXXXX";
    if (!::mkdtemp(tmpl) || ::chmod(tmpl, 0755) != 0) {
      std::perror("pkgctx tests: mkdtemp /dev/shm/pkgctx-test-XXXXXX");
      std::abort();
    }
    made = tmpl;
    ::setenv("PKGCTX_RUNTIME_DIR", tmpl, 1);
  }
  ~RuntimeDir() {
    if (made.empty() || ::getpid() != owner) return;
    std::error_code ec;
    std::filesystem::remove_all(made, ec);
  }
} g_runtime_dir;
}  // namespace

std::string segment_path(const std::string& object) { return pkgctx::object_path(object); }

SegmentName::SegmentName(const std::string& tag)
    : name_("t-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + tag) {
  remove_segment(name_);
}

SegmentName::~SegmentName() { remove_segment(name_); }

void remove_segment(const std::string& name) {
  for (const char* suffix : {"", ".lock"}) ::unlink(segment_path(name + suffix).c_str());
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

bool send_with_fd(int sock, std::string_view line, int fd) {
  iovec iov{const_cast<char*>(line.data()), line.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
  return ::sendmsg(sock, &msg, MSG_NOSIGNAL) == static_cast<ssize_t>(line.size());
}

bool await_futex_sleep(pid_t pid) {
#ifndef SYS_futex_waitv
  constexpr long kWaitv = 449;
#else
  constexpr long kWaitv = SYS_futex_waitv;
#endif
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/syscall");
    long nr = -1;
    if (f >> nr && (nr == SYS_futex || nr == kWaitv)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

int as_nobody(const std::vector<gid_t>& groups, const std::function<int()>& body) {
  const pid_t pid = spawn([&] {
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) return 90;
    return body();
  });
  return wait_exit(pid);
}

std::string shared_testdata() {
  std::filesystem::path p = PKGCTX_SHARED_TESTDATA;
  return std::filesystem::is_directory(p) ? p.string() : std::string();
}

Pipe::Pipe() { BOOST_TEST_REQUIRE(::pipe(fd_) == 0); }

Pipe::~Pipe() {
  ::close(fd_[0]);
  ::close(fd_[1]);
}

void Pipe::send(char c) const { (void)!::write(fd_[1], &c, 1); }

char Pipe::recv() const {
  char c = 0;
  return ::read(fd_[0], &c, 1) == 1 ? c : '\0';
}

bool Pipe::await(std::chrono::milliseconds timeout) const {
  pollfd p{fd_[0], POLLIN, 0};
  char c;
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 && ::read(fd_[0], &c, 1) == 1;
}

void* shared_memory(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  BOOST_TEST_REQUIRE(p != MAP_FAILED);
  return p;
}

void set_layout_version(const std::string& name, std::uint32_t version) {
  const int fd = ::open(segment_path(name).c_str(), O_RDWR | O_NOFOLLOW);
  BOOST_TEST_REQUIRE(fd >= 0, "open " << segment_path(name));
  const ssize_t n = ::pwrite(fd, &version, sizeof version, offsetof(layout::Prefix, layout_version));
  ::close(fd);
  BOOST_TEST_REQUIRE(n == static_cast<ssize_t>(sizeof version));
}

SegmentOptions segment_options(std::uint32_t capacity, std::uint64_t settings_bytes) {
  SegmentOptions o;
  o.capacity = capacity;
  o.settings_bytes = settings_bytes;
  return o;
}

Store create_store(const std::string& name, const SegmentOptions& opts) {
  auto s = Store::create(name, opts);
  BOOST_TEST_REQUIRE(s.has_value(), (s ? "" : s.error().message));
  return std::move(*s);
}

Store create_store_with(const std::string& name, const SegmentOptions& opts, const std::string& version,
                        const Settings& settings, const std::string& package) {
  Store s = create_store(name, opts);
  BOOST_TEST_REQUIRE(s.update(package, version, settings).has_value());
  return s;
}

}  // namespace pkgctx::test
