// pkgctx/metrics.hpp — OpenMetrics text exposition (OpenMetrics 1.0, the Prometheus text format's
// successor): what pkgctxd's {"op":"metrics"} answer carries and `pkgctl metrics` prints.
//
// A family is opened with its TYPE, UNIT and HELP lines, then its samples follow; the text ends
// with "# EOF". Every family name starts with "pkgctx_". The segment's own families come from
// write_segment_metrics(), so the daemon and pkgctl (when the daemon is unreachable and only the
// segment can be read) print them alike.
#pragma once

#include "pkgctx/segment.hpp"

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace pkgctx {

// The media type of the text, for whoever serves it over HTTP.
inline constexpr std::string_view kOpenMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8";

class MetricsWriter {
 public:
  enum class Type { gauge, counter, histogram, info, stateset };
  using Label = std::pair<std::string_view, std::string_view>;

  explicit MetricsWriter(std::string& out) : out_(out) {}

  // Opens family `name` (no "_total" suffix: counters get it on their samples). A `unit` is
  // given only when `name` ends in "_<unit>", as OpenMetrics requires.
  MetricsWriter& family(std::string_view name, Type type, std::string_view help, std::string_view unit = {});
  // One sample of the open family: its name plus `suffix` ("_total", "_bucket", "_info", …).
  // Label values are escaped; names are the caller's constants.
  MetricsWriter& sample(std::string_view suffix, std::initializer_list<Label> labels, std::uint64_t value);
  MetricsWriter& sample(std::string_view suffix, std::initializer_list<Label> labels, double value);
  // A counter's one unlabelled sample, a gauge's one unlabelled sample.
  MetricsWriter& counter(std::string_view name, std::string_view help, std::uint64_t value, std::string_view unit = {});
  MetricsWriter& gauge(std::string_view name, std::string_view help, std::uint64_t value, std::string_view unit = {});
  // Ends the exposition.
  void eof() { out_ += "# EOF\n"; }

 private:
  void labels(std::initializer_list<Label> labels);
  std::string& out_;
  std::string family_;
};

// Seconds with nanosecond precision, shortest round-trip form ("0.25", "1e-06").
std::string format_seconds(std::uint64_t ns);

// The segment's families: identity (info), packages, capacity, settings bytes, commits, repairs,
// the daemon's liveness, heartbeat age and uptime as the header records them, and the workers
// sleeping in a wait (the sum of the waiters board, one word per slot: O(capacity), bounded by
// the segment's size; `waiter_counts` null when this process cannot map the board, and the
// family is left out).
void write_segment_metrics(MetricsWriter& m, const SegmentInfo& i, std::uint64_t mono_now_ns,
                           std::uint64_t realtime_now_ns, const std::atomic<std::uint32_t>* waiter_counts);

}  // namespace pkgctx
