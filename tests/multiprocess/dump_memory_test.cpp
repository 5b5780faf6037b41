// DESIGN §8 "dump of 100k packages": `pkgctl dump` streams (its peak RSS at most twice its
// output), and a socket dump leaves pkgctxd's resident memory within 5 MB of where it was.
#define BOOST_TEST_MODULE dump_memory
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/store.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

using namespace pkgctx;
using daemon::testing::DaemonProcess;

namespace {

constexpr std::uint32_t kPackages = 100000;

// Under a sanitizer resident memory measures the sanitizer (shadow memory, ASan's quarantine of
// freed blocks), not pkgctx: the dumps still run there, for the sanitizer's checks, but the RSS
// bounds are asserted only in normal builds.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kMeasuresMemory = false;
#else
constexpr bool kMeasuresMemory = true;
#endif

// Fills a new segment with kPackages packages through the store (seconds faster than the socket).
void fill(const std::string& segment) {
  SegmentOptions o;
  o.capacity = kPackages + 16;
  auto store = Store::create(segment, o);
  BOOST_TEST_REQUIRE(store.has_value(), (store ? std::string() : store.error().message));
  const Settings none;
  char name[32];
  for (std::uint32_t i = 0; i < kPackages; ++i) {
    std::snprintf(name, sizeof name, "package-%06u", i);
    BOOST_TEST_REQUIRE(store->update(name, "1.2.3", none).has_value());
  }
}

// A field of /proc/PID/status in KiB ("VmRSS", "RssAnon", …).
long status_kib(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stol(line.substr(field.size() + 1));
  BOOST_FAIL("no " << field << " for pid " << pid);
  return 0;
}

struct Run {
  int status = -1;
  std::size_t output_bytes = 0;
  long maxrss_kib = 0;
};

// Runs pkgctl with `args`, counting its stdout; its peak RSS from wait4().
Run run_pkgctl(const std::vector<std::string>& args) {
  int fds[2];
  BOOST_TEST_REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  std::vector<std::string> argv_s{PKGCTX_BINARY_DIR "/tools/pkgctl"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  BOOST_TEST_REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  ::close(fds[1]);
  Run r;
  char buf[1 << 16];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    BOOST_TEST_REQUIRE(n > 0);
    r.output_bytes += static_cast<std::size_t>(n);
  }
  ::close(fds[0]);
  rusage ru{};
  BOOST_TEST_REQUIRE(::wait4(pid, &r.status, 0, &ru) == pid);
  r.maxrss_kib = ru.ru_maxrss;
  return r;
}

// One {"op":"dump"} over the socket, read in 64 KiB pieces (no copy of the answer is kept);
// returns the answer's size.
std::size_t socket_dump(const std::string& sock) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  BOOST_TEST_REQUIRE(fd >= 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, sock.c_str(), sizeof a.sun_path - 1);
  BOOST_TEST_REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  const std::string req = "{\"op\":\"dump\"}\n";
  BOOST_TEST_REQUIRE(::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
  std::size_t total = 0;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    BOOST_TEST_REQUIRE(n > 0, "the dump answer ended early after " << total << " bytes");
    total += static_cast<std::size_t>(n);
    if (buf[n - 1] == '\n') break;  // one answer: its only newline ends it
  }
  ::close(fd);
  return total;
}

}  // namespace

BOOST_AUTO_TEST_CASE(pkgctl_dump_streams) {
  test::SegmentName seg("dumpmem");
  fill(seg.str());
  for (const bool as_json : {true, false}) {
    std::vector<std::string> args{"--segment", seg.str(), "dump"};
    if (as_json) args.push_back("--json");
    const Run r = run_pkgctl(args);
    BOOST_TEST_REQUIRE(WIFEXITED(r.status));
    BOOST_TEST_REQUIRE(WEXITSTATUS(r.status) == 0);
    BOOST_TEST_MESSAGE("pkgctl dump" << (as_json ? " --json" : "") << ", " << kPackages << " packages: output "
                                     << r.output_bytes / 1024 << " KiB, peak RSS " << r.maxrss_kib << " KiB");
    BOOST_TEST(r.output_bytes > kPackages * 40u);
    if (kMeasuresMemory)
      BOOST_TEST(static_cast<std::size_t>(r.maxrss_kib) * 1024 <= 2 * r.output_bytes,
                 "peak RSS " << r.maxrss_kib << " KiB for " << r.output_bytes / 1024 << " KiB of output");
  }
}

BOOST_AUTO_TEST_CASE(daemon_gives_back_what_a_dump_took) {
  test::DaemonEnv env("dumpmemd");
  fill(env.seg.str());
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  {  // the daemon has answered a request: its start-up allocations are all in "before"
    Client c = test::connect(env.sock);
    BOOST_TEST_REQUIRE(test::call(c, R"({"op":"update","name":"warm","version":"1"})").at("ok") == true);
  }
  // The daemon's own memory: its resident pages less those of the shared segment, which are the
  // table itself (counted once system-wide, there whoever maps them; a daemon that wrote the
  // packages has them all mapped already, this one maps them as the dump reads them).
  const auto own = [&] { return status_kib(d.pid(), "VmRSS") - status_kib(d.pid(), "RssShmem"); };
  const long before = status_kib(d.pid(), "VmRSS"), own_before = own();
  std::size_t bytes = 0;
  for (int i = 0; i < 3; ++i) bytes = socket_dump(env.sock);
  BOOST_TEST(bytes > kPackages * 40u);
  {  // the dumps' connections are closed once a later request is answered
    Client c = test::connect(env.sock);
    BOOST_TEST_REQUIRE(test::call(c, R"({"op":"settings","name":"warm"})").at("ok") == true);
  }
  const long after = status_kib(d.pid(), "VmRSS"), own_after = own();
  BOOST_TEST_MESSAGE("pkgctxd around 3 socket dumps of " << bytes / 1024 << " KiB: VmRSS " << before << " -> "
                                                         << after << " KiB, without the segment's shared pages "
                                                         << own_before << " -> " << own_after << " KiB");
  if (kMeasuresMemory) BOOST_TEST(own_after - own_before <= 5 * 1024, "own RSS " << own_before << " -> " << own_after << " KiB");
}
