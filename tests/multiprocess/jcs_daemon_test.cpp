// The conformance vectors (tests/data/jcs/vectors.json) through a real pkgctxd: what pkgctl
// update and a raw socket update store must be the vector's canonical form and checksum, byte for
// byte. (pkgctl once re-parsed canonical settings into a Boost.JSON DOM before sending them, and
// stored 123456789012345678901 as 123456789012345670000.)
#define BOOST_TEST_MODULE jcs_daemon
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "jcs_vectors.hpp"
#include "pkgctl/cli.hpp"
#include "pkgctx/view.hpp"

#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

using namespace pkgctx;
using daemon::testing::DaemonProcess;

namespace {

struct Run {
  int code = -1;
  std::string out, err;
};

Run run_pkgctl(std::vector<std::string> args) {
  args.insert(args.begin(), "pkgctl");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  std::istringstream in;
  Run r;
  r.code = pkgctl::run(static_cast<int>(argv.size()), argv.data(), {out, err, in});
  r.out = out.str();
  r.err = err.str();
  return r;
}

// pkgctl's environment selects this test's daemon for the test case's lifetime.
struct Env : test::DaemonEnv {
  Env() : DaemonEnv("jcs") {
    ::setenv("PKGCTX_SEGMENT", seg.c_str(), 1);
    ::setenv("PKGCTX_SOCKET", sock.c_str(), 1);
  }
  ~Env() {
    ::unsetenv("PKGCTX_SEGMENT");
    ::unsetenv("PKGCTX_SOCKET");
  }
};

std::string stored_settings(const std::string& seg, const std::string& name) {
  auto view = View::open(seg);
  BOOST_TEST_REQUIRE(view.has_value(), (view ? std::string() : view.error().message));
  auto r = view->read(name);
  BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
  return r->settings + " " + Settings::format_checksum(r->checksum);
}

}  // namespace

BOOST_AUTO_TEST_CASE(pkgctl_and_socket_updates_store_the_vectors_exactly) {
  const auto vectors = test::load_jcs_vectors();
  Env env;
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = test::connect(env.sock);
  for (const auto& v : vectors) {
    BOOST_TEST_CONTEXT("vector \"" << v.name << "\"") {
      const Run u = run_pkgctl({"update", "cli", "1", "--settings", v.input});
      // The raw text goes to the daemon as the settings member, as any controller may send it.
      // A raw line break can only be whitespace between tokens; the protocol is one request a line.
      std::string one_line = v.input;
      for (char& ch : one_line)
        if (ch == '\n' || ch == '\r') ch = ' ';
      const auto a = test::call(c, R"({"op":"update","name":"raw","version":"1","settings":)" + one_line + "}");
      if (!v.error.empty()) {
        BOOST_TEST(u.code == 5, u.err);  // rejected (pkgctl checks before sending)
        BOOST_TEST(a.at("ok") == false, boost::json::serialize(a));
        continue;
      }
      BOOST_TEST_REQUIRE(u.code == 0, u.err);
      const Run s = run_pkgctl({"settings", "cli"});
      BOOST_TEST(s.out == R"({"name":"cli","version":"1","settings":)" + v.canonical + R"(,"checksum":")" + v.checksum +
                              R"(","settings_version":0,"maintenance":""})" + "\n");
      BOOST_TEST(a.at("ok") == true, boost::json::serialize(a));
      BOOST_TEST(stored_settings(env.seg.str(), "raw") == v.canonical + " " + v.checksum);
    }
  }
}
