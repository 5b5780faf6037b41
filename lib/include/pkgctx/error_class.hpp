// pkgctx/error_class.hpp — what a caller should do about an error, from the one error table
// (lib/src/error.cpp, which also gives pkgctx_errname / pkgctx_strerror): pkgctl's exit codes
// and the daemon's answers follow it.
#pragma once

#include "pkgctx/error.hpp"

#include <optional>
#include <string_view>

namespace pkgctx {

enum class ErrorClass {
  ok,           // not an error
  rejected,     // the input was refused; nothing changed
  missing,      // no such package
  unavailable,  // the segment, the daemon or the system could not serve it
};
ErrorClass error_class(Errc e) noexcept;
// The code of a name (errc_name's inverse); nullopt for a name that is not a pkgctx code.
std::optional<Errc> errc_from_name(std::string_view name) noexcept;

}  // namespace pkgctx
