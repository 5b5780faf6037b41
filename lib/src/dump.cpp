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


void write_dump_segment(JsonWriter& w, const SegmentInfo& i) {
  w.key("name").str(i.name);
  w.key("layout_version").num(std::uint64_t{i.layout_version});
  w.key("abi_fingerprint").str(hex16(i.abi_fingerprint));
  w.key("epoch").str(hex16(i.epoch));
  w.key("state").str(state_name(i.state));
  w.key("total_bytes").num(i.total_bytes);
  w.key("capacity").num(std::uint64_t{i.capacity});
  w.key("used").num(std::uint64_t{i.used});
  w.key("settings_bytes").num(i.settings_bytes);
  w.key("settings_used").num(i.settings_used);
  w.key("commits").num(i.commits);
  w.key("repairs").num(i.repairs);
  w.key("wakes").num(i.wakes);
  w.key("limits").begin_object();
  w.key("max_name").num(std::uint64_t{i.max_name});
  w.key("max_version").num(std::uint64_t{i.max_version});
  w.key("max_settings").num(i.max_settings);
  w.end_object();
  w.key("created_realtime_ns").num(i.created_realtime_ns);
  w.key("follow_revision").num(i.follow_revision);
}

std::uint64_t heartbeat_age_ns(const SegmentInfo& i, std::uint64_t mono_now_ns) noexcept {
  if (i.daemon_state == layout::DaemonState::kNone || mono_now_ns <= i.heartbeat_mono_ns) return 0;
  return mono_now_ns - i.heartbeat_mono_ns;
}

void write_dump_daemon(JsonWriter& w, const SegmentInfo& i, Liveness live, std::uint64_t heartbeat_age) {
  const bool attached = i.daemon_state != layout::DaemonState::kNone;
  w.key("state").str(daemon_state_name(i.daemon_state));
  w.key("liveness").str(liveness_name(live));
  // No daemon ever attached: there is no pid and no heartbeat to be old.
  if (attached) {
    w.key("pid").num(std::int64_t{i.daemon_pid});
    w.key("heartbeat_age_ns").num(heartbeat_age);
  } else {
    w.key("pid").null();
    w.key("heartbeat_age_ns").null();
  }
  w.key("heartbeat_interval_ns").num(i.heartbeat_interval_ns);
  w.key("started_realtime_ns").num(i.daemon_start_realtime_ns);
}

void write_dump_package(JsonWriter& w, const PackageRecord& p) {
  w.begin_object();
  w.key("name").str(p.name);
  w.key("version").str(p.version);
  w.key("checksum").str(hex16(p.checksum));
  w.key("settings_size").num(p.settings_size);
  w.key("settings_version").num(p.settings_version);
  w.key("maintenance").str(p.maintenance);
  w.key("slot").num(std::uint64_t{p.slot});
  w.key("root_generation").num(p.root_generation);
  // Keyed by event key ("2".."7"), so a program reads the key it sends events for.
  w.key("child_generations").begin_object();
  for (std::uint32_t k = 0; k < layout::kChildKeys; ++k)
    w.key(std::to_string(k + layout::kFirstChildKey)).num(p.child_generations[k]);
  w.end_object();
  if (p.last_cause == Cause::kNone)
    w.key("last_cause").null();
  else
    w.key("last_cause").str(p.last_cause_name.empty() ? cause_name(p.last_cause) : std::string_view(p.last_cause_name));
  w.end_object();
}

}  // namespace pkgctx
