// The one error table: name, description, class and suggested fix of every code. The C API's
// pkgctx_errname / pkgctx_strerror live here (exported by libpkgctx.so), so the C++ header, the C
// API, pkgctl's exit codes and messages and the daemon's answers all read the same rows.
#include "pkgctx/error_class.hpp"

namespace pkgctx {
namespace {

struct Row {
  Errc code;
  const char* name;
  const char* description;
  ErrorClass cls;
};

// The codes that only travel on the wire (no Errc, no C API number), and the fix each suggests.
// {segment} and {socket} in a hint stand for the caller's segment name and socket path.
struct WireRow {
  std::string_view name;
  ErrorClass cls;
};

constexpr WireRow kWire[] = {
    {"bad_request", ErrorClass::rejected},      // the daemon's: malformed or mistyped request
    {"line_too_long", ErrorClass::rejected},    // the daemon's: request line over its limit
    {"forbidden", ErrorClass::forbidden},       // the daemon's: write by a peer off the allow-list
    {"too_many_clients", ErrorClass::unavailable},
    {"internal_error", ErrorClass::unavailable},  // nothing changed
    {wire::kWrongSegment, ErrorClass::rejected},
    {wire::kOutcomeUnknown, ErrorClass::outcome_unknown},
};

struct Hint {
  std::string_view code;
  std::string_view text;
};

constexpr Hint kHints[] = {
    {"segment_missing", "is pkgctxd running with --segment {segment}?"},
    {"permission_denied", "reading the segment needs its group: ask for membership or run as its user"},
    {"daemon_unreachable", "is pkgctxd running? try --socket"},
    {"too_many_clients", "try again later, or raise max_clients in pkgctxd's config"},
    {"wrong_segment", "use --socket of the daemon that serves {segment}, or --segment of the daemon at {socket}"},
    {"outcome_unknown", "check with pkgctl settings or pkgctl dump before retrying"},
    {"owned_by_etcd", "change the package's key under the daemon's etcd prefix, or set etcd_owns = false"},
};

constexpr Row kTable[] = {
    {Errc::ok, "ok", "success", ErrorClass::ok},
    {Errc::invalid_name, "invalid_name", "invalid name (1..128 bytes of [A-Za-z0-9._-])", ErrorClass::rejected},
    {Errc::invalid_version, "invalid_version", "invalid version (1..128 printable ASCII bytes)", ErrorClass::rejected},
    {Errc::invalid_settings, "invalid_settings", "invalid settings or checksum", ErrorClass::rejected},
    {Errc::settings_too_large, "settings_too_large", "settings too large", ErrorClass::rejected},
    {Errc::invalid_event, "invalid_event", "invalid event (not 0..7)", ErrorClass::rejected},
    {Errc::invalid_token, "invalid_token", "invalid token (garbled, forged, or from another segment)", ErrorClass::rejected},
    {Errc::invalid_cause, "invalid_cause", "invalid cause name ([a-z][a-z0-9_]{0,31})", ErrorClass::rejected},
    {Errc::invalid_maintenance, "invalid_maintenance", "invalid maintenance mode (0..64 bytes of [A-Za-z0-9._-])", ErrorClass::rejected},
    {Errc::too_many_causes, "too_many_causes", "too many distinct cause names in this segment", ErrorClass::rejected},
    {Errc::owned_by_etcd, "owned_by_etcd", "package owned by etcd (write its key there)", ErrorClass::rejected},
    {Errc::no_such_package, "no_such_package", "no such package", ErrorClass::missing},
    {Errc::table_full, "table_full", "package table full", ErrorClass::rejected},
    {Errc::settings_full, "settings_full", "settings area full", ErrorClass::rejected},
    {Errc::segment_missing, "segment_missing", "segment missing (is the daemon running?)", ErrorClass::unavailable},
    {Errc::segment_foreign, "segment_foreign", "not a pkgctx segment", ErrorClass::unavailable},
    {Errc::segment_version, "segment_version", "segment of another layout version (upgrade the SDK)", ErrorClass::unavailable},
    {Errc::segment_truncated, "segment_truncated", "segment truncated", ErrorClass::unavailable},
    {Errc::segment_not_ready, "segment_not_ready", "segment being created (try again)", ErrorClass::unavailable},
    {Errc::segment_retired, "segment_retired", "segment retired (try again)", ErrorClass::unavailable},
    {Errc::segment_exists, "segment_exists", "segment exists", ErrorClass::unavailable},
    {Errc::permission_denied, "permission_denied", "permission denied", ErrorClass::unavailable},
    {Errc::timed_out, "timed_out", "timed out", ErrorClass::unavailable},
    {Errc::io_error, "io_error", "I/O or internal error", ErrorClass::unavailable},
    {Errc::daemon_unreachable, "daemon_unreachable", "daemon unreachable", ErrorClass::unavailable},
    {Errc::busy, "busy", "busy (a writer died mid-write; try again)", ErrorClass::unavailable},
    {Errc::untrusted_segment, "untrusted_segment", "untrusted segment (writable by another user, or a symlink)",
     ErrorClass::unavailable},
    {Errc::corrupt, "corrupt", "corrupt segment contents", ErrorClass::unavailable},
};

const Row* row(int code) noexcept {
  for (const Row& r : kTable)
    if (static_cast<int>(r.code) == code) return &r;
  return nullptr;
}

}  // namespace

ErrorClass error_class(Errc e) noexcept {
  const Row* r = row(static_cast<int>(e));
  return r ? r->cls : ErrorClass::unavailable;
}

std::optional<Errc> errc_from_name(std::string_view name) noexcept {
  for (const Row& r : kTable)
    if (name == r.name) return r.code;
  return std::nullopt;
}

ErrorClass error_class(std::string_view code) noexcept {
  if (const auto e = errc_from_name(code)) return error_class(*e);
  for (const WireRow& r : kWire)
    if (code == r.name) return r.cls;
  return ErrorClass::unavailable;
}

std::string error_hint(std::string_view code, const HintContext& where) {
  for (const Hint& h : kHints) {
    if (code != h.code) continue;
    std::string out;
    for (std::size_t i = 0; i < h.text.size();) {
      if (h.text.substr(i).starts_with("{segment}")) {
        out += where.segment;
        i += 9;
      } else if (h.text.substr(i).starts_with("{socket}")) {
        out += where.socket;
        i += 8;
      } else {
        out += h.text[i++];
      }
    }
    return out;
  }
  return {};
}

}  // namespace pkgctx

extern "C" {

const char* pkgctx_errname(int code) {
  const pkgctx::Row* r = pkgctx::row(code);
  return r ? r->name : "unknown";
}

const char* pkgctx_strerror(int code) {
  const pkgctx::Row* r = pkgctx::row(code);
  return r ? r->description : "unknown pkgctx error code";
}

}  // extern "C"
