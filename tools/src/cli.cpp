#include "pkgctl/cli.hpp"
#include "pkgctl/completion.hpp"

#include "batch.hpp"
#include "pkgctl/daemon_link.hpp"
#include "pkgctl/render.hpp"

#include "pkgctx/bounded_file.hpp"
#include "pkgctx/error_class.hpp"
#include "pkgctx/metrics.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"
#include "pkgctx/worker.hpp"

#include <CLI/CLI.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <istream>
#include <ostream>
#include <limits>
#include <optional>
#include <thread>

#ifndef PKGCTX_VERSION_STRING
#define PKGCTX_VERSION_STRING "unknown"
#endif

namespace pkgctl {

namespace {

namespace json = boost::json;
using pkgctx::Errc;

// A failed command: the exit code and the one line for stderr (without "pkgctl: ").
struct Failure {
  int code;
  std::string message;
};

// One line: newlines in messages (from the daemon, from files) become spaces.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

struct Common {
  std::string segment = "pkgctx";
  std::string socket = "/run/pkgctx/pkgctxd.sock";
  bool segment_explicit = false;  // given by --segment or PKGCTX_SEGMENT: writes name it too
  std::chrono::milliseconds timeout = std::chrono::seconds(10);  // each step of a daemon call
  bool timing = false;
  detail::BatchContext* batch = nullptr;  // in `pkgctl batch`: its connection and error record
};

// The message of an error, with the fix the one error table suggests for its code.
Failure failure(std::string_view code, std::string message, const Common& c) {
  if (c.batch) c.batch->last_code = code;
  const std::string hint = pkgctx::error_hint(code, {c.segment, c.socket});
  if (!hint.empty()) message += " (" + hint + ")";
  return {exit_code_for(code), std::move(message)};
}
Failure failure(const pkgctx::Error& e, const Common& c) { return failure(pkgctx::errc_name(e.code), e.message, c); }
Failure failure(const CallError& e, const Common& c) { return failure(e.code, e.message, c); }

// Opens the segment read-only; waits out "being created" for up to 2 s.
std::optional<Failure> open_view(const Common& c, pkgctx::View& out) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (;;) {
    auto v = pkgctx::View::open(c.segment);
    if (v) {
      out = std::move(*v);
      return std::nullopt;
    }
    if (v.error().code != Errc::segment_not_ready || std::chrono::steady_clock::now() >= deadline) {
      Failure f = failure(v.error(), c);
      f.code = kExitUnreachable;  // whatever is wrong with the segment, it cannot be read
      return f;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string json_string(std::string_view s) { return json::serialize(json::string(s)); }

// --- writes (through the daemon) ---------------------------------------------------------------

// Sends a request already serialised as one line.
std::optional<Failure> call_line(const Common& c, const std::string& req, json::object& answer, Io io) {
  CallTiming t;
  auto r = c.batch ? c.batch->link.call(req, c.timeout, &t) : call_daemon(c.socket, req, c.timeout, &t);
  if (c.timing && t.sent_realtime_ns) {
    io.err << "pkgctl: timing sent_realtime_ns=" << t.sent_realtime_ns
           << " answered_realtime_ns=" << t.answered_realtime_ns << '\n';
  }
  if (!r) return failure(r.error(), c);
  answer = std::move(*r);
  return std::nullopt;
}

// A request with the envelope every write carries: "segment" when the user named one, so that the
// daemon refuses (wrong_segment) a write meant for another segment than the one it serves.
json::object request(const Common& c, std::string_view op) {
  json::object req{{"op", op}};
  if (c.segment_explicit) req["segment"] = c.segment;
  return req;
}

std::optional<Failure> call(const Common& c, const json::object& req, json::object& answer, Io io) {
  return call_line(c, json::serialize(req), answer, io);
}

// Copies `key` from the answer (null when absent).
json::value field(const json::object& a, std::string_view key) {
  const auto* v = a.if_contains(key);
  return v ? *v : json::value(nullptr);
}

// The most settings text pkgctl reads (a file, stdin): 4 times the settings limit of the segment
// (its header says; the default limit if it cannot be read), room for pretty-printed JSON. A
// larger input could never be accepted, so it is refused before it is read whole.
std::size_t settings_input_bound(const Common& c) {
  std::size_t limit = pkgctx::Limits{}.max_settings;
  if (auto v = pkgctx::View::open(c.segment)) limit = std::max<std::size_t>(limit, v->segment().info().max_settings);
  return 4 * limit;
}

// A settings file argument ("-" for stdin), bounded: directories, devices, FIFOs and oversized
// files are input errors (exit 5), refused before anything is sent.
std::optional<Failure> read_settings_input(const Common& c, const std::string& path, std::istream& in,
                                           std::string& out) {
  auto text = path == "-" ? pkgctx::read_bounded_stream(in, settings_input_bound(c), "settings from stdin")
                          : pkgctx::read_bounded_file(path, settings_input_bound(c), "settings file");
  if (!text) return Failure{kExitRejected, text.error().message};
  out = std::move(*text);
  return std::nullopt;
}

pkgctx::Limits unlimited_settings() {
  pkgctx::Limits l;
  l.max_settings = std::numeric_limits<std::size_t>::max();  // the daemon enforces its own limit
  return l;
}

// The settings of --settings / --settings-file, canonical.
std::optional<Failure> settings_arg(const Common& c, const std::optional<std::string>& settings_json,
                                    const std::optional<std::string>& settings_file, Io io, std::string& canonical) {
  std::string text = "{}";
  if (settings_json) text = *settings_json;
  if (settings_file)
    if (auto f = read_settings_input(c, *settings_file, io.in, text)) return f;
  auto settings = pkgctx::Settings::parse(text, unlimited_settings());
  // The core's messages name the settings already ("settings must be a JSON object, …").
  if (!settings) return Failure{kExitRejected, settings.error().message};
  canonical = settings->canonical();
  return std::nullopt;
}

// A request whose "settings" is spliced in as canonical text: parsed into a json::value, its
// numbers would pass through Boost's decimal-to-double conversion, which is not correctly rounded
// (e.g. 123456789012345680000 came back as 1.2345678901234567E20), and the daemon would store
// and checksum a different number.
std::string with_settings(const json::object& fields, const std::string& canonical) {
  std::string req = json::serialize(fields);
  req.pop_back();  // the closing '}'
  req += ",\"settings\":" + canonical + '}';
  return req;
}

// The §2.1 options of `pkgctl update` (sent only when given).
struct UpdateFlags {
  std::optional<std::uint64_t> settings_version;
  std::optional<std::string> maintenance;
  bool force = false;
  std::optional<std::string> cause;
  std::optional<double> drain_s;
};

// --- tasks and drains (DESIGN §2.2) -------------------------------------------------------------

// A write that may wait for a drain of `drain_s` seconds: the answer may take that long on top
// of the usual call timeout.
Common waiting_for(const Common& c, std::optional<double> drain_s) {
  Common w = c;
  if (drain_s) w.timeout += std::chrono::milliseconds(static_cast<long long>(std::ceil(*drain_s * 1000)));
  return w;
}

std::uint64_t drain_ms(double s) { return static_cast<std::uint64_t>(std::ceil(s * 1000)); }

// Adds "drained" and "holders" from a drain's answer; exit 124 when not drained.
std::optional<Failure> drained_result(const json::object& a, json::object& out) {
  out["drained"] = field(a, "drained");
  out["holders"] = field(a, "holders");
  const json::value d = field(a, "drained");
  if (d.is_bool() && d.get_bool()) return std::nullopt;
  const auto* h = a.if_contains("holders");
  return Failure{kExitTimedOut, "not drained: " + std::to_string(h && h->is_array() ? h->get_array().size() : 0) +
                                    " task(s) still hold a cancelled context"};
}

std::optional<Failure> cmd_drain(const Common& c, const std::string& name, const std::optional<std::string>& event,
                                 double timeout_s, Io io) {
  json::object req = request(c, "drain");
  req["name"] = name;
  if (event) {
    const auto parsed = pkgctx::parse_event(*event);
    if (!parsed) return failure(parsed.error(), c);
    req["event"] = *parsed;
  }
  req["timeout_ms"] = drain_ms(timeout_s);
  json::object a;
  if (auto f = call(waiting_for(c, timeout_s), req, a, io)) return f;
  json::object out{{"name", field(a, "name")}};
  auto f = drained_result(a, out);
  io.out << json::serialize(out) << '\n';
  return f;
}

std::optional<Failure> cmd_clients(const Common& c, bool as_json, Io io) {
  json::object a;
  if (auto f = call(c, request(c, "clients"), a, io)) return f;
  const json::value list = field(a, "clients");
  if (as_json) {
    io.out << json::serialize(json::object{{"clients", list}}) << '\n';
    return std::nullopt;
  }
  io.out << "PID      UID    COMMAND          SINCE                TASKS  CANCELLED  WAITS\n";
  if (!list.is_array()) return std::nullopt;
  for (const json::value& v : list.get_array()) {
    if (!v.is_object()) continue;
    const json::object& o = v.get_object();
    std::size_t tasks = 0, cancelled = 0;
    if (const auto* t = o.if_contains("tasks"); t && t->is_array()) {
      tasks = t->get_array().size();
      for (const json::value& l : t->get_array())
        if (l.is_object() && l.get_object().if_contains("cancelled") && l.get_object().at("cancelled") == true) ++cancelled;
    }
    // What it sleeps on: "name/key" of each wait, comma-separated.
    std::string waits;
    if (const auto* ws = o.if_contains("waits"); ws && ws->is_array()) {
      for (const json::value& x : ws->get_array()) {
        if (!x.is_object()) continue;
        const auto* n = x.get_object().if_contains("name");
        const auto* k = x.get_object().if_contains("key");
        if (!waits.empty()) waits += ',';
        waits += (n && n->is_string() ? one_line(std::string(n->get_string())) : std::string("?")) + "/" +
                 (k && k->is_number() ? std::to_string(k->to_number<long long>()) : std::string("?"));
      }
    }
    if (waits.empty()) waits = "-";
    char line[200];
    const auto num = [&](std::string_view k) -> long long {
      const auto* x = o.if_contains(k);
      return x && x->is_number() ? x->to_number<long long>() : -1;
    };
    const auto* comm = o.if_contains("comm");
    const std::string cm = comm && comm->is_string() ? one_line(std::string(comm->get_string())) : "?";
    const time_t since = static_cast<time_t>(num("since_realtime_ns") / 1'000'000'000);
    char when[32] = "?";
    if (tm t{}; ::localtime_r(&since, &t)) std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &t);
    std::snprintf(line, sizeof line, "%-8lld %-6lld %-16.16s %-20s %-6zu %-10zu ", num("pid"), num("uid"), cm.c_str(),
                  when, tasks, cancelled);
    io.out << line << waits << '\n';
  }
  return std::nullopt;
}

// The daemon's OpenMetrics text. When no daemon answers on the socket, the segment's own
// families (read straight from the table) still tell a textfile collector what the header
// knows, the daemon's liveness included; a note on stderr says the daemon's families are missing.
std::optional<Failure> cmd_metrics(const Common& c, Io io) {
  json::object a;
  auto f = call(c, request(c, "metrics"), a, io);
  if (!f) {
    const auto* text = a.if_contains("text");
    if (!text || !text->is_string())
      return Failure{kExitOutcomeUnknown, "pkgctxd at " + c.socket + " answered metrics without its text"};
    io.out << std::string_view(text->get_string());
    return std::nullopt;
  }
  if (f->code != kExitUnreachable) return f;
  pkgctx::View view;
  if (auto vf = open_view(c, view)) return Failure{vf->code, f->message + "; and " + vf->message};
  const pkgctx::Segment& seg = view.segment();
  std::string text;
  pkgctx::MetricsWriter m(text);
  pkgctx::write_segment_metrics(m, seg.info(), pkgctx::mono_now_ns(), pkgctx::realtime_now_ns(), seg.waiter_counts());
  m.eof();
  io.out << text;
  io.err << "pkgctl: " << one_line(f->message) << ": only the segment's metrics\n";
  return std::nullopt;
}

std::optional<Failure> cmd_update(const Common& c, const std::string& name, const std::string& version,
                                  const std::optional<std::string>& settings_json,
                                  const std::optional<std::string>& settings_file, const UpdateFlags& flags, Io io) {
  std::string canonical;
  if (auto f = settings_arg(c, settings_json, settings_file, io, canonical)) return f;
  json::object fields = request(c, "update");
  fields["name"] = name;
  fields["version"] = version;
  if (flags.settings_version) fields["settings_version"] = *flags.settings_version;
  if (flags.maintenance) fields["maintenance"] = *flags.maintenance;
  if (flags.force) fields["force"] = true;
  if (flags.cause) fields["cause"] = *flags.cause;
  if (flags.drain_s) fields["drain_ms"] = drain_ms(*flags.drain_s);
  const std::string req = with_settings(fields, canonical);
  json::object a;
  if (auto f = call_line(waiting_for(c, flags.drain_s), req, a, io)) return f;
  json::object out{{"name", field(a, "name")}, {"context", field(a, "context")}, {"change", field(a, "change")}};
  std::optional<Failure> f;
  if (flags.drain_s) f = drained_result(a, out);
  io.out << json::serialize(out) << '\n';
  return f;
}

std::optional<Failure> cmd_update_settings(const Common& c, const std::string& name,
                                           const std::optional<std::string>& settings_json,
                                           const std::optional<std::string>& settings_file,
                                           std::optional<std::uint64_t> settings_version, Io io) {
  if (!settings_json && !settings_file)
    return Failure{kExitUsage, "update-settings needs --settings JSON or --settings-file F"};
  std::string canonical;
  if (auto f = settings_arg(c, settings_json, settings_file, io, canonical)) return f;
  json::object fields = request(c, "update_settings");
  fields["name"] = name;
  if (settings_version) fields["settings_version"] = *settings_version;
  json::object a;
  if (auto f = call_line(c, with_settings(fields, canonical), a, io)) return f;
  io.out << json::serialize(json::object{{"name", field(a, "name")}, {"changed", field(a, "changed")}}) << '\n';
  return std::nullopt;
}

std::optional<Failure> cmd_event(const Common& c, const std::string& event, const std::string& name,
                                 const std::optional<std::string>& cause, Io io) {
  const auto parsed = pkgctx::parse_event(event);
  if (!parsed) return failure(parsed.error(), c);
  const int e = *parsed;
  static constexpr const char* kNames[] = {"update", "remove", "schedule"};
  json::object req = request(c, "event");
  req["name"] = name;
  if (e <= pkgctx::kEventSchedule)
    req["event"] = kNames[e];
  else
    req["event"] = e;
  if (cause) req["cause"] = *cause;
  json::object a;
  if (auto f = call(c, req, a, io)) return f;
  io.out << json::serialize(json::object{{"name", field(a, "name")}, {"context", field(a, "context")}}) << '\n';
  return std::nullopt;
}

std::optional<Failure> cmd_delete(const Common& c, const std::string& name, std::optional<double> drain_s, Io io) {
  json::object a;
  json::object req = request(c, "delete");
  req["name"] = name;
  if (drain_s) req["drain_ms"] = drain_ms(*drain_s);
  if (auto f = call(waiting_for(c, drain_s), req, a, io)) return f;
  json::object out{{"name", field(a, "name")}, {"deleted", field(a, "deleted")}, {"in_flight", field(a, "in_flight")}};
  if (const auto* r = a.if_contains("reason")) out["reason"] = *r;
  std::optional<Failure> f;
  if (drain_s && a.if_contains("drained")) f = drained_result(a, out);
  io.out << json::serialize(out) << '\n';
  return f;
}

// --- reads (straight from the segment) ----------------------------------------------------------

std::optional<Failure> cmd_need_update(const Common& c, const std::string& name, const std::string& version,
                                       const std::string& checksum, const std::optional<std::string>& maintenance,
                                       Io io) {
  auto sum = pkgctx::parse_checksum(checksum);
  if (!sum) return Failure{kExitRejected, "checksum: " + sum.error().message};
  pkgctx::View view;
  if (auto f = open_view(c, view)) return f;
  if (maintenance)
    if (auto v = pkgctx::validate_maintenance(*maintenance); !v) return failure(v.error(), c);
  auto r = view.need_update(name, version, *sum, maintenance);
  if (!r) return failure(r.error(), c);
  io.out << (*r ? "true" : "false") << '\n';
  return std::nullopt;
}

std::optional<Failure> cmd_settings(const Common& c, const std::string& name, Io io) {
  pkgctx::View view;
  if (auto f = open_view(c, view)) return f;
  auto r = view.read(name, true);
  if (!r) return failure(r.error(), c);
  if (auto ok = pkgctx::check_canonical_settings(r->settings, "segment " + c.segment + ", package " + name); !ok)
    return failure(ok.error(), c);
  // The settings are spliced in as stored: their canonical (RFC 8785) form.
  io.out << "{\"name\":" << json_string(r->name) << ",\"version\":" << json_string(r->version) << ",\"settings\":"
         << r->settings << ",\"checksum\":" << json_string(pkgctx::Settings::format_checksum(r->checksum))
         << ",\"settings_version\":" << r->settings_version << ",\"maintenance\":" << json_string(r->maintenance)
         << "}\n";
  return std::nullopt;
}

std::optional<Failure> cmd_checksum(const Common& c, const std::optional<std::string>& arg, Io io) {
  std::string text;
  if (arg) {
    text = *arg;
  } else {
    auto in = pkgctx::read_bounded_stream(io.in, settings_input_bound(c), "JSON from stdin");
    if (!in) return Failure{kExitRejected, "checksum: " + in.error().message};
    text = std::move(*in);
    if (text.find_first_not_of(" \t\r\n") == std::string::npos)
      return Failure{kExitRejected, "checksum: no JSON given (argument or stdin)"};
  }
  auto s = pkgctx::Settings::parse(text, unlimited_settings());
  if (!s) return Failure{kExitRejected, s.error().message};
  io.out << s->checksum_hex() << '\n';
  return std::nullopt;
}

std::optional<Failure> cmd_token(const Common& c, const std::string& name, const std::string& event, Io io) {
  const auto parsed = pkgctx::parse_event(event);
  if (!parsed) return failure(parsed.error(), c);
  const int e = *parsed;
  pkgctx::View view;
  if (auto f = open_view(c, view)) return f;
  auto t = view.token(name, e);
  if (!t) return failure(t.error(), c);
  io.out << t->str() << '\n';
  return std::nullopt;
}

std::string cancel_json(const pkgctx::core::Token& t) {
  json::object o{{"cancelled", t.cancelled()}};
  if (!t.cancelled()) {
    o["cause"] = nullptr;
  } else if (auto text = t.cause_text()) {
    o["cause"] = *text;
  } else {
    o["cause"] = nullptr;  // a corrupt stored name is never printed
    o["error"] = std::string(pkgctx::errc_name(text.error().code));
  }
  return json::serialize(o);
}

std::optional<Failure> parse_token(const Common& c, const std::string& text, pkgctx::View& view,
                                   pkgctx::core::Token& out) {
  // The printed form of a default token: it belongs to no segment and is never cancelled.
  if (text == pkgctx::core::Token::kNoneText) {
    out = pkgctx::core::Token();
    return std::nullopt;
  }
  if (auto f = open_view(c, view)) return f;
  auto t = pkgctx::core::Token::parse(text, view.segment());
  if (!t) return failure(t.error(), c);
  out = std::move(*t);
  return std::nullopt;
}

int cmd_check(const Common& c, const std::string& text, Io io) {
  pkgctx::View view;
  pkgctx::core::Token t;
  if (auto f = parse_token(c, text, view, t)) {
    io.err << "pkgctl: " << one_line(f->message) << '\n';
    return f->code;
  }
  // Read once: the printed state and the exit code agree.
  const bool cancelled = t.cancelled();
  io.out << cancel_json(t) << '\n';
  return cancelled ? kExitCancelled : kExitOk;
}

int cmd_wait(const Common& c, const std::string& text, std::optional<double> timeout_s, Io io) {
  pkgctx::View view;
  pkgctx::core::Token t;
  if (auto f = parse_token(c, text, view, t)) {
    io.err << "pkgctl: " << one_line(f->message) << '\n';
    return f->code;
  }
  // Sleep as a registered worker: pkgctxd counts the wait (a writer wakes it at once) and forgets
  // it when this process ends, however it ends. The SDK registers in the background at the
  // first wait, with $PKGCTX_SOCKET; meanwhile (or with the daemon down) it re-checks in slices.
  std::optional<pkgctx::Worker> worker;
  std::optional<pkgctx::Token> counted;
  if (t.valid()) {
    ::setenv("PKGCTX_SOCKET", c.socket.c_str(), 1);  // single-threaded still: no thread reads the environment
    if (auto w = pkgctx::Worker::attach(c.segment)) {
      worker.emplace(std::move(*w));
      if (auto sdk = worker->parse_token(text)) counted.emplace(std::move(*sdk));
    }
  }
  using clock = std::chrono::steady_clock;
  const auto slice = std::chrono::nanoseconds(std::chrono::hours(1));
  std::optional<clock::time_point> deadline;
  if (timeout_s)
    deadline = clock::now() + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(*timeout_s));
  for (;;) {
    auto left = slice;
    if (deadline) left = std::min<std::chrono::nanoseconds>(slice, *deadline - clock::now());
    if (counted ? counted->wait(left) : t.wait(left)) break;
    if (t.cancelled()) break;
    if (deadline && clock::now() >= *deadline) {
      io.out << cancel_json(t) << '\n';
      return kExitTimedOut;
    }
  }
  io.out << cancel_json(t) << '\n';
  return kExitOk;
}

std::optional<Failure> cmd_dump(const Common& c, bool as_json, Io io) {
  pkgctx::View view;
  if (auto f = open_view(c, view)) return f;
  if (auto r = write_dump(view, as_json, io.out); !r) return failure(r.error(), c);
  return std::nullopt;
}

// --timeout SEC: a plain decimal number of seconds from `min` to a year. nan, inf, negative, out
// of range (1e400) and non-numbers are usage errors: a wait must not become endless or absurd.
constexpr double kMaxTimeoutSeconds = 365.0 * 24 * 3600;

CLI::Validator seconds(double min) {
  return CLI::Validator(
      [min](std::string& text) -> std::string {
        double v = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, v, std::chars_format::general);
        if (ec == std::errc() && ptr == end && std::isfinite(v) && v >= min && v <= kMaxTimeoutSeconds) return {};
        std::string shown = text.size() > 40 ? text.substr(0, 40) + "..." : text;
        return "\"" + one_line(shown) + "\" is not a number of seconds from " + (min > 0 ? "0.001" : "0") + " to " +
               std::to_string(static_cast<long>(kMaxTimeoutSeconds)) + " (a year)";
      },
      "SEC");
}

int finish(const std::optional<Failure>& f, Io io) {
  if (!f) return kExitOk;
  io.err << "pkgctl: " << one_line(f->message) << '\n';
  return f->code;
}

}  // namespace

int exit_code_for(std::string_view code) noexcept {
  switch (pkgctx::error_class(code)) {
    case pkgctx::ErrorClass::ok: return kExitOk;
    case pkgctx::ErrorClass::missing: return kExitNoSuchPackage;
    case pkgctx::ErrorClass::rejected: return kExitRejected;
    case pkgctx::ErrorClass::outcome_unknown: return kExitOutcomeUnknown;
    case pkgctx::ErrorClass::forbidden: return kExitForbidden;
    case pkgctx::ErrorClass::unavailable: break;
  }
  return kExitUnreachable;
}

int run(int argc, const char* const* argv, Io io) { return detail::run_one(argc, argv, io, nullptr); }

namespace detail {

int run_one(int argc, const char* const* argv, Io io, BatchContext* batch) {
  CLI::App app{"pkgctl: inspect and drive pkgctx package contexts.\n"
               "Reads map the segment read-only (no daemon needed); update, event and delete go\n"
               "through pkgctxd's control socket.",
               "pkgctl"};
  app.set_version_flag("--version", "pkgctl " PKGCTX_VERSION_STRING);
  app.require_subcommand(1);
  app.fallthrough();
  app.footer(
      "Exit codes: 0 ok, 1 check: cancelled, 2 bad usage, 3 no such package, 4 segment or daemon\n"
      "unreachable, 5 input rejected, 6 outcome unknown (a write was sent, no answer came),\n"
      "7 forbidden (the daemon refused this user's write), 124 wait timed out.\n");

  Common c;
  auto* segment_opt = app.add_option("--segment", c.segment,
                                     "segment name (env PKGCTX_SEGMENT); when given, writes are refused by a "
                                     "daemon serving another segment")
                          ->envname("PKGCTX_SEGMENT")
                          ->capture_default_str();
  app.add_option("--socket", c.socket, "daemon control socket (env PKGCTX_SOCKET)")
      ->envname("PKGCTX_SOCKET")
      ->capture_default_str();
  app.add_flag("--timing", c.timing,
               "after a write, print on stderr when the request was sent and answered (CLOCK_REALTIME ns)");

  std::string name, version, event_name, checksum, token_text, event_opt = "update";
  std::optional<std::string> settings_json, settings_file, checksum_json;
  std::optional<double> timeout_s;
  double call_timeout_s = 10;
  // Writes: how long each step of the daemon call (connect, send, answer) may take.
  const auto add_call_timeout = [&](CLI::App* sub) {
    sub->add_option("--timeout", call_timeout_s,
                    "seconds to wait for the daemon's answer; past it the outcome is unknown (exit 6)")
        ->capture_default_str()
        ->check(seconds(0.001));
  };
  bool as_json = false;
  double interval_s = 0.2;
  long count = 0;

  UpdateFlags flags;
  std::optional<std::string> cause, maintenance;
  auto* update = app.add_subcommand("update", "Update(NAME, VERSION, settings) through the daemon");
  update->add_option("NAME", name)->required();
  update->add_option("VERSION", version)->required();
  auto* so = update->add_option("--settings", settings_json, "settings JSON object (default {})");
  update->add_option("--settings-file", settings_file, "read the settings JSON from F (- for stdin)")->excludes(so);
  update->add_option("--settings-version", flags.settings_version, "schema version of the settings (default 0)");
  update->add_option("--maintenance", flags.maintenance, "pending maintenance mode (default \"\": managed)");
  update->add_flag("--force", flags.force, "handle the same version as a version change (re-deploy)");
  update->add_option("--cause", flags.cause, "what the cancelled tokens report ([a-z][a-z0-9_]{0,31})");
  update->add_option("--drain", flags.drain_s, "then wait up to SEC for the old context's tasks (exit 124: not drained)")
      ->check(seconds(0));
  add_call_timeout(update);

  std::optional<std::uint64_t> us_version;
  auto* upset = app.add_subcommand("update-settings", "UpdateSettings(NAME, settings) of a tracked package");
  upset->add_option("NAME", name)->required();
  auto* uso = upset->add_option("--settings", settings_json, "settings JSON object");
  upset->add_option("--settings-file", settings_file, "read the settings JSON from F (- for stdin)")->excludes(uso);
  upset->add_option("--settings-version", us_version, "schema version of the settings (default 0)");
  add_call_timeout(upset);

  auto* event = app.add_subcommand("event", "HandleEvent(EVENT, NAME) through the daemon");
  event->add_option("EVENT", event_name, "update (0), remove (1), schedule or a child key 2..7 (schedule is 2)")->required();
  event->add_option("NAME", name)->required();
  event->add_option("--cause", cause, "what the cancelled tokens report ([a-z][a-z0-9_]{0,31})");
  add_call_timeout(event);

  std::optional<double> del_drain_s;
  auto* del = app.add_subcommand("delete", "Delete(NAME) through the daemon: only a removed package (run\n"
                                                    "`pkgctl event remove NAME` first); otherwise deleted:false and the reason");
  del->add_option("NAME", name)->required();
  del->add_option("--drain", del_drain_s, "then wait up to SEC for its tasks (exit 124: not drained)")->check(seconds(0));
  add_call_timeout(del);

  std::optional<std::string> drain_event;
  double drain_timeout_s = 30;
  auto* drain = app.add_subcommand("drain", "wait until no task holds a cancelled context of NAME (exit 124: not drained)");
  drain->add_option("NAME", name)->required();
  drain->add_option("--event", drain_event, "only contexts of this key (update/remove: root; schedule/2..7: child)");
  drain->add_option("--timeout", drain_timeout_s, "seconds to wait")->capture_default_str()->check(seconds(0));

  auto* clients = app.add_subcommand("clients", "the workers the daemon knows: pid, uid, command, since, tasks, waits");
  clients->add_flag("--json", as_json, "one JSON object instead of the table");

  std::string run_event = "update";
  double grace_s = 10;
  std::vector<std::string> run_cmd;
  auto* run_sub = app.add_subcommand("run", "run CMD as a task on NAME's current context (exit: CMD's status)");
  run_sub->add_option("NAME", name)->required();
  run_sub->add_option("--event", run_event, "update/remove (root, default) or schedule/2..7")->capture_default_str();
  run_sub->add_option("--grace", grace_s, "seconds from SIGTERM (on cancellation, or a signal to pkgctl) to SIGKILL")
      ->capture_default_str()
      ->check(seconds(0));
  run_sub->add_option("CMD", run_cmd, "the command and its arguments (after --)")->required();

  auto* need = app.add_subcommand("need-update", "NeedUpdate(NAME, VERSION, CHECKSUM): prints true or false");
  need->add_option("NAME", name)->required();
  need->add_option("VERSION", version)->required();
  need->add_option("CHECKSUM", checksum, "16 hex digits (pkgctl checksum)")->required();
  need->add_option("--maintenance", maintenance, "also true iff the stored maintenance mode differs");

  auto* settings = app.add_subcommand("settings", "the pending settings of NAME (exit 3: no such package)");
  settings->add_option("NAME", name)->required();

  auto* sum = app.add_subcommand("checksum", "the settings checksum of JSON (read from stdin if absent)");
  sum->add_option("JSON", checksum_json);

  auto* token = app.add_subcommand("token", "the token of NAME's current context (exit 3: no such package)");
  token->add_option("NAME", name)->required();
  token->add_option("--event", event_opt, "update/remove (root, default) or schedule/2..7 (child key)")
      ->capture_default_str();

  auto* check = app.add_subcommand("check", "is TOKEN cancelled? (exit 0 live, 1 cancelled)");
  check->add_option("TOKEN", token_text)->required();

  auto* wait = app.add_subcommand("wait", "sleep until TOKEN is cancelled (exit 0; 124 on timeout)");
  wait->add_option("TOKEN", token_text)->required();
  wait->add_option("--timeout", timeout_s, "seconds (default: no limit)")->check(seconds(0));

  auto* dump = app.add_subcommand("dump", "the segment header, daemon liveness and every package");
  dump->add_flag("--json", as_json, "one JSON object instead of the table");

  auto* batch_cmd = app.add_subcommand(
      "batch",
      "run commands read from stdin, one per line with the same words (update, update-settings, event, delete,\n"
      "need-update, settings, check), writes over one daemon connection; prints one JSON line per command,\n"
      "{\"ok\":false,\"error\":{\"code\",\"message\",\"exit\"}} for a failed one (exit 5 if any failed; 4, 6 or 7\n"
      "if one could not reach the daemon, has an unknown outcome or was forbidden)");

  WatchOptions wo;
  auto* watch = app.add_subcommand("watch", "a live view of the table (q or Ctrl-C quits; arrows, PgUp/PgDn scroll)");
  watch->add_option("--interval", interval_s, "refresh period in seconds")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
  watch->add_option("--count", count, "stop after N frames (--json: lines) (default: run until quit)")
      ->check(CLI::NonNegativeNumber);
  watch->add_flag("--json", wo.json,
                  "one JSON line per package change: event (present, created, changed, deleted) and the package "
                  "as in dump --json");
  watch->add_option("--sort", wo.sort, "order rows by COL: " + sort_column_names() + " (names in natural order)")
      ->capture_default_str();
  watch->add_option("--filter", wo.filter, "only packages whose name matches GLOB (fnmatch(3), e.g. web-*)");

  auto* metrics = app.add_subcommand(
      "metrics", "the daemon's counters and gauges in OpenMetrics text (the segment's alone when no daemon answers)");
  add_call_timeout(metrics);

  std::string fleet_endpoints = "http://127.0.0.1:2379", fleet_prefix = "/pkgctx";
  auto* fleet = app.add_subcommand("fleet", "every host's status from etcd (hosts running pkgctxd --follow etcd)");
  fleet->add_option("--etcd-endpoints", fleet_endpoints, "etcd client URLs, comma-separated, numeric or localhost "
                                                         "(env PKGCTX_ETCD_ENDPOINTS)")
      ->envname("PKGCTX_ETCD_ENDPOINTS")
      ->capture_default_str();
  fleet->add_option("--prefix", fleet_prefix, "the daemons' etcd_prefix")->capture_default_str();
  fleet->add_flag("--json", as_json, "one JSON array of {host, name, version, checksum, ...}");

  std::string shell;
  auto* completion = app.add_subcommand("completion", "print a shell completion script (bash or zsh)");
  completion->add_option("SHELL", shell, "bash or zsh")->required()->check(CLI::IsMember({"bash", "zsh"}));

  // CLI11 reports an unknown command as "a subcommand is required"; name it instead.
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--segment" || a == "--socket") {
      ++i;
      continue;
    }
    if (a.empty() || a[0] == '-') continue;
    const auto known = app.get_subcommands([&](CLI::App* sub) { return sub->get_name() == a; });
    if (known.empty()) {
      io.err << "pkgctl: unknown command \"" << one_line(std::string(a)) << "\" (see pkgctl --help)\n";
      return kExitUsage;
    }
    break;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0 && batch) {  // a batch answers each line with one JSON line
      io.err << "pkgctl: --help and --version cannot run in a batch\n";
      return kExitUsage;
    }
    if (e.get_exit_code() == 0) {  // --help, --version
      app.exit(e, io.out, io.err);
      return kExitOk;
    }
    io.err << "pkgctl: " << one_line(e.what()) << " (see pkgctl --help)\n";
    return kExitUsage;
  }
  c.segment_explicit = segment_opt->count() > 0;
  c.batch = batch;
  if (batch) {
    const auto* sub = app.get_subcommands().front();
    if (!batch_command(sub->get_name())) {
      io.err << "pkgctl: " << sub->get_name() << " cannot run in a batch (only update, update-settings, event, delete, "
                "need-update, settings, check)\n";
      return kExitUsage;
    }
  }
  c.timeout = std::chrono::milliseconds(static_cast<long long>(std::ceil(call_timeout_s * 1000)));

  if (*update) return finish(cmd_update(c, name, version, settings_json, settings_file, flags, io), io);
  if (*upset) return finish(cmd_update_settings(c, name, settings_json, settings_file, us_version, io), io);
  if (*event) return finish(cmd_event(c, event_name, name, cause, io), io);
  if (*del) return finish(cmd_delete(c, name, del_drain_s, io), io);
  if (*drain) return finish(cmd_drain(c, name, drain_event, drain_timeout_s, io), io);
  if (*clients) return finish(cmd_clients(c, as_json, io), io);
  if (*metrics) return finish(cmd_metrics(c, io), io);
  if (*run_sub) return run_task(c.segment, c.socket, name, run_event, grace_s, run_cmd, io);
  if (*need) return finish(cmd_need_update(c, name, version, checksum, maintenance, io), io);
  if (*settings) return finish(cmd_settings(c, name, io), io);
  if (*sum) return finish(cmd_checksum(c, checksum_json, io), io);
  if (*token) return finish(cmd_token(c, name, event_opt, io), io);
  if (*check) return cmd_check(c, token_text, io);
  if (*wait) return cmd_wait(c, token_text, timeout_s, io);
  if (*dump) return finish(cmd_dump(c, as_json, io), io);
  if (*watch) {
    wo.segment = c.segment;
    wo.socket = c.socket;
    wo.clients_request = json::serialize(request(c, "clients"));
    wo.interval_s = interval_s;
    wo.count = count;
    return run_watch(wo, io);
  }
  if (*fleet) return run_fleet(fleet_endpoints, fleet_prefix, as_json, io);
  if (*batch_cmd) {
    std::vector<std::string> prefix{"--socket", c.socket};
    if (c.segment_explicit) prefix.insert(prefix.end(), {"--segment", c.segment});
    return run_batch(c.socket, prefix, io);
  }
  if (*completion) {
    io.out << completion_script(app, shell);
    return kExitOk;
  }
  return kExitUsage;
}

}  // namespace detail

}  // namespace pkgctl
