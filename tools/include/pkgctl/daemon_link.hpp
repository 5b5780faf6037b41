// pkgctl/daemon_link.hpp — one request to pkgctxd over its control socket.
#pragma once

#include "pkgctx/client.hpp"
#include "pkgctx/error.hpp"

#include <boost/json/object.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pkgctl {

struct CallTiming {
  std::uint64_t sent_realtime_ns = 0;      // just before the request was sent
  std::uint64_t answered_realtime_ns = 0;  // just after the answer arrived
};

// A refusal or failure, with the daemon's error code as it was sent ("invalid_name",
// "forbidden", "wrong_segment", …), or "daemon_unreachable" when the request did not reach the
// daemon (nothing changed), or "outcome_unknown" when it was sent and no answer came (the write
// may or may not have been applied: daemon stopped, connection closed mid-answer, timeout,
// garbled answer).
struct CallError {
  std::string code;
  std::string message;
};

// Sends `request_line` (one serialised JSON request, no '\n') to the daemon at `socket_path`;
// returns the fields of an {"ok":true,…} answer. `timeout` bounds the connect, the send and the
// wait for the answer, each. A line, not a json::object, so that JSON text
// such as canonical settings can travel verbatim: a Boost.JSON DOM would turn its numbers into
// doubles with Boost's own conversion, which is not correctly rounded.
boost::system::result<boost::json::object, CallError> call_daemon(const std::string& socket_path,
                                                                  std::string_view request_line,
                                                                  std::chrono::milliseconds timeout,
                                                                  CallTiming* timing = nullptr);

// One connection for many requests (`pkgctl batch`): connected at the first call, kept while
// answers come; after a failure of the connection itself (daemon_unreachable, outcome_unknown)
// the next call connects again. Answers and errors as call_daemon().
class DaemonLink {
 public:
  explicit DaemonLink(std::string socket_path) : path_(std::move(socket_path)) {}
  boost::system::result<boost::json::object, CallError> call(std::string_view request_line,
                                                             std::chrono::milliseconds timeout,
                                                             CallTiming* timing = nullptr);

 private:
  std::string path_;
  std::optional<pkgctx::Client> client_;
};

}  // namespace pkgctl
