// The C example plugin (worker-sdk/examples/example_plugin.c) as a real process: a segment made
// with the core Store, the plugin attached to it, cancellations from this process, and the
// plugin's output and exit code checked line by line.
//
// PKGCTX_EXAMPLE_BIN names the program to drive (default: the in-tree build of the example).
// tests/e2e/worker_install.sh runs this suite again against programs built from an installed
// tree (the C example through pkg-config, the C++ consumer through find_package).
#define BOOST_TEST_MODULE worker_example
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "pkgctx/worker.hpp"
#include "test_support.hpp"

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <poll.h>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::SegmentName;

namespace {

std::string example_bin() {
  if (const char* p = std::getenv("PKGCTX_EXAMPLE_BIN"); p && *p) return p;
  return PKGCTX_BINARY_DIR "/worker-sdk/example_plugin";
}

// A child process with its stdout and stderr on pipes.
class Plugin {
 public:
  explicit Plugin(const std::vector<std::string>& args, const std::string& token_env = "") {
    int out[2], err[2];
    BOOST_TEST_REQUIRE(::pipe(out) == 0);
    BOOST_TEST_REQUIRE(::pipe(err) == 0);
    const std::string bin = example_bin();
    pid_ = ::fork();
    BOOST_TEST_REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::close(out[0]);
      ::close(err[0]);
      if (token_env.empty()) {
        ::unsetenv("PKGCTX_TOKEN");
      } else {
        ::setenv("PKGCTX_TOKEN", token_env.c_str(), 1);
      }
      std::vector<char*> argv{const_cast<char*>(bin.c_str())};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(bin.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Plugin() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      pkgctx::test::wait_exit(pid_);
    }
    ::close(out_);
    ::close(err_);
  }

  // The next line of stdout; "" at end of file or after `timeout` (a safety net, not a clock
  // the test relies on: every line follows from an action the test took).
  std::string line(std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "";
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(out_, chunk, sizeof chunk);
      if (n <= 0) return std::exchange(buf_, "");
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  int exit_code() {
    reaped_ = true;
    return pkgctx::test::wait_exit(pid_);
  }

  std::string stderr_text() {
    std::string s;
    char chunk[4096];
    ssize_t n;
    while ((n = ::read(err_, chunk, sizeof chunk)) > 0) s.append(chunk, static_cast<std::size_t>(n));
    return s;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  bool reaped_ = false;
  std::string buf_;
};

struct Fixture {
  SegmentName name;
  Store store;
  Settings settings = Settings::parse(R"({"port":8080,"hosts":["a","b"]})").value();

  Fixture() : store(create(name)) {
    BOOST_TEST_REQUIRE(store.update("pkg", "1.0", settings).has_value());
    BOOST_TEST_MESSAGE("driving " << example_bin());
  }
  static Store create(const std::string& n) { return test::create_store(n, test::segment_options(16, 4096)); }
  bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

  // Reads the plugin's preamble up to "working", checking every line.
  std::string preamble(Plugin& p) {
    BOOST_TEST(p.line() == "attached segment=" + name.str() + " daemon=none");
    const std::string tok = p.line();
    BOOST_TEST_REQUIRE(starts_with(tok, "token pkgctx1:"), tok);
    BOOST_TEST(p.line() == "package version=1.0 checksum=" + settings.checksum_hex() + " settings=" + settings.canonical());
    BOOST_TEST(p.line() == "working");
    return tok.substr(6);
  }
};

}  // namespace

BOOST_FIXTURE_TEST_CASE(cancelled_while_waiting, Fixture) {
  Plugin p({name.str(), "pkg", "0", "60000"});
  const std::string text = preamble(p);
  // The token it printed is the package's current root context.
  Worker w = Worker::attach(name).value();
  auto parsed = w.parse_token(text);
  BOOST_TEST_REQUIRE(parsed.has_value());
  BOOST_TEST(parsed->str() == w.token("pkg", 0).value().str());

  BOOST_TEST(p.line() == "waiting");
  BOOST_TEST_REQUIRE(store.handle_event(kEventUpdate, "pkg").has_value());
  BOOST_TEST(p.line() == "cancelled while waiting: cause=update_event");
  BOOST_TEST(p.exit_code() == 0);
}

BOOST_FIXTURE_TEST_CASE(a_handed_token_cancelled_before_the_work, Fixture) {
  // The controller hands the task its schedule context, and reschedules before it starts.
  Worker w = Worker::attach(name).value();
  const std::string text = w.token("pkg", kEventSchedule).value().str();
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  Plugin p({name.str(), "pkg", "2", "60000"}, text);
  BOOST_TEST(preamble(p) == text);
  BOOST_TEST(p.line() == "cancelled during work after 0 units: cause=rescheduled");
  BOOST_TEST(p.exit_code() == 0);
}

BOOST_FIXTURE_TEST_CASE(a_version_change_reaches_a_child_context, Fixture) {
  Plugin p({name.str(), "pkg", "2", "60000"});
  preamble(p);
  BOOST_TEST(p.line() == "waiting");
  BOOST_TEST_REQUIRE(store.update("pkg", "2.0", settings).has_value());
  BOOST_TEST(p.line() == "cancelled while waiting: cause=version_changed");
  BOOST_TEST(p.exit_code() == 0);
}

BOOST_FIXTURE_TEST_CASE(retirement_wakes_the_plugin, Fixture) {
  Plugin p({name.str(), "pkg", "0", "60000"});
  preamble(p);
  BOOST_TEST(p.line() == "waiting");
  store.retire();
  BOOST_TEST(p.line() == "cancelled while waiting: cause=segment_retired");
  BOOST_TEST(p.exit_code() == 0);
}

BOOST_FIXTURE_TEST_CASE(times_out, Fixture) {
  Plugin p({name.str(), "pkg", "0", "100"});
  preamble(p);
  BOOST_TEST(p.line() == "waiting");
  BOOST_TEST(p.line() == "timed out after 100 ms");
  BOOST_TEST(p.exit_code() == 124);
}

BOOST_FIXTURE_TEST_CASE(errors_are_named, Fixture) {
  SegmentName missing("missing");
  {
    Plugin p({missing.str(), "pkg"});
    BOOST_TEST(p.exit_code() == 1);
    const std::string err = p.stderr_text();
    BOOST_TEST(err.find("attach: segment_missing") != std::string::npos, err);
  }
  {
    Plugin p({name.str(), "absent"});
    BOOST_TEST(p.exit_code() == 1);
    const std::string err = p.stderr_text();
    BOOST_TEST(err.find("token: no_such_package") != std::string::npos, err);
    BOOST_TEST(err.find("\"absent\"") != std::string::npos, err);
  }
  {
    Plugin p({name.str(), "pkg"}, "pkgctx1:0123456789abcdef:0:0:1:0:deadbeef");
    BOOST_TEST(p.exit_code() == 1);
    const std::string err = p.stderr_text();
    BOOST_TEST(err.find("token: invalid_token") != std::string::npos, err);
  }
  {
    Plugin p({});
    BOOST_TEST(p.exit_code() == 2);
  }
}
