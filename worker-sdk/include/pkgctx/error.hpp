// pkgctx/error.hpp — the one error vocabulary of pkgctx (installed with the worker SDK).
//
// Every fallible call returns `Result<T>`: a value, or an `Error` carrying a stable code (`Errc`,
// numbered as the C API's PKGCTX_* codes and the control protocol's error codes) and a one-line
// message that names what was wrong ("name \"a b\": byte ' ' at 1 is not in [A-Za-z0-9._-]").
// Nothing in pkgctx throws across its API.
//
// Header-only: the names and descriptions come from the library's one table through the C API
// (pkgctx_errname, pkgctx_strerror), so no C++ type crosses the shared library's boundary.
#pragma once

#include "pkgctx.h"

#include <boost/system/result.hpp>

#include <string>
#include <string_view>
#include <system_error>

namespace pkgctx {

enum class Errc : int {
  ok = PKGCTX_OK,
  // Input rejected (nothing changed).
  invalid_name = PKGCTX_INVALID_NAME,
  invalid_version = PKGCTX_INVALID_VERSION,
  invalid_settings = PKGCTX_INVALID_SETTINGS,     // not a JSON object, bad JSON, lone surrogate, …
  settings_too_large = PKGCTX_SETTINGS_TOO_LARGE, // canonical form over the configured limit
  invalid_event = PKGCTX_INVALID_EVENT,           // not 0..7
  invalid_token = PKGCTX_INVALID_TOKEN,           // garbled, forged, or from another segment
  invalid_cause = PKGCTX_INVALID_CAUSE,           // a cause name not [a-z][a-z0-9_]{0,31}
  invalid_maintenance = PKGCTX_INVALID_MAINTENANCE,  // not ≤ 64 bytes of [A-Za-z0-9._-]
  // State.
  no_such_package = PKGCTX_NO_SUCH_PACKAGE,
  table_full = PKGCTX_TABLE_FULL,        // every package slot is in use
  settings_full = PKGCTX_SETTINGS_FULL,  // the settings area has no room for these bytes
  too_many_causes = PKGCTX_TOO_MANY_CAUSES,  // the segment's caller-named cause table is full
  owned_by_etcd = PKGCTX_OWNED_BY_ETCD,      // a local write to a package the daemon follows from etcd
  // Segment.
  segment_missing = PKGCTX_SEGMENT_MISSING,      // no shared-memory object of that name
  segment_foreign = PKGCTX_SEGMENT_FOREIGN,      // not a pkgctx segment (bad magic, impossible sizes)
  segment_version = PKGCTX_SEGMENT_VERSION,      // a pkgctx segment of another layout version or ABI
  segment_truncated = PKGCTX_SEGMENT_TRUNCATED,  // shorter than its header says
  segment_not_ready = PKGCTX_SEGMENT_NOT_READY,  // being created; try again shortly
  segment_retired = PKGCTX_SEGMENT_RETIRED,      // replaced by a newer segment; re-attach
  segment_exists = PKGCTX_SEGMENT_EXISTS,
  permission_denied = PKGCTX_PERMISSION_DENIED,
  // Other.
  timed_out = PKGCTX_TIMED_OUT,
  io_error = PKGCTX_IO_ERROR,
  daemon_unreachable = PKGCTX_DAEMON_UNREACHABLE,
  busy = PKGCTX_BUSY,
  untrusted_segment = PKGCTX_UNTRUSTED_SEGMENT,
  corrupt = PKGCTX_CORRUPT,
};

// Stable, lowercase, snake_case name of a code ("no_such_package"): used in the control protocol.
inline std::string_view errc_name(Errc e) noexcept { return pkgctx_errname(static_cast<int>(e)); }
// One-line description ("no such package").
inline std::string_view errc_description(Errc e) noexcept { return pkgctx_strerror(static_cast<int>(e)); }

inline const std::error_category& error_category() noexcept {
  struct Category final : std::error_category {
    const char* name() const noexcept override { return "pkgctx"; }
    std::string message(int ev) const override { return pkgctx_errname(ev); }
  };
  static const Category c;
  return c;
}
inline std::error_code make_error_code(Errc e) noexcept { return {static_cast<int>(e), error_category()}; }

struct Error {
  Errc code = Errc::ok;
  std::string message;

  Error() = default;
  Error(Errc c, std::string msg) : code(c), message(std::move(msg)) {}
};

// Lets boost::system::result<T, Error>::value() throw a meaningful exception if misused.
[[noreturn]] inline void throw_exception_from_error(const Error& e, const boost::source_location&) {
  throw std::system_error(make_error_code(e.code), e.message);
}

template <class T = void>
using Result = boost::system::result<T, Error>;

inline Error make_error(Errc c, std::string msg) { return Error{c, std::move(msg)}; }

}  // namespace pkgctx

template <>
struct std::is_error_code_enum<pkgctx::Errc> : std::true_type {};
