// pkgctx/bounded_file.hpp — reading a file argument (settings, config) that may be hostile.
//
// A file named on a command line or in a config is input like any other (DESIGN.md §4.1 "Bad
// files are input too"): a directory, a device such as /dev/zero, a FIFO or a file larger than
// the caller's bound is refused with one clear line, within a bounded read, and never waited on.
#pragma once

#include "pkgctx/error.hpp"

#include <cstddef>
#include <iosfwd>
#include <string>
#include <string_view>

namespace pkgctx {

// The text of the regular file at `path`, read through the descriptor it was opened with and at
// most `max` bytes of it. /dev/null reads as empty (the usual way to say "no file"). Errors
// (io_error; the message is "cannot read <what> <path>: <why>", e.g. "cannot read settings file
// /tmp: a directory, not a regular file"):
//   - absent or unreadable (the errno text);
//   - a directory, a device, a FIFO or a socket (refused without reading or waiting);
//   - larger than `max` bytes (refused on its size, before reading it, when the size is known);
//   - a read error (e.g. /proc/self/mem).
Result<std::string> read_bounded_file(const std::string& path, std::size_t max, std::string_view what);

// At most `max` bytes of `in` up to its end (e.g. stdin for "-"); io_error beyond that bound,
// naming `what`.
Result<std::string> read_bounded_stream(std::istream& in, std::size_t max, std::string_view what);

}  // namespace pkgctx
