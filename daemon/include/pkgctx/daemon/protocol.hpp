// pkgctx/daemon/protocol.hpp — the control protocol: one JSON request in, one JSON answer out.
//
// This is the transport-free half of the daemon: it turns a request line into an answer line
// against a Store. The server (server.hpp) feeds it lines from sockets; tests feed it directly.
//
// Requests (one JSON object per line; an optional "id" — string or number — is echoed back; an
// optional "segment" — the segment the client means — is refused with wrong_segment, before the op
// runs, unless it is the segment this daemon serves):
//   {"op":"update","name":N,"version":V,"settings":{…}}   settings optional, default {}
//       → {"ok":true,"name":N,"context":TOKEN|null,"change":"created"|"version"|"settings"|"none"}
//   {"op":"event","event":"update"|"remove"|"schedule"|K,"name":N}   K a string or integer 0..7
//       → {"ok":true,"name":N,"context":TOKEN|null}
//   {"op":"need_update","name":N,"version":V,"checksum":HEX16}  → {"ok":true,"need_update":bool}
//   {"op":"settings","name":N}  → {"ok":true,"name":N,"version":V,"settings":{…},"checksum":HEX16}
//   {"op":"delete","name":N}    → {"ok":true,"name":N,"deleted":bool}
//   {"op":"dump"}               → {"ok":true,"segment":{…},"daemon":{…},"packages":[…],"clients":[…]}
//   {"op":"register"} + a sealed memfd (SCM_RIGHTS) → {"ok":true,"client":N}; the connection then
//       stays open for the attachment's life, carries only one-byte "task ended" pings, and is
//       exempt from the idle timeout and from max_clients (max_registered bounds it). Open to
//       anyone who can connect (workers act only for themselves).
//   {"op":"drain","name":N,"event":K?,"timeout_ms":T?}  (write-class: allow-listed peers)
//       → later: {"ok":true,"name":N,"drained":bool,"holders":[{"pid","uid","comm","key",
//         "generation","cause","age_ms"}]}; other clients are served meanwhile.
//   {"op":"metrics"}            → {"ok":true,"content_type":"application/openmetrics-text; …",
//       "text":"# TYPE …\n…# EOF\n"}: the OpenMetrics exposition (pkgctx/metrics.hpp) as one JSON
//       string, so the answer stays one line. Open to anyone who can connect.
//   {"op":"clients"}            → {"ok":true,"clients":[{"pid","uid","comm","since_realtime_ns",
//       "tasks":[{"name","key","generation","cancelled","age_ms"}],"waits":[]}]}
//   delete: "drain_ms" (drains first, then deletes) and answers "in_flight"; update: "drain_ms"
//       (drains the old context after the update) and answers "drained","holders".
// Errors: {"ok":false,"error":{"code":C,"message":M}}, C one of the core's errc_name() codes
// (invalid_name, invalid_version, invalid_settings, settings_too_large, invalid_event,
// no_such_package, table_full, settings_full, owned_by_etcd — a write to a package the daemon
// follows from etcd, DESIGN §10 — …) or a protocol code below.
//
// Writes (update, event, delete) need a peer on the allow-list; reads are open to anyone who
// can connect. The protocol both decides and enforces this (the server only reports the peer).
// A refused or malformed request changes nothing. handle() never throws.
//
// Audit (DESIGN §4.1 "honest outcomes"): every write request is logged once, with its op, name,
// the peer's pid and uid and its result — at info when the allow-list admitted the peer, at
// notice when it was refused (forbidden).
#pragma once

#include "pkgctx/error_class.hpp"
#include "pkgctx/store.hpp"

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace pkgctx::daemon {

// Protocol error codes (the core's codes come from errc_name()).
namespace code {
inline constexpr std::string_view kBadRequest = "bad_request";        // malformed JSON, not an object,
                                                                      // missing/mistyped/unknown field,
                                                                      // duplicate key, unknown op, too deep
inline constexpr std::string_view kLineTooLong = "line_too_long";     // request line over max_line_bytes
inline constexpr std::string_view kForbidden = "forbidden";           // write by a peer off the allow-list
inline constexpr std::string_view kTooManyClients = "too_many_clients";  // sent, then the connection closes
inline constexpr std::string_view kInternalError = "internal_error";  // out of memory or a bug; nothing changed
inline constexpr std::string_view kWrongSegment = wire::kWrongSegment;  // "segment" names another segment
}  // namespace code

// Who is on the other end of a connection (SO_PEERCRED, SO_PEERGROUPS).
struct Peer {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // supplementary groups, when the kernel reports them
  std::string describe() const;  // "pid 42 uid 1000 gid 1000"
};

// Who may write: root and the daemon's own uid always (both can write the segment directly
// anyway), plus any listed uid, plus any peer whose primary or supplementary group is listed.
struct AllowList {
  uid_t self = 0;
  std::vector<uid_t> uids;
  std::vector<gid_t> gids;
  bool allows(const Peer& peer) const noexcept;
};

// Connection counters, reported by dump under "daemon": written by the server only.
struct ConnectionStats {
  std::string socket;
  std::uint64_t clients = 0;          // connected now
  std::uint64_t accepted = 0;         // connections accepted since start
  std::uint64_t dropped = 0;          // clients dropped (not reading, over limits)
};

// Request counters, reported by dump under "daemon" and by the metrics op: written by the
// protocol only.
struct RequestStats {
  std::uint64_t requests = 0;         // requests answered
  std::uint64_t errors = 0;           // … of which answered with an error
  // Answers by (op, result): op one of the protocol's op names, "unknown" (an op it does not
  // know) or "none" (no op could be read); result "ok" or the error code. Both are static
  // strings, so the label set stays bounded whatever clients send.
  std::map<std::pair<std::string_view, std::string_view>, std::uint64_t> answers;
  // Events served here that cancelled a context, by cause (built-in or caller-named: a segment
  // holds a bounded number of names).
  std::map<std::string, std::uint64_t, std::less<>> cancellations;
  // Drains answered (drained or timed out), and a histogram of how long they waited: counts of
  // drains that took at most kDrainBuckets[i] seconds (cumulative in the exposition).
  static constexpr std::array<double, 8> kDrainBuckets{0.0001, 0.001, 0.01, 0.1, 1, 10, 60, 600};
  std::uint64_t drains_drained = 0;
  std::uint64_t drains_timed_out = 0;
  std::array<std::uint64_t, kDrainBuckets.size()> drain_buckets{};
  std::uint64_t drain_ns_sum = 0;
  void record_drain(bool drained, std::uint64_t ns) noexcept;
};

// Whether a cluster store owns a package (DESIGN §10): called from the event loop's thread.
using OwnerCheck = std::function<bool(std::string_view name)>;

// What may change on SIGHUP.
struct ProtocolOptions {
  std::size_t max_depth = 64;  // JSON nesting allowed inside "settings" (the request nests one more)
  AllowList allow;             // who may write
  bool etcd_owns = true;       // refuse writes to packages the owner check claims (owned_by_etcd)
};

// A dump answered a slice at a time, so that one dump of a large table holds neither the event
// loop nor the client's output buffer for long: handle() writes the answer up to its package
// list, continue_dump() the packages of the next slots and, after the last slot, the answer's
// end. Each package is read consistently; writes served between slices may or may not show.
struct DumpCursor {
  bool active = false;          // the answer is open: more packages or its end to come
  std::uint32_t next_slot = 0;  // first slot not yet read
  bool any = false;             // a package has been written (the next needs a comma)
};

// The connection a request came on, for the ops that outlive one answer (register, drain).
struct Session {
  std::uint64_t conn = 0;   // the server's connection id
  int received_fd = -1;     // a descriptor passed with the request (SCM_RIGHTS); register takes it
  bool registered = false;  // set by register: from now on the connection carries wake-up bytes only
  bool waiting = false;     // set by a drain: its answer comes later, from Registry::take_answers()
};

class Registry;

class Protocol {
 public:
  // `connections` (may be null) is read by dump; it must outlive the protocol.
  explicit Protocol(Store& store, ProtocolOptions options = {}, const ConnectionStats* connections = nullptr);
  ~Protocol();
  Protocol(const Protocol&) = delete;
  Protocol& operator=(const Protocol&) = delete;

  void configure(ProtocolOptions options) noexcept { options_ = std::move(options); }
  const ProtocolOptions& options() const noexcept { return options_; }

  // Handles one request line (without its '\n'; a trailing '\r' is ignored) from `peer`; a write
  // is done only if the allow-list admits the peer. Appends exactly one answer line, ending in
  // '\n', to `out`.
  // With `dump` given, a dump's packages are left to continue_dump() (dump->active is set).
  // With `session` given (a server connection), register, drain, update/delete with drain_ms work.
  void handle(std::string_view line, const Peer& peer, std::string& out, DumpCursor* dump = nullptr,
              Session* session = nullptr) noexcept;
  // The registry of workers and drains (may stay null: those ops then answer unavailable).
  void set_registry(Registry* registry) noexcept { registry_ = registry; }
  // Packages a followed cluster store owns: local writes to them (update, update_settings, event,
  // delete) are refused with owned_by_etcd while options().etcd_owns. Unset: nothing is owned.
  void set_owner_check(OwnerCheck owned) { owned_ = std::move(owned); }
  // Appends the packages in the next `slots` slots; after the last slot, ends the answer and
  // clears dump.active. False when out of memory: half an answer cannot be taken back, so the
  // caller must close the connection.
  [[nodiscard]] bool continue_dump(DumpCursor& dump, std::string& out, std::uint32_t slots) noexcept;

  // Answers a line refused before it was complete (line_too_long): a request and an error.
  void refuse_line(std::string& out, std::string_view message) noexcept;
  // Answers a connection refused before its first request (too_many_clients): an error only.
  void refuse_client(std::string& out, std::string_view message) noexcept;

  const RequestStats& stats() const noexcept { return stats_; }

 private:
  void append_error(std::string& out, std::string_view id, std::string_view code, std::string_view message) noexcept;

  Store& store_;
  ProtocolOptions options_;
  const ConnectionStats* connections_;
  Registry* registry_ = nullptr;
  OwnerCheck owned_;
  RequestStats stats_;
  std::string audit_line_;  // the audit line being written, kept between requests
  struct Parser;
  std::unique_ptr<Parser> parser_;  // kept between requests (protocol.cpp)
};

}  // namespace pkgctx::daemon
