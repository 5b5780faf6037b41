#include "pkgctl/render.hpp"

#include "pkgctx/dump.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/token.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <ostream>
#include <utility>

namespace pkgctl {

using pkgctx::Liveness;
using pkgctx::PackageRecord;

namespace {

std::string version_text(const PackageRecord& p) { return p.version.empty() ? "(removed)" : p.version; }

// The package's last cause: the view's text (caller-named causes resolved), "-" for none.
std::string cause_text(const PackageRecord& p) {
  if (p.last_cause == pkgctx::Cause::kNone) return "-";
  return p.last_cause_name.empty() ? std::string(pkgctx::cause_name(p.last_cause)) : p.last_cause_name;
}

std::string pad(const std::string& s, std::size_t w) { return s.size() >= w ? s : s + std::string(w - s.size(), ' '); }

// Cuts `s` to `cols` bytes (the table is ASCII except names, which are [A-Za-z0-9._-]).
std::string cut(const std::string& s, int cols) {
  return s.size() > static_cast<std::size_t>(cols) ? s.substr(0, static_cast<std::size_t>(cols)) : s;
}

}  // namespace

Snapshot take_header(const pkgctx::View& view) {
  Snapshot s;
  s.info = view.segment().info();
  s.liveness = pkgctx::liveness(s.info);
  s.heartbeat_age_ns = pkgctx::heartbeat_age_ns(s.info, pkgctx::mono_now_ns());
  s.taken_realtime_ns = pkgctx::realtime_now_ns();
  return s;
}

pkgctx::Result<Snapshot> take_snapshot(const pkgctx::View& view) {
  Snapshot s = take_header(view);
  auto packages = view.list(false);
  if (!packages) return packages.error();
  s.packages = std::move(*packages);
  std::sort(s.packages.begin(), s.packages.end(),
            [](const PackageRecord& a, const PackageRecord& b) { return a.name < b.name; });
  return s;
}

std::string human_bytes(std::uint64_t n) {
  char buf[32];
  if (n < 1024) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " B", n);
  } else if (n < 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(n) / 1024.0);
  } else if (n < 1024ull * 1024 * 1024) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / (1024.0 * 1024.0));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(n) / (1024.0 * 1024.0 * 1024.0));
  }
  return buf;
}

std::string human_duration(std::uint64_t ns) {
  char buf[48];
  const double sec = static_cast<double>(ns) / 1e9;
  const std::uint64_t s = ns / 1'000'000'000u;
  if (sec < 10) {
    std::snprintf(buf, sizeof buf, "%.2f s", sec);
  } else if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.1f s", sec);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " min %" PRIu64 " s", s / 60, s % 60);
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " h %" PRIu64 " min", s / 3600, s / 60 % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%" PRIu64 " d %" PRIu64 " h", s / 86400, s / 3600 % 24);
  }
  return buf;
}

std::string local_time_text(std::uint64_t realtime_ns, bool with_date) {
  const std::time_t t = static_cast<std::time_t>(realtime_ns / 1'000'000'000u);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, with_date ? "%Y-%m-%d %H:%M:%S" : "%H:%M:%S", &tm);
  return buf;
}

std::string child_generations_text(const PackageRecord& p) {
  std::string out;
  for (std::uint32_t k = 0; k < pkgctx::layout::kChildKeys; ++k) {
    if (p.child_generations[k] == p.root_generation) continue;  // no key-k event of its own
    if (!out.empty()) out += ' ';
    out += std::to_string(k + pkgctx::layout::kFirstChildKey) + ":" + std::to_string(p.child_generations[k]);
  }
  return out.empty() ? "-" : out;
}

std::string render_header(const Snapshot& s) {
  const auto& i = s.info;
  std::string out;
  out += "segment   " + i.name + "  layout v" + std::to_string(i.layout_version) + "  " +
         std::string(pkgctx::state_name(i.state)) + "  epoch " + pkgctx::hex16(i.epoch) + "\n";
  out += "packages  " + std::to_string(i.used) + " of " + std::to_string(i.capacity) + " slots\n";
  out += "settings  " + human_bytes(i.settings_used) + " of " + human_bytes(i.settings_bytes) + " used  (at most " +
         human_bytes(i.max_settings) + " per package)\n";
  out += "writes    " + std::to_string(i.commits) + " committed, " + std::to_string(i.repairs) + " crash repairs\n";
  if (i.follow_revision != 0) out += "follows   etcd, applied revision " + std::to_string(i.follow_revision) + "\n";
  std::string d = "daemon    ";
  const std::string pid = "pid " + std::to_string(i.daemon_pid);
  const std::string beat = "heartbeat " + human_duration(s.heartbeat_age_ns) + " ago";
  switch (s.liveness) {
    case Liveness::alive: {
      const std::uint64_t now = pkgctx::realtime_now_ns();
      d += "alive  " + pid + "  " + beat;
      if (i.daemon_start_realtime_ns && now > i.daemon_start_realtime_ns)
        d += "  up " + human_duration(now - i.daemon_start_realtime_ns);
      break;
    }
    case Liveness::stale:
      d += "STALE  " + pid + "  " + beat + " (expected every " + human_duration(i.heartbeat_interval_ns) +
           ")  hung or killed? writes may fail; reads still work";
      break;
    case Liveness::stopped:
      d += "stopped  (was " + pid + ")  the daemon is down: reads work, writes need pkgctxd";
      break;
    case Liveness::none:
      d += "none  no daemon has attached to this segment: reads work, writes need pkgctxd";
      break;
  }
  out += d + "\n";
  return out;
}

namespace {

template <std::size_t N>
using Cells = std::array<std::string, N>;
template <std::size_t N>
using Widths = std::array<std::size_t, N>;

constexpr std::size_t kColumns = 9;
const Cells<kColumns> kHead = {"NAME",       "VERSION",  "CHECKSUM", "ROOT", "CHILD GENS",
                               "LAST CAUSE", "SETTINGS", "SV",       "MAINT"};
// Numbers right-aligned (ROOT, SETTINGS, SV, and watch's WAITERS, HOLDERS), text left-aligned.
constexpr bool right_aligned(std::size_t c) { return c == 3 || c == 6 || c == 7 || c >= kColumns; }

Cells<kColumns> table_cells(const PackageRecord& p) {
  return {p.name, version_text(p), pkgctx::Settings::format_checksum(p.checksum), std::to_string(p.root_generation),
          child_generations_text(p), cause_text(p), human_bytes(p.settings_size), std::to_string(p.settings_version),
          p.maintenance.empty() ? "-" : p.maintenance};
}

template <std::size_t N>
void widen(Widths<N>& width, const Cells<N>& row) {
  for (std::size_t c = 0; c < N; ++c) width[c] = std::max(width[c], row[c].size());
}

template <std::size_t N>
std::string table_line(const Cells<N>& row, const Widths<N>& width) {
  std::string out;
  for (std::size_t c = 0; c < N; ++c) {
    std::string cell = row[c];
    if (right_aligned(c) && cell.size() < width[c]) cell = std::string(width[c] - cell.size(), ' ') + cell;
    out += c + 1 == N ? cell : pad(cell, width[c]) + "  ";
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();  // no trailing blanks
  return out;
}

// A header row and one line per row of `cells`, widths fitting the widest cell.
template <std::size_t N>
std::vector<std::string> table_lines(const Cells<N>& head, const std::vector<Cells<N>>& cells) {
  Widths<N> width{};
  widen(width, head);
  for (const auto& row : cells) widen(width, row);
  std::vector<std::string> lines;
  lines.reserve(cells.size() + 1);
  lines.push_back(table_line(head, width));
  for (const auto& row : cells) lines.push_back(table_line(row, width));
  if (cells.empty()) lines.emplace_back("(no packages)");
  return lines;
}

}  // namespace

std::vector<std::string> render_table(const std::vector<PackageRecord>& packages) {
  std::vector<Cells<kColumns>> cells;
  cells.reserve(packages.size());
  for (const auto& p : packages) cells.push_back(table_cells(p));
  return table_lines(kHead, cells);
}

std::string render_dump_text(const Snapshot& s) {
  std::string out = render_header(s) + "\n";
  for (const auto& l : render_table(s.packages)) out += l + "\n";
  return out;
}

std::string dump_json_open(const Snapshot& s) {
  std::string out;
  pkgctx::JsonWriter w(out);
  w.begin_object();
  w.key("segment").begin_object();
  pkgctx::write_dump_segment(w, s.info);
  w.end_object();
  w.key("daemon").begin_object();
  pkgctx::write_dump_daemon(w, s.info, s.liveness, s.heartbeat_age_ns);
  w.end_object();
  w.key("packages");
  return out + '[';
}

std::string dump_package_json(const PackageRecord& p) {
  std::string out;
  pkgctx::JsonWriter w(out);
  pkgctx::write_dump_package(w, p);
  return out;
}

std::string dump_json(const Snapshot& s) {
  std::string out = dump_json_open(s);
  // Appended piece by piece: GCC 12 warns -Wrestrict (a false positive) on "literal" + string&&.
  for (std::size_t k = 0; k < s.packages.size(); ++k) {
    if (k) out += ',';
    out += dump_package_json(s.packages[k]);
  }
  return out + "]}";
}

// --- streamed dump ----------------------------------------------------------------------------

namespace {

// Records read between two release_slot_pages(): the table's pages this process maps at once
// (a record spans one or two 4 KiB pages) stay within a few MB whatever the table's size.
constexpr std::uint32_t kReleaseEvery = 1024;

// Pass 1 of a streamed dump: every record validated (a corrupt one refuses the dump before its
// first byte), names and slots sorted by name; `each` sees every record read.
template <class Each>
pkgctx::Result<std::vector<std::pair<std::string, std::uint32_t>>> sorted_slots(const pkgctx::View& view, Each each) {
  std::vector<std::pair<std::string, std::uint32_t>> order;
  PackageRecord p;
  const std::uint32_t cap = view.segment().capacity();
  for (std::uint32_t slot = 0; slot < cap; ++slot) {
    if (slot % kReleaseEvery == 0) view.release_slot_pages();
    auto got = view.read_slot(slot, p, false);
    if (!got) return got.error();
    if (!*got) continue;
    each(p);
    order.emplace_back(p.name, slot);
  }
  std::sort(order.begin(), order.end());
  return order;
}

// Pass 2: each package read again, in name order. One deleted (or replaced by another name) since
// pass 1 is left out, as the set as a whole was never atomic.
template <class Emit>
pkgctx::Result<void> each_in_order(const pkgctx::View& view,
                                   const std::vector<std::pair<std::string, std::uint32_t>>& order, Emit emit) {
  PackageRecord p;
  std::uint32_t read = 0;
  for (const auto& [name, slot] : order) {
    if (++read % kReleaseEvery == 0) view.release_slot_pages();
    auto got = view.read_slot(slot, p, false);
    if (!got) return got.error();
    if (*got && p.name == name) emit(p);
  }
  return {};
}

}  // namespace

pkgctx::Result<void> write_dump(const pkgctx::View& view, bool as_json, std::ostream& out) {
  Snapshot head = take_header(view);
  if (as_json) {
    auto order = sorted_slots(view, [](const PackageRecord&) {});
    if (!order) return order.error();
    out << dump_json_open(head);
    bool first = true;
    auto r = each_in_order(view, *order, [&](const PackageRecord& p) {
      if (!first) out << ',';
      first = false;
      out << dump_package_json(p);
    });
    if (!r) return r;
    out << "]}\n";
    return {};
  }
  Widths<kColumns> width{};
  widen(width, kHead);
  auto order = sorted_slots(view, [&](const PackageRecord& p) { widen(width, table_cells(p)); });
  if (!order) return order.error();
  out << render_header(head) << '\n' << table_line(kHead, width) << '\n';
  auto r = each_in_order(view, *order, [&](const PackageRecord& p) { out << table_line(table_cells(p), width) << '\n'; });
  if (!r) return r;
  if (order->empty()) out << "(no packages)\n";
  return {};
}

// --- watch ------------------------------------------------------------------------------------

bool natural_less(std::string_view a, std::string_view b) noexcept {
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    if (digit(a[i]) && digit(b[j])) {
      // Compare the runs as numbers: skip leading zeros, then the longer run is larger, then
      // digit by digit (no overflow whatever the length).
      std::size_t ei = i, ej = j;
      while (ei < a.size() && digit(a[ei])) ++ei;
      while (ej < b.size() && digit(b[ej])) ++ej;
      std::size_t zi = i, zj = j;
      while (zi + 1 < ei && a[zi] == '0') ++zi;
      while (zj + 1 < ej && b[zj] == '0') ++zj;
      if (ei - zi != ej - zj) return ei - zi < ej - zj;
      if (const int c = a.substr(zi, ei - zi).compare(b.substr(zj, ej - zj)); c != 0) return c < 0;
      if (ei - i != ej - j) return ei - i < ej - j;  // equal values: fewer leading zeros first
      i = ei;
      j = ej;
    } else {
      if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
      ++i;
      ++j;
    }
  }
  return a.size() - i < b.size() - j;  // a proper prefix first
}

namespace {

constexpr std::pair<std::string_view, SortColumn> kSortNames[] = {
    {"name", SortColumn::name},         {"version", SortColumn::version},   {"checksum", SortColumn::checksum},
    {"generation", SortColumn::generation}, {"root", SortColumn::generation}, {"children", SortColumn::children},
    {"cause", SortColumn::cause},       {"settings", SortColumn::settings}, {"sv", SortColumn::sv},
    {"maint", SortColumn::maint},       {"waiters", SortColumn::waiters},   {"holders", SortColumn::holders},
};

constexpr std::size_t kWatchColumns = kColumns + 2;
const Cells<kWatchColumns> kWatchHead = {"NAME",       "VERSION",  "CHECKSUM", "ROOT",  "CHILD GENS", "LAST CAUSE",
                                         "SETTINGS",   "SV",       "MAINT",    "WAITERS", "HOLDERS"};

std::string optional_count(const std::optional<std::uint32_t>& n) { return n ? std::to_string(*n) : "-"; }

}  // namespace

std::optional<SortColumn> parse_sort_column(std::string_view s) noexcept {
  for (const auto& [name, col] : kSortNames)
    if (name == s) return col;
  return std::nullopt;
}

std::string sort_column_names() {
  std::string out;
  for (const auto& [name, col] : kSortNames) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

void sort_rows(std::vector<WatchRow>& rows, SortColumn col) {
  // Each column's key; an unknown count (nullopt) sorts before every known one.
  const auto three_way = [col](const WatchRow& x, const WatchRow& y) -> int {
    const auto cmp = [](const auto& u, const auto& v) { return u < v ? -1 : v < u ? 1 : 0; };
    const PackageRecord &a = x.p, &b = y.p;
    switch (col) {
      case SortColumn::name: return 0;
      case SortColumn::version:
        return natural_less(a.version, b.version) ? -1 : natural_less(b.version, a.version) ? 1 : 0;
      case SortColumn::checksum: return cmp(a.checksum, b.checksum);
      case SortColumn::generation: return cmp(a.root_generation, b.root_generation);
      case SortColumn::children: return cmp(child_generations_text(a), child_generations_text(b));
      case SortColumn::cause: return cmp(cause_text(a), cause_text(b));
      case SortColumn::settings: return cmp(a.settings_size, b.settings_size);
      case SortColumn::sv: return cmp(a.settings_version, b.settings_version);
      case SortColumn::maint: return cmp(a.maintenance, b.maintenance);
      case SortColumn::waiters: return cmp(x.waiters, y.waiters);
      case SortColumn::holders: return cmp(x.holders, y.holders);
    }
    return 0;
  };
  std::sort(rows.begin(), rows.end(), [&](const WatchRow& x, const WatchRow& y) {
    if (const int c = three_way(x, y); c != 0) return c < 0;
    return natural_less(x.p.name, y.p.name);
  });
}

std::vector<std::string> render_watch_table(const std::vector<WatchRow>& rows) {
  std::vector<Cells<kWatchColumns>> cells;
  cells.reserve(rows.size());
  for (const auto& r : rows) {
    const auto base = table_cells(r.p);
    Cells<kWatchColumns> c;
    std::copy(base.begin(), base.end(), c.begin());
    c[kColumns] = optional_count(r.waiters);
    c[kColumns + 1] = optional_count(r.holders);
    cells.push_back(std::move(c));
  }
  return table_lines(kWatchHead, cells);
}

std::string render_clients_line(const ClientsInfo& c) {
  if (!c.reachable) return "clients   daemon: not reachable" + (c.why.empty() ? std::string() : " (" + c.why + ")");
  std::size_t leases = 0;
  for (const auto& [name, n] : c.holders) leases += n;
  return "clients   " + std::to_string(c.clients) + " attached, " + std::to_string(leases) + " task(s) running";
}

std::string watch_json_line(std::string_view event, std::string_view package_json) {
  std::string out;
  pkgctx::JsonWriter w(out);
  w.begin_object().key("event").str(event).end_object();
  out.pop_back();  // the '}': the package's members follow
  out += ',';
  out += package_json.substr(1);
  return out;
}

void ChangeTracker::observe(const Snapshot& s, std::uint64_t now_ns) {
  std::map<std::string, Seen> next;
  for (const auto& p : s.packages) {
    Seen cur{p.version, p.checksum, p.root_generation, p.child_generations, 0};
    auto it = seen_.find(p.name);
    if (it == seen_.end()) {
      if (!first_) {
        cur.changed_at = now_ns;  // new package
        ++changes_;
      }
    } else {
      const Seen& old = it->second;
      const bool changed = old.version != cur.version || old.checksum != cur.checksum || old.root != cur.root ||
                           old.child != cur.child;
      cur.changed_at = changed ? now_ns : old.changed_at;
      if (changed) ++changes_;
    }
    deleted_.erase(p.name);
    next.emplace(p.name, std::move(cur));
  }
  for (const auto& [name, old] : seen_) {
    if (!next.count(name)) {
      deleted_[name] = now_ns;
      ++changes_;
    }
  }
  for (auto it = deleted_.begin(); it != deleted_.end();) {
    it = now_ns - it->second > hold_ns_ ? deleted_.erase(it) : std::next(it);
  }
  seen_ = std::move(next);
  first_ = false;
}

bool ChangeTracker::highlighted(const std::string& name, std::uint64_t now_ns) const {
  auto it = seen_.find(name);
  return it != seen_.end() && it->second.changed_at != 0 && now_ns - it->second.changed_at <= hold_ns_;
}

std::vector<std::string> ChangeTracker::recently_deleted(std::uint64_t now_ns) const {
  std::vector<std::string> out;
  for (const auto& [name, when] : deleted_)
    if (now_ns - when <= hold_ns_) out.push_back(name);
  return out;
}

namespace {

// The first `n` characters of UTF-8 `s` (each takes one terminal column: the frame's text is
// ASCII but for the status line's dash), and how many that is.
std::pair<std::string, std::size_t> cut_columns(std::string_view s, std::size_t n) {
  std::size_t chars = 0, i = 0;
  for (; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) continue;  // a continuation byte
    if (chars == n) break;
    ++chars;
  }
  return {std::string(s.substr(0, i)), chars};
}

}  // namespace

std::string render_watch_frame(const Snapshot& s, const std::vector<WatchRow>& rows, const ClientsInfo& clients,
                               const ChangeTracker& changes, std::uint64_t now_ns, int term_rows, int term_cols,
                               Scroll& scroll, const std::string& status, bool colour) {
  constexpr std::string_view kHome = "\x1b[H", kClearLine = "\x1b[K", kClearBelow = "\x1b[J";
  constexpr std::string_view kBold = "\x1b[1m", kReverse = "\x1b[7m", kRedCode = "\x1b[31m", kReset = "\x1b[0m";
  const std::string_view kRed = colour ? kRedCode : std::string_view{};
  term_rows = std::max(term_rows, 6);
  term_cols = std::max(term_cols, 20);
  std::string out(kHome);
  int used = 0;
  auto emit = [&](const std::string& text, std::string_view style = {}) {
    if (used >= term_rows - 1) return;  // the last row is the status line
    out += style;
    out += cut(text, term_cols);
    if (!style.empty()) out += kReset;
    out += kClearLine;
    out += "\n";  // the terminal keeps OPOST: "\n" moves to the next line start
    ++used;
  };

  emit("pkgctl watch  " + s.info.name + "  " + local_time_text(s.taken_realtime_ns), kBold);
  std::string header = render_header(s);
  for (std::size_t b = 0, e; b < header.size(); b = e + 1) {
    e = header.find('\n', b);
    const std::string line = header.substr(b, e - b);
    const bool alarm = line.rfind("daemon", 0) == 0 && s.liveness != Liveness::alive;
    emit(line, alarm ? kRed : std::string_view{});
  }
  emit(render_clients_line(clients), clients.reachable ? std::string_view{} : kRed);
  const auto gone = changes.recently_deleted(now_ns);
  if (!gone.empty()) {
    std::string g = "deleted:";
    for (const auto& n : gone) g += " " + n;
    emit(g, kReverse);
  }
  emit("");
  const auto table = render_watch_table(rows);
  emit(table[0], kBold);
  // The body scrolls under the header: as many rows as fit above the status line.
  const std::size_t body = table.size() - 1;
  scroll.page = static_cast<std::size_t>(std::max(term_rows - 1 - used, 1));
  scroll.top = std::min(scroll.top, body > scroll.page ? body - scroll.page : 0);
  const std::size_t end = std::min(body, scroll.top + scroll.page);
  for (std::size_t r = scroll.top; r < end; ++r) {
    const bool hl = r < rows.size() && changes.highlighted(rows[r].p.name, now_ns);
    emit(table[r + 1], hl ? kReverse : std::string_view{});
  }
  out += kClearBelow;
  // Status line on the last row.
  out += "\x1b[" + std::to_string(term_rows) + ";1H";
  out += kReverse;
  std::string st = rows.empty() ? " rows 0 of 0"
                                : " rows " + std::to_string(scroll.top + 1) + "\u2013" + std::to_string(end) + " of " +
                                      std::to_string(rows.size());
  if (!status.empty()) st += " |" + status;
  const auto [line, width] = cut_columns(st, static_cast<std::size_t>(term_cols));
  out += line + std::string(static_cast<std::size_t>(term_cols) - width, ' ');
  out += kReset;
  return out;
}

}  // namespace pkgctl
