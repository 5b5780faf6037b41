// pkgctx/types.hpp — events, cancellation causes and daemon liveness (installed with the worker
// SDK; the core uses the same definitions). Header-only, numbered as the C API's constants.
#pragma once

#include "pkgctx.h"

#include <cstdint>
#include <string_view>

namespace pkgctx {

// Event numbers (DESIGN.md §2). Keys 2..7 are child keys.
enum Event : int { kEventUpdate = PKGCTX_EVENT_UPDATE, kEventRemove = PKGCTX_EVENT_REMOVE, kEventSchedule = PKGCTX_EVENT_SCHEDULE };
inline constexpr int kMaxEvent = 7;
inline constexpr bool is_root_event(int e) noexcept { return e == kEventUpdate || e == kEventRemove; }
inline constexpr bool is_valid_event(int e) noexcept { return e >= 0 && e <= kMaxEvent; }

// Why a token was cancelled (stored in the segment: one byte per generation).
enum class Cause : std::uint8_t {
  kNone = PKGCTX_CAUSE_NONE,
  kVersionChanged = PKGCTX_CAUSE_VERSION_CHANGED,  // Update with a new version (or re-create after remove)
  kUpdateEvent = PKGCTX_CAUSE_UPDATE_EVENT,        // HandleEvent(update)
  kRemoved = PKGCTX_CAUSE_REMOVED,                 // HandleEvent(remove)
  kRescheduled = PKGCTX_CAUSE_RESCHEDULED,         // HandleEvent(k>=2) replaced this child
  kDeleted = PKGCTX_CAUSE_DELETED,                 // Delete
  kSegmentRetired = PKGCTX_CAUSE_SEGMENT_RETIRED,  // the daemon replaced the whole segment
  kNamed = PKGCTX_CAUSE_NAMED,                     // a cause the caller named: Token::cause_text()
};

// "version_changed", "update_event", "removed", "rescheduled", "deleted", "segment_retired";
// "named" for a caller-named cause (its text: Token::cause_text()); "none" for kNone (and
// anything unknown).
constexpr std::string_view cause_name(Cause c) noexcept {
  switch (c) {
    case Cause::kNone: return "none";
    case Cause::kVersionChanged: return "version_changed";
    case Cause::kUpdateEvent: return "update_event";
    case Cause::kRemoved: return "removed";
    case Cause::kRescheduled: return "rescheduled";
    case Cause::kDeleted: return "deleted";
    case Cause::kSegmentRetired: return "segment_retired";
    case Cause::kNamed: return "named";
  }
  return "none";
}
// Parses a cause name; kNone for an unknown one.
constexpr Cause cause_from_name(std::string_view name) noexcept {
  for (int c = PKGCTX_CAUSE_VERSION_CHANGED; c <= PKGCTX_CAUSE_SEGMENT_RETIRED; ++c)
    if (cause_name(static_cast<Cause>(c)) == name) return static_cast<Cause>(c);
  return Cause::kNone;
}

// The owning daemon, as the segment header tells.
enum class Liveness {
  none = PKGCTX_DAEMON_NONE,        // no daemon ever attached
  alive = PKGCTX_DAEMON_ALIVE,      // running, heartbeat fresh
  stale = PKGCTX_DAEMON_STALE,      // running per the header, but no heartbeat for 3 intervals (hung or killed)
  stopped = PKGCTX_DAEMON_STOPPED,  // stopped cleanly
};
constexpr std::string_view liveness_name(Liveness l) noexcept {
  switch (l) {
    case Liveness::none: return "none";
    case Liveness::alive: return "alive";
    case Liveness::stale: return "stale";
    case Liveness::stopped: return "stopped";
  }
  return "unknown";
}

}  // namespace pkgctx
