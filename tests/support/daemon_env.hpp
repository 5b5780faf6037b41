// Shared set-up for tests that run a real pkgctxd through the daemon's test harness
// (pkgctx/daemon/test_harness.hpp). Header-only: include it only from test binaries that link
// pkgctxd_test_harness, which brings the harness's include path and the built daemon's path.
#pragma once

#include "pkgctx/client.hpp"
#include "pkgctx/daemon/test_harness.hpp"
#include "test_support.hpp"

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pkgctx::test {

// One daemon's world: a segment unique to this process (named after `tag`), a private
// directory, and the control socket's path in it.
struct DaemonEnv {
  explicit DaemonEnv(const std::string& tag) : seg(tag) {}

  SegmentName seg;
  daemon::testing::TempDir dir;
  std::string sock = dir / "ctl.sock";

  // pkgctxd on this segment and socket with a 50 ms heartbeat, then `extra`.
  daemon::testing::DaemonOptions opts(std::vector<std::string> extra = {}) const {
    daemon::testing::DaemonOptions o;
    o.args = {"--segment", seg.str(), "--socket", sock, "--heartbeat-ms", "50"};
    o.args.insert(o.args.end(), extra.begin(), extra.end());
    return o;
  }
};

// A client on `sock`; ends the test case, naming the error, if it cannot connect.
inline Client connect(const std::string& sock) {
  auto c = Client::connect(sock, std::chrono::milliseconds(5000));
  BOOST_TEST_REQUIRE(c.has_value(), (c ? std::string() : c.error().message));
  return std::move(*c);
}

// Sends one request line and returns the answer; ends the test case on a transport error.
inline boost::json::object call(Client& c, std::string_view line) {
  auto s = c.send_line(line);
  BOOST_TEST_REQUIRE(s.has_value(), (s ? std::string() : s.error().message));
  auto r = c.receive();
  BOOST_TEST_REQUIRE(r.has_value(), (r ? std::string() : r.error().message));
  return std::move(*r);
}

}  // namespace pkgctx::test
