// pkgctx/dump.hpp — the one dump schema (docs/dump.schema.json, docs/design.md § Dump): pkgctxd's
// {"op":"dump"} answer and `pkgctl dump --json` are written by these functions, so both print the
// same field names and shapes. The daemon adds its own counters to the "daemon" object after
// write_dump_daemon() (the schema lists them as optional).
#pragma once

#include "pkgctx/json_writer.hpp"
#include "pkgctx/layout.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"

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

// The "segment" object's members (the caller opens and closes the object).
void write_dump_segment(JsonWriter& w, const SegmentInfo& i);
// How long ago the daemon's last heartbeat was, at CLOCK_MONOTONIC `mono_now_ns` (0 when none).
std::uint64_t heartbeat_age_ns(const SegmentInfo& i, std::uint64_t mono_now_ns) noexcept;
// The "daemon" object's members every dump has; liveness and heartbeat age are the caller's,
// judged at one instant. The caller opens the object, may add its own members, and closes it.
void write_dump_daemon(JsonWriter& w, const SegmentInfo& i, Liveness live, std::uint64_t heartbeat_age_ns);
// One element of "packages", a whole object.
void write_dump_package(JsonWriter& w, const PackageRecord& p);

}  // namespace pkgctx
