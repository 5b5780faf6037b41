// pkgctx/error.hpp — the one error vocabulary of pkgctx.
//
// Every fallible call returns `Result<T>`: a value, or an `Error` carrying a stable code (`Errc`,
// numbered so the C API and the control protocol can pass it on unchanged) and a one-line message
// that names what was wrong ("name \"a b\": byte ' ' at 1 is not in [A-Za-z0-9._-]").
// Nothing in pkgctx throws across its API; Boost exceptions are translated at the boundary.
#pragma once

#include <boost/system/result.hpp>

#include <string>
#include <string_view>
#include <system_error>

namespace pkgctx {

enum class Errc : int {
  ok = 0,
  // Input rejected (nothing changed).
  invalid_name = 1,
  invalid_version = 2,
  invalid_settings = 3,   // not a JSON object, bad JSON, lone surrogate, duplicate key, …
  settings_too_large = 4, // canonical form over the configured limit
  invalid_event = 5,      // not 0..7
  invalid_token = 6,      // garbled, forged, or from another segment
  // State.
  no_such_package = 10,
  table_full = 11,    // every package slot is in use
  settings_full = 12, // the settings area has no room for these bytes
  // Segment.
  segment_missing = 20,   // no shared-memory object of that name
  segment_foreign = 21,   // not a pkgctx segment (bad magic, impossible sizes)
  segment_version = 22,   // a pkgctx segment of another layout version or ABI
  segment_truncated = 23, // shorter than its header says
  segment_not_ready = 24, // being created; try again shortly
  segment_retired = 25,   // replaced by a newer segment; re-attach
  segment_exists = 26,
  permission_denied = 27,
  // Other.
  timed_out = 30,
  io_error = 31,
  daemon_unreachable = 32,
  busy = 33,
};

const std::error_category& error_category() noexcept;
inline std::error_code make_error_code(Errc e) noexcept { return {static_cast<int>(e), error_category()}; }
// Stable, lowercase, snake_case name of a code ("no_such_package"): used in the control protocol.
std::string_view errc_name(Errc e) noexcept;

struct Error {
  Errc code = Errc::ok;
  std::string message;

  Error() = default;
  Error(Errc c, std::string msg) : code(c), message(std::move(msg)) {}
};

// Lets boost::system::result<T, Error>::value() throw a meaningful exception if misused.
[[noreturn]] void throw_exception_from_error(const Error& e, const boost::source_location& loc);

template <class T = void>
using Result = boost::system::result<T, Error>;

inline Error make_error(Errc c, std::string msg) { return Error{c, std::move(msg)}; }

}  // namespace pkgctx

template <>
struct std::is_error_code_enum<pkgctx::Errc> : std::true_type {};
