// pkgctl commands in-process (pkgctl::run) against a segment this test owns through a Store:
// the read side, output shapes and exit codes, argument handling, and the write side's errors
// that need no daemon. The write side against a real pkgctxd is tests/e2e/pkgctl_commands.sh.
#define BOOST_TEST_MODULE pkgctl_cli
#include <boost/test/unit_test.hpp>

#include "pkgctl/cli.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <boost/json/parse.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace pkgctx;

namespace {

struct Run {
  int code = -1;
  std::string out, err;
};

Run cli(std::vector<std::string> args, const std::string& stdin_text = "") {
  args.insert(args.begin(), "pkgctl");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  std::istringstream in(stdin_text);
  Run r;
  r.code = pkgctl::run(static_cast<int>(argv.size()), argv.data(), {out, err, in});
  r.out = out.str();
  r.err = err.str();
  return r;
}

// An error is exactly one line on stderr starting "pkgctl: ", and nothing on stdout.
void expect_error(const Run& r, int code, const std::string& mentions) {
  BOOST_TEST(r.code == code);
  BOOST_TEST(r.out.empty());
  BOOST_TEST(r.err.rfind("pkgctl: ", 0) == 0u, r.err);
  BOOST_TEST(std::count(r.err.begin(), r.err.end(), '\n') == 1, r.err);
  BOOST_TEST(r.err.find(mentions) != std::string::npos, "\"" << mentions << "\" in " << r.err);
}

SegmentOptions small() {
  SegmentOptions o;
  o.capacity = 64;
  o.settings_bytes = 1 << 16;
  return o;
}

struct Fixture {
  test::SegmentName seg{"pkgctl"};
  Store store = Store::create(seg.str(), small()).value();
  Fixture() {
    ::setenv("PKGCTX_SEGMENT", seg.c_str(), 1);
    ::setenv("PKGCTX_SOCKET", "/nonexistent/pkgctl-test.sock", 1);
    BOOST_REQUIRE(store.update("web", "1.0", Settings::parse(R"({"b":1,"a":[true,null]})").value()));
  }
  ~Fixture() {
    ::unsetenv("PKGCTX_SEGMENT");
    ::unsetenv("PKGCTX_SOCKET");
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(usage_errors_exit_2) {
  expect_error(cli({}), 2, "subcommand");
  expect_error(cli({"frobnicate"}), 2, "frobnicate");
  expect_error(cli({"update", "web"}), 2, "VERSION");
  expect_error(cli({"wait", "tok", "--timeout", "-1"}), 2, "timeout");
  expect_error(cli({"update", "w", "1", "--settings", "{}", "--settings-file", "f"}), 2, "exclude");
  const Run help = cli({"--help"});
  BOOST_TEST(help.code == 0);
  BOOST_TEST(help.out.find("need-update") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(missing_segment_exits_4) {
  expect_error(cli({"--segment", "pkgctl-test-no-such-segment", "dump"}), 4, "pkgctl-test-no-such-segment");
  expect_error(cli({"settings", "web", "--segment", "pkgctl-test-no-such-segment"}), 4, "segment");
}

BOOST_FIXTURE_TEST_CASE(settings_prints_the_canonical_object, Fixture) {
  const Run r = cli({"settings", "web"});
  BOOST_TEST(r.code == 0, r.err);
  const std::string sum = Settings::parse(R"({"a":[true,null],"b":1})").value().checksum_hex();
  BOOST_TEST(r.out == R"({"name":"web","version":"1.0","settings":{"a":[true,null],"b":1},"checksum":")" + sum +
                          R"(","settings_version":0,"maintenance":""})" + "\n");
  expect_error(cli({"settings", "nope"}), 3, "nope");
  expect_error(cli({"settings", "a b"}), 5, "name");
  // A removed package: version "", settings {}.
  BOOST_REQUIRE(store.handle_event(kEventRemove, "web"));
  BOOST_TEST(cli({"settings", "web"}).out ==
             R"({"name":"web","version":"","settings":{},"checksum":")" + Settings().checksum_hex() +
                 R"(","settings_version":0,"maintenance":""})" + "\n");
}

BOOST_AUTO_TEST_CASE(checksum_from_argument_and_stdin) {
  const std::string want = Settings::parse(R"({"a":1,"b":"x"})").value().checksum_hex();
  BOOST_TEST(cli({"checksum", R"({"b":"x","a":1})"}).out == want + "\n");
  const Run in = cli({"checksum"}, " {\"a\" : 1, \"b\":\"x\"}\n");
  BOOST_TEST(in.code == 0);
  BOOST_TEST(in.out == want + "\n");
  expect_error(cli({"checksum", "[1]"}), 5, "settings");
  expect_error(cli({"checksum", R"({"a":1,"a":2})"}), 5, "settings");
  expect_error(cli({"checksum"}, "  \n"), 5, "no JSON");
}

BOOST_FIXTURE_TEST_CASE(need_update_prints_true_or_false, Fixture) {
  const std::string sum = Settings::parse(R"({"a":[true,null],"b":1})").value().checksum_hex();
  BOOST_TEST(cli({"need-update", "web", "1.0", sum}).out == "false\n");
  BOOST_TEST(cli({"need-update", "web", "1.1", sum}).out == "true\n");
  BOOST_TEST(cli({"need-update", "web", "1.0", "0000000000000000"}).out == "true\n");
  BOOST_TEST(cli({"need-update", "absent", "1.0", sum}).out == "true\n");
  expect_error(cli({"need-update", "web", "1.0", "xyz"}), 5, "xyz");
  expect_error(cli({"need-update", "a/b", "1.0", sum}), 5, "name");
}

BOOST_FIXTURE_TEST_CASE(token_check_and_causes, Fixture) {
  const Run root = cli({"token", "web"});
  BOOST_TEST(root.code == 0, root.err);
  const std::string rt = root.out.substr(0, root.out.size() - 1);
  BOOST_TEST(rt.size() <= 128u);
  BOOST_TEST(rt.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-") ==
             std::string::npos);
  const Run child = cli({"token", "web", "--event", "schedule"});
  const std::string ct = child.out.substr(0, child.out.size() - 1);

  Run c = cli({"check", rt});
  BOOST_TEST(c.code == 0);
  BOOST_TEST(c.out == "{\"cancelled\":false,\"cause\":null}\n");

  BOOST_REQUIRE(store.handle_event(kEventSchedule, "web"));
  c = cli({"check", ct});
  BOOST_TEST(c.code == 1);
  BOOST_TEST(c.out == "{\"cancelled\":true,\"cause\":\"rescheduled\"}\n");
  BOOST_TEST(cli({"check", rt}).code == 0);

  BOOST_REQUIRE(store.update("web", "2.0", Settings()));
  c = cli({"check", rt});
  BOOST_TEST(c.code == 1);
  BOOST_TEST(c.out == "{\"cancelled\":true,\"cause\":\"version_changed\"}\n");

  expect_error(cli({"token", "absent"}), 3, "absent");
  expect_error(cli({"token", "web", "--event", "9"}), 5, "9");
  expect_error(cli({"check", "garbage"}), 5, "token");
  expect_error(cli({"wait", "pkgctx1:0:0:0:0:0:0"}), 5, "token");
}

BOOST_FIXTURE_TEST_CASE(wait_exits_0_when_cancelled_and_124_on_timeout, Fixture) {
  BOOST_REQUIRE(store.handle_event(kEventRemove, "web"));  // Delete deletes only a removed package
  const std::string tok = cli({"token", "web"}).out.substr(0, 200);
  const std::string t = tok.substr(0, tok.size() - 1);
  Run w = cli({"wait", t, "--timeout", "0.05"});
  BOOST_TEST(w.code == 124);
  BOOST_TEST(w.out == "{\"cancelled\":false,\"cause\":null}\n");

  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)store.erase("web");
  });
  w = cli({"wait", t, "--timeout", "10"});
  canceller.join();
  BOOST_TEST(w.code == 0);
  BOOST_TEST(w.out == "{\"cancelled\":true,\"cause\":\"deleted\"}\n");
  // Already cancelled: returns at once, with or without a timeout.
  BOOST_TEST(cli({"wait", t}).code == 0);
}

BOOST_FIXTURE_TEST_CASE(dump_table_and_json, Fixture) {
  BOOST_REQUIRE(store.update("db", "14.2", Settings()));
  BOOST_REQUIRE(store.handle_event(kEventSchedule, "db"));
  const Run t = cli({"dump"});
  BOOST_TEST(t.code == 0, t.err);
  BOOST_TEST(t.out.find("segment   " + seg.str()) != std::string::npos, t.out);
  BOOST_TEST(t.out.find("no daemon has attached") != std::string::npos, t.out);
  BOOST_TEST(t.out.find("NAME  VERSION  CHECKSUM") != std::string::npos, t.out);
  BOOST_TEST(t.out.find("\ndb    14.2") != std::string::npos, t.out);
  BOOST_TEST(t.out.find("\nweb   1.0") != std::string::npos, t.out);

  const Run j = cli({"dump", "--json"});
  BOOST_TEST(j.code == 0, j.err);
  const auto v = boost::json::parse(j.out).as_object();
  BOOST_TEST(v.at("segment").at("name").as_string() == seg.str());
  BOOST_TEST(v.at("segment").at("used").to_number<int>() == 2);
  BOOST_TEST(v.at("daemon").at("liveness").as_string() == "none");
  const auto& pk = v.at("packages").as_array();
  BOOST_REQUIRE(pk.size() == 2u);
  BOOST_TEST(pk[0].at("name").as_string() == "db");
  BOOST_TEST(pk[0].at("version").as_string() == "14.2");
  BOOST_TEST(pk[0].at("checksum").as_string() == Settings().checksum_hex());
  BOOST_TEST(pk[0].at("child_generations").at("2").to_number<int>() >= 1);
  BOOST_TEST(pk[1].at("name").as_string() == "web");
}

BOOST_FIXTURE_TEST_CASE(watch_without_a_terminal_prints_snapshots, Fixture) {
  const Run w = cli({"watch", "--count", "1", "--interval", "0.01"});
  BOOST_TEST(w.code == 0, w.err);
  BOOST_TEST(w.out.rfind("--- ", 0) == 0u, w.out);
  BOOST_TEST(w.out.find("\nweb   1.0") != std::string::npos, w.out);
  BOOST_TEST(w.out.find("\x1b") == std::string::npos);  // no escape codes when not on a terminal
}

BOOST_FIXTURE_TEST_CASE(watch_filters_sorts_naturally_and_says_the_daemon_is_unreachable, Fixture) {
  for (const char* n : {"pkg10", "pkg2", "pkg1"}) BOOST_REQUIRE(store.update(n, "1", Settings()));
  const Run w = cli({"watch", "--count", "1", "--filter", "pkg*"});
  BOOST_TEST(w.code == 0, w.err);
  const auto at = [&](const char* row) { return w.out.find(std::string("\n") + row + " "); };
  BOOST_TEST(at("pkg1") < at("pkg2"));
  BOOST_TEST(at("pkg2") < at("pkg10"));
  BOOST_TEST(at("pkg10") != std::string::npos);
  BOOST_TEST(at("web") == std::string::npos);  // filtered out
  BOOST_TEST(w.out.find("\nclients   daemon: not reachable") != std::string::npos, w.out);
}

BOOST_FIXTURE_TEST_CASE(watch_json_lists_what_is_there_first, Fixture) {
  BOOST_REQUIRE(store.update("pkg2", "1", Settings()));
  const Run w = cli({"watch", "--json", "--count", "2", "--interval", "0.01"});
  BOOST_TEST(w.code == 0, w.err);
  BOOST_TEST(w.out.find("\x1b") == std::string::npos);
  std::istringstream lines(w.out);
  std::vector<std::string> names;
  for (std::string l; std::getline(lines, l);) {
    const auto v = boost::json::parse(l).as_object();
    BOOST_TEST(v.at("event").as_string() == "present");
    names.emplace_back(v.at("name").as_string());
  }
  BOOST_TEST((names == std::vector<std::string>{"pkg2", "web"}));
}

BOOST_FIXTURE_TEST_CASE(watch_rejects_a_bad_sort_or_filter, Fixture) {
  expect_error(cli({"watch", "--sort", "age"}), 2, "one of: name, version, checksum, generation");
  expect_error(cli({"watch", "--filter", ""}), 2, "empty pattern");
  expect_error(cli({"watch", "--filter", "web["}), 2, "unclosed [");
  expect_error(cli({"watch", "--filter", "[[:alpha]"}), 2, "unclosed [: class");
  expect_error(cli({"watch", "--filter", "web\\"}), 2, "lone backslash");
  BOOST_TEST(cli({"watch", "--count", "1", "--filter", "[[:alpha:]]*", "--sort", "holders"}).code == 0);
  BOOST_TEST(cli({"watch", "--count", "1", "--filter", "[]w]eb"}).out.find("\nweb ") != std::string::npos);
}

BOOST_FIXTURE_TEST_CASE(writes_validate_before_calling_the_daemon, Fixture) {
  expect_error(cli({"update", "web", "2", "--settings", "{bad"}), 5, "settings");
  expect_error(cli({"update", "web", "2", "--settings", "[]"}), 5, "settings");
  expect_error(cli({"update", "web", "2", "--settings-file", "/nonexistent/s.json"}), 5, "/nonexistent/s.json");
  expect_error(cli({"event", "explode", "web"}), 5, "explode");
  expect_error(cli({"event", "8", "web"}), 5, "8");
  // Well-formed, but no daemon: 4, naming the socket.
  expect_error(cli({"update", "web", "2"}), 4, "/nonexistent/pkgctl-test.sock");
  expect_error(cli({"event", "schedule", "web"}), 4, "pkgctxd");
  expect_error(cli({"delete", "web", "--socket", "/nonexistent/other.sock"}), 4, "/nonexistent/other.sock");
}

BOOST_AUTO_TEST_CASE(exit_code_mapping) {
  BOOST_TEST(pkgctl::exit_code_for("no_such_package") == 3);
  for (const char* c : {"invalid_name", "invalid_version", "invalid_settings", "settings_too_large", "invalid_event",
                        "invalid_token", "table_full", "settings_full", "bad_request", "line_too_long",
                        "wrong_segment"})
    BOOST_TEST(pkgctl::exit_code_for(c) == 5, c);
  for (const char* c : {"daemon_unreachable", "segment_missing", "segment_version", "permission_denied",
                        "too_many_clients", "internal_error", "io_error", "busy", "no_such_code"})
    BOOST_TEST(pkgctl::exit_code_for(c) == 4, c);
  BOOST_TEST(pkgctl::exit_code_for("outcome_unknown") == 6);
  BOOST_TEST(pkgctl::exit_code_for("forbidden") == 7);
}

// A stand-in for pkgctxd that misbehaves on purpose: it accepts one connection, then does what
// the test says with it. Lets the transport outcomes be driven exactly, without signals.
class FakeDaemon {
 public:
  enum class Mode { hold, half_answer, refuse_first };
  explicit FakeDaemon(Mode mode) {
    char tmpl[] = "/tmp/pkgctl-fake-XXXXXX";
    BOOST_TEST_REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/s.sock";
    listen_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    BOOST_TEST_REQUIRE(::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    BOOST_TEST_REQUIRE(::listen(listen_, 4) == 0);
    thread_ = std::thread([this, mode] {
      const int fd = ::accept(listen_, nullptr, nullptr);
      if (fd < 0) return;
      if (mode == Mode::refuse_first) {
        const std::string no = R"J({"ok":false,"error":{"code":"too_many_clients","message":"too many clients (3)"}})J" "\n";
        (void)!::write(fd, no.data(), no.size());
        ::shutdown(fd, SHUT_WR);
      } else {
        char buf[4096];
        std::string in;
        while (in.find('\n') == std::string::npos) {  // the whole request, so it "could be applied"
          const ssize_t n = ::read(fd, buf, sizeof buf);
          if (n <= 0) break;
          in.append(buf, static_cast<std::size_t>(n));
        }
        request = in;
        if (mode == Mode::half_answer) (void)!::write(fd, R"({"ok":tr)", 8);
        else done_.recv();  // hold: never answer until the test is over
      }
      ::close(fd);
    });
  }
  ~FakeDaemon() {
    done_.signal();
    thread_.join();
    ::close(listen_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string request;  // what the client sent (valid once the client's call returned)

 private:
  std::string dir_, path_;
  int listen_ = -1;
  test::Pipe done_;
  std::thread thread_;
};

BOOST_AUTO_TEST_CASE(a_write_sent_without_an_answer_has_an_unknown_outcome) {
  {
    FakeDaemon d(FakeDaemon::Mode::hold);
    const Run r = cli({"--socket", d.path(), "update", "web", "2", "--timeout", "0.2"});
    expect_error(r, 6, "outcome unknown: the request was sent, but no answer from pkgctxd at " + d.path() +
                           " within 200 ms; it may or may not have been applied");
    BOOST_TEST(r.err.find("check with pkgctl settings") != std::string::npos, r.err);
  }
  {
    FakeDaemon d(FakeDaemon::Mode::half_answer);
    expect_error(cli({"--socket", d.path(), "delete", "web"}), 6, "closed the connection in the middle of an answer");
  }
  {
    // Refused before the request was taken: the daemon's reason, not "closed the connection".
    FakeDaemon d(FakeDaemon::Mode::refuse_first);
    expect_error(cli({"--socket", d.path(), "event", "update", "web"}), 4, "too many clients (3)");
  }
}

BOOST_AUTO_TEST_CASE(writes_name_the_segment_only_when_it_was_given) {
  {
    FakeDaemon d(FakeDaemon::Mode::half_answer);
    (void)cli({"--socket", d.path(), "update", "web", "2"});
    BOOST_TEST(d.request.find("\"segment\"") == std::string::npos, d.request);
  }
  {
    FakeDaemon d(FakeDaemon::Mode::half_answer);
    (void)cli({"--socket", d.path(), "--segment", "blue", "delete", "web"});
    BOOST_TEST(d.request == R"({"op":"delete","segment":"blue","name":"web"})" "\n");
  }
  {
    FakeDaemon d(FakeDaemon::Mode::half_answer);
    ::setenv("PKGCTX_SEGMENT", "green", 1);
    (void)cli({"--socket", d.path(), "update", "web", "2"});
    ::unsetenv("PKGCTX_SEGMENT");
    BOOST_TEST(d.request == R"({"op":"update","segment":"green","name":"web","version":"2","settings":{}})" "\n");
  }
}
