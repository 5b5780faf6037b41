// Leases under abuse and at scale (DESIGN §2.2, §4.1 "workers cannot hurt each other"): a worker
// that writes lies into its lease page delays only drains of the packages it claims; a holder's
// pid reused by another process does not keep its lease; 1,000 registered processes holding
// 10,000 leases are all listed, and the drain ends when they do.
#define BOOST_TEST_MODULE task_scale
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctx/lease_page.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"
#include "pkgctx/worker.hpp"

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace pkgctx;
using namespace std::chrono_literals;
namespace json = boost::json;
using daemon::testing::DaemonProcess;

namespace {

using test::call;
using test::connect;

struct Env : test::DaemonEnv {
  Env() : DaemonEnv("tscale") {}
};

void update(Client& c, const std::string& name, const std::string& version) {
  auto a = call(c, R"({"op":"update","name":")" + name + R"(","version":")" + version + R"("})");
  BOOST_TEST_REQUIRE(a.at("ok") == true, json::serialize(a));
}

// Registers `page_fd` on connection `c` by hand (what the SDK does), returns the answer.
json::object register_page(Client& c, int page_fd) {
  BOOST_TEST_REQUIRE(test::send_with_fd(c.fd(), "{\"op\":\"register\"}\n", page_fd));
  auto a = c.receive();
  BOOST_TEST_REQUIRE(a.has_value());
  return *a;
}

// A pipe whose write end closing tells every child to go.
struct Gate {
  int fd[2];
  Gate() { BOOST_TEST_REQUIRE(::pipe2(fd, O_CLOEXEC) == 0); }
  ~Gate() {
    close_wr();
    ::close(fd[0]);
  }
  void close_wr() {
    if (fd[1] >= 0) ::close(std::exchange(fd[1], -1));
  }
  void wait() const {
    char c;
    while (::read(fd[0], &c, 1) > 0) {
    }
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(a_lying_page_delays_only_drains_of_what_it_claims) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  update(c, "mine", "1");
  update(c, "other", "1");
  auto view = View::open(env.seg.str()).value();
  const core::Token mine = view.token("mine", 0).value();
  const std::uint64_t epoch = view.segment().header().prefix.epoch;

  const int fd = ::memfd_create("liar", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  BOOST_TEST_REQUIRE(::ftruncate(fd, sizeof(lease::Page)) == 0);
  BOOST_TEST_REQUIRE(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
  auto* page = new (::mmap(nullptr, sizeof(lease::Page), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) lease::Page();
  // Lies: a lease that is forever being written, garbage slots and keys, a `used` past the end,
  // and one honest-looking lease on "mine" (it could hold that one legitimately).
  page->header.used = 0xFFFFFFFFu;
  page->lease[0].seq = 1;
  page->lease[0].active = 1;
  page->lease[1].active = 1;
  page->lease[1].slot = 0xFFFFFFFFu;
  page->lease[1].key = 99;
  page->lease[1].epoch = epoch;
  page->lease[2].active = 1;
  page->lease[2].slot = mine.slot();
  page->lease[2].key = 0;
  page->lease[2].epoch = epoch;
  page->lease[2].snapshot = mine.snapshot();
  auto liar = connect(env.sock);
  auto reg = register_page(liar, fd);
  BOOST_TEST_REQUIRE(reg.at("ok") == true, json::serialize(reg));
  ::close(fd);

  update(c, "mine", "2");
  update(c, "other", "2");
  auto other = call(c, R"({"op":"drain","name":"other","timeout_ms":5000})");
  BOOST_TEST(other.at("drained") == true, json::serialize(other));
  auto held = call(c, R"({"op":"drain","name":"mine","timeout_ms":100})");
  BOOST_TEST(held.at("drained") == false, json::serialize(held));
  BOOST_TEST(held.at("holders").as_array().size() == 1u);
  // While a drain waits on it, its notify word is raised (the daemon asks it to say when it
  // ends). A liar that never says so is still read again on the next tick (50 ms here).
  BOOST_TEST_REQUIRE(c.send_line(R"({"op":"drain","name":"mine","timeout_ms":20000})").has_value());
  for (int i = 0; i < 2000 && page->header.notify.load() == 0u; ++i) ::usleep(1000);
  BOOST_TEST_REQUIRE(page->header.notify.load() != 0u);
  page->lease[2].active = 0;  // ends without the byte
  auto later = c.receive();
  BOOST_TEST_REQUIRE(later.has_value());
  BOOST_TEST(later->at("drained") == true, json::serialize(*later));
  BOOST_TEST(page->header.notify.load() == 0u);  // lowered once no drain waits on it
  ::munmap(page, sizeof(lease::Page));
}

BOOST_AUTO_TEST_CASE(a_reused_pid_does_not_keep_a_dead_holders_lease) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  update(c, "app", "1");
  int ready[2];
  BOOST_TEST_REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  const pid_t holder = test::spawn([&]() -> int {
    auto w = Worker::attach(env.seg.str());
    if (!w || !w->register_daemon(env.sock)) return 10;
    auto task = w->begin("app", 0);
    if (!task) return 11;
    [[maybe_unused]] auto n = ::write(ready[1], "b", 1);
    ::pause();
    return 0;
  });
  char b = 0;
  BOOST_TEST_REQUIRE(::read(ready[0], &b, 1) == 1);
  ::close(ready[0]);
  ::close(ready[1]);
  update(c, "app", "2");
  BOOST_TEST(call(c, R"({"op":"drain","name":"app","timeout_ms":50})").at("drained") == false);
  ::kill(holder, SIGKILL);
  BOOST_TEST(test::wait_exit(holder) == 128 + SIGKILL);
  // Another process takes the dead holder's pid (as root through ns_last_pid; otherwise by
  // forking until the pid comes round, bounded).
  pid_t twin = -1;
  bool same = false;
  {
    std::ofstream last("/proc/sys/kernel/ns_last_pid");
    if (last) last << (holder - 1) << std::flush;
  }
  for (int i = 0; i < 40000 && !same; ++i) {
    twin = ::fork();
    if (twin == 0) {
      ::pause();
      ::_exit(0);
    }
    same = twin == holder;
    if (!same) {
      ::kill(twin, SIGKILL);
      ::waitpid(twin, nullptr, 0);
    }
  }
  BOOST_TEST_MESSAGE("pid " << holder << (same ? " reused" : " not reused within the bound"));
  auto a = call(c, R"({"op":"drain","name":"app","timeout_ms":2000})");
  BOOST_TEST(a.at("drained") == true, json::serialize(a));
  BOOST_TEST(call(c, R"({"op":"clients"})").at("clients").as_array().empty());
  if (twin > 0 && same) {
    ::kill(twin, SIGKILL);
    ::waitpid(twin, nullptr, 0);
  }
  BOOST_TEST(same);
}

BOOST_AUTO_TEST_CASE(a_thousand_processes_with_ten_thousand_leases) {
  constexpr int kProcs = 1000, kTasks = 10;
  Env env;
  DaemonProcess d(env.dir, env.opts({"--set", "max_clients=2048"}));
  auto c = connect(env.sock);
  update(c, "app", "1");
  update(c, "bystander", "1");
  Gate go;
  int ready[2];
  BOOST_TEST_REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  std::vector<pid_t> kids;
  for (int i = 0; i < kProcs; ++i) {
    kids.push_back(test::spawn([&]() -> int {
      go.close_wr();
      auto w = Worker::attach(env.seg.str());
      if (!w) return 10;
      (void)w->register_daemon(env.sock);  // retried in the background if the daemon is busy
      std::vector<Task> tasks;
      for (int t = 0; t < kTasks; ++t) {
        auto task = w->begin("app", 0);
        if (!task) return 11;
        tasks.push_back(std::move(*task));
      }
      while (!w->registered()) ::usleep(10'000);
      [[maybe_unused]] auto n = ::write(ready[1], "r", 1);
      go.wait();  // EOF: the parent says go
      return 0;
    }));
  }
  ::close(ready[1]);
  int got = 0;
  for (char b; got < kProcs && ::read(ready[0], &b, 1) == 1;) ++got;
  ::close(ready[0]);
  BOOST_TEST_REQUIRE(got == kProcs);
  auto clients = call(c, R"({"op":"clients"})");
  BOOST_TEST(clients.at("clients").as_array().size() == static_cast<std::size_t>(kProcs));

  update(c, "app", "2");
  update(c, "bystander", "2");
  c.set_timeout(60s);
  auto free = call(c, R"({"op":"drain","name":"bystander","timeout_ms":5000})");
  BOOST_TEST(free.at("drained") == true);
  auto held = call(c, R"({"op":"drain","name":"app","timeout_ms":100})");
  BOOST_TEST_REQUIRE(held.at("drained") == false);
  BOOST_TEST(held.at("holders").as_array().size() == static_cast<std::size_t>(kProcs * kTasks));

  BOOST_TEST_REQUIRE(c.send_line(R"({"op":"drain","name":"app","timeout_ms":60000})").has_value());
  go.close_wr();
  auto drained = c.receive();
  BOOST_TEST_REQUIRE(drained.has_value());
  BOOST_TEST(drained->at("drained") == true, json::serialize(*drained).substr(0, 300));
  int bad = 0;
  for (pid_t p : kids) bad += test::wait_exit(p) != 0;
  BOOST_TEST(bad == 0);
}
