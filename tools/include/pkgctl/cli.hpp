// pkgctl/cli.hpp — the operator's tool (DESIGN.md §7): argument handling and every command.
// main() only calls run(); the commands are here so tests drive them in-process.
//
// Reads (settings, need-update, token, check, wait, dump, watch) map the segment read-only and
// never need the daemon; writes (update, event, delete) go through pkgctxd's control socket.
#pragma once

#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pkgctl {

// Exit codes (DESIGN.md §7).
enum Exit : int {
  kExitOk = 0,
  kExitCancelled = 1,      // check: the token is cancelled
  kExitUsage = 2,          // bad command line
  kExitNoSuchPackage = 3,  // settings, token
  kExitUnreachable = 4,    // segment or daemon unreachable (missing, foreign, no permission, down):
                           // nothing was sent
  kExitRejected = 5,       // input rejected (name, version, settings, event, token, checksum, full,
                           // a bad file argument, wrong_segment)
  kExitOutcomeUnknown = 6, // a write was sent and no answer came: it may or may not have been applied
  kExitForbidden = 7,      // the daemon refused the write for this user (allow-list)
  kExitTimedOut = 124,     // wait --timeout passed
};

// The exit code for an error code name, as pkgctx::errc_name() or the daemon spells it, from its
// class in the one error table (pkgctx/error_class.hpp): no_such_package → 3; input rejections
// (invalid_*, settings_too_large, table_full, settings_full, bad_request, wrong_segment) → 5;
// outcome_unknown → 6; forbidden → 7; everything else (segment_*, permission_denied,
// daemon_unreachable, busy, io_error, …) → 4.
int exit_code_for(std::string_view error_code) noexcept;

struct Io {
  std::ostream& out;
  std::ostream& err;
  std::istream& in;
};

// Runs one pkgctl command line (argv[0] is the program name) and returns its exit code.
// Errors are one line on io.err, "pkgctl: <what>: <why>".
int run(int argc, const char* const* argv, Io io);

// `pkgctl watch` (tools/src/watch.cpp). On a terminal (stdout a tty, TERM set and not "dumb"): a
// full-screen view refreshed every `interval_s`, changed rows highlighted, scrolled with the
// arrows, PgUp/PgDn and Home/End, quit with q or Ctrl-C; the terminal is restored on every exit
// path. Otherwise: a plain snapshot (the dump header, the daemon's clients, the table) each time
// it changes, checked every `interval_s`, until SIGINT/SIGTERM (exit 0). With `json`: one line per
// package change (render.hpp watch_json_line). `count` > 0 stops after that many frames,
// snapshots or lines. A reader that goes away (EPIPE) ends it with exit 0. A bad --filter or
// --sort is exit 2.
struct WatchOptions {
  std::string segment;
  std::string socket;
  std::string clients_request;  // the `clients` op as sent (with "segment" when one was named)
  double interval_s = 0.2;
  long count = 0;
  bool json = false;
  std::string sort = "name";
  std::optional<std::string> filter;  // a glob on the package name (fnmatch(3))
};
int run_watch(const WatchOptions& o, Io io);
// pkgctl fleet: the status every host following etcd reports under PREFIX/status/ (DESIGN §10).
int run_fleet(const std::string& endpoints, const std::string& prefix, bool as_json, Io io);

// `pkgctl run NAME [--event K] [--grace SEC] -- CMD…` (tools/src/run_task.cpp): registers with
// the daemon at `socket` as a worker, begins a task on NAME's current context, runs CMD with
// PKGCTX_TOKEN in its environment; on cancellation sends it SIGTERM, then SIGKILL after
// `grace_s`; ends the task when CMD exits and prints {"name","cancelled","cause","exit"} on
// io.err. Returns CMD's exit status (128+signal if killed), 3 no such package, 2/4/5 as usual.
int run_task(const std::string& segment, const std::string& socket, const std::string& name, const std::string& event,
             double grace_s, const std::vector<std::string>& cmd, Io io);

}  // namespace pkgctl
