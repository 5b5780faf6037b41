// pkgctx/dump.hpp — the values both dumps print alike: pkgctxd's {"op":"dump"} answer and
// `pkgctl dump` (table and --json). The two JSON shapes themselves differ on purpose (see
// daemon/README.md and tools/README.md); these are the words and numbers they share.
#pragma once

#include "pkgctx/layout.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace pkgctx {

// "initialising", "live", "retired".
std::string_view state_name(layout::State s) noexcept;
// "none", "running", "stopped".
std::string_view daemon_state_name(layout::DaemonState s) noexcept;
// 16 lowercase hex digits, zero-padded (epochs, fingerprints, checksums).
std::string hex16(std::uint64_t v);

}  // namespace pkgctx
