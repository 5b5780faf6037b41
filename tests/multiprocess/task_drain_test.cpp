// Tasks, leases and acknowledged drains (DESIGN §2.2) with real processes and a real pkgctxd:
// a drain waits for the holder of a cancelled context and answers when its task ends or its
// process dies; a lease on a live context never blocks; the daemon lists its clients; leases
// are known again after the daemon restarts; an unsealed page is refused.
#define BOOST_TEST_MODULE task_drain
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctx/lease_page.hpp"
#include "pkgctx/worker.hpp"

#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace pkgctx;
using namespace std::chrono_literals;
namespace json = boost::json;
using daemon::testing::DaemonProcess;

namespace {

using test::call;
using test::connect;

struct Env : test::DaemonEnv {
  Env() : DaemonEnv("task") {}
};

// A pipe the test and a child talk over, one byte per step.
struct Pipe {
  int fd[2];
  Pipe() { BOOST_TEST_REQUIRE(::pipe2(fd, O_CLOEXEC) == 0); }
  ~Pipe() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void put(char c) const { BOOST_TEST_REQUIRE(::write(fd[1], &c, 1) == 1); }
  // The next byte, or 0 after `timeout` (or EOF).
  char get(std::chrono::milliseconds timeout = 10s) const {
    pollfd p{fd[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return 0;
    char c = 0;
    return ::read(fd[0], &c, 1) == 1 ? c : 0;
  }
};

// A worker process: registers with the daemon, begins a task on `name`, says 'b', then ends the
// task when told 'e' (saying 'd'), and exits when told 'x'. Exit codes name the failed step.
pid_t holder(const Env& env, const std::string& name, const Pipe& to_child, const Pipe& from_child) {
  return test::spawn([&]() -> int {
    auto w = Worker::attach(env.seg.str());
    if (!w) return 10;
    if (!w->register_daemon(env.sock)) return 11;
    auto task = w->begin(name, 0);
    if (!task) return 12;
    from_child.put('b');
    for (char c; (c = to_child.get(60s)) != 0;) {
      if (c == 'e') {
        task->end();
        from_child.put('d');
      }
      if (c == 'x') return 0;
    }
    return 13;
  });
}

json::object update(Client& c, const std::string& name, const std::string& version) {
  auto a = call(c, R"({"op":"update","name":")" + name + R"(","version":")" + version + R"("})");
  BOOST_TEST_REQUIRE(a.at("ok") == true, json::serialize(a));
  return a;
}

std::uint64_t now_us() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

}  // namespace

BOOST_AUTO_TEST_CASE(drain_lists_the_holder_then_answers_when_its_task_ends) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  update(c, "app", "1");
  Pipe to, from;
  const pid_t child = holder(env, "app", to, from);
  BOOST_TEST_REQUIRE(from.get() == 'b');

  // A lease on the live context never blocks a drain.
  auto live = call(c, R"({"op":"drain","name":"app","timeout_ms":5000})");
  BOOST_TEST(live.at("drained") == true, json::serialize(live));

  update(c, "app", "2");  // cancels the task's context
  auto timed_out = call(c, R"({"op":"drain","name":"app","timeout_ms":100})");
  BOOST_TEST_REQUIRE(timed_out.at("drained") == false, json::serialize(timed_out));
  const auto& holders = timed_out.at("holders").as_array();
  BOOST_TEST_REQUIRE(holders.size() == 1u);
  BOOST_TEST(holders[0].at("pid").to_number<std::int64_t>() == child);
  BOOST_TEST(holders[0].at("uid").to_number<std::int64_t>() == ::getuid());
  BOOST_TEST(holders[0].at("generation").to_number<std::int64_t>() == 0);
  BOOST_TEST(holders[0].at("key").to_number<std::int64_t>() == 0);
  BOOST_TEST(holders[0].at("cause").as_string() == "version_changed");

  // Another key's drain is not held by a key-0 lease.
  auto other_key = call(c, R"({"op":"drain","name":"app","event":"schedule","timeout_ms":5000})");
  BOOST_TEST(other_key.at("drained") == true);

  // A pending drain does not hold the event loop: another client is served meanwhile.
  auto c2 = connect(env.sock);
  BOOST_TEST_REQUIRE(c.send_line(R"({"op":"drain","name":"app","timeout_ms":20000,"id":7})").has_value());
  auto served = call(c2, R"({"op":"settings","name":"app"})");
  BOOST_TEST(served.at("ok") == true);
  auto clients = call(c2, R"({"op":"clients"})");
  const auto& list = clients.at("clients").as_array();
  BOOST_TEST_REQUIRE(list.size() == 1u, json::serialize(clients));
  BOOST_TEST(list[0].at("pid").to_number<std::int64_t>() == child);
  BOOST_TEST_REQUIRE(list[0].at("tasks").as_array().size() == 1u);
  BOOST_TEST(list[0].at("tasks").as_array()[0].at("cancelled") == true);
  BOOST_TEST(list[0].at("tasks").as_array()[0].at("name").as_string() == "app");

  const std::uint64_t t0 = now_us();
  to.put('e');
  auto drained = c.receive();
  const std::uint64_t took = now_us() - t0;
  BOOST_TEST_REQUIRE(drained.has_value());
  BOOST_TEST(drained->at("drained") == true, json::serialize(*drained));
  BOOST_TEST(drained->at("id") == 7);
  BOOST_TEST(drained->at("holders").as_array().empty());
  BOOST_TEST_MESSAGE("drain answered " << took << " us after the holder was told to end");
  BOOST_TEST(took < 1'000'000u);  // the byte, not the timeout nor a tick, ended it
  BOOST_TEST(from.get() == 'd');
  to.put('x');
  BOOST_TEST(test::wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(a_holder_killed_with_sigkill_releases_its_lease_at_once) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  update(c, "app", "1");
  Pipe to, from;
  const pid_t child = holder(env, "app", to, from);
  BOOST_TEST_REQUIRE(from.get() == 'b');
  update(c, "app", "2");
  BOOST_TEST_REQUIRE(c.send_line(R"({"op":"drain","name":"app","timeout_ms":20000})").has_value());
  // The drain is pending (the holder lives): nothing arrives for a while.
  pollfd p{c.fd(), POLLIN, 0};
  BOOST_TEST(::poll(&p, 1, 200) == 0);
  ::kill(child, SIGKILL);
  BOOST_TEST(test::wait_exit(child) == 128 + SIGKILL);
  const std::uint64_t t0 = now_us();
  auto drained = c.receive();
  BOOST_TEST_REQUIRE(drained.has_value());
  BOOST_TEST(drained->at("drained") == true, json::serialize(*drained));
  BOOST_TEST(now_us() - t0 < 50'000u);  // within one heartbeat (50 ms here)
  auto clients = call(c, R"({"op":"clients"})");
  BOOST_TEST(clients.at("clients").as_array().empty(), json::serialize(clients));
}

BOOST_AUTO_TEST_CASE(delete_reports_in_flight_and_drains_on_request) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  update(c, "gone", "1");
  update(c, "app", "1");
  Pipe to, from;
  const pid_t child = holder(env, "gone", to, from);
  BOOST_TEST_REQUIRE(from.get() == 'b');
  auto live = call(c, R"({"op":"delete","name":"gone"})");
  BOOST_TEST(live.at("deleted") == false, json::serialize(live));
  BOOST_TEST(live.at("reason").as_string().size() > 0u);
  call(c, R"({"op":"event","event":"remove","name":"gone"})");
  auto del = call(c, R"({"op":"delete","name":"gone","drain_ms":100})");
  BOOST_TEST(del.at("deleted") == true, json::serialize(del));
  BOOST_TEST(del.at("drained") == false);
  BOOST_TEST(del.at("in_flight") == 1);
  BOOST_TEST(del.at("holders").as_array().size() == 1u);
  call(c, R"({"op":"event","event":"remove","name":"app"})");
  auto plain = call(c, R"({"op":"delete","name":"app"})");
  BOOST_TEST(plain.at("in_flight") == 0, json::serialize(plain));
  // update with drain_ms: the new version's answer waits for the old context's tasks.
  update(c, "app", "1");
  to.put('x');
  BOOST_TEST(test::wait_exit(child) == 0);
  auto up = call(c, R"({"op":"update","name":"app","version":"2","drain_ms":5000})");
  BOOST_TEST(up.at("change") == "version", json::serialize(up));
  BOOST_TEST(up.at("drained") == true);
}

BOOST_AUTO_TEST_CASE(leases_are_known_again_after_the_daemon_restarts) {
  Env env;
  auto d = std::make_unique<DaemonProcess>(env.dir, env.opts());
  {
    auto c = connect(env.sock);
    update(c, "app", "1");
  }
  Pipe to, from;
  const pid_t child = holder(env, "app", to, from);
  BOOST_TEST_REQUIRE(from.get() == 'b');
  d->signal(SIGKILL);
  d->wait();
  d.reset();
  d = std::make_unique<DaemonProcess>(env.dir, env.opts());
  auto c = connect(env.sock);
  // The worker re-registers on its own (retry every 200 ms): wait for that condition.
  for (int i = 0; i < 100; ++i) {
    if (!call(c, R"({"op":"clients"})").at("clients").as_array().empty()) break;
    std::this_thread::sleep_for(50ms);
  }
  update(c, "app", "2");
  auto a = call(c, R"({"op":"drain","name":"app","timeout_ms":100})");
  BOOST_TEST_REQUIRE(a.at("drained") == false, json::serialize(a));
  BOOST_TEST(a.at("holders").as_array().at(0).at("pid").to_number<std::int64_t>() == child);
  to.put('x');
  BOOST_TEST(test::wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(register_refuses_a_page_without_seals_or_descriptor) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  auto c = connect(env.sock);
  auto none = call(c, R"({"op":"register"})");
  BOOST_TEST(none.at("ok") == false, json::serialize(none));
  // An unsealed memfd of the right size: the worker could shrink it under the daemon (SIGBUS).
  const int fd = ::memfd_create("unsealed", MFD_CLOEXEC);
  BOOST_TEST_REQUIRE(::ftruncate(fd, sizeof(lease::Page)) == 0);
  BOOST_TEST_REQUIRE(test::send_with_fd(c.fd(), "{\"op\":\"register\"}\n", fd));
  ::close(fd);
  auto refused = c.receive();
  BOOST_TEST_REQUIRE(refused.has_value());
  BOOST_TEST(refused->at("ok") == false);
  BOOST_TEST(std::string(refused->at("error").at("message").as_string()).find("sealed") != std::string::npos);
  BOOST_TEST(call(c, R"({"op":"clients"})").at("clients").as_array().empty());
}
