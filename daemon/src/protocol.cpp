#include "pkgctx/daemon/protocol.hpp"

#include "pkgctx/json_writer.hpp"
#include "pkgctx/daemon/log.hpp"
#include "pkgctx/daemon/registry.hpp"
#include "pkgctx/dump.hpp"
#include "pkgctx/metrics.hpp"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>
#include <boost/system/result.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <new>
#include <optional>
#include <stdexcept>
#include <unordered_set>

namespace pkgctx::daemon {

namespace json = boost::json;
using pkgctx::JsonWriter;

std::string Peer::describe() const {
  return "pid " + std::to_string(pid) + " uid " + std::to_string(uid) + " gid " + std::to_string(gid);
}

bool AllowList::allows(const Peer& peer) const noexcept {
  if (peer.uid == 0 || peer.uid == self) return true;
  if (std::find(uids.begin(), uids.end(), peer.uid) != uids.end()) return true;
  for (gid_t g : gids) {
    if (peer.gid == g || std::find(peer.groups.begin(), peer.groups.end(), g) != peer.groups.end()) return true;
  }
  return false;
}

namespace {

// A refused request: becomes {"ok":false,"error":{…}}.
struct Refusal {
  Refusal() = default;
  Refusal(std::string_view c, std::string m) : code(c), message(std::move(m)) {}
  std::string_view code;
  std::string message;
};
template <class T = void>
using Checked = boost::system::result<T, Refusal>;

Refusal refusal(std::string_view code, std::string message) { return {code, std::move(message)}; }
Refusal refusal(const Error& e) { return {errc_name(e.code), e.message}; }

std::string_view kind_name(json::kind k) {
  switch (k) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "a value";
}

// One member of the request object.
struct Member {
  std::string key;
  json::value value;        // a scalar as parsed; an empty array or object stands for a container
  std::size_t key_end = 0;  // offset just past the key's closing quote
  std::size_t end = 0;      // offset just past the value
};

// The Boost.JSON handler for a request line: keeps the top-level members and nothing nested.
// The settings canonicaliser needs a member's text as the client wrote it (I-JSON checks such as
// duplicate keys and number range apply to the original, and its error offsets refer to it), so
// the reader also records where each member's value ends: parse_request() feeds the line in
// pieces that end just after each closing '"', '}' and ']', so every string, object and array
// ends at a piece end (numbers and literals end where they began plus their length). Only the
// members in kRawKeys are ever read as written; a line that cannot hold one goes in one piece.
class RequestReader {
 public:
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  explicit RequestReader(std::string_view line) : line_(line) {}

  // Ready for `line`: the daemon keeps one reader (and its parser) for every request, so its
  // buffers are reused; those a large request grew are given back.
  void reset(std::string_view line) {
    line_ = line;
    offsets = false;
    piece_end = 0;
    in_string = false;
    top = json::kind::null;
    depth_ = 0;
    number_size_ = 0;
    members.clear();
    if (members.capacity() > kKeptMembers) std::vector<Member>().swap(members);
    text_.clear();
    if (text_.capacity() > kKeptText) std::string().swap(text_);
    if (!seen_.empty()) seen_ = {};
    duplicate_.reset();
  }

  // The members whose text raw() gives (and the parser's pieces exist for).
  static constexpr std::string_view kRawKeys[] = {"id", "settings"};

  bool offsets = false;            // fed in pieces: members' offsets recorded
  std::size_t piece_end = 0;       // where the input handed to the parser so far ends
  bool in_string = false;          // the input so far ends inside a key or string
  json::kind top = json::kind::null;
  std::vector<Member> members;

  const Member* member(std::string_view key) const {
    for (const Member& m : members) {
      if (m.key == key) return &m;
    }
    return nullptr;
  }
  // The first member whose key appeared before, if any.
  const Member* duplicate() const { return duplicate_ ? &members[*duplicate_] : nullptr; }
  // The member's value as written (valid once the whole line parsed; a member in kRawKeys).
  std::string_view raw(const Member& m) const {
    if (!offsets) throw std::logic_error("member \"" + m.key + "\" read as written without its offsets");
    const std::size_t start = value_start(m);
    return line_.substr(start, m.end - start);
  }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) { return open(json::kind::object); }
  bool on_object_end(std::size_t, json::error_code&) { return close(); }
  bool on_array_begin(json::error_code&) { return open(json::kind::array); }
  bool on_array_end(std::size_t, json::error_code&) { return close(); }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    in_string = true;  // Boost reports a part when a piece ends inside a string (never empty here)
    if (in_member()) text_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code&) {
    in_string = false;
    if (!in_member()) return true;
    text_.append(s.data(), s.size());
    if (!duplicate_ && seen(text_)) duplicate_ = members.size();
    members.push_back({text_, {}, piece_end, 0});
    text_.clear();  // its room is kept for the next key
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    in_string = true;
    if (in_member()) text_.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    in_string = false;
    if (!in_member()) return scalar(json::string(), 0);
    json::string& value = members.back().value.emplace_string();  // built in place
    if (text_.empty()) {
      value.assign(s);  // the string came in one part
    } else {
      text_.append(s.data(), s.size());
      value.assign(text_);
      text_.clear();
    }
    members.back().end = piece_end;
    return true;
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    number_size_ += s.size();
    return true;
  }
  bool on_int64(std::int64_t v, json::string_view s, json::error_code&) { return sized(v, number(s)); }
  bool on_uint64(std::uint64_t v, json::string_view s, json::error_code&) { return sized(v, number(s)); }
  bool on_double(double v, json::string_view s, json::error_code&) { return sized(v, number(s)); }
  bool on_bool(bool b, json::error_code&) { return sized(b, b ? 4 : 5); }
  bool on_null(json::error_code&) { return sized(nullptr, 4); }
  // Comments are off in parse_options; these exist only to satisfy the handler concept.
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  static constexpr std::size_t kScanned = 16;       // members compared in place by seen()
  static constexpr std::size_t kKeptMembers = 64;  // reset() keeps room for this many
  static constexpr std::size_t kKeptText = 4096;

  // Whether an earlier member has `key`. A request's few members are compared in place; past
  // kScanned a hash set takes over, so a line of many thousand keys stays linear.
  bool seen(const std::string& key) {
    if (members.size() < kScanned)
      return std::any_of(members.begin(), members.end(), [&](const Member& m) { return m.key == key; });
    if (seen_.empty())
      for (const Member& m : members) seen_.insert(m.key);
    return !seen_.insert(key).second;
  }
  // Whether events are about a top-level member (or its key).
  bool in_member() const noexcept { return depth_ == 1 && top == json::kind::object; }
  std::size_t value_start(const Member& m) const {
    return line_.find_first_not_of(" \t\n\r", line_.find(':', m.key_end) + 1);
  }
  bool open(json::kind container) {
    if (depth_ == 0) top = container;
    if (in_member() && container == json::kind::object) members.back().value.emplace_object();
    if (in_member() && container == json::kind::array) members.back().value.emplace_array();
    ++depth_;
    return true;
  }
  bool close() {
    --depth_;
    if (in_member()) members.back().end = piece_end;
    return true;
  }
  bool scalar(json::value v, std::size_t end) {
    if (depth_ == 0) top = v.kind();
    if (in_member()) {
      members.back().value = std::move(v);
      members.back().end = end;
    }
    return true;
  }
  std::size_t number(json::string_view last) { return std::exchange(number_size_, 0) + last.size(); }
  // A number or literal: it ends `size` bytes after it starts.
  bool sized(json::value v, std::size_t size) {
    return scalar(std::move(v), offsets && in_member() ? value_start(members.back()) + size : 0);
  }

  std::string_view line_;
  std::size_t depth_ = 0;
  std::string text_;              // the key or top-level string being read
  std::size_t number_size_ = 0;   // bytes of the number being read, before its last part
  std::unordered_set<std::string> seen_;  // the keys so far, once there are kScanned
  std::optional<std::size_t> duplicate_;
};

// Feeds `line` to `p` in one piece from `pos` up to `end`, `last` or not; returns bytes used.
std::size_t feed(json::basic_parser<RequestReader>& p, std::string_view line, std::size_t pos, std::size_t end,
                 bool last, json::error_code& ec) {
  p.handler().piece_end = end;
  const std::size_t used = p.write_some(!last, line.data() + pos, end - pos, ec);
  if (!ec && used < end - pos) ec = json::make_error_code(json::error::extra_data);
  return pos + used;
}

// Whether `line` may have a member in RequestReader::kRawKeys. A key spelled with an escape
// holds a backslash; any other is in the line as written, between its quotes. Mentions inside
// values only cost the pieces.
bool may_have_raw_member(std::string_view line) {
  if (line.find('\\') != std::string_view::npos) return true;
  return std::any_of(std::begin(RequestReader::kRawKeys), std::end(RequestReader::kRawKeys), [&](std::string_view k) {
    for (std::size_t at = line.find(k); at != std::string_view::npos; at = line.find(k, at + 1))
      if (at > 0 && line[at - 1] == '"' && at + k.size() < line.size() && line[at + k.size()] == '"') return true;
    return false;
  });
}

// Parses `line` with `p`, Boost.JSON doing all the lexing (see RequestReader). When a member may
// be read as written, the line goes in pieces that end just after each closing '"', each '}' and
// each ']' (and after any '"', '}' or ']' inside a string: harmless); otherwise in one piece.
Checked<> parse_request(std::string_view line, const json::parse_options& opt, json::basic_parser<RequestReader>& p) {
  json::error_code ec;
  std::size_t used = 0;
  p.handler().offsets = may_have_raw_member(line);
  if (!p.handler().offsets) used = feed(p, line, 0, line.size(), true, ec);
  for (std::size_t pos = 0; p.handler().offsets && pos < line.size() && !ec;) {
    const auto breaks = [](char c) { return c == '"' || c == '}' || c == ']'; };
    auto brk = std::find_if(line.begin() + pos, line.end(), breaks);
    // Outside a string the next quote opens one: only where it closes matters.
    if (brk != line.end() && *brk == '"' && !p.handler().in_string) brk = std::find_if(brk + 1, line.end(), breaks);
    const std::size_t end = brk == line.end() ? line.size() : static_cast<std::size_t>(brk - line.begin()) + 1;
    used = feed(p, line, pos, end, end == line.size(), ec);
    pos = end;
  }
  if (!ec) return {};
  // Malformed. Boost may name a neighbouring byte when a bad token spans two pieces, so the
  // message comes from the line parsed in one piece (as answers always named it).
  if (p.handler().offsets) {
    json::basic_parser<RequestReader> whole(opt, line);
    json::error_code whole_ec;
    if (const std::size_t at = feed(whole, line, 0, line.size(), true, whole_ec); whole_ec) {
      ec = whole_ec;
      used = at;
    }
  }
  const std::size_t max_depth = opt.max_depth - 1;
  if (ec == json::error::too_deep)
    return refusal(code::kBadRequest, "request nested deeper than " + std::to_string(max_depth + 1) +
                                          " levels (settings may nest " + std::to_string(max_depth) + ")");
  if (ec == json::error::incomplete) return refusal(code::kBadRequest, "malformed JSON: the line ends inside a value");
  return refusal(code::kBadRequest, "malformed JSON at byte " + std::to_string(used) + ": " + ec.message());
}

constexpr std::size_t kMaxIdBytes = 256;

// What the audit log says about a write request (see Protocol::handle).
struct Audit {
  bool write = false;    // the op is a write: require_write() was asked
  bool allowed = false;  // … and the allow-list admitted the peer
  std::string_view change;  // update: what changed
};

// A drain that ended with tasks still on the old context: who is holding a rollout up.
void log_drain_timeout(std::string_view op, std::string_view raw_name, uid_t uid, pid_t pid, std::size_t holders) {
  if (!log::enabled(log::Level::notice)) return;
  std::string name;
  append_json_string(name, raw_name);
  const std::string n = std::to_string(holders), u = std::to_string(uid), p = std::to_string(pid);
  log::notice("Drain timed out op=" + std::string(op) + " name=" + name + " holders=" + n + " peer_uid=" + u +
                  " peer_pid=" + p,
              {{"PKGCTX_OP", op}, {"PKGCTX_PACKAGE", raw_name}, {"PKGCTX_RESULT", "timed_out"},
               {"PKGCTX_HOLDERS", n}, {"PKGCTX_PEER_UID", u}, {"PKGCTX_PEER_PID", p}});
}

// A request that parsed, with its top-level fields checked.
struct Request {
  const RequestReader& fields;
  const Peer& peer;
  const AllowList& allow;
  std::string id;  // serialized "id", or empty
  std::string op;
  Audit* audit = nullptr;
  Session* session = nullptr;
  Registry* registry = nullptr;
  RequestStats* stats = nullptr;
  const OwnerCheck* owned = nullptr;  // set when packages may belong to a cluster store

  // An event served here cancelled the contexts it replaced, with `cause`.
  void cancelled(std::string_view cause) const {
    if (!stats) return;
    auto it = stats->cancellations.find(cause);
    if (it == stats->cancellations.end()) it = stats->cancellations.emplace(std::string(cause), 0).first;
    ++it->second;
  }

  // Starts a drain whose answer the registry sends later (see Registry::drain), timing it for the
  // metrics op.
  void drain(std::string prefix, std::uint32_t slot, std::optional<std::uint32_t> key, std::uint64_t timeout_ms,
             Registry::Finish finish = {}) const {
    session->waiting = true;
    std::string name;
    if (const Member* m = fields.member("name"); m && m->value.is_string())
      name.assign(m->value.get_string().data(), m->value.get_string().size());
    registry->drain(session->conn, std::move(prefix), slot, key, timeout_ms,
                    [st = stats, t0 = mono_now_ns(), finish = std::move(finish), op = op, name = std::move(name),
                     uid = peer.uid, pid = peer.pid](bool drained, std::size_t holders) {
                      if (st) st->record_drain(drained, mono_now_ns() - t0);
                      if (!drained) log_drain_timeout(op, name, uid, pid, holders);
                      return finish ? finish(drained, holders) : std::string();
                    });
  }

  // Drains need a server connection and the registry (a line fed without one cannot wait).
  Checked<> can_wait() const {
    if (!session || !registry)
      return refusal(code::kBadRequest, "\"" + op + "\" cannot wait for a drain here (no daemon connection)");
    return {};
  }

  // Refuses any field not in `allowed` (besides the envelope's "op", "id" and "segment"): a typo
  // must not pass silently.
  Checked<> only(std::initializer_list<std::string_view> allowed) const {
    for (const Member& m : fields.members) {
      if (m.key == "op" || m.key == "id" || m.key == "segment") continue;
      if (std::find(allowed.begin(), allowed.end(), m.key) == allowed.end()) {
        std::string list;
        for (std::string_view a : allowed) list += (list.empty() ? "\"" : ", \"") + std::string(a) + "\"";
        return refusal(code::kBadRequest, "unknown field \"" + m.key + "\" in \"" + op + "\" request (fields: " +
                                              (list.empty() ? std::string("none") : list) + ")");
      }
    }
    return {};
  }

  Checked<std::string_view> string_field(std::string_view key) const {
    const Member* m = fields.member(key);
    if (!m) return refusal(code::kBadRequest, "missing field \"" + std::string(key) + "\" in \"" + op + "\" request");
    if (!m->value.is_string())
      return refusal(code::kBadRequest, "field \"" + std::string(key) + "\" must be a string, not " +
                                            std::string(kind_name(m->value.kind())));
    const json::string& s = m->value.get_string();
    return std::string_view(s.data(), s.size());
  }

  // An optional string field: nullopt when absent.
  Checked<std::optional<std::string_view>> opt_string(std::string_view key) const {
    if (!fields.member(key)) return std::optional<std::string_view>();
    auto v = string_field(key);
    if (!v) return v.error();
    return std::optional<std::string_view>(*v);
  }
  // An optional integer ≥ 0 field (`fallback` when absent).
  Checked<std::uint64_t> opt_uint(std::string_view key, std::uint64_t fallback) const {
    const Member* m = fields.member(key);
    if (!m) return fallback;
    if (m->value.is_uint64()) return m->value.get_uint64();
    if (m->value.is_int64() && m->value.get_int64() >= 0) return static_cast<std::uint64_t>(m->value.get_int64());
    return refusal(code::kBadRequest, "field \"" + std::string(key) + "\" must be an integer 0..2^64-1, not " +
                                          json::serialize(m->value).substr(0, 64));
  }
  // An optional boolean field (false when absent).
  Checked<bool> opt_bool(std::string_view key) const {
    const Member* m = fields.member(key);
    if (!m) return false;
    if (!m->value.is_bool())
      return refusal(code::kBadRequest, "field \"" + std::string(key) + "\" must be true or false, not " +
                                            std::string(kind_name(m->value.kind())));
    return m->value.get_bool();
  }

  // The one place where a write is authorised.
  // `changes_package`: the op writes the named package, which a cluster store may own (§10).
  Checked<> require_write(bool changes_package = true) const {
    const bool ok = allow.allows(peer);
    if (audit) {
      audit->write = true;
      audit->allowed = ok;
    }
    if (!ok)
      return refusal(code::kForbidden, "peer " + peer.describe() + " may not \"" + op +
                                           "\": writes need uid 0, the daemon's uid, or a uid or group on the "
                                           "allow-list (allow_uids, allow_gids)");
    if (const Member* m = fields.member("name"); changes_package && owned && *owned && m && m->value.is_string()) {
      const std::string_view name = m->value.get_string();
      if ((*owned)(name))
        return refusal(make_error(Errc::owned_by_etcd, "package \"" + std::string(name) +
                                                           "\" follows etcd: change its key there (or set etcd_owns = "
                                                           "false in pkgctxd's config)"));
    }
    return {};
  }
};

// The checks every request passes before its op: one object, no repeated field, a sane id, an op,
// and the segment the client meant (optional "segment") being the one this daemon serves.
Checked<> check_envelope(Request& rq, std::string_view served) {
  const RequestReader& f = rq.fields;
  if (f.top != json::kind::object)
    return refusal(code::kBadRequest, "a request must be a JSON object, not " + std::string(kind_name(f.top)));
  if (const Member* dup = f.duplicate()) return refusal(code::kBadRequest, "field \"" + dup->key + "\" appears twice");
  if (const Member* m = f.member("id")) {
    const json::value& id = m->value;
    if (!id.is_string() && !id.is_number())
      return refusal(code::kBadRequest,
                     "field \"id\" must be a string or a number, not " + std::string(kind_name(id.kind())));
    // 1e400 parses to infinity, which has no JSON spelling: it could not be echoed back.
    if (id.is_double() && !std::isfinite(id.get_double()))
      return refusal(code::kBadRequest, "field \"id\" is not a finite number");
    if (f.raw(*m).size() > kMaxIdBytes)
      return refusal(code::kBadRequest, "field \"id\" is longer than " + std::to_string(kMaxIdBytes) + " bytes");
    rq.id = json::serialize(id);
  }
  const Member* op = f.member("op");
  if (!op) return refusal(code::kBadRequest, "missing field \"op\"");
  if (!op->value.is_string())
    return refusal(code::kBadRequest, "field \"op\" must be a string, not " + std::string(kind_name(op->value.kind())));
  rq.op = std::string(op->value.get_string());
  if (const Member* m = f.member("segment")) {
    if (!m->value.is_string())
      return refusal(code::kBadRequest,
                     "field \"segment\" must be a string, not " + std::string(kind_name(m->value.kind())));
    const json::string& want = m->value.get_string();
    if (std::string_view(want.data(), want.size()) != served)
      return refusal(code::kWrongSegment, "request for segment " + json::serialize(want) +
                                              " sent to the daemon serving segment \"" + std::string(served) +
                                              "\"; nothing changed");
  }
  return {};
}

JsonWriter& begin_ok(JsonWriter& w, const std::string& id) {
  w.begin_object().key("ok").boolean(true);
  if (!id.empty()) w.key("id").raw(id);
  return w;
}

void end_ok(JsonWriter& w, std::string& out) {
  w.end_object();
  out += '\n';
}

// The optional "settings" object ({} when absent).
Checked<Settings> settings_field(const Store& store, std::size_t max_depth, const Request& rq) {
  const Member* m = rq.fields.member("settings");
  if (!m) return Settings();
  Limits limits = store.limits();
  limits.max_depth = max_depth;
  auto parsed = Settings::parse(rq.fields.raw(*m), limits);
  if (!parsed) return refusal(parsed.error());
  return std::move(*parsed);
}

Checked<> op_update_settings(Store& store, std::size_t max_depth, const Request& rq, std::string& out) {
  if (auto ok = rq.require_write(); !ok) return ok;
  if (auto ok = rq.only({"name", "settings", "settings_version"}); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  if (!rq.fields.member("settings"))
    return refusal(code::kBadRequest, "missing field \"settings\" in \"update_settings\" request");
  auto settings = settings_field(store, max_depth, rq);
  if (!settings) return settings.error();
  const auto sv = rq.opt_uint("settings_version", 0);
  if (!sv) return sv.error();
  auto r = store.update_settings(*name, *settings, *sv);
  if (!r) return refusal(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(*name).key("changed").boolean(*r);
  end_ok(w, out);
  return {};
}

// {"op":"checksum","settings":{…}} or {"op":"checksum","text":"<JSON text>"} (the text form
// takes a controller's exact bytes, invalid ones included) → {"checksum","canonical"}: what the
// store would keep for these settings. Reads nothing, writes nothing.
Checked<> op_checksum(const Store& store, std::size_t max_depth, const Request& rq, std::string& out) {
  if (auto ok = rq.only({"settings", "text"}); !ok) return ok;
  const Member* m = rq.fields.member("settings");
  const auto text = rq.opt_string("text");
  if (!text) return text.error();
  if (!m == !*text)
    return refusal(code::kBadRequest, "a \"checksum\" request has exactly one of \"settings\" (a JSON object) and "
                                      "\"text\" (JSON text in a string)");
  Limits limits = store.limits();
  limits.max_depth = max_depth;
  auto settings = Settings::parse(m ? rq.fields.raw(*m) : **text, limits);
  if (!settings) return refusal(settings.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("checksum").str(settings->checksum_hex()).key("canonical").str(settings->canonical());
  end_ok(w, out);
  return {};
}

Checked<> op_update(Store& store, std::size_t max_depth, const Request& rq, std::string& out) {
  if (auto ok = rq.require_write(); !ok) return ok;
  if (auto ok = rq.only({"name", "version", "settings", "settings_version", "maintenance", "force", "cause", "drain_ms"});
      !ok)
    return ok;
  const auto drain_ms = rq.opt_uint("drain_ms", 0);
  if (!drain_ms) return drain_ms.error();
  if (rq.fields.member("drain_ms"))
    if (auto ok = rq.can_wait(); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  const auto version = rq.string_field("version");
  if (!version) return version.error();
  auto settings = settings_field(store, max_depth, rq);
  if (!settings) return settings.error();
  UpdateOptions opts;
  const auto sv = rq.opt_uint("settings_version", 0);
  if (!sv) return sv.error();
  opts.settings_version = *sv;
  const auto maintenance = rq.opt_string("maintenance");
  if (!maintenance) return maintenance.error();
  opts.maintenance = maintenance->value_or("");
  const auto force = rq.opt_bool("force");
  if (!force) return force.error();
  opts.force = *force;
  const auto cause = rq.opt_string("cause");
  if (!cause) return cause.error();
  if (*cause && cause->value().empty()) return refusal(validate_cause_name("").error());
  opts.cause = cause->value_or("");
  auto r = store.update(*name, *version, *settings, opts);
  if (!r) return refusal(r.error());
  const std::size_t start = out.size();
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(*name).key("context");
  if (r->token) {
    w.str(r->token->text().view());
  } else {
    w.null();
  }
  w.key("change").str(change_name(r->change));
  if (rq.audit) rq.audit->change = change_name(r->change);
  if (r->change == Change::version) rq.cancelled(opts.cause.empty() ? "version_changed" : opts.cause);
  if (rq.fields.member("drain_ms")) {
    // The update cancelled the old context (if it changed anything): wait for its tasks.
    auto slot = store.view().find(*name);
    if (!slot) return refusal(slot.error());
    std::string prefix = out.substr(start);
    out.resize(start);
    rq.drain(std::move(prefix), *slot, std::nullopt, *drain_ms);
    return {};
  }
  end_ok(w, out);
  return {};
}

Checked<int> event_field(const Request& rq) {
  const Member* m = rq.fields.member("event");
  if (!m) return refusal(code::kBadRequest, "missing field \"event\" in \"event\" request");
  const json::value& ev = m->value;
  if (ev.is_string()) {
    const json::string& s = ev.get_string();
    auto parsed = parse_event({s.data(), s.size()});
    if (!parsed) return refusal(parsed.error());
    return *parsed;
  }
  if (ev.is_int64() || ev.is_uint64()) {
    auto checked = validate_event(ev.is_int64() ? ev.get_int64() : -1);
    if (!checked) return refusal(Error(Errc::invalid_event, "event " + json::serialize(ev) + " is not update (0), remove (1), schedule or a child key 2..7 (schedule is 2)"));
    return *checked;
  }
  return refusal(code::kBadRequest, "field \"event\" must be a name or an integer 0..7, not " +
                                        std::string(ev.is_double() ? "a fractional number" : kind_name(ev.kind())));
}

Checked<> op_event(Store& store, const Request& rq, std::string& out) {
  if (auto ok = rq.require_write(); !ok) return ok;
  if (auto ok = rq.only({"name", "event", "cause"}); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  const auto event = event_field(rq);
  if (!event) return event.error();
  const auto cause = rq.opt_string("cause");
  if (!cause) return cause.error();
  if (*cause && cause->value().empty()) return refusal(validate_cause_name("").error());
  auto r = store.handle_event(*event, *name, cause->value_or(""));
  if (!r) return refusal(r.error());
  // A new context means the previous one was cancelled (an absent package gets none).
  if (*r)
    rq.cancelled(*cause ? **cause
                 : *event == kEventUpdate ? std::string_view("update_event")
                 : *event == kEventRemove ? std::string_view("removed")
                                          : std::string_view("rescheduled"));
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(*name).key("context");
  if (*r) {
    w.str((*r)->text().view());
  } else {
    w.null();
  }
  end_ok(w, out);
  return {};
}

Checked<> op_need_update(Store& store, const Request& rq, std::string& out) {
  if (auto ok = rq.only({"name", "version", "checksum", "maintenance"}); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  const auto version = rq.string_field("version");
  if (!version) return version.error();
  const auto checksum = rq.string_field("checksum");
  if (!checksum) return checksum.error();
  auto sum = parse_checksum(*checksum);
  if (!sum) return refusal(sum.error());
  const auto maintenance = rq.opt_string("maintenance");
  if (!maintenance) return maintenance.error();
  auto r = store.need_update(*name, *version, *sum, *maintenance);
  if (!r) return refusal(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("need_update").boolean(*r);
  end_ok(w, out);
  return {};
}

Checked<> op_settings(Store& store, const Request& rq, std::string& out) {
  if (auto ok = rq.only({"name"}); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  auto rec = store.view().read(*name, true);
  if (!rec) return refusal(rec.error());
  if (auto ok = check_canonical_settings(rec->settings, "segment " + store.segment().name() + ", package " + rec->name); !ok)
    return refusal(ok.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(rec->name).key("version").str(rec->version);
  // Canonical JSON (View::read checked it against its checksum and re-canonicalised it): one
  // line, valid UTF-8; spliced as stored so the checksum matches byte for byte.
  w.key("settings").raw(rec->settings.empty() ? std::string_view("{}") : std::string_view(rec->settings));
  w.key("checksum").str(hex16(rec->checksum));
  w.key("settings_version").num(rec->settings_version);
  w.key("maintenance").str(rec->maintenance);
  end_ok(w, out);
  return {};
}

Checked<> op_delete(Store& store, const Request& rq, std::string& out) {
  if (auto ok = rq.require_write(); !ok) return ok;
  if (auto ok = rq.only({"name", "drain_ms"}); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  const auto drain_ms = rq.opt_uint("drain_ms", 0);
  if (!drain_ms) return drain_ms.error();
  const bool drain = rq.fields.member("drain_ms") != nullptr;
  if (drain)
    if (auto ok = rq.can_wait(); !ok) return ok;
  const auto slot = store.view().find(*name);
  auto r = store.erase(*name);
  if (!r) return refusal(r.error());
  if (*r) rq.cancelled("deleted");
  const std::size_t start = out.size();
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(*name).key("deleted").boolean(*r);
  if (drain && *r && slot) {
    // Deleting cancelled the package's contexts: wait for the tasks still on them; in_flight is
    // what is left when the drain ends.
    Registry& reg = *rq.registry;
    const std::uint32_t s = *slot;
    std::string prefix = out.substr(start);
    out.resize(start);
    rq.drain(std::move(prefix), s, std::nullopt, *drain_ms,
             [&reg, s](bool, std::size_t) { return ",\"in_flight\":" + std::to_string(reg.leases_on(s)); });
    return {};
  }
  w.key("in_flight").num(rq.registry && *r && slot ? rq.registry->leases_on(*slot) : std::uint64_t{0});
  // Delete removes only a removed package (DESIGN §2): say which of the two refusals this was.
  if (!*r) w.key("reason").str(slot ? "the package is live: send event remove first" : "no such package");
  end_ok(w, out);
  return {};
}

Checked<> op_register(const Request& rq, std::string& out) {
  if (auto ok = rq.only({}); !ok) return ok;
  if (!rq.session || !rq.registry) return refusal(code::kBadRequest, "\"register\" needs a daemon connection");
  const int fd = std::exchange(rq.session->received_fd, -1);
  if (auto refused = rq.registry->add(rq.session->conn, rq.peer, fd)) return refusal(refused->first, refused->second);
  rq.session->registered = true;
  JsonWriter w(out);
  begin_ok(w, rq.id).key("client").num(rq.session->conn);
  end_ok(w, out);
  return {};
}

Checked<> op_drain(Store& store, const Request& rq) {
  if (auto ok = rq.require_write(false); !ok) return ok;
  if (auto ok = rq.only({"name", "event", "timeout_ms"}); !ok) return ok;
  if (auto ok = rq.can_wait(); !ok) return ok;
  const auto name = rq.string_field("name");
  if (!name) return name.error();
  std::optional<std::uint32_t> key;
  if (rq.fields.member("event")) {
    const auto event = event_field(rq);
    if (!event) return event.error();
    key = static_cast<std::uint32_t>(*event);
  }
  const auto timeout = rq.opt_uint("timeout_ms", 0);
  if (!timeout) return timeout.error();
  auto slot = store.view().find(*name);
  if (!slot) return refusal(slot.error());
  std::string prefix;
  JsonWriter w(prefix);
  begin_ok(w, rq.id).key("name").str(*name);
  rq.drain(std::move(prefix), *slot, key, *timeout);
  return {};
}

// What each registered worker holds (DESIGN §2.2 "every attached process is known").
void write_clients(JsonWriter& w, const Registry& reg) {
  w.begin_array();
  for (const auto& [conn, c] : reg.clients()) {
    w.begin_object();
    w.key("pid").num(std::int64_t{c.peer.pid}).key("uid").num(std::uint64_t{c.peer.uid}).key("comm").str(c.comm);
    w.key("since_realtime_ns").num(c.since_realtime_ns);
    w.key("tasks").begin_array();
    for (const Registry::LeaseInfo& l : reg.leases(c)) {
      w.begin_object().key("name").str(l.name).key("key").num(std::uint64_t{l.key});
      w.key("generation").num(l.generation).key("cancelled").boolean(l.cancelled).key("age_ms").num(l.age_ms);
      w.end_object();
    }
    w.end_array();
    w.key("waits").begin_array();
    for (const Registry::WaitInfo& wi : reg.waits(c))
      w.begin_object().key("name").str(wi.name).key("key").num(std::uint64_t{wi.key}).end_object();
    w.end_array();
    w.end_object();
  }
  w.end_array();
}

Checked<> op_clients(const Request& rq, std::string& out) {
  if (auto ok = rq.only({}); !ok) return ok;
  JsonWriter w(out);
  begin_ok(w, rq.id).key("clients");
  if (rq.registry) {
    write_clients(w, *rq.registry);
  } else {
    w.begin_array().end_array();
  }
  end_ok(w, out);
  return {};
}

// The OpenMetrics exposition (DESIGN §6): the segment's families (pkgctx/metrics.hpp), then the
// daemon's own. Costs O(capacity) word loads (the waiters board) plus O(registered workers ×
// their leases): nothing per package record.
Checked<> op_metrics(Store& store, const ConnectionStats& conns, const RequestStats& stats, const Request& rq,
                     std::string& out) {
  if (auto ok = rq.only({}); !ok) return ok;
  using Type = MetricsWriter::Type;
  const SegmentInfo i = store.segment().info();
  std::string text;
  MetricsWriter m(text);
  write_segment_metrics(m, i, mono_now_ns(), realtime_now_ns(), store.segment().waiter_counts());

  m.family("pkgctx_requests", Type::counter,
           "Requests answered by op and result (ok or the error code; op none: no op could be read).");
  for (const auto& [key, n] : stats.answers) m.sample("_total", {{"op", key.first}, {"result", key.second}}, n);
  m.family("pkgctx_cancellations", Type::counter,
           "Events served by this daemon that cancelled a package's context, by cause.");
  for (const auto& [cause, n] : stats.cancellations) m.sample("_total", {{"cause", cause}}, n);
  m.gauge("pkgctx_clients", "Control connections open now (registered workers' not included).", conns.clients);
  m.counter("pkgctx_connections_accepted", "Control connections accepted since the daemon started.", conns.accepted);
  m.counter("pkgctx_connections_dropped",
            "Connections dropped: not reading their answers, over limits, or refused when full.", conns.dropped);

  std::uint64_t live = 0, cancelled = 0;
  if (rq.registry) {
    for (const auto& entry : rq.registry->clients())
      for (const Registry::LeaseInfo& l : rq.registry->leases(entry.second)) ++(l.cancelled ? cancelled : live);
  }
  m.gauge("pkgctx_workers", "Worker processes registered (attached with the SDK).",
          std::uint64_t{rq.registry ? rq.registry->size() : 0});
  m.family("pkgctx_leases", Type::gauge, "Tasks running now, by whether their context is cancelled.")
      .sample("", {{"state", "live"}}, live)
      .sample("", {{"state", "cancelled"}}, cancelled);
  m.counter("pkgctx_worker_pings", "Bytes registered workers sent: a wait began or ended, a task ended under a drain.",
            std::uint64_t{rq.registry ? rq.registry->pings() : 0});
  m.counter("pkgctx_waits_retired",
            "Counted waits the daemon retired because their tokens were cancelled: their workers withdraw them without a byte.",
            std::uint64_t{rq.registry ? rq.registry->retired() : 0});
  m.gauge("pkgctx_drains_pending", "Drains waiting for tasks to end.",
          std::uint64_t{rq.registry ? rq.registry->pending_drains() : 0});
  m.family("pkgctx_drains", Type::counter, "Drains answered, by outcome.")
      .sample("_total", {{"outcome", "drained"}}, stats.drains_drained)
      .sample("_total", {{"outcome", "timed_out"}}, stats.drains_timed_out);
  m.family("pkgctx_drain_duration_seconds", Type::histogram,
           "How long answered drains waited (drained or timed out).", "seconds");
  std::uint64_t cumulative = 0;
  for (std::size_t b = 0; b < RequestStats::kDrainBuckets.size(); ++b) {
    cumulative += stats.drain_buckets[b];
    const std::string le = format_seconds(static_cast<std::uint64_t>(RequestStats::kDrainBuckets[b] * 1e9));
    m.sample("_bucket", {{"le", le}}, cumulative);
  }
  const std::uint64_t count = stats.drains_drained + stats.drains_timed_out;
  m.sample("_bucket", {{"le", "+Inf"}}, count);
  m.sample("_count", {}, count);
  m.sample("_sum", {}, static_cast<double>(stats.drain_ns_sum) / 1e9);
  m.eof();

  JsonWriter w(out);
  begin_ok(w, rq.id).key("content_type").str(kOpenMetricsContentType).key("text").str(text);
  end_ok(w, out);
  return {};
}

// The packages in slots [dump.next_slot, +slots), then, after the last slot, the answer's end.
void dump_slice(Store& store, DumpCursor& dump, std::string& out, std::uint32_t slots) {
  const View& view = store.view();
  const std::uint32_t cap = store.segment().capacity();
  const std::uint32_t end = cap - dump.next_slot > slots ? dump.next_slot + slots : cap;
  PackageRecord p;
  for (; dump.next_slot < end; ++dump.next_slot) {
    // Validated when the dump began; a record that no longer reads is left out, never printed.
    if (auto r = view.read_slot(dump.next_slot, p, false); !r || !*r) continue;
    if (dump.any) out += ',';
    JsonWriter w(out);
    write_dump_package(w, p);
    dump.any = true;
  }
  if (dump.next_slot >= cap) {
    out += "]}\n";
    dump.active = false;
  }
}

// Writes the answer up to its package list; `dump` is left active for dump_slice().
Checked<> op_dump(Store& store, const ConnectionStats& conns, const RequestStats& stats, const Request& rq,
                  std::string& out, DumpCursor& dump) {
  if (auto ok = rq.only({}); !ok) return ok;
  const SegmentInfo i = store.segment().info();
  // Every record is validated before the first byte of the answer: a corrupt one refuses the
  // whole dump (one pass, no copies), so the slices that follow never meet one from this table.
  {
    PackageRecord p;
    for (std::uint32_t slot = 0; slot < i.capacity; ++slot)
      if (auto r = store.view().read_slot(slot, p, false); !r) return refusal(r.error());
  }
  JsonWriter w(out);
  begin_ok(w, rq.id);
  w.key("segment").begin_object();
  write_dump_segment(w, i);
  w.end_object();
  w.key("daemon").begin_object();
  write_dump_daemon(w, i, liveness(i), heartbeat_age_ns(i, mono_now_ns()));
#ifdef PKGCTX_VERSION
  w.key("version").str(PKGCTX_VERSION);
#endif
  w.key("socket").str(conns.socket);
  w.key("clients").num(conns.clients);
  w.key("accepted").num(conns.accepted);
  w.key("dropped").num(conns.dropped);
  w.key("requests").num(stats.requests);
  w.key("errors").num(stats.errors);
  w.key("drains").num(std::uint64_t{rq.registry ? rq.registry->pending_drains() : 0});  // waiting now
  w.end_object();
  // The registered workers, as the clients op lists them (DESIGN §2.2).
  w.key("clients");
  if (rq.registry) {
    write_clients(w, *rq.registry);
  } else {
    w.begin_array().end_array();
  }
  w.key("packages");
  out += '[';
  dump = DumpCursor{true, 0, false};
  return {};
}

// The op's name as a metrics label: one of a fixed set, so clients cannot grow the label set.
std::string_view known_op(std::string_view op) {
  static constexpr std::string_view kOps[] = {"update", "update_settings", "event",   "need_update", "settings",
                                              "delete", "dump",            "checksum", "drain",      "clients",
                                              "metrics", "register"};
  for (std::string_view k : kOps)
    if (k == op) return k;
  return "unknown";
}

// `v` in decimal, in `buf`.
template <class Int>
std::string_view decimal(char (&buf)[24], Int v) {
  return {buf, static_cast<std::size_t>(std::to_chars(buf, buf + sizeof buf, v).ptr - buf)};
}

// The audit line of one write request (see protocol.hpp). `result`: "ok" or the error code.
// `line` is the caller's buffer, reused from request to request.
void audit_write(const Request& rq, const Audit& audit, std::string_view result, std::string& line) {
  const log::Level level = audit.allowed ? log::Level::info : log::Level::notice;
  if (!log::enabled(level)) return;
  char uid_buf[24], pid_buf[24];
  const std::string_view uid = decimal(uid_buf, rq.peer.uid), pid = decimal(pid_buf, rq.peer.pid);
  line.assign(audit.allowed ? "Write" : "Refused write").append(" op=").append(rq.op).append(" name=");
  std::string_view raw_name;
  if (const Member* m = rq.fields.member("name"); m && m->value.is_string()) {
    const json::string& s = m->value.get_string();
    raw_name = std::string_view(s.data(), std::min<std::size_t>(s.size(), 160));  // long ones are cut
    // Quoted and escaped: a hostile name cannot forge fields of the line.
    append_json_string(line, raw_name);
  } else {
    line += '-';
  }
  line.append(" peer_uid=").append(uid).append(" peer_pid=").append(pid).append(" result=").append(result);
  if (!audit.change.empty()) line.append(" change=").append(audit.change);
  // The journal gets the name as sent: its native protocol frames any bytes.
  log::write(level, line,
             {{"PKGCTX_OP", rq.op}, {"PKGCTX_PACKAGE", raw_name}, {"PKGCTX_RESULT", result},
              {"PKGCTX_CHANGE", audit.change}, {"PKGCTX_PEER_UID", uid}, {"PKGCTX_PEER_PID", pid}});
}

}  // namespace

void RequestStats::record_drain(bool drained, std::uint64_t ns) noexcept {
  ++(drained ? drains_drained : drains_timed_out);
  drain_ns_sum += ns;
  for (std::size_t b = 0; b < kDrainBuckets.size(); ++b) {
    if (static_cast<double>(ns) <= kDrainBuckets[b] * 1e9) {
      ++drain_buckets[b];
      break;
    }
  }
}

// The request parser, kept from one request to the next (its stack, the reader's members).
struct Protocol::Parser {
  explicit Parser(const json::parse_options& opt) : options(opt), parser(opt, std::string_view()) {}
  json::parse_options options;
  json::basic_parser<RequestReader> parser;
};

Protocol::Protocol(Store& store, ProtocolOptions options, const ConnectionStats* connections)
    : store_(store), options_(std::move(options)), connections_(connections) {}

Protocol::~Protocol() = default;

void Protocol::append_error(std::string& out, std::string_view id, std::string_view c,
                            std::string_view message) noexcept {
  const std::size_t mark = out.size();
  try {
    ++stats_.errors;
    JsonWriter w(out);
    w.begin_object().key("ok").boolean(false);
    if (!id.empty()) w.key("id").raw(id);
    w.key("error").begin_object().key("code").str(c).key("message").str(message).end_object();
    w.end_object();
    out += '\n';
  } catch (...) {
    out.resize(mark);
  }
}

void Protocol::refuse_line(std::string& out, std::string_view message) noexcept {
  ++stats_.requests;
  append_error(out, {}, code::kLineTooLong, message);
  try {
    ++stats_.answers[{"none", code::kLineTooLong}];
  } catch (...) {  // out of memory: only the count is lost
  }
}

void Protocol::refuse_client(std::string& out, std::string_view message) noexcept {
  append_error(out, {}, code::kTooManyClients, message);
}

void Protocol::handle(std::string_view line, const Peer& peer, std::string& out, DumpCursor* dump,
                      Session* session) noexcept {
  ++stats_.requests;
  const std::size_t mark = out.size();
  std::string id;
  std::string_view op_label = "none";
  std::string_view outcome = code::kInternalError;  // unless an answer says otherwise
  try {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    DumpCursor whole;  // a dump answered at once when the caller takes no cursor
    DumpCursor& cursor = dump ? *dump : whole;
    Audit audit;
    const auto answer = [&]() -> Checked<> {
      if (line.find_first_not_of(" \t\n\r") == std::string_view::npos)
        return refusal(code::kBadRequest, "empty request line (expected one JSON object)");
      json::parse_options opt;
      opt.max_depth = options_.max_depth + 1;  // the request object wraps "settings"
      if (!parser_ || parser_->options.max_depth != opt.max_depth) parser_ = std::make_unique<Parser>(opt);
      json::basic_parser<RequestReader>& parser = parser_->parser;
      parser.reset();
      parser.handler().reset(line);
      if (auto ok = parse_request(line, opt, parser); !ok) return ok;
      Request rq{parser.handler(), peer, options_.allow, {}, {}, &audit, session, registry_, &stats_,
                 options_.etcd_owns ? &owned_ : nullptr};
      auto ok = check_envelope(rq, store_.segment().name());
      id = rq.id;
      if (!rq.op.empty()) op_label = known_op(rq.op);
      if (!ok) return ok;
      const auto result = [&]() -> Checked<> {
        const std::string_view op = rq.op;  // compared by length first, then bytes
        if (op == "update") return op_update(store_, options_.max_depth, rq, out);
        if (op == "event") return op_event(store_, rq, out);
        if (op == "need_update") return op_need_update(store_, rq, out);
        if (op == "settings") return op_settings(store_, rq, out);
        if (op == "delete") return op_delete(store_, rq, out);
        if (op == "update_settings") return op_update_settings(store_, options_.max_depth, rq, out);
        if (op == "checksum") return op_checksum(store_, options_.max_depth, rq, out);
        if (op == "register") return op_register(rq, out);
        if (op == "drain") return op_drain(store_, rq);
        if (op == "clients") return op_clients(rq, out);
        if (op == "metrics")
          return op_metrics(store_, connections_ ? *connections_ : ConnectionStats{}, stats_, rq, out);
        if (op == "dump")
          return op_dump(store_, connections_ ? *connections_ : ConnectionStats{}, stats_, rq, out, cursor);
        const std::string shown = op.size() > 64 ? std::string(op.substr(0, 64)) + "…" : std::string(op);
        return refusal(code::kBadRequest,
                       "unknown op \"" + shown + "\" (ops: update, update_settings, event, need_update, settings, delete, dump, checksum, "
                       "drain, clients, metrics, register)");
      }();
      if (audit.write) audit_write(rq, audit, result ? std::string_view("ok") : result.error().code, audit_line_);
      return result;
    }();
    outcome = answer ? std::string_view("ok") : answer.error().code;
    if (!answer) {
      out.resize(mark);
      append_error(out, id, answer.error().code, answer.error().message);
      if (out.size() == mark) append_error(out, {}, code::kInternalError, "out of memory while answering");
    } else if (cursor.active && !dump) {
      dump_slice(store_, cursor, out, store_.segment().capacity());
    }
  } catch (const std::bad_alloc&) {
    out.resize(mark);
    if (dump) dump->active = false;
    append_error(out, {}, code::kInternalError, "out of memory while handling the request; nothing changed");
  } catch (const std::exception& e) {
    out.resize(mark);
    if (dump) dump->active = false;
    append_error(out, {}, code::kInternalError, std::string("unexpected failure: ") + e.what());
  } catch (...) {
    out.resize(mark);
    if (dump) dump->active = false;
    append_error(out, {}, code::kInternalError, "unexpected failure");
  }
  try {
    ++stats_.answers[{op_label, outcome}];
  } catch (...) {  // out of memory: the answer went out, only its count is lost
  }
}

bool Protocol::continue_dump(DumpCursor& dump, std::string& out, std::uint32_t slots) noexcept {
  try {
    dump_slice(store_, dump, out, slots);
    return true;
  } catch (...) {
    dump.active = false;
    return false;
  }
}

}  // namespace pkgctx::daemon
