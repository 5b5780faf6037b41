#include "pkgctx/daemon/protocol.hpp"

#include "json_out.hpp"
#include "pkgctx/dump.hpp"

#include <cmath>
#include <boost/json/monotonic_resource.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <initializer_list>
#include <new>

namespace pkgctx::daemon {

namespace json = boost::json;
using detail::JsonWriter;

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

// A refusal: becomes {"ok":false,"error":{…}}. Thrown only inside handle().
struct Reject {
  std::string_view code;
  std::string message;
};

[[noreturn]] void reject(std::string_view code, std::string message) { throw Reject{code, std::move(message)}; }
[[noreturn]] void reject(const Error& e) { throw Reject{errc_name(e.code), e.message}; }

std::string_view kind_name(const json::value& v) {
  switch (v.kind()) {
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

// --- raw member spans --------------------------------------------------------------------------
// Boost.JSON has already validated the line, so this scanner may assume well-formed JSON. It
// finds each top-level member's raw text: "settings" is handed to the core's canonicaliser as
// the client wrote it (so I-JSON checks such as duplicate keys and number range apply to the
// original text), and duplicate top-level keys are refused instead of silently resolved.
struct Member {
  std::string key;
  std::string_view raw;
};

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::size_t skip_ws(std::string_view s, std::size_t i) {
  while (i < s.size() && is_ws(s[i])) ++i;
  return i;
}

std::size_t skip_string(std::string_view s, std::size_t i) {  // s[i] == '"'
  ++i;
  while (i < s.size() && s[i] != '"') i += s[i] == '\\' ? 2 : 1;
  return i + 1;
}

std::size_t skip_value(std::string_view s, std::size_t i) {
  if (s[i] == '"') return skip_string(s, i);
  if (s[i] == '{' || s[i] == '[') {
    std::size_t depth = 0;
    while (i < s.size()) {
      const char c = s[i];
      if (c == '"') {
        i = skip_string(s, i);
        continue;
      }
      if (c == '{' || c == '[') ++depth;
      if (c == '}' || c == ']') {
        if (--depth == 0) return i + 1;
      }
      ++i;
    }
    return i;
  }
  while (i < s.size() && !is_ws(s[i]) && s[i] != ',' && s[i] != '}' && s[i] != ']') ++i;
  return i;
}

std::vector<Member> top_level_members(std::string_view s) {
  std::vector<Member> out;
  std::size_t i = skip_ws(s, 0) + 1;  // past '{'
  i = skip_ws(s, i);
  if (i < s.size() && s[i] == '}') return out;
  while (i < s.size()) {
    const std::size_t ks = i;
    const std::size_t ke = skip_string(s, i);
    std::string_view key_raw = s.substr(ks + 1, ke - ks - 2);
    std::string key;
    if (key_raw.find('\\') == std::string_view::npos) {
      key = std::string(key_raw);
    } else {
      json::error_code ec;
      json::value k = json::parse(s.substr(ks, ke - ks), ec);
      key = ec ? std::string(key_raw) : std::string(k.as_string());
    }
    i = skip_ws(s, ke) + 1;  // past ':'
    i = skip_ws(s, i);
    const std::size_t vs = i;
    i = skip_value(s, i);
    out.push_back({std::move(key), s.substr(vs, i - vs)});
    i = skip_ws(s, i);
    if (i < s.size() && s[i] == ',') {
      i = skip_ws(s, i + 1);
      continue;
    }
    break;
  }
  return out;
}

constexpr std::size_t kMaxIdBytes = 256;

}  // namespace

struct Protocol::Request {
  const json::object* obj = nullptr;
  std::vector<Member> members;
  std::string id;  // serialized "id", or empty
  std::string op;
  const Peer* peer = nullptr;
  bool may_write = false;

  const Member* member(std::string_view key) const {
    for (const Member& m : members) {
      if (m.key == key) return &m;
    }
    return nullptr;
  }

  // Refuses any field not in `allowed` (besides "op" and "id"): a typo must not pass silently.
  void only(std::initializer_list<std::string_view> allowed) const {
    for (const Member& m : members) {
      if (m.key == "op" || m.key == "id") continue;
      if (std::find(allowed.begin(), allowed.end(), m.key) == allowed.end()) {
        std::string list;
        for (std::string_view a : allowed) list += (list.empty() ? "\"" : ", \"") + std::string(a) + "\"";
        reject(code::kBadRequest, "unknown field \"" + m.key + "\" in \"" + op + "\" request (fields: " +
                                      (list.empty() ? std::string("none") : list) + ")");
      }
    }
  }

  std::string_view string_field(std::string_view key) const {
    const json::value* v = obj->if_contains(key);
    if (!v) reject(code::kBadRequest, "missing field \"" + std::string(key) + "\" in \"" + op + "\" request");
    if (!v->is_string())
      reject(code::kBadRequest,
             "field \"" + std::string(key) + "\" must be a string, not " + std::string(kind_name(*v)));
    const json::string& s = v->get_string();
    return {s.data(), s.size()};
  }

  void require_write() const {
    if (!may_write)
      reject(code::kForbidden, "peer " + peer->describe() + " may not \"" + op +
                                   "\": writes need uid 0, the daemon's uid, or a uid or group on the "
                                   "allow-list (allow_uids, allow_gids)");
  }
};

Protocol::Protocol(Store& store) : store_(store) { set_max_depth(max_depth_); }

void Protocol::set_max_depth(std::size_t depth) {
  max_depth_ = depth;
  json::parse_options opt;
  opt.max_depth = depth + 1;  // the request object wraps "settings"
  parser_.emplace(json::storage_ptr(), opt);
}

void Protocol::append_error(std::string& out, std::string_view c, std::string_view message) noexcept {
  try {
    ++stats_.errors;
    JsonWriter w(out);
    w.begin_object().key("ok").boolean(false);
    w.key("error").begin_object().key("code").str(c).key("message").str(message).end_object();
    w.end_object();
    out += '\n';
  } catch (...) {
  }
}

void Protocol::handle(std::string_view line, const Peer& peer, bool may_write, std::string& out) noexcept {
  ++stats_.requests;
  const std::size_t mark = out.size();
  Request rq;
  rq.peer = &peer;
  rq.may_write = may_write;
  try {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (skip_ws(line, 0) == line.size()) reject(code::kBadRequest, "empty request line (expected one JSON object)");

    // Small requests parse without touching the heap.
    alignas(std::max_align_t) unsigned char buffer[4096];
    json::monotonic_resource mr(buffer, sizeof buffer);
    json::parser& p = *parser_;
    p.reset(&mr);
    json::error_code ec;
    const std::size_t used = p.write_some(line.data(), line.size(), ec);
    if (!ec && used != line.size()) ec = json::make_error_code(json::error::extra_data);
    if (ec) {
      if (ec == json::error::too_deep)
        reject(code::kBadRequest, "request nested deeper than " + std::to_string(max_depth_ + 1) +
                                      " levels (settings may nest " + std::to_string(max_depth_) + ")");
      if (ec == json::error::incomplete) reject(code::kBadRequest, "malformed JSON: the line ends inside a value");
      reject(code::kBadRequest, "malformed JSON at byte " + std::to_string(used) + ": " + ec.message());
    }
    const json::value v = p.release();
    if (!v.is_object())
      reject(code::kBadRequest, "a request must be a JSON object, not " + std::string(kind_name(v)));
    rq.obj = &v.get_object();
    rq.members = top_level_members(line);
    for (std::size_t i = 0; i < rq.members.size(); ++i) {
      for (std::size_t j = 0; j < i; ++j) {
        if (rq.members[i].key == rq.members[j].key)
          reject(code::kBadRequest, "field \"" + rq.members[i].key + "\" appears twice");
      }
    }
    if (const json::value* id = rq.obj->if_contains("id")) {
      if (!id->is_string() && !id->is_number())
        reject(code::kBadRequest, "field \"id\" must be a string or a number, not " + std::string(kind_name(*id)));
      // 1e400 parses to infinity, which has no JSON spelling: it could not be echoed back.
      if (id->is_double() && !std::isfinite(id->get_double()))
        reject(code::kBadRequest, "field \"id\" is not a finite number");
      if (const Member* m = rq.member("id"); m && m->raw.size() <= kMaxIdBytes) {
        rq.id = json::serialize(*id);
      } else {
        reject(code::kBadRequest, "field \"id\" is longer than " + std::to_string(kMaxIdBytes) + " bytes");
      }
    }
    const json::value* op = rq.obj->if_contains("op");
    if (!op) reject(code::kBadRequest, "missing field \"op\"");
    if (!op->is_string()) reject(code::kBadRequest, "field \"op\" must be a string, not " + std::string(kind_name(*op)));
    rq.op = std::string(op->get_string());
    dispatch(rq, out);
  } catch (const Reject& r) {
    out.resize(mark);
    ++stats_.errors;
    try {
      JsonWriter w(out);
      w.begin_object().key("ok").boolean(false);
      if (!rq.id.empty()) w.key("id").raw(rq.id);
      w.key("error").begin_object().key("code").str(r.code).key("message").str(r.message).end_object();
      w.end_object();
      out += '\n';
    } catch (...) {
      out.resize(mark);
      append_error(out, code::kInternalError, "out of memory while answering");
    }
  } catch (const std::bad_alloc&) {
    out.resize(mark);
    append_error(out, code::kInternalError, "out of memory while handling the request; nothing changed");
  } catch (const std::exception& e) {
    out.resize(mark);
    append_error(out, code::kInternalError, std::string("unexpected failure: ") + e.what());
  } catch (...) {
    out.resize(mark);
    append_error(out, code::kInternalError, "unexpected failure");
  }
}

void Protocol::dispatch(Request& rq, std::string& out) {
  const std::string& op = rq.op;
  if (op == "update") return op_update(rq, out);
  if (op == "event") return op_event(rq, out);
  if (op == "need_update") return op_need_update(rq, out);
  if (op == "settings") return op_settings(rq, out);
  if (op == "delete") return op_delete(rq, out);
  if (op == "dump") return op_dump(rq, out);
  std::string shown = op.size() > 64 ? op.substr(0, 64) + "…" : op;
  reject(code::kBadRequest,
         "unknown op \"" + shown + "\" (ops: update, event, need_update, settings, delete, dump)");
}

namespace {

JsonWriter& begin_ok(JsonWriter& w, const std::string& id) {
  w.begin_object().key("ok").boolean(true);
  if (!id.empty()) w.key("id").raw(id);
  return w;
}

void end_ok(JsonWriter& w, std::string& out) {
  w.end_object();
  out += '\n';
}

}  // namespace

void Protocol::op_update(Request& rq, std::string& out) {
  rq.require_write();
  rq.only({"name", "version", "settings"});
  const std::string_view name = rq.string_field("name");
  const std::string_view version = rq.string_field("version");
  Settings settings;
  if (const Member* m = rq.member("settings")) {
    Limits limits = store_.limits();
    limits.max_depth = max_depth_;
    auto parsed = Settings::parse(m->raw, limits);
    if (!parsed) reject(parsed.error());
    settings = std::move(*parsed);
  }
  auto r = store_.update(name, version, settings);
  if (!r) reject(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(name).key("context");
  if (r->token) {
    w.str(r->token->str());
  } else {
    w.null();
  }
  w.key("change").str(change_name(r->change));
  end_ok(w, out);
}

void Protocol::op_event(Request& rq, std::string& out) {
  rq.require_write();
  rq.only({"name", "event"});
  const std::string_view name = rq.string_field("name");
  const json::value* ev = rq.obj->if_contains("event");
  if (!ev) reject(code::kBadRequest, "missing field \"event\" in \"event\" request");
  int event = -1;
  if (ev->is_string()) {
    const json::string& s = ev->get_string();
    auto parsed = parse_event({s.data(), s.size()});
    if (!parsed) reject(parsed.error());
    event = *parsed;
  } else if (ev->is_int64() || ev->is_uint64()) {
    auto checked = validate_event(ev->is_int64() ? ev->get_int64() : -1);
    if (!checked) reject(Error(Errc::invalid_event, "event " + json::serialize(*ev) + " is not a key 0..7"));
    event = *checked;
  } else {
    reject(code::kBadRequest, "field \"event\" must be a name or an integer 0..7, not " +
                                  std::string(ev->is_double() ? "a fractional number" : kind_name(*ev)));
  }
  auto r = store_.handle_event(event, name);
  if (!r) reject(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(name).key("context");
  if (*r) {
    w.str((*r)->str());
  } else {
    w.null();
  }
  end_ok(w, out);
}

void Protocol::op_need_update(Request& rq, std::string& out) {
  rq.only({"name", "version", "checksum"});
  const std::string_view name = rq.string_field("name");
  const std::string_view version = rq.string_field("version");
  auto sum = parse_checksum(rq.string_field("checksum"));
  if (!sum) reject(sum.error());
  auto r = store_.need_update(name, version, *sum);
  if (!r) reject(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("need_update").boolean(*r);
  end_ok(w, out);
}

void Protocol::op_settings(Request& rq, std::string& out) {
  rq.only({"name"});
  const std::string_view name = rq.string_field("name");
  auto rec = store_.view().read(name, true);
  if (!rec) reject(rec.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(rec->name).key("version").str(rec->version);
  // Canonical JSON: one line, valid UTF-8; spliced as stored so the checksum matches byte for byte.
  w.key("settings").raw(rec->settings.empty() ? std::string_view("{}") : std::string_view(rec->settings));
  w.key("checksum").str(hex16(rec->checksum));
  end_ok(w, out);
}

void Protocol::op_delete(Request& rq, std::string& out) {
  rq.require_write();
  rq.only({"name"});
  const std::string_view name = rq.string_field("name");
  auto r = store_.erase(name);
  if (!r) reject(r.error());
  JsonWriter w(out);
  begin_ok(w, rq.id).key("name").str(name).key("deleted").boolean(*r);
  end_ok(w, out);
}

void Protocol::op_dump(Request& rq, std::string& out) {
  rq.only({});
  const SegmentInfo i = store_.segment().info();
  const std::vector<PackageRecord> packages = store_.view().list(false);
  JsonWriter w(out);
  begin_ok(w, rq.id);
  w.key("segment").begin_object();
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
  w.key("max_name").num(std::uint64_t{i.max_name});
  w.key("max_version").num(std::uint64_t{i.max_version});
  w.key("max_settings").num(i.max_settings);
  w.key("created_realtime_ns").num(i.created_realtime_ns);
  w.end_object();
  w.key("daemon").begin_object();
  w.key("pid").num(std::int64_t{i.daemon_pid});
  w.key("state").str(daemon_state_name(i.daemon_state));
  w.key("liveness").str(liveness_name(liveness(i)));
  w.key("start_realtime_ns").num(i.daemon_start_realtime_ns);
  w.key("heartbeat_mono_ns").num(i.heartbeat_mono_ns);
  w.key("heartbeat_interval_ns").num(i.heartbeat_interval_ns);
#ifdef PKGCTX_VERSION
  w.key("version").str(PKGCTX_VERSION);
#endif
  w.key("socket").str(stats_.socket);
  w.key("clients").num(stats_.clients);
  w.key("accepted").num(stats_.accepted);
  w.key("dropped").num(stats_.dropped);
  w.key("requests").num(stats_.requests);
  w.key("errors").num(stats_.errors);
  w.end_object();
  w.key("packages").begin_array();
  for (const PackageRecord& p : packages) {
    w.begin_object();
    w.key("name").str(p.name);
    w.key("version").str(p.version);
    w.key("checksum").str(hex16(p.checksum));
    w.key("settings_size").num(p.settings_size);
    w.key("slot").num(std::uint64_t{p.slot});
    w.key("root_generation").num(p.root_generation);
    w.key("child_generations").begin_array();
    for (std::uint64_t g : p.child_generations) w.num(g);
    w.end_array();
    w.key("last_cause").str(cause_name(p.last_cause));
    w.end_object();
  }
  w.end_array();
  end_ok(w, out);
}

}  // namespace pkgctx::daemon
