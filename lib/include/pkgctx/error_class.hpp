// pkgctx/error_class.hpp — what a caller should do about an error, from the one error table
// (lib/src/error.cpp, which also gives pkgctx_errname / pkgctx_strerror): pkgctl's exit codes,
// its one-line fix suggestions and the daemon's answers follow it.
#pragma once

#include "pkgctx/error.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace pkgctx {

enum class ErrorClass {
  ok,               // not an error
  rejected,         // the input was refused; nothing changed
  missing,          // no such package
  unavailable,      // the segment, the daemon or the system could not serve it; nothing changed
  outcome_unknown,  // a write was sent and no answer came: it may or may not have been applied
  forbidden,        // the daemon refused the write for this peer (allow-list)
};
ErrorClass error_class(Errc e) noexcept;
// The class of an error code as the daemon or pkgctl spells it: a core code (errc_name) or one of
// the protocol's and client's own codes (bad_request, line_too_long, forbidden, too_many_clients,
// internal_error, wrong_segment, outcome_unknown). An unknown name is `unavailable`.
ErrorClass error_class(std::string_view code) noexcept;
// The code of a name (errc_name's inverse); nullopt for a name that is not a core pkgctx code.
std::optional<Errc> errc_from_name(std::string_view name) noexcept;

// Codes that exist only on the wire (the daemon's protocol, or the client side of it).
namespace wire {
inline constexpr std::string_view kWrongSegment = "wrong_segment";      // request named another segment
inline constexpr std::string_view kOutcomeUnknown = "outcome_unknown";  // sent, no answer (client side)
}  // namespace wire

// Where an error happened, for the fix a message suggests.
struct HintContext {
  std::string_view segment;  // the segment the caller named
  std::string_view socket;   // the daemon's socket the caller used
};
// The fix to suggest for `code`, e.g. "is pkgctxd running with --segment web?"; empty if none.
std::string error_hint(std::string_view code, const HintContext& where);

}  // namespace pkgctx
