// pkgctl/render.hpp — what `pkgctl dump` and `pkgctl watch` show, as pure functions of a
// snapshot of the segment, so the formats are unit-tested without a terminal or a daemon.
#pragma once

#include "pkgctx/segment.hpp"
#include "pkgctx/view.hpp"

#include <array>
#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pkgctl {

// One read of the whole segment: its header, the daemon's liveness and every package, sorted
// by name. Packages are each one committed state (seqlock-validated); the set as a whole is not
// atomic (a package written during the scan may show its old or new state).
struct Snapshot {
  pkgctx::SegmentInfo info;
  pkgctx::Liveness liveness = pkgctx::Liveness::none;
  std::uint64_t heartbeat_age_ns = 0;  // 0 when no daemon ever attached
  std::uint64_t taken_realtime_ns = 0;
  std::vector<pkgctx::PackageRecord> packages;
};

// Errors: corrupt (a record failed validation).
pkgctx::Result<Snapshot> take_snapshot(const pkgctx::View& view);
// The header and liveness only (no packages).
Snapshot take_header(const pkgctx::View& view);

// "12 B", "3.4 KiB", "16.0 MiB".
std::string human_bytes(std::uint64_t n);
// "0.21 s", "3.1 s", "2 min 5 s", "3 h 12 min".
std::string human_duration(std::uint64_t ns);
// A CLOCK_REALTIME stamp in local time: "14:03:07", with_date "2024-05-01 14:03:07".
std::string local_time_text(std::uint64_t realtime_ns, bool with_date = false);
// Child generations as "2:15 5:13": only the keys that had events of their own (a child
// generation moves with every root bump too, so the others equal the root's); "-" when none.
std::string child_generations_text(const pkgctx::PackageRecord& p);

// The header block of `pkgctl dump`: segment, occupancy, daemon liveness. Each line ends in '\n'.
std::string render_header(const Snapshot& s);

// The package table, one string per line without '\n': a header row, then one row per package
// (or "(no packages)"). Column widths fit the widest cell.
std::vector<std::string> render_table(const std::vector<pkgctx::PackageRecord>& packages);

// `pkgctl dump`: render_header, a blank line, render_table.
std::string render_dump_text(const Snapshot& s);

// `pkgctl dump --json`, one line without '\n': the dump schema of pkgctx/dump.hpp
// (docs/dump.schema.json), packages sorted by name. It is dump_json_open(s), the packages'
// dump_package_json() separated by ',', then "]}" — the pieces a streamed dump writes.
std::string dump_json(const Snapshot& s);
// The document up to and including the '[' that opens "packages".
std::string dump_json_open(const Snapshot& s);
// One element of "packages".
std::string dump_package_json(const pkgctx::PackageRecord& p);

// `pkgctl dump [--json]` written as it is read: the same bytes as render_dump_text / dump_json
// of take_snapshot, in memory bounded by the names and one record, not the output (100k packages
// print ~20 MB). Every record is validated before the first byte; a package deleted between the
// two passes is left out. Errors: corrupt.
pkgctx::Result<void> write_dump(const pkgctx::View& view, bool as_json, std::ostream& out);

// --- watch ------------------------------------------------------------------------------------

// Natural order: runs of digits compare as numbers ("pkg2" < "pkg10", "a01" == "a1" broken by
// length, then bytes), everything else bytewise. A strict weak order.
bool natural_less(std::string_view a, std::string_view b) noexcept;

// What the daemon's `clients` op says (DESIGN §2.2), when it answered.
struct ClientsInfo {
  bool reachable = false;
  std::string why;                               // when not reachable: the call's error
  std::size_t clients = 0;                       // registered workers
  std::map<std::string, std::uint32_t> holders;  // package name -> tasks (leases) running on it
};

// One row of the watch table: the dump table's columns, then WAITERS (workers asleep on the
// package, from the waiters board; unknown when this user may not map it) and HOLDERS (leases,
// from the daemon; unknown when it does not answer).
struct WatchRow {
  pkgctx::PackageRecord p;
  std::optional<std::uint32_t> waiters;
  std::optional<std::uint32_t> holders;
};

// The columns `--sort` accepts, as the user spells them.
enum class SortColumn { name, version, checksum, generation, children, cause, settings, sv, maint, waiters, holders };
// "name", "version", "checksum", "generation" (or "root"), "children", "cause", "settings", "sv",
// "maint", "waiters", "holders"; nullopt for anything else.
std::optional<SortColumn> parse_sort_column(std::string_view s) noexcept;
// The accepted spellings, comma-separated (for the usage error).
std::string sort_column_names();
// Sorts ascending by `col`, ties by name in natural order (names are unique).
void sort_rows(std::vector<WatchRow>& rows, SortColumn col);

// The watch table, one string per line without '\n': a header row, then one row per package (or
// "(no packages)"). Column widths fit the widest cell.
std::vector<std::string> render_watch_table(const std::vector<WatchRow>& rows);
// The line under the dump header that says what the daemon reported: "clients   N attached" or
// "clients   daemon: not reachable (why)".
std::string render_clients_line(const ClientsInfo& c);

// `pkgctl watch --json`: one line without '\n', {"event":EVENT, then the members of the package's
// dump object `package_json` (dump_package_json(), docs/dump.schema.json)}. EVENT is "present"
// (there at start), "created", "changed" or "deleted" (the package as last seen).
std::string watch_json_line(std::string_view event, std::string_view package_json);

// The keys the terminal view acts on, from the bytes a read of the tty returned: q/Q/Ctrl-C/
// Ctrl-D quit; arrows (and k/j) scroll a row, PgUp/PgDn (and space) a page, Home/End (and g/G)
// to either end, in the escape sequences xterm and the Linux console send. Other bytes are ignored.
enum class WatchKey { quit, up, down, page_up, page_down, home, end };
std::vector<WatchKey> parse_watch_keys(std::string_view bytes);

// Remembers, per package, what it looked like and when it last changed, so a frame can highlight
// rows that changed recently (a change stays highlighted for `hold_ns`, long enough to be seen
// at a 200 ms refresh).
class ChangeTracker {
 public:
  explicit ChangeTracker(std::uint64_t hold_ns = 2'000'000'000) : hold_ns_(hold_ns) {}

  // Compares `s` with the previous snapshot (the first one marks nothing as changed).
  // `now_ns` is any monotonic clock.
  void observe(const Snapshot& s, std::uint64_t now_ns);
  bool highlighted(const std::string& name, std::uint64_t now_ns) const;
  // Names that disappeared within the hold time (shown under the table).
  std::vector<std::string> recently_deleted(std::uint64_t now_ns) const;
  std::uint64_t changes() const noexcept { return changes_; }

 private:
  struct Seen {
    std::string version;
    std::uint64_t checksum = 0;
    std::uint64_t root = 0;
    std::array<std::uint64_t, pkgctx::layout::kChildKeys> child{};
    std::uint64_t changed_at = 0;  // 0: not changed since the first observation
  };
  std::uint64_t hold_ns_;
  bool first_ = true;
  std::uint64_t changes_ = 0;
  std::map<std::string, Seen> seen_;
  std::map<std::string, std::uint64_t> deleted_;  // name -> when
};

// Where the terminal view is scrolled to. render_watch_frame() clamps `top` to the table (so
// "End" may set it past the end) and sets `page` (table rows that fit on the screen).
struct Scroll {
  std::size_t top = 0;   // first table row shown (0-based, header excluded)
  std::size_t page = 1;  // rows that fit under the header (set by the render)
};

// One full screen of `pkgctl watch` for a terminal of `rows` × `cols`: cursor home, each line
// cut to `cols` and cleared to its end, the rest of the screen cleared. The table's header row
// stays; its body shows `rows` from `scroll.top`, as many as fit. Changed rows are drawn in
// reverse video; with `colour`, a daemon that is not alive in red (NO_COLOR turns colour off,
// not bold or reverse video). The bottom line is "rows A–B of N" then `status` (e.g. "q quit").
std::string render_watch_frame(const Snapshot& s, const std::vector<WatchRow>& rows, const ClientsInfo& clients,
                               const ChangeTracker& changes, std::uint64_t now_ns, int term_rows, int term_cols,
                               Scroll& scroll, const std::string& status, bool colour);

}  // namespace pkgctl
