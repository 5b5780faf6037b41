#include "pkgctx/daemon/config.hpp"

#include "pkgctx/bounded_file.hpp"
#include "pkgctx/settings.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <functional>
#include <grp.h>
#include <limits>
#include <optional>
#include <pwd.h>
#include <set>
#include <sys/stat.h>

namespace pkgctx::daemon {
namespace {

Error bad(const std::string& origin, std::string_view key, const std::string& why) {
  return make_error(Errc::invalid_settings, origin + ": " + std::string(key) + ": " + why);
}

std::string_view trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

// Appended piece by piece: GCC 12 -O2/-O3 warns -Wrestrict (a false positive) inside
// `"\"" + std::string(v) + "\""`, which fails a Release build with PKGCTX_WERROR.
std::string quote(std::string_view v) {
  std::string q;
  q.reserve(v.size() + 2);
  q.append(1, '"').append(v).append(1, '"');
  return q;
}

// Unsigned integer with an optional K/M/G suffix (binary multiples).
Result<std::uint64_t> parse_size(std::string_view v, bool allow_suffix) {
  std::uint64_t mult = 1;
  if (allow_suffix && !v.empty()) {
    switch (v.back()) {
      case 'k': case 'K': mult = 1ull << 10; break;
      case 'm': case 'M': mult = 1ull << 20; break;
      case 'g': case 'G': mult = 1ull << 30; break;
      default: break;
    }
    if (mult != 1) v.remove_suffix(1);
  }
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n, 10);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size())
    return make_error(Errc::invalid_settings, quote(v) + " is not a non-negative integer" +
                                                  (allow_suffix ? " (optionally with K, M or G)" : ""));
  if (n > std::numeric_limits<std::uint64_t>::max() / mult)
    return make_error(Errc::invalid_settings, quote(v) + " is too large");
  return n * mult;
}

template <class T>
Result<void> set_number(T& out, std::string_view v, std::uint64_t lo, std::uint64_t hi, bool suffix) {
  auto n = parse_size(v, suffix);
  if (!n) return n.error();
  if (*n < lo || *n > hi)
    return make_error(Errc::invalid_settings,
                      std::to_string(*n) + " is out of range " + std::to_string(lo) + ".." + std::to_string(hi));
  out = static_cast<T>(*n);
  return {};
}

Result<void> set_mode(mode_t& out, std::string_view v) {
  unsigned m = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), m, 8);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size() || m > 0777)
    return make_error(Errc::invalid_settings, quote(v) + " is not an octal file mode 0000..0777");
  out = static_cast<mode_t>(m);
  return {};
}

bool all_digits(std::string_view v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Result<uid_t> resolve_user(std::string_view v) {
  if (all_digits(v)) {
    auto n = parse_size(v, false);
    if (!n || *n >= static_cast<std::uint64_t>(static_cast<uid_t>(-1)))
      return make_error(Errc::invalid_settings, "uid " + std::string(v) + " is out of range");
    return static_cast<uid_t>(*n);
  }
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  const std::string name(v);
  const int rc = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found);
  if (rc != 0) return make_error(Errc::invalid_settings, "cannot look up user " + quote(v) + ": " + std::strerror(rc));
  if (!found) return make_error(Errc::invalid_settings, "no such user " + quote(v));
  return pw.pw_uid;
}

Result<gid_t> resolve_group(std::string_view v) {
  if (all_digits(v)) {
    auto n = parse_size(v, false);
    if (!n || *n >= static_cast<std::uint64_t>(static_cast<gid_t>(-1)))
      return make_error(Errc::invalid_settings, "gid " + std::string(v) + " is out of range");
    return static_cast<gid_t>(*n);
  }
  std::vector<char> buf(16384);
  group gr{};
  group* found = nullptr;
  const std::string name(v);
  const int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found);
  if (rc != 0) return make_error(Errc::invalid_settings, "cannot look up group " + quote(v) + ": " + std::strerror(rc));
  if (!found) return make_error(Errc::invalid_settings, "no such group " + quote(v));
  return gr.gr_gid;
}

std::vector<std::string_view> split_list(std::string_view v) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < v.size()) {
    while (i < v.size() && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) ++i;
    std::size_t j = i;
    while (j < v.size() && v[j] != ',' && v[j] != ' ' && v[j] != '\t') ++j;
    if (j > i) out.push_back(v.substr(i, j - i));
    i = j;
  }
  return out;
}

template <class Id, class Resolve>
Result<void> set_id_list(std::vector<Id>& out, std::string_view v, Resolve resolve) {
  std::vector<Id> ids;
  for (std::string_view item : split_list(v)) {
    auto id = resolve(item);
    if (!id) return id.error();
    if (std::find(ids.begin(), ids.end(), *id) == ids.end()) ids.push_back(*id);
  }
  out = std::move(ids);
  return {};
}

template <class Id>
std::string format_ids(const std::vector<Id>& ids) {
  std::string s;
  for (Id id : ids) {
    if (!s.empty()) s += ", ";
    s += std::to_string(id);
  }
  return s;
}

std::string format_mode(mode_t m) {
  char buf[8];
  const auto end = std::to_chars(buf, buf + sizeof buf, static_cast<unsigned>(m), 8).ptr;
  std::string digits(buf, end);
  return std::string(digits.size() < 4 ? 4 - digits.size() : 0, '0') + digits;
}

std::string format_group(gid_t g) { return g == kNoGroup ? std::string() : std::to_string(g); }

struct Key {
  const char* name;
  bool reloadable;
  std::function<Result<void>(Config&, std::string_view)> set;
  std::function<std::string(const Config&)> get;
};

const std::vector<Key>& keys() {
  constexpr std::uint64_t k1G = 1ull << 30;
  static const std::vector<Key> table = {
      {"segment", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (auto ok = validate_segment_name(v); !ok) return make_error(Errc::invalid_settings, ok.error().message);
         c.segment = std::string(v);
         return {};
       },
       [](const Config& c) { return c.segment; }},
      {"socket", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v.empty() || v.front() != '/') return make_error(Errc::invalid_settings, quote(v) + " is not an absolute path");
         if (v.size() >= 108)
           return make_error(Errc::invalid_settings, "socket path is " + std::to_string(v.size()) +
                                                         " bytes; Unix sockets allow at most 107");
         c.socket = std::string(v);
         return {};
       },
       [](const Config& c) { return c.socket; }},
      {"runtime_dir", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v.empty() || v.front() != '/') return make_error(Errc::invalid_settings, quote(v) + " is not an absolute path");
         if (v.size() > 3000) return make_error(Errc::invalid_settings, "runtime_dir is longer than 3000 bytes");
         c.runtime_dir = std::string(v);
         return {};
       },
       [](const Config& c) { return c.runtime_dir; }},
      {"capacity", false, [](Config& c, std::string_view v) { return set_number(c.capacity, v, 1, 1u << 26, true); },
       [](const Config& c) { return std::to_string(c.capacity); }},
      {"settings_bytes", false,
       [](Config& c, std::string_view v) { return set_number(c.settings_bytes, v, 64, 1ull << 40, true); },
       [](const Config& c) { return std::to_string(c.settings_bytes); }},
      {"max_name", false, [](Config& c, std::string_view v) { return set_number(c.max_name, v, 1, 128, false); },
       [](const Config& c) { return std::to_string(c.max_name); }},
      {"max_version", false, [](Config& c, std::string_view v) { return set_number(c.max_version, v, 1, 128, false); },
       [](const Config& c) { return std::to_string(c.max_version); }},
      {"max_settings", false, [](Config& c, std::string_view v) { return set_number(c.max_settings, v, 2, k1G, true); },
       [](const Config& c) { return std::to_string(c.max_settings); }},
      {"segment_mode", false,
       [](Config& c, std::string_view v) -> Result<void> {
         mode_t m = 0;
         if (auto ok = set_mode(m, v); !ok) return ok;
         if (m & 022)
           return make_error(Errc::invalid_settings, quote(v) + " lets others write the segment: readers refuse such a "
                                                                "segment (DESIGN §4.1); use 0640 or 0600");
         c.segment_mode = m;
         return {};
       },
       [](const Config& c) { return format_mode(c.segment_mode); }},
      {"segment_group", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v.empty()) return c.segment_group = kNoGroup, Result<void>{};
         auto g = resolve_group(v);
         if (!g) return g.error();
         c.segment_group = *g;
         return {};
       },
       [](const Config& c) { return format_group(c.segment_group); }},
      {"socket_mode", false, [](Config& c, std::string_view v) { return set_mode(c.socket_mode, v); },
       [](const Config& c) { return format_mode(c.socket_mode); }},
      {"socket_group", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v.empty()) return c.socket_group = kNoGroup, Result<void>{};
         auto g = resolve_group(v);
         if (!g) return g.error();
         c.socket_group = *g;
         return {};
       },
       [](const Config& c) { return format_group(c.socket_group); }},
      {"heartbeat_ms", false, [](Config& c, std::string_view v) { return set_number(c.heartbeat_ms, v, 10, 60000, false); },
       [](const Config& c) { return std::to_string(c.heartbeat_ms); }},
      {"follow", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (!v.empty() && v != "etcd") return make_error(Errc::invalid_settings, quote(v) + " is not \"\" or \"etcd\"");
         c.follow = std::string(v);
         return {};
       },
       [](const Config& c) { return c.follow; }},
      {"etcd_endpoints", false,
       [](Config& c, std::string_view v) -> Result<void> {
         std::vector<std::string> urls;
         for (std::string_view u : split_list(v)) {
           if (!u.starts_with("http://") || u.size() <= 7)
             return make_error(Errc::invalid_settings, quote(u) + " is not an http://HOST:PORT URL");
           urls.emplace_back(u);
         }
         if (urls.empty()) return make_error(Errc::invalid_settings, "at least one endpoint is needed");
         c.etcd_endpoints = std::move(urls);
         return {};
       },
       [](const Config& c) {
         std::string s;
         for (const std::string& u : c.etcd_endpoints) s += (s.empty() ? "" : ", ") + u;
         return s;
       }},
      {"etcd_prefix", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v.empty() || v.back() == '/' || v.find_first_of(" \t\n") != std::string_view::npos)
           return make_error(Errc::invalid_settings, quote(v) + " is not a key prefix (non-empty, no blanks, no trailing /)");
         c.etcd_prefix = std::string(v);
         return {};
       },
       [](const Config& c) { return c.etcd_prefix; }},
      {"etcd_host", false,
       [](Config& c, std::string_view v) -> Result<void> {
         if (!v.empty())
           if (auto ok = validate_name(v, Limits{}); !ok) return make_error(Errc::invalid_settings, quote(v) + " is not a host name ([A-Za-z0-9._-]{1,128})");
         c.etcd_host = std::string(v);
         return {};
       },
       [](const Config& c) { return c.etcd_host; }},
      {"etcd_status_ttl_s", false,
       [](Config& c, std::string_view v) { return set_number(c.etcd_status_ttl_s, v, 2, 3600, false); },
       [](const Config& c) { return std::to_string(c.etcd_status_ttl_s); }},
      {"etcd_drain_ms", false,
       [](Config& c, std::string_view v) { return set_number(c.etcd_drain_ms, v, 0, 86'400'000, false); },
       [](const Config& c) { return std::to_string(c.etcd_drain_ms); }},
      {"etcd_watch_idle_ms", false,
       [](Config& c, std::string_view v) { return set_number(c.etcd_watch_idle_ms, v, 100, 3'600'000, false); },
       [](const Config& c) { return std::to_string(c.etcd_watch_idle_ms); }},
      {"etcd_owns", true,
       [](Config& c, std::string_view v) -> Result<void> {
         if (v != "true" && v != "false") return make_error(Errc::invalid_settings, quote(v) + " is not true or false");
         c.etcd_owns = v == "true";
         return {};
       },
       [](const Config& c) { return std::string(c.etcd_owns ? "true" : "false"); }},
      {"allow_uids", true, [](Config& c, std::string_view v) { return set_id_list(c.allow_uids, v, resolve_user); },
       [](const Config& c) { return format_ids(c.allow_uids); }},
      {"allow_gids", true, [](Config& c, std::string_view v) { return set_id_list(c.allow_gids, v, resolve_group); },
       [](const Config& c) { return format_ids(c.allow_gids); }},
      {"max_line_bytes", true,
       [](Config& c, std::string_view v) { return set_number(c.max_line_bytes, v, 256, k1G, true); },
       [](const Config& c) { return std::to_string(c.max_line_bytes); }},
      {"max_read_line_bytes", true,
       [](Config& c, std::string_view v) { return set_number(c.max_read_line_bytes, v, 256, k1G, true); },
       [](const Config& c) { return std::to_string(c.max_read_line_bytes); }},
      {"max_depth", true, [](Config& c, std::string_view v) { return set_number(c.max_depth, v, 1, 1000, false); },
       [](const Config& c) { return std::to_string(c.max_depth); }},
      {"max_clients", true, [](Config& c, std::string_view v) { return set_number(c.max_clients, v, 1, 65536, false); },
       [](const Config& c) { return std::to_string(c.max_clients); }},
      {"max_registered", true,
       [](Config& c, std::string_view v) { return set_number(c.max_registered, v, 1, 1u << 20, false); },
       [](const Config& c) { return std::to_string(c.max_registered); }},
      {"writer_slots", true, [](Config& c, std::string_view v) { return set_number(c.writer_slots, v, 0, 65536, false); },
       [](const Config& c) { return std::to_string(c.writer_slots); }},
      {"max_output_bytes", true,
       [](Config& c, std::string_view v) { return set_number(c.max_output_bytes, v, 4096, 4 * k1G, true); },
       [](const Config& c) { return std::to_string(c.max_output_bytes); }},
      {"send_timeout_ms", true,
       [](Config& c, std::string_view v) { return set_number(c.send_timeout_ms, v, 10, 3600000, false); },
       [](const Config& c) { return std::to_string(c.send_timeout_ms); }},
      {"idle_timeout_ms", true,
       [](Config& c, std::string_view v) { return set_number(c.idle_timeout_ms, v, 100, 86400000, false); },
       [](const Config& c) { return std::to_string(c.idle_timeout_ms); }},
      {"log_level", true,
       [](Config& c, std::string_view v) -> Result<void> {
         auto l = log::level_from_name(v);
         if (!l) return make_error(Errc::invalid_settings, quote(v) + " is not one of err, warning, notice, info, debug");
         c.log_level = *l;
         return {};
       },
       [](const Config& c) { return std::string(log::level_name(c.log_level)); }},
  };
  return table;
}

const Key* find_key(std::string_view name) {
  for (const Key& k : keys()) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

std::string known_keys() {
  std::string s;
  for (const Key& k : keys()) {
    if (!s.empty()) s += ", ";
    s += k.name;
  }
  return s;
}

}  // namespace

Result<void> set_config_value(Config& cfg, std::string_view key, std::string_view value, const std::string& origin) {
  const Key* k = find_key(key);
  if (!k) return make_error(Errc::invalid_settings, origin + ": unknown key " + quote(key) + " (known: " + known_keys() + ")");
  try {
    if (auto r = k->set(cfg, value); !r) return bad(origin, key, r.error().message);
  } catch (const std::exception& e) {
    return bad(origin, key, e.what());
  }
  return {};
}

Result<void> parse_config_text(std::string_view text, const std::string& origin, Config& cfg) {
  std::set<std::string, std::less<>> seen;
  std::size_t line_no = 0;
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    line = trim(line);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    const std::string where = origin + ":" + std::to_string(line_no);
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos)
      return make_error(Errc::invalid_settings, where + ": expected \"key = value\", found " + quote(line));
    const std::string_view key = trim(line.substr(0, eq));
    std::string_view value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    if (key.empty()) return make_error(Errc::invalid_settings, where + ": missing key before '='");
    if (!seen.insert(std::string(key)).second)
      return make_error(Errc::invalid_settings, where + ": key " + quote(key) + " is set twice");
    if (auto r = set_config_value(cfg, key, value, where); !r) return r;
  }
  return {};
}

Result<Config> load_config(const ConfigSource& source) {
  Config cfg;
  // An absent default config is no config. Anything at the path is read like any file argument:
  // a regular file (or /dev/null) only, at most kMaxConfigBytes.
  struct stat st {};
  const bool absent = !source.path_explicit && ::stat(source.path.c_str(), &st) != 0 && errno == ENOENT;
  if (!absent) {
    auto text = read_bounded_file(source.path, kMaxConfigBytes, "config file");
    if (!text) return text.error();
    if (auto r = parse_config_text(*text, source.path, cfg); !r) return r.error();
  }
  for (const auto& o : source.overrides) {
    if (auto r = set_config_value(cfg, o.key, o.value, o.origin); !r) return r.error();
  }
  return cfg;
}

std::string format_config(const Config& cfg) {
  std::string out;
  for (const Key& k : keys()) {
    out += k.name;
    out += " = ";
    out += k.get(cfg);
    out += '\n';
  }
  return out;
}

bool is_reloadable(std::string_view key) noexcept {
  const Key* k = find_key(key);
  return k && k->reloadable;
}

ReloadReport apply_reload(Config& live, const Config& next) {
  ReloadReport report;
  for (const Key& k : keys()) {
    const std::string a = k.get(live), b = k.get(next);
    if (a == b) continue;
    std::string line = std::string(k.name) + ": \"" + a + "\" -> \"" + b + "\"";
    // A value in file syntax, as get() writes it, always parses back.
    (k.reloadable && k.set(live, b) ? report.applied : report.ignored).push_back(std::move(line));
  }
  return report;
}

}  // namespace pkgctx::daemon
