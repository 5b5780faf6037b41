#include "pkgctl/daemon_link.hpp"

#include "pkgctx/client.hpp"
#include "pkgctx/error_class.hpp"
#include "pkgctx/segment.hpp"

#include <boost/json/serialize.hpp>

namespace pkgctl {

namespace {

// The answer after the request line was handed over, or why none came. Once any request byte
// may have reached the daemon, a missing answer means the outcome is unknown: the daemon applies
// a complete line (even one that lost its '\n') after the client has gone.
boost::system::result<boost::json::object, CallError> exchange(pkgctx::Client& client,
                                                               std::string_view request_line) {
  const std::string& path = client.path();
  if (auto sent = client.send_line(request_line); !sent) {
    if (sent.error().code == pkgctx::Errc::daemon_unreachable) {
      // The daemon closed the connection before taking the request (so it cannot apply it), and
      // may have said why first (too_many_clients): that answer is the better report.
      if (auto early = client.receive()) return std::move(*early);
      return CallError{"daemon_unreachable", sent.error().message + " before taking the request; nothing changed"};
    }
    return CallError{std::string(pkgctx::wire::kOutcomeUnknown),
                     "outcome unknown: the request was partly sent to pkgctxd at " + path + " and then " +
                         sent.error().message + "; it may or may not have been applied"};
  }
  auto answer = client.receive();
  if (!answer)
    return CallError{std::string(pkgctx::wire::kOutcomeUnknown), "outcome unknown: the request was sent, but " +
                                                                     answer.error().message +
                                                                     "; it may or may not have been applied"};
  return std::move(*answer);
}

// {"ok":true,…} → its fields without "ok"; {"ok":false,"error":{"code","message"}} → CallError.
boost::system::result<boost::json::object, CallError> interpret(boost::json::object a, const std::string& path) {
  if (const auto* ok = a.if_contains("ok"); ok && ok->is_bool() && ok->get_bool()) {
    a.erase("ok");
    return a;
  }
  CallError e{std::string(pkgctx::wire::kOutcomeUnknown),
              "outcome unknown: pkgctxd at " + path + " answered neither success nor an error: " +
                  boost::json::serialize(a).substr(0, 200)};
  if (const auto* err = a.if_contains("error"); err && err->is_object()) {
    const auto& eo = err->get_object();
    if (const auto* c = eo.if_contains("code"); c && c->is_string()) e.code = std::string(c->get_string());
    if (const auto* m = eo.if_contains("message"); m && m->is_string()) e.message = std::string(m->get_string());
  }
  return e;
}

}  // namespace

boost::system::result<boost::json::object, CallError> call_daemon(const std::string& socket_path,
                                                                  std::string_view request_line,
                                                                  std::chrono::milliseconds timeout,
                                                                  CallTiming* timing) {
  DaemonLink link(socket_path);
  return link.call(request_line, timeout, timing);
}

boost::system::result<boost::json::object, CallError> DaemonLink::call(std::string_view request_line,
                                                                       std::chrono::milliseconds timeout,
                                                                       CallTiming* timing) {
  if (!client_) {
    auto client = pkgctx::Client::connect(path_, timeout);
    if (!client) return CallError{"daemon_unreachable", client.error().message};
    client_ = std::move(*client);
  }
  client_->set_timeout(timeout);
  if (timing) timing->sent_realtime_ns = pkgctx::realtime_now_ns();
  auto answer = exchange(*client_, request_line);
  if (timing) timing->answered_realtime_ns = pkgctx::realtime_now_ns();
  if (!answer) {
    client_.reset();  // the connection's state is unknown: never reuse it
    return answer.error();
  }
  return interpret(std::move(*answer), path_);
}

}  // namespace pkgctl
