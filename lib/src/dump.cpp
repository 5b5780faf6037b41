#include "pkgctx/dump.hpp"

#include <cinttypes>
#include <cstdio>

namespace pkgctx {

std::string_view state_name(layout::State s) noexcept {
  switch (s) {
    case layout::State::kInitialising: return "initialising";
    case layout::State::kLive: return "live";
    case layout::State::kRetired: return "retired";
  }
  return "unknown";
}

std::string_view daemon_state_name(layout::DaemonState s) noexcept {
  switch (s) {
    case layout::DaemonState::kNone: return "none";
    case layout::DaemonState::kRunning: return "running";
    case layout::DaemonState::kStopped: return "stopped";
  }
  return "unknown";
}

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

}  // namespace pkgctx
