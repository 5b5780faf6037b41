// DESIGN §4.1 "Readers cannot starve writers" and the audit half of "Honest outcomes", attacked
// as issue 11 describes: every attacker is a child process running as nobody against a real
// pkgctxd whose socket (0666, in a 0755 directory) nobody can reach; root is the writer.
#define BOOST_TEST_MODULE reader_flood
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <grp.h>
#include <sys/stat.h>
#include <thread>

using namespace pkgctx;
using namespace std::chrono_literals;
namespace json = boost::json;
using daemon::testing::DaemonProcess;

namespace {

using test::call;
using test::connect;

constexpr uid_t kNobody = 65534;

// A daemon world that nobody can reach: the directory opened to 0755, the socket made 0666.
struct OpenEnv : test::DaemonEnv {
  explicit OpenEnv(const std::string& tag) : DaemonEnv(tag) {
    BOOST_TEST_REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
  }
  daemon::testing::DaemonOptions open_opts(std::vector<std::string> extra = {}) const {
    extra.insert(extra.begin(), {"--socket-mode", "0666"});
    return opts(std::move(extra));
  }
};

// Forks a child that drops to nobody:nogroup (no supplementary groups) and runs `body`.
pid_t spawn_as_nobody(const std::function<int()>& body) {
  return test::spawn([&] {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return 90;
    return body();
  });
}

// Resident memory of `pid` in KiB (VmRSS in /proc/PID/status).
long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  BOOST_FAIL("no VmRSS for pid " << pid);
  return 0;
}

std::string code_of(const json::object& a) {
  if (a.at("ok") != false) return "ok";
  return std::string(a.at("error").at("code").as_string());
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

// 100 connections each holding a partial line just under max_line_bytes (2 MB) took the daemon
// from 6 MB to 204 MB. Lines from peers off the allow-list now stop at max_read_line_bytes.
BOOST_AUTO_TEST_CASE(partial_lines_from_readers_cost_bounded_memory) {
  OpenEnv env("secmem");
  DaemonProcess d(env.dir, env.open_opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  {
    Client c = connect(env.sock);
    BOOST_TEST(call(c, R"({"op":"dump"})").at("ok") == true);
  }
  const long before = rss_kib(d.pid());
  test::Pipe held, done;
  const pid_t attacker = spawn_as_nobody([&] {
    std::vector<Client> conns;
    const std::string partial((2u << 20) - 100, 'x');  // no newline: one line, never finished
    for (int i = 0; i < 100; ++i) {
      auto c = Client::connect(env.sock, 10000ms);
      if (!c) return 10;
      c->set_timeout(30000ms);
      if (!c->send_raw(partial)) return 11;
      conns.push_back(std::move(*c));
    }
    // Every connection was told its line is too long; the daemon skips the rest unread.
    for (Client& c : conns) {
      auto r = c.receive();
      if (!r || code_of(*r) != "line_too_long") return 12;
    }
    held.signal();
    return done.await(120s) ? 0 : 13;
  });
  BOOST_TEST_REQUIRE(held.await(180s), "the attacker did not get its 100 connections answered");
  const long after = rss_kib(d.pid());
  done.signal();
  BOOST_TEST(test::wait_exit(attacker) == 0);
  BOOST_TEST_MESSAGE("pkgctxd VmRSS " << before << " KiB before, " << after << " KiB with 100 partial lines");
  BOOST_TEST(after - before < 24 * 1024, "pkgctxd grew by " << (after - before) << " KiB");
}

// An idle connection is closed after idle_timeout_ms; one that keeps asking is not.
BOOST_AUTO_TEST_CASE(idle_connections_are_closed) {
  OpenEnv env("secidle");
  DaemonProcess d(env.dir, env.open_opts({"--set", "idle_timeout_ms=300"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client idle = connect(env.sock);
  Client busy = connect(env.sock);
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < 1500ms) {
    BOOST_TEST_REQUIRE(code_of(call(busy, R"({"op":"settings","name":"none"})")) == "no_such_package");
    std::this_thread::sleep_for(50ms);  // pacing, well inside the timeout
  }
  idle.set_timeout(5000ms);
  auto r = idle.receive_line();
  BOOST_TEST_REQUIRE(!r.has_value(), "the idle connection got an answer: " << (r ? *r : std::string()));
  BOOST_TEST((r.error().code == Errc::daemon_unreachable), r.error().message);
}

// 300 idle connections made root's update fail. Readers (nobody) now get at most
// max_clients - writer_slots connections and a too_many_clients answer beyond; root still writes,
// and pkgctl run by nobody says too_many_clients instead of "closed the connection".
BOOST_AUTO_TEST_CASE(writer_slots_keep_room_for_root) {
  OpenEnv env("secslots");
  DaemonProcess d(env.dir, env.open_opts({"--set", "max_clients=12", "--set", "writer_slots=4"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  test::Pipe held, done;
  auto* accepted = test::shared_block<std::atomic<int>>();
  auto* refused = test::shared_block<std::atomic<int>>();
  const pid_t attacker = spawn_as_nobody([&] {
    std::vector<Client> conns;
    for (int i = 0; i < 30; ++i) {
      auto c = Client::connect(env.sock, 10000ms);
      if (!c) return 10;
      conns.push_back(std::move(*c));
    }
    for (Client& c : conns) {
      auto r = c.call(json::object{{"op", "settings"}, {"name", "none"}});
      if (!r) return 11;  // a refused client must read the refusal, not a hang-up
      const std::string code = code_of(*r);
      if (code == "no_such_package") ++*accepted;
      else if (code == "too_many_clients") ++*refused;
      else return 12;
    }
    held.signal();
    return done.await(120s) ? 0 : 13;
  });
  BOOST_TEST_REQUIRE(held.await(60s));
  BOOST_TEST(accepted->load() == 8);
  BOOST_TEST(refused->load() == 22);

  // pkgctl as nobody: refused, and it says why.
  const std::string pkgctl = std::string(PKGCTX_BINARY_DIR) + "/tools/pkgctl";
  const std::string out = env.dir / "pkgctl.out";
  const std::string cmd = "runuser -u nobody -- " + pkgctl + " --socket " + env.sock + " update db 1 >" + out + " 2>&1";
  BOOST_TEST(std::system(cmd.c_str()) != 0);
  std::ifstream in(out);
  const std::string said((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  BOOST_TEST(said.find("too many clients") != std::string::npos, said);
  BOOST_TEST(said.find("closed the connection") == std::string::npos, said);

  // Root's writes get the reserved slots, with pkgctl and with two clients at once.
  const std::string root_cmd = pkgctl + " --socket " + env.sock + " update db 2 >" + out + " 2>&1";
  BOOST_TEST(std::system(root_cmd.c_str()) == 0);
  Client w1 = connect(env.sock);
  Client w2 = connect(env.sock);
  BOOST_TEST(call(w1, R"({"op":"update","name":"db","version":"3"})").at("ok") == true);
  BOOST_TEST(call(w2, R"({"op":"update","name":"db","version":"4"})").at("ok") == true);
  done.signal();
  BOOST_TEST(test::wait_exit(attacker) == 0);
}

// Six readers pipelining dumps of 100k packages made root's update time out at 10 s. Writers are
// now served first each turn and a dump is written a slice at a time, so the update waits at
// most about one turn. The bound here is generous (a loaded 2-CPU machine must not fail it);
// bench/flood_bench.cpp measures the real figure against DESIGN's 50 ms.
BOOST_AUTO_TEST_CASE(dump_flood_does_not_delay_writes) {
  constexpr int kPackages = 100000;
  OpenEnv env("secflood");
  // root's connection stays quiet while the flood builds up (minutes under TSan): the idle
  // timeout, tested on its own above, must not close it here.
  DaemonProcess d(env.dir, env.open_opts({"--capacity", std::to_string(kPackages + 16), "--set",
                                          "idle_timeout_ms=3600000"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client root = connect(env.sock);
  root.set_timeout(60000ms);
  for (int base = 0; base < kPackages; base += 1000) {
    std::string batch;
    for (int i = base; i < base + 1000; ++i)
      batch += R"({"op":"update","name":"p)" + std::to_string(i) + R"(","version":"1"})" + "\n";
    BOOST_TEST_REQUIRE(root.send_raw(batch).has_value());
    for (int i = 0; i < 1000; ++i) {
      auto r = root.receive();
      BOOST_TEST_REQUIRE((r && r->at("ok") == true));
    }
  }

  auto* dumps = test::shared_block<std::atomic<int>>();
  auto* stop = test::shared_block<std::atomic<int>>();
  std::vector<pid_t> readers;
  for (int k = 0; k < 6; ++k) {
    readers.push_back(spawn_as_nobody([&] {
      auto c = Client::connect(env.sock, 10000ms);
      if (!c) return 10;
      c->set_timeout(120000ms);
      std::string four;
      for (int i = 0; i < 4; ++i) four += "{\"op\":\"dump\"}\n";
      while (stop->load() == 0) {
        if (!c->send_raw(four)) return 11;
        for (int i = 0; i < 4; ++i) {
          auto line = c->receive_line();
          if (!line || line->rfind("{\"ok\":true", 0) != 0) return 12;
          ++*dumps;
        }
      }
      return 0;
    }));
  }
  // The flood is on once every reader has had a dump or two.
  const auto flood_deadline = std::chrono::steady_clock::now() + 120s;
  while (dumps->load() < 8 && std::chrono::steady_clock::now() < flood_deadline) std::this_thread::sleep_for(10ms);
  BOOST_TEST_REQUIRE(dumps->load() >= 8, "the readers got no dumps");

  std::vector<double> ms;
  for (int i = 0; i < 20; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto a = call(root, R"({"op":"update","name":"p7","version":"v)" + std::to_string(i) + "\"}");
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    BOOST_TEST_REQUIRE(a.at("ok") == true);
    std::this_thread::sleep_for(20ms);  // spread the writes over the flood
  }
  const int during = dumps->load();
  stop->store(1);
  for (pid_t p : readers) BOOST_TEST(test::wait_exit(p) == 0);
  std::sort(ms.begin(), ms.end());
  BOOST_TEST_MESSAGE("update under a 6-reader dump flood: median " << ms[ms.size() / 2] << " ms, max " << ms.back()
                                                                    << " ms; " << during << " dumps served");
  BOOST_TEST(ms.back() < 1000.0, "an update waited " << ms.back() << " ms");
}

// Every write is logged once with op, name, peer uid and pid and result: accepted ones at info
// (<6>), refused ones at notice (<5>); reads are not logged.
BOOST_AUTO_TEST_CASE(writes_are_audited_once) {
  OpenEnv env("secaudit");
  DaemonProcess d(env.dir, env.open_opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"update","name":"audited","version":"1"})").at("ok") == true);
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"bad/name","version":"1"})")) == "invalid_name");
  BOOST_TEST(call(c, R"({"op":"settings","name":"audited"})").at("ok") == true);
  const pid_t attacker = spawn_as_nobody([&] {
    auto nc = Client::connect(env.sock, 5000ms);
    if (!nc) return 10;
    auto r = nc->call(json::object{{"op", "delete"}, {"name", "audited"}});
    return r && code_of(*r) == "forbidden" ? 0 : 11;
  });
  const pid_t nobody_pid = attacker;
  BOOST_TEST(test::wait_exit(attacker) == 0);
  // Each answer was written after its log line, so the log is complete.
  BOOST_TEST(call(c, R"({"op":"event","event":"schedule","name":"audited"})").at("ok") == true);
  const std::string log = d.stderr_text();
  const std::string me = std::to_string(::getpid());
  BOOST_TEST(count(log, "<6>pkgctxd: Write op=update name=\"audited\" peer_uid=0 peer_pid=" + me +
                            " result=ok change=created\n") == 1u, log);
  BOOST_TEST(count(log, "<6>pkgctxd: Write op=update name=\"bad/name\" peer_uid=0 peer_pid=" + me +
                            " result=invalid_name\n") == 1u, log);
  BOOST_TEST(count(log, "<5>pkgctxd: Refused write op=delete name=\"audited\" peer_uid=65534 peer_pid=" +
                            std::to_string(nobody_pid) + " result=forbidden\n") == 1u, log);
  BOOST_TEST(count(log, "<6>pkgctxd: Write op=event name=\"audited\" peer_uid=0 peer_pid=" + me + " result=ok\n") == 1u,
             log);
  BOOST_TEST(count(log, "op=settings") == 0u, log);
  BOOST_TEST(count(log, "Write op=") == 3u, log);
}
