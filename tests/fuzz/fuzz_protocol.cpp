// Fuzz target: the daemon's control-protocol request handler (pkgctx::daemon::Protocol::handle),
// the transport-free half of pkgctxd, on arbitrary request lines (DESIGN.md §6: malformed,
// oversized or hostile input gets an error answer; the daemon never crashes on it).
//
// Input byte 0: bit 0 = the peer may write. The rest is split at '\n' into up to 16 request
// lines, handled in order against a fresh small store (so every input reproduces on its own).
// Each answer must be exactly one line holding one JSON object with a boolean "ok"; an error
// answer carries a non-empty code and message, and a refused request changes nothing (the
// store's commit counter does not move).
#include "pkgctx/daemon/protocol.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>

namespace {

std::string g_name;

[[noreturn]] void fail(const char* what, std::string_view line, const std::string& answer) {
  std::fprintf(stderr, "fuzz_protocol: %s\n  request: %.*s\n  answer: %s\n", what,
               static_cast<int>(line.size() > 400 ? 400 : line.size()), line.data(), answer.c_str());
  std::abort();
}

void cleanup() { pkgctx::Segment::remove(g_name); }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_name = "pkgctx-fuzz-proto-" + std::to_string(::getpid());
  std::atexit(cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  pkgctx::Segment::remove(g_name);
  pkgctx::SegmentOptions o;
  o.capacity = 4;
  o.settings_bytes = 1024;
  o.limits.max_settings = 512;
  auto store = pkgctx::Store::create(g_name, o);
  if (!store) fail("cannot create the segment", "", store.error().message);
  pkgctx::daemon::Protocol protocol(*store, {.max_depth = 16, .allow = {}});
  // Root may write; uid 65534 is not on the (default) allow-list.
  const bool may_write = data[0] & 1;
  const pkgctx::daemon::Peer peer{1, may_write ? 0u : 65534u, 0, {}};

  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  for (int n = 0; n < 16 && !rest.empty(); ++n) {
    const std::size_t nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);

    const std::uint64_t commits = store->segment().info().commits;
    std::string out;
    protocol.handle(line, peer, out);
    if (out.empty() || out.back() != '\n') fail("answer is not one line ending in \\n", line, out);
    if (out.find('\n') != out.size() - 1) fail("answer spans several lines", line, out);
    boost::json::error_code ec;
    const boost::json::value v = boost::json::parse(std::string_view(out).substr(0, out.size() - 1), ec);
    if (ec || !v.is_object()) fail("answer is not a JSON object", line, out);
    const boost::json::object& a = v.get_object();
    const auto* ok = a.if_contains("ok");
    if (!ok || !ok->is_bool()) fail("answer has no boolean \"ok\"", line, out);
    if (!ok->get_bool()) {
      const auto* err = a.if_contains("error");
      if (!err || !err->is_object()) fail("error answer without an error object", line, out);
      const auto* code = err->get_object().if_contains("code");
      const auto* msg = err->get_object().if_contains("message");
      if (!code || !code->is_string() || code->get_string().empty() || !msg || !msg->is_string() ||
          msg->get_string().empty())
        fail("error answer without a code and a message", line, out);
      if (store->segment().info().commits != commits) fail("a refused request changed the table", line, out);
    } else if (!may_write && store->segment().info().commits != commits) {
      fail("a peer without write rights changed the table", line, out);
    }
  }
  return 0;
}
