// pkgctxd's control socket from real clients: every op and error code on the wire, pipelining,
// hostile input, slow and half-open clients, client limits, and a throughput printout.
#define BOOST_TEST_MODULE daemon_socket
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctx/view.hpp"

#include <chrono>
#include <optional>
#include <csignal>
#include <poll.h>
#include <random>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>

using namespace pkgctx;
using namespace std::chrono_literals;
namespace json = boost::json;
using daemon::testing::DaemonOptions;
using daemon::testing::DaemonProcess;
using daemon::testing::TempDir;

namespace {

using test::call;
using test::connect;

struct Env : test::DaemonEnv {
  Env() : DaemonEnv("sock") {}
};

std::string code_of(const json::object& a) {
  BOOST_TEST_REQUIRE(a.at("ok") == false, json::serialize(a));
  return std::string(a.at("error").at("code").as_string());
}

// A raw non-blocking connection, for clients that misbehave.
int raw_connect(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  BOOST_TEST_REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

std::uint64_t commits(const std::string& seg) { return View::open(seg)->segment().info().commits; }

bool contains_dropped_log(const std::string& log) {
  return log.find("<5>pkgctxd: Dropped client pid ") != std::string::npos &&
         log.find("(send_timeout_ms)") != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_op_round_trips_and_pipelines_with_ids) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);

  // The typed API.
  auto a = c.call(json::object{{"op", "update"}, {"name", "pkg"}, {"version", "1"}, {"settings", json::object{{"k", 1}}}});
  BOOST_TEST_REQUIRE(a.has_value());
  BOOST_TEST(a->at("ok") == true);
  BOOST_TEST(a->at("change") == "created");
  const std::string token(a->at("context").as_string());

  // Six requests in one write; answers come back in order, each with its id.
  const std::string sum = std::string(Settings::parse(R"({"k":1})")->checksum_hex());
  std::string batch;
  batch += R"({"id":1,"op":"need_update","name":"pkg","version":"1","checksum":")" + sum + "\"}\n";
  batch += R"({"id":2,"op":"settings","name":"pkg"})" "\n";
  batch += R"({"id":3,"op":"event","event":"schedule","name":"pkg"})" "\n";
  batch += R"({"id":4,"op":"update","name":"pkg","version":"2"})" "\n";
  batch += R"({"id":5,"op":"event","event":"remove","name":"pkg"})" "\n";
  batch += R"({"id":6,"op":"delete","name":"pkg"})" "\n";
  batch += R"({"id":"seven","op":"dump"})" "\n";
  BOOST_TEST_REQUIRE(c.send_raw(batch).has_value());
  std::vector<json::object> answers;
  for (int i = 0; i < 7; ++i) {
    auto r = c.receive();
    BOOST_TEST_REQUIRE(r.has_value());
    answers.push_back(*r);
  }
  for (int i = 0; i < 6; ++i) {
    BOOST_TEST(answers[i].at("id") == i + 1);
    BOOST_TEST(answers[i].at("ok") == true, json::serialize(answers[i]));
  }
  BOOST_TEST(answers[0].at("need_update") == false);
  BOOST_TEST(answers[1].at("checksum").as_string() == sum);
  BOOST_TEST(json::serialize(answers[1].at("settings")) == R"({"k":1})");
  BOOST_TEST(answers[2].at("context").is_string());
  BOOST_TEST(answers[3].at("change") == "version");
  BOOST_TEST(answers[4].at("context").is_string());
  BOOST_TEST(answers[5].at("deleted") == true);
  BOOST_TEST(answers[6].at("id") == "seven");
  BOOST_TEST(answers[6].at("packages").as_array().empty());
  BOOST_TEST(answers[6].at("daemon").at("pid") == d.pid());
  BOOST_TEST(answers[6].at("daemon").at("liveness") == "alive");

  // The first token was cancelled by the version change, observed without the daemon.
  auto view = View::open(env.seg);
  auto t = core::Token::parse(token, view->segment());
  BOOST_TEST_REQUIRE(t.has_value());
  BOOST_TEST(t->cancelled());
}

BOOST_AUTO_TEST_CASE(every_error_code_on_the_wire) {
  Env env;
  DaemonProcess d(env.dir, env.opts({"--capacity", "2", "--settings-bytes", "256", "--set", "max_settings=200", "--set",
                                     "max_line_bytes=4096", "--set", "max_clients=3"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  const std::string s150 = R"({"k":")" + std::string(150, 'x') + "\"}";
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"a/b","version":"1"})")) == "invalid_name");
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"a","version":""})")) == "invalid_version");
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"a","version":"1","settings":"x"})")) == "invalid_settings");
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"a","version":"1","settings":{"k":")" + std::string(300, 'x') +
                                 "\"}}")) == "settings_too_large");
  BOOST_TEST(code_of(call(c, R"({"op":"event","event":9,"name":"a"})")) == "invalid_event");
  BOOST_TEST(code_of(call(c, R"({"op":"settings","name":"a"})")) == "no_such_package");
  BOOST_TEST(call(c, R"({"op":"update","name":"a","version":"1","settings":)" + s150 + "}").at("ok") == true);
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"b","version":"1","settings":)" + s150 + "}")) == "settings_full");
  BOOST_TEST(call(c, R"({"op":"update","name":"b","version":"1"})").at("ok") == true);
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"c","version":"1"})")) == "table_full");
  BOOST_TEST(code_of(call(c, R"({"op":"update","name":"c"})")) == "bad_request");
  // A line over max_line_bytes: one error, the rest of the line skipped, the next line served.
  BOOST_TEST_REQUIRE(c.send_raw(std::string(10000, 'x') + "\n" + R"({"op":"settings","name":"b"})" + "\n").has_value());
  auto tl = c.receive();
  BOOST_TEST_REQUIRE(tl.has_value());
  BOOST_TEST(code_of(*tl) == "line_too_long");
  auto next = c.receive();
  BOOST_TEST_REQUIRE(next.has_value());
  BOOST_TEST(next->at("version") == "1");

  // forbidden: a child that drops to nobody (the socket and its directory opened up for it).
  BOOST_TEST_REQUIRE(::chmod(env.dir.path().c_str(), 0755) == 0);
  BOOST_TEST_REQUIRE(::chmod(env.sock.c_str(), 0666) == 0);
  const int child = test::as_nobody({}, [&] {
    auto nc = Client::connect(env.sock, 5000ms);
    if (!nc) return 10;
    auto r = nc->call(json::object{{"op", "event"}, {"event", "update"}, {"name", "a"}});
    if (!r || r->at("ok").as_bool() || r->at("error").at("code") != "forbidden") return 11;
    return 0;
  });
  BOOST_TEST(child == 0);

  // too_many_clients: max_clients = 3; c is one, two more fill it up. The nobody child's
  // connection may not have been reaped by the daemon yet (its hang-up and our connects can be
  // seen in either order), so a client counts as "in" once the daemon has served it.
  auto served_client = [&] {
    for (auto deadline = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < deadline;) {
      Client cn = connect(env.sock);
      auto r = cn.call(json::object{{"op", "dump"}});
      if (r && r->at("ok").as_bool()) return std::optional<Client>(std::move(cn));
    }
    return std::optional<Client>();
  };
  std::optional<Client> c2 = served_client();
  BOOST_TEST_REQUIRE(c2.has_value());
  std::optional<Client> c3 = served_client();
  BOOST_TEST_REQUIRE(c3.has_value());
  {
    Client c4 = connect(env.sock);  // accepted by the kernel, then refused with an answer
    auto r = c4.receive();
    BOOST_TEST_REQUIRE(r.has_value());
    BOOST_TEST(code_of(*r) == "too_many_clients");
    auto eof = c4.receive_line();
    BOOST_TEST(!eof.has_value());
    BOOST_TEST((eof.error().code == Errc::daemon_unreachable));
  }
  // Once one leaves, a new client gets in.
  c3.reset();
  bool served = false;
  for (auto deadline = std::chrono::steady_clock::now() + 5s; !served && std::chrono::steady_clock::now() < deadline;) {
    Client c5 = connect(env.sock);
    auto r = c5.call(json::object{{"op", "dump"}});
    served = r && r->at("ok").as_bool();
  }
  BOOST_TEST(served);
}

BOOST_AUTO_TEST_CASE(garbage_gets_errors_changes_nothing_and_the_daemon_keeps_serving) {
  Env env;
  DaemonProcess d(env.dir, env.opts({"--set", "max_line_bytes=65536", "--set", "max_depth=16"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"update","name":"p","version":"1"})").at("ok") == true);
  const auto before = commits(env.seg);

  static constexpr char kBinary[] = "\x00\x01\x02\xff\xfe binary";
  std::vector<std::string> lines = {
      std::string(kBinary, sizeof kBinary - 1),
      std::string(200000, '{'),                 // huge and deep
      std::string(100, '[') + std::string(100, ']'),
      R"({"op":"update","name":"p","version":"2","settings":)" + std::string(20, '[') + std::string(20, ']') + "}",
      R"({"op":["update"],"name":"p"})",
      R"({"op":"update","name":{"a":1},"version":"2"})",
      R"({"op":"update","name":"p","version":2})",
      R"({"op":"event","event":{},"name":"p"})",
      R"({"op":"delete","name":"p","force":true})",
      "\"\\ud800\"",
      "{\"op\":\"update\",\"name\":\"p\",\"version\":\"\xc0\xaf\"}",
  };
  std::mt19937_64 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string junk(1 + rng() % 300, '\0');
    for (char& ch : junk) ch = static_cast<char>(rng() % 256);
    std::erase(junk, '\n');
    lines.push_back(junk);
  }
  std::string all;
  for (const auto& l : lines) all += l + "\n";
  BOOST_TEST_REQUIRE(c.send_raw(all).has_value());
  for (std::size_t i = 0; i < lines.size(); ++i) {
    auto r = c.receive();
    BOOST_TEST_REQUIRE(r.has_value(), "answer " << i << ": " << (r ? "" : r.error().message));
    BOOST_TEST(r->at("ok") == false, "line " << i);
    const auto code = r->at("error").at("code").as_string();
    BOOST_TEST((code == "bad_request" || code == "line_too_long" || code == "invalid_settings"), code);
  }
  BOOST_TEST(commits(env.seg) == before);
  BOOST_TEST(d.running());
  BOOST_TEST(call(c, R"({"op":"settings","name":"p"})").at("version") == "1");
  // A client that hangs up mid-line does not disturb anything.
  {
    Client half = connect(env.sock);
    BOOST_TEST(half.send_raw(R"({"op":"update","name":"p","vers)").has_value());
  }
  BOOST_TEST(call(c, R"({"op":"dump"})").at("ok") == true);
  BOOST_TEST(commits(env.seg) == before);
}

BOOST_AUTO_TEST_CASE(slow_and_half_open_clients_never_block_others) {
  Env env;
  DaemonProcess d(env.dir, env.opts({"--set", "send_timeout_ms=300"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  for (int i = 0; i < 20; ++i)
    BOOST_TEST(call(c, R"({"op":"update","name":"p)" + std::to_string(i) + R"(","version":"1"})").at("ok") == true);

  // Half-open: half a request, then silence.
  const int half = raw_connect(env.sock);
  BOOST_TEST(::send(half, "{\"op\":\"du", 9, MSG_NOSIGNAL) == 9);

  // A client that writes dumps as fast as it can and never reads.
  const int hog = raw_connect(env.sock);
  const std::string req = "{\"op\":\"dump\"}\n";
  std::string burst;
  for (int i = 0; i < 1000; ++i) burst += req;
  std::size_t sent = 0;
  for (auto until = std::chrono::steady_clock::now() + 2s; std::chrono::steady_clock::now() < until;) {
    const ssize_t n = ::send(hog, burst.data(), burst.size(), MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EAGAIN) {
      pollfd p{hog, POLLOUT, 0};
      if (::poll(&p, 1, 200) == 0) break;  // the daemon stopped reading us: backpressure
      continue;
    }
    break;  // dropped already
  }
  BOOST_TEST_MESSAGE("the non-reading client got " << sent << " request bytes in before backpressure");

  // Others are served promptly meanwhile.
  const auto t0 = std::chrono::steady_clock::now();
  c.set_timeout(2000ms);
  BOOST_TEST(call(c, R"({"op":"dump"})").at("packages").as_array().size() == 20u);
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < 1s));

  // The non-reader is dropped after send_timeout_ms: the daemon closes its end (seen here as
  // POLLRDHUP without reading, since reading would make it a reader again).
  bool closed = false;
  for (auto until = std::chrono::steady_clock::now() + 10s; !closed && std::chrono::steady_clock::now() < until;) {
    pollfd p{hog, POLLRDHUP, 0};
    closed = ::poll(&p, 1, 100) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
  }
  BOOST_TEST(closed);
  ::close(hog);
  BOOST_TEST(call(c, R"({"op":"dump"})").at("daemon").at("dropped").as_int64() >= 1);

  // The half-open client is still there and can finish its request.
  BOOST_TEST(::send(half, "mp\"}\n", 5, MSG_NOSIGNAL) == 5);
  std::vector<char> buf(1 << 20);
  pollfd p{half, POLLIN, 0};
  BOOST_TEST_REQUIRE(::poll(&p, 1, 5000) == 1);
  const ssize_t n = ::recv(half, buf.data(), buf.size(), 0);
  BOOST_TEST_REQUIRE(n > 0);
  BOOST_TEST(std::string(buf.data(), static_cast<std::size_t>(n)).rfind("{\"ok\":true", 0) == 0u);
  ::close(half);
  BOOST_TEST(contains_dropped_log(d.stderr_text()));
}

BOOST_AUTO_TEST_CASE(client_reports_an_unreachable_daemon_clearly) {
  TempDir dir;
  auto c = Client::connect(dir / "nobody-home.sock", 1000ms);
  BOOST_TEST_REQUIRE(!c.has_value());
  BOOST_TEST((c.error().code == Errc::daemon_unreachable));
  BOOST_TEST(c.error().message == "cannot connect to pkgctxd at " + dir / "nobody-home.sock" + ": No such file or directory");
}

// Requests per second one client reaches; printed for the record (the benchmark proper is in
// bench/). Compared with a raw Unix-socket echo of the same line on the same machine.
BOOST_AUTO_TEST_CASE(throughput_one_client) {
  Env env;
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"update","name":"p","version":"1"})").at("ok") == true);
  const std::string read_req = R"({"op":"need_update","name":"p","version":"1","checksum":"0000000000000000"})";
  const std::string write_req = R"({"op":"event","event":"schedule","name":"p"})";
  using clock = std::chrono::steady_clock;
  const auto rate = [](int n, clock::duration dt) {
    return static_cast<double>(n) / std::chrono::duration<double>(dt).count();
  };

  const auto sequential = [&](const std::string& req, int n) {
    const auto t0 = clock::now();
    for (int i = 0; i < n; ++i) {
      BOOST_TEST_REQUIRE(c.send_line(req).has_value());
      auto r = c.receive_line();
      BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
    }
    return rate(n, clock::now() - t0);
  };
  const auto pipelined = [&](const std::string& req, int n, int depth) {
    std::string batch;
    for (int i = 0; i < depth; ++i) batch += req + "\n";
    const auto t0 = clock::now();
    for (int done = 0; done < n; done += depth) {
      BOOST_TEST_REQUIRE(c.send_raw(batch).has_value());
      for (int i = 0; i < depth; ++i) {
        auto r = c.receive_line();
        BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
      }
    }
    return rate(n, clock::now() - t0);
  };
  const double seq_read = sequential(read_req, 20000);
  const double seq_write = sequential(write_req, 20000);
  const double pipe_read = pipelined(read_req, 200000, 500);
  const double pipe_write = pipelined(write_req, 200000, 500);

  // Baseline: a raw echo server on a Unix socket pair, same line, same round trip.
  int sv[2];
  BOOST_TEST_REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  const pid_t echo = test::spawn([&] {
    ::close(sv[0]);
    char buf[4096];
    while (true) {
      const ssize_t n = ::read(sv[1], buf, sizeof buf);
      if (n <= 0) return 0;
      if (::write(sv[1], buf, static_cast<std::size_t>(n)) != n) return 1;
    }
  });
  ::close(sv[1]);
  const std::string line = read_req + "\n";
  char buf[4096];
  const int n_echo = 20000;
  const auto t0 = clock::now();
  for (int i = 0; i < n_echo; ++i) {
    BOOST_TEST_REQUIRE(::write(sv[0], line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    std::size_t got = 0;
    while (got < line.size()) {
      const ssize_t n = ::read(sv[0], buf, sizeof buf);
      BOOST_TEST_REQUIRE(n > 0);
      got += static_cast<std::size_t>(n);
    }
  }
  const double raw_echo = rate(n_echo, clock::now() - t0);
  ::close(sv[0]);
  test::wait_exit(echo);

  BOOST_TEST_MESSAGE("one client, requests/s: sequential need_update " << static_cast<long>(seq_read)
                     << ", sequential event(schedule) " << static_cast<long>(seq_write)
                     << "; pipelined (depth 500) need_update " << static_cast<long>(pipe_read)
                     << ", event(schedule) " << static_cast<long>(pipe_write)
                     << "; raw Unix-socket echo " << static_cast<long>(raw_echo)
                     << " (sequential/echo = " << seq_read / raw_echo << ")");
  BOOST_TEST(seq_read > 0.0);
}
