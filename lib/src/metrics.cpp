#include "pkgctx/metrics.hpp"

#include "pkgctx/dump.hpp"

#include <charconv>

namespace pkgctx {

namespace {

std::string_view type_name(MetricsWriter::Type t) {
  switch (t) {
    case MetricsWriter::Type::gauge: return "gauge";
    case MetricsWriter::Type::counter: return "counter";
    case MetricsWriter::Type::histogram: return "histogram";
    case MetricsWriter::Type::info: return "info";
    case MetricsWriter::Type::stateset: return "stateset";
  }
  return "unknown";
}

// OpenMetrics escapes backslash, double quote and line feed in HELP text and label values.
void append_escaped(std::string& out, std::string_view s) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

std::string format_double(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);  // 0.0001, not 1e-04
  return std::string(buf, r.ptr);
}

}  // namespace

std::string format_seconds(std::uint64_t ns) { return format_double(static_cast<double>(ns) / 1e9); }

MetricsWriter& MetricsWriter::family(std::string_view name, Type type, std::string_view help, std::string_view unit) {
  family_ = name;
  out_.append("# TYPE ").append(name).append(" ").append(type_name(type)).append("\n");
  if (!unit.empty()) out_.append("# UNIT ").append(name).append(" ").append(unit).append("\n");
  out_.append("# HELP ").append(name).append(" ");
  append_escaped(out_, help);
  out_ += '\n';
  return *this;
}

void MetricsWriter::labels(std::initializer_list<Label> labels) {
  if (labels.size() == 0) return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out_ += ',';
    first = false;
    out_.append(k).append("=\"");
    append_escaped(out_, v);
    out_ += '"';
  }
  out_ += '}';
}

MetricsWriter& MetricsWriter::sample(std::string_view suffix, std::initializer_list<Label> l, std::uint64_t value) {
  out_.append(family_).append(suffix);
  labels(l);
  out_.append(" ").append(std::to_string(value)).append("\n");
  return *this;
}

MetricsWriter& MetricsWriter::sample(std::string_view suffix, std::initializer_list<Label> l, double value) {
  out_.append(family_).append(suffix);
  labels(l);
  out_.append(" ").append(format_double(value)).append("\n");
  return *this;
}

MetricsWriter& MetricsWriter::counter(std::string_view name, std::string_view help, std::uint64_t value,
                                      std::string_view unit) {
  return family(name, Type::counter, help, unit).sample("_total", {}, value);
}

MetricsWriter& MetricsWriter::gauge(std::string_view name, std::string_view help, std::uint64_t value,
                                    std::string_view unit) {
  return family(name, Type::gauge, help, unit).sample("", {}, value);
}

void write_segment_metrics(MetricsWriter& m, const SegmentInfo& i, std::uint64_t mono_now_ns,
                           std::uint64_t realtime_now_ns, const std::atomic<std::uint32_t>* waiter_counts) {
  const std::string layout = std::to_string(i.layout_version);
  const std::string epoch = hex16(i.epoch);
  m.family("pkgctx_segment", MetricsWriter::Type::info, "The segment served: name, layout version, epoch, state.")
      .sample("_info", {{"segment", i.name}, {"layout_version", layout}, {"epoch", epoch}, {"state", state_name(i.state)}},
              std::uint64_t{1});
  m.gauge("pkgctx_packages", "Packages in the table (removed ones included until deleted).", std::uint64_t{i.used});
  m.gauge("pkgctx_segment_capacity", "Package slots of the segment, fixed at creation.", std::uint64_t{i.capacity});
  m.gauge("pkgctx_segment_size_bytes", "Size of the shared-memory table.", i.total_bytes, "bytes");
  m.gauge("pkgctx_segment_settings_bytes", "Size of the settings area, fixed at creation.", i.settings_bytes, "bytes");
  m.gauge("pkgctx_segment_settings_used_bytes", "Bytes of the settings area in use.", i.settings_used, "bytes");
  m.counter("pkgctx_segment_commits", "Writes committed to the table since it was created.", i.commits);
  m.counter("pkgctx_segment_repairs", "Repairs after a writer died inside the critical section.", i.repairs);
  m.counter("pkgctx_segment_wakes", "Futex-wake syscalls writers made for sleepers on a cancelled slot.", i.wakes);

  const Liveness live = liveness(i);
  m.family("pkgctx_daemon_liveness", MetricsWriter::Type::stateset,
           "The daemon as the segment header records it: none (never attached), alive, stale (no heartbeat for "
           "3 intervals), stopped.");
  for (const Liveness l : {Liveness::none, Liveness::alive, Liveness::stale, Liveness::stopped})
    m.sample("", {{"pkgctx_daemon_liveness", liveness_name(l)}}, std::uint64_t{l == live});
  if (i.daemon_state != layout::DaemonState::kNone) {
    m.family("pkgctx_daemon_heartbeat_age_seconds", MetricsWriter::Type::gauge,
             "Time since the daemon's last heartbeat in the segment header.", "seconds")
        .sample("", {}, static_cast<double>(heartbeat_age_ns(i, mono_now_ns)) / 1e9);
    const std::uint64_t up =
        realtime_now_ns > i.daemon_start_realtime_ns ? realtime_now_ns - i.daemon_start_realtime_ns : 0;
    m.family("pkgctx_daemon_uptime_seconds", MetricsWriter::Type::gauge,
             "Time since the daemon attached to the segment (wall clock).", "seconds")
        .sample("", {}, static_cast<double>(up) / 1e9);
  }
  if (waiter_counts) {
    std::uint64_t waiters = 0;
    for (std::uint32_t s = 0; s < i.capacity; ++s) waiters += waiter_counts[s].load(std::memory_order_relaxed);
    m.gauge("pkgctx_waiters",
            "Registered workers asleep in a blocking wait, as the daemon counts them (summed over every slot).",
            waiters);
  }
}

}  // namespace pkgctx
