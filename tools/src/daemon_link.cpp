#include "pkgctl/daemon_link.hpp"

#include "pkgctx/client.hpp"
#include "pkgctx/segment.hpp"

#include <boost/json/serialize.hpp>

namespace pkgctl {

boost::system::result<boost::json::object, CallError> call_daemon(const std::string& socket_path,
                                                                  std::string_view request_line,
                                                                  CallTiming* timing) {
  auto client = pkgctx::Client::connect(socket_path);
  if (!client) return CallError{"daemon_unreachable", client.error().message};
  if (timing) timing->sent_realtime_ns = pkgctx::realtime_now_ns();
  auto answer = [&]() -> pkgctx::Result<boost::json::object> {
    if (auto sent = client->send_line(request_line); !sent) return sent.error();
    return client->receive();
  }();
  if (timing) timing->answered_realtime_ns = pkgctx::realtime_now_ns();
  if (!answer) {
    const auto& e = answer.error();
    return CallError{std::string(pkgctx::errc_name(e.code)), "daemon at " + socket_path + ": " + e.message};
  }
  // {"ok":true,…} → its fields without "ok"; {"ok":false,"error":{"code","message"}} → CallError.
  boost::json::object& a = *answer;
  if (const auto* ok = a.if_contains("ok"); ok && ok->is_bool() && ok->get_bool()) {
    a.erase("ok");
    return std::move(a);
  }
  CallError e{"io_error", "daemon at " + socket_path + " answered without \"ok\": " + boost::json::serialize(a)};
  if (const auto* err = a.if_contains("error"); err && err->is_object()) {
    const auto& eo = err->get_object();
    if (const auto* c = eo.if_contains("code"); c && c->is_string()) e.code = std::string(c->get_string());
    if (const auto* m = eo.if_contains("message"); m && m->is_string()) e.message = std::string(m->get_string());
  }
  return e;
}

}  // namespace pkgctl
