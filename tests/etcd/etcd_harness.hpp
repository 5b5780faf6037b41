// Real etcd processes for the tests of pkgctxd --follow etcd (DESIGN §10): members on free
// 127.0.0.1 ports (the kernel picks them: bind port 0), data in a private directory, stopped
// (SIGKILL) with the test. Tests wait on conditions (a revision applied, a member answering),
// polled against a deadline, never on fixed sleeps.
#pragma once

#include "daemon_env.hpp"
#include "pkgctx/daemon/etcd.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <arpa/inet.h>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <netinet/in.h>
#include <string>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace pkgctx::test {

// A port no one listens on now (the kernel's choice; released for etcd to take).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("cannot pick a free port");
  ::close(fd);
  return ntohs(a.sin_port);
}

// Polls `cond` until it holds or `timeout` passes.
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

class EtcdCluster {
 public:
  struct Member {
    std::string name;
    int client_port = 0, peer_port = 0;
    pid_t pid = -1;
    std::string url() const { return "http://127.0.0.1:" + std::to_string(client_port); }
  };

  // `n` members (not started: start_all()).
  explicit EtcdCluster(int n) {
    for (int i = 0; i < n; ++i) members_.push_back({"m" + std::to_string(i), free_port(), free_port(), -1});
  }
  ~EtcdCluster() {
    for (std::size_t i = 0; i < members_.size(); ++i) kill(i);
  }

  void start_all() {
    for (std::size_t i = 0; i < members_.size(); ++i) start(i);
    BOOST_TEST_REQUIRE(eventually([&] { return client()->range_prefix("/").has_value(); }), "etcd did not come up");
  }

  void start(std::size_t i) {
    Member& m = members_[i];
    std::string cluster;
    for (const Member& o : members_)
      cluster += (cluster.empty() ? "" : ",") + o.name + "=http://127.0.0.1:" + std::to_string(o.peer_port);
    const std::string log = dir_ / (m.name + ".log");
    std::vector<std::string> args = {"etcd",
                                     "--name", m.name,
                                     "--data-dir", dir_ / m.name,
                                     "--listen-client-urls", m.url(),
                                     "--advertise-client-urls", m.url(),
                                     "--listen-peer-urls", "http://127.0.0.1:" + std::to_string(m.peer_port),
                                     "--initial-advertise-peer-urls", "http://127.0.0.1:" + std::to_string(m.peer_port),
                                     "--initial-cluster", cluster,
                                     "--initial-cluster-token", "pkgctx-test-" + std::to_string(::getpid()),
                                     "--heartbeat-interval", "50",
                                     "--election-timeout", "500",
                                     "--log-level", "warn"};
    std::fflush(nullptr);
    m.pid = ::fork();
    if (m.pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp("etcd", argv.data());
      ::_exit(127);
    }
  }

  void kill(std::size_t i) {
    Member& m = members_[i];
    if (m.pid <= 0) return;
    ::kill(m.pid, SIGKILL);
    ::waitpid(m.pid, nullptr, 0);
    m.pid = -1;
  }

  // SIGSTOP / SIGCONT: a member that hangs with its sockets open.
  void pause(std::size_t i) const { ::kill(members_[i].pid, SIGSTOP); }
  void resume(std::size_t i) const { ::kill(members_[i].pid, SIGCONT); }

  // A client of the running members but member `skip`.
  std::unique_ptr<etcd::Client> client_without(std::size_t skip) const {
    std::vector<std::string> urls;
    for (std::size_t i = 0; i < members_.size(); ++i)
      if (i != skip && members_[i].pid > 0) urls.push_back(members_[i].url());
    return std::make_unique<etcd::Client>(urls, -1, std::chrono::milliseconds(3000));
  }

  std::string endpoints() const {
    std::string s;
    for (const Member& m : members_) s += (s.empty() ? "" : ",") + m.url();
    return s;
  }
  const Member& member(std::size_t i) const { return members_[i]; }
  std::size_t size() const { return members_.size(); }

  // A client of the running members.
  std::unique_ptr<etcd::Client> client() const {
    std::vector<std::string> urls;
    for (const Member& m : members_)
      if (m.pid > 0) urls.push_back(m.url());
    return std::make_unique<etcd::Client>(urls, -1, std::chrono::milliseconds(3000));
  }

  // The index of the member that leads now (-1: none known).
  int leader() const {
    for (std::size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].pid <= 0) continue;
      etcd::Client c({members_[i].url()}, -1, std::chrono::milliseconds(1000));
      auto st = c.status();
      if (st && st->leader != 0 && st->leader == st->member_id) return static_cast<int>(i);
    }
    return -1;
  }

 private:
  daemon::testing::TempDir dir_;
  std::vector<Member> members_;
};

// The applied revision and packages of a segment, read the way a worker reads them.
class SegmentReader {
 public:
  explicit SegmentReader(const std::string& name) {
    auto s = Segment::open(name, Access::read_only);
    BOOST_TEST_REQUIRE(s.has_value(), (s ? std::string() : s.error().message));
    view_ = std::make_unique<View>(std::move(*s));
  }
  std::uint64_t revision() const {
    return view_->segment().header().follow_revision.load(std::memory_order_relaxed);
  }
  const View& view() const { return *view_; }

 private:
  std::unique_ptr<View> view_;
};

// pkgctxd following `endpoints` under `prefix`, reporting as host `host`.
inline daemon::testing::DaemonOptions follow_options(const DaemonEnv& env, const std::string& endpoints,
                                                     const std::string& prefix, const std::string& host,
                                                     std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--follow", "etcd", "--etcd-endpoints", endpoints, "--prefix", prefix,
                                   "--set", "etcd_host=" + host, "--set", "etcd_status_ttl_s=5"};
  args.insert(args.end(), extra.begin(), extra.end());
  return env.opts(args);
}

// What `cmd` (a shell command) prints on stdout; ends the test case if it fails.
inline std::string run_capture(const std::string& cmd) {
  FILE* f = ::popen(cmd.c_str(), "r");
  BOOST_TEST_REQUIRE(f != nullptr);
  std::string out;
  char buf[65536];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  BOOST_TEST_REQUIRE(::pclose(f) == 0, cmd);
  return out;
}

// A key prefix unique to this test process.
inline std::string unique_prefix(const std::string& tag) { return "/pkgctx-test-" + std::to_string(::getpid()) + "-" + tag; }

}  // namespace pkgctx::test
