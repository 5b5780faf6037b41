// pkgctl's formatters: the dump table and header, the JSON dump, the watch frame and its change
// tracking. Pure functions of a Snapshot; no terminal, no daemon.
#define BOOST_TEST_MODULE pkgctl_render
#include <boost/test/unit_test.hpp>

#include "pkgctl/render.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cctype>
#include <sstream>

using namespace pkgctx;
using pkgctl::Snapshot;

namespace {

PackageRecord pkg(std::string name, std::string version, std::uint64_t root, Cause cause = Cause::kNone) {
  PackageRecord p;
  p.name = std::move(name);
  p.version = std::move(version);
  p.checksum = Settings().checksum();
  p.settings_size = 2;
  p.root_generation = root;
  p.child_generations.fill(root);  // a child generation moves with every root bump
  p.last_cause = cause;
  return p;
}

Snapshot snapshot(std::vector<PackageRecord> packages) {
  Snapshot s;
  s.info.name = "demo";
  s.info.layout_version = 1;
  s.info.state = layout::State::kLive;
  s.info.epoch = 0x0123456789abcdefULL;
  s.info.capacity = 4096;
  s.info.used = static_cast<std::uint32_t>(packages.size());
  s.info.settings_bytes = 16ull << 20;
  s.info.settings_used = 128;
  s.info.max_settings = 1 << 20;
  s.info.daemon_state = layout::DaemonState::kRunning;
  s.info.daemon_pid = 4242;
  s.info.heartbeat_interval_ns = 1'000'000'000;
  s.liveness = Liveness::alive;
  s.heartbeat_age_ns = 210'000'000;
  s.taken_realtime_ns = 1'700'000'000'000'000'000ULL;
  s.packages = std::move(packages);
  return s;
}

}  // namespace

BOOST_AUTO_TEST_CASE(human_units) {
  BOOST_TEST(pkgctl::human_bytes(0) == "0 B");
  BOOST_TEST(pkgctl::human_bytes(1023) == "1023 B");
  BOOST_TEST(pkgctl::human_bytes(1536) == "1.5 KiB");
  BOOST_TEST(pkgctl::human_bytes(16ull << 20) == "16.0 MiB");
  BOOST_TEST(pkgctl::human_duration(210'000'000) == "0.21 s");
  BOOST_TEST(pkgctl::human_duration(42'000'000'000) == "42.0 s");
  BOOST_TEST(pkgctl::human_duration(125'000'000'000) == "2 min 5 s");
  BOOST_TEST(pkgctl::human_duration(3 * 3600'000'000'000ull + 60'000'000'000ull) == "3 h 1 min");
}

BOOST_AUTO_TEST_CASE(table_columns_align) {
  auto web = pkg("web", "1.10.2", 12, Cause::kVersionChanged);
  web.child_generations[0] = 15;  // key 2 (schedule): 3 events of its own
  web.child_generations[3] = 13;  // key 5: 1
  web.settings_size = 1536;
  web.settings_version = 12;
  web.maintenance = "paused";
  auto gone = pkg("legacy-plugin", "", 2, Cause::kRemoved);
  const auto t = pkgctl::render_table({gone, web});
  BOOST_REQUIRE(t.size() == 3u);
  const std::string sum = Settings().checksum_hex();
  BOOST_TEST(t[0] == "NAME           VERSION    CHECKSUM          ROOT  CHILD GENS  LAST CAUSE       SETTINGS  SV  MAINT");
  BOOST_TEST(t[1] == "legacy-plugin  (removed)  " + sum + "     2  -           removed               2 B   0  -");
  BOOST_TEST(t[2] == "web            1.10.2     " + sum + "    12  2:15 5:13   version_changed   1.5 KiB  12  paused");
  BOOST_TEST(pkgctl::child_generations_text(web) == "2:15 5:13");

  const auto empty = pkgctl::render_table({});
  BOOST_REQUIRE(empty.size() == 2u);
  BOOST_TEST(empty[1] == "(no packages)");
}

BOOST_AUTO_TEST_CASE(header_says_how_the_daemon_is) {
  Snapshot s = snapshot({pkg("a", "1", 1)});
  std::string h = pkgctl::render_header(s);
  BOOST_TEST(h.find("segment   demo  layout v1  live  epoch 0123456789abcdef\n") == 0u, h);
  BOOST_TEST(h.find("packages  1 of 4096 slots\n") != std::string::npos, h);
  BOOST_TEST(h.find("settings  128 B of 16.0 MiB used") != std::string::npos, h);
  BOOST_TEST(h.find("daemon    alive  pid 4242  heartbeat 0.21 s ago") != std::string::npos, h);

  s.liveness = Liveness::stopped;
  s.info.daemon_state = layout::DaemonState::kStopped;
  h = pkgctl::render_header(s);
  BOOST_TEST(h.find("daemon    stopped  (was pid 4242)  the daemon is down: reads work, writes need pkgctxd") !=
             std::string::npos, h);
  s.liveness = Liveness::stale;
  BOOST_TEST(pkgctl::render_header(s).find("daemon    STALE  pid 4242") != std::string::npos);
  s.liveness = Liveness::none;
  BOOST_TEST(pkgctl::render_header(s).find("no daemon has attached") != std::string::npos);

  const std::string dump = pkgctl::render_dump_text(s);
  BOOST_TEST(dump.find("\n\nNAME ") != std::string::npos, dump);
}

BOOST_AUTO_TEST_CASE(json_dump_shape) {
  auto p = pkg("web", "1.0", 3, Cause::kUpdateEvent);
  p.child_generations[0] = 5;
  const auto j = boost::json::parse(pkgctl::dump_json(snapshot({p}))).as_object();
  BOOST_TEST(j.at("segment").at("name").as_string() == "demo");
  BOOST_TEST(j.at("segment").at("epoch").as_string() == "0123456789abcdef");
  BOOST_TEST(j.at("segment").at("capacity").to_number<int>() == 4096);
  BOOST_TEST(j.at("daemon").at("liveness").as_string() == "alive");
  BOOST_TEST(j.at("daemon").at("pid").to_number<int>() == 4242);
  BOOST_TEST(j.at("daemon").at("heartbeat_age_ns").to_number<std::uint64_t>() == 210'000'000u);
  const auto& q = j.at("packages").at(0).as_object();
  const std::string first_keys = boost::json::serialize(q).substr(0, 40);
  BOOST_TEST(first_keys.rfind(R"({"name":"web","version":"1.0","checksum")", 0) == 0u, first_keys);
  BOOST_TEST(q.at("root_generation").to_number<int>() == 3);
  BOOST_TEST(q.at("child_generations").at("2").to_number<int>() == 5);
  BOOST_TEST(q.at("child_generations").at("7").to_number<int>() == 3);
  BOOST_TEST(q.at("last_cause").as_string() == "update_event");
  BOOST_TEST(boost::json::parse(pkgctl::dump_json(snapshot({pkg("x", "1", 1)}))).at("packages").at(0).at("last_cause").is_null());
  BOOST_TEST(q.at("settings_version").to_number<int>() == 0);
  BOOST_TEST(q.at("maintenance").as_string() == "");
  BOOST_TEST(j.at("segment").at("limits").at("max_settings").to_number<int>() == 1 << 20);
  // No daemon ever attached: no pid, no heartbeat age (docs/dump.schema.json allows null).
  auto none = snapshot({});
  none.info.daemon_state = layout::DaemonState::kNone;
  none.liveness = Liveness::none;
  const auto n = boost::json::parse(pkgctl::dump_json(none));
  BOOST_TEST(n.at("daemon").at("pid").is_null());
  BOOST_TEST(n.at("daemon").at("heartbeat_age_ns").is_null());
  BOOST_TEST(n.at("daemon").at("liveness").as_string() == "none");
}

// DESIGN §2.1: a caller-named cause and the v2 fields in the table and the JSON dump.
BOOST_AUTO_TEST_CASE(named_cause_settings_version_and_maintenance_are_shown) {
  auto p = pkg("web", "1.0", 3, static_cast<Cause>(layout::kFirstNamedCause));
  p.last_cause_name = "rollout_7";
  p.settings_version = 4;
  p.maintenance = "frozen-1";
  const auto t = pkgctl::render_table({p});
  BOOST_TEST(t[1].find("rollout_7") != std::string::npos, t[1]);
  BOOST_TEST(t[1].substr(t[1].size() - 11) == "4  frozen-1", t[1]);
  const auto j = boost::json::parse(pkgctl::dump_json(snapshot({p}))).as_object();
  const auto& q = j.at("packages").at(0).as_object();
  BOOST_TEST(q.at("last_cause").as_string() == "rollout_7");
  BOOST_TEST(q.at("settings_version").to_number<int>() == 4);
  BOOST_TEST(q.at("maintenance").as_string() == "frozen-1");
}

BOOST_AUTO_TEST_CASE(change_tracker_highlights_recent_changes) {
  pkgctl::ChangeTracker t(1000);
  t.observe(snapshot({pkg("a", "1", 1), pkg("b", "1", 1)}), 100);
  BOOST_TEST(!t.highlighted("a", 100));  // the first look changes nothing
  BOOST_TEST(t.changes() == 0u);

  auto b2 = pkg("b", "1", 1);
  b2.child_generations[0] = 2;  // rescheduled
  t.observe(snapshot({pkg("a", "1", 1), b2, pkg("c", "1", 1)}), 200);
  BOOST_TEST(!t.highlighted("a", 200));
  BOOST_TEST(t.highlighted("b", 200));
  BOOST_TEST(t.highlighted("c", 200));  // new
  BOOST_TEST(t.changes() == 2u);

  t.observe(snapshot({pkg("a", "2", 2), b2}), 300);  // a: new version; c: deleted
  BOOST_TEST(t.highlighted("a", 300));
  BOOST_TEST(t.highlighted("b", 300));  // still within the hold time
  BOOST_TEST(t.recently_deleted(300) == std::vector<std::string>{"c"});
  BOOST_TEST(!t.highlighted("b", 1300));  // hold time over
  BOOST_TEST(t.recently_deleted(1400).empty());
}

std::vector<pkgctl::WatchRow> rows_of(const std::vector<PackageRecord>& ps) {
  std::vector<pkgctl::WatchRow> rows;
  for (const auto& p : ps) rows.push_back({p, std::nullopt, std::nullopt});
  pkgctl::sort_rows(rows, pkgctl::SortColumn::name);
  return rows;
}

// What a terminal shows of a frame: its lines without escape sequences.
std::vector<std::string> visible_lines(const std::string& f) {
  std::vector<std::string> out;
  std::string cur;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '\x1b') {
      while (i < f.size() && !std::isalpha(static_cast<unsigned char>(f[i]))) ++i;
      continue;
    }
    if (f[i] == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += f[i];
    }
  }
  out.push_back(cur);  // the status line
  return out;
}

BOOST_AUTO_TEST_CASE(watch_frame_fits_the_screen_scrolls_and_marks_changes) {
  pkgctl::ChangeTracker t(1000);
  std::vector<PackageRecord> ps;
  for (int i = 0; i < 30; ++i) ps.push_back(pkg("pkg" + std::to_string(10 + i), "1", 1));
  t.observe(snapshot(ps), 0);
  ps[1].version = "2";
  ps[1].root_generation = 2;
  const Snapshot s = snapshot(ps);
  t.observe(s, 10);
  const auto rows = rows_of(ps);
  const int trows = 20, cols = 60;
  pkgctl::ClientsInfo clients;
  pkgctl::Scroll scroll;
  std::string f = pkgctl::render_watch_frame(s, rows, clients, t, 10, trows, cols, scroll, " q quit", true);
  BOOST_TEST(f.rfind("\x1b[H", 0) == 0u);  // redrawn in place from the top
  auto lines = visible_lines(f);
  BOOST_TEST(lines.size() <= static_cast<std::size_t>(trows));
  for (const auto& l : lines) BOOST_TEST(l.size() <= static_cast<std::size_t>(cols) + 2, l);  // + the dash's bytes
  BOOST_TEST(f.find("clients   daemon: not reachable") != std::string::npos);
  BOOST_TEST(f.find("\x1b[7mpkg11 ") != std::string::npos);  // the changed row, in reverse video
  BOOST_TEST(f.find("\x1b[7mpkg10 ") == std::string::npos);
  const std::string first = "\x1b[20;1H\x1b[7m rows 1\u2013" + std::to_string(scroll.page) + " of 30 | q quit";
  BOOST_TEST(f.find(first) != std::string::npos, f.substr(f.rfind("\x1b[20;1H")));
  BOOST_TEST(scroll.page > 5u);
  BOOST_TEST(scroll.page < 30u);

  // Scrolled down a page: the header row stays, the body starts at row page+1.
  scroll.top += scroll.page;
  f = pkgctl::render_watch_frame(s, rows, clients, t, 10, trows, cols, scroll, "", true);
  lines = visible_lines(f);
  const auto head =
      std::find_if(lines.begin(), lines.end(), [](const std::string& l) { return l.rfind("NAME ", 0) == 0; });
  BOOST_TEST_REQUIRE((head != lines.end()));
  BOOST_TEST((head + 1)->rfind("pkg" + std::to_string(10 + scroll.page) + " ", 0) == 0u, *(head + 1));
  // Past the end: clamped so the last page is full.
  scroll.top = 1000;
  f = pkgctl::render_watch_frame(s, rows, clients, t, 10, trows, cols, scroll, "", true);
  BOOST_TEST(scroll.top == 30 - scroll.page);
  BOOST_TEST(f.find(" rows " + std::to_string(31 - scroll.page) + "\u2013" + "30 of 30") != std::string::npos);
  BOOST_TEST(visible_lines(f)[trows - 2].rfind("pkg39 ", 0) == 0u, visible_lines(f)[trows - 2]);

  // The daemon being down shows in red, unless NO_COLOR; reverse video stays (not a colour).
  Snapshot down = s;
  down.liveness = Liveness::stopped;
  BOOST_TEST(pkgctl::render_watch_frame(down, rows, clients, t, 10, trows, cols, scroll, "", true)
                 .find("\x1b[31mdaemon    stopped") != std::string::npos);
  const std::string plain = pkgctl::render_watch_frame(down, rows, clients, t, 10, trows, cols, scroll, "", false);
  BOOST_TEST(plain.find("\x1b[31m") == std::string::npos);
  BOOST_TEST(plain.find("daemon    stopped") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(natural_order_compares_digit_runs_as_numbers) {
  using pkgctl::natural_less;
  BOOST_TEST(natural_less("pkg2", "pkg10"));
  BOOST_TEST(!natural_less("pkg10", "pkg2"));
  BOOST_TEST(natural_less("pkg", "pkg1"));  // a prefix first
  BOOST_TEST(natural_less("a1b2", "a1b10"));
  BOOST_TEST(natural_less("a1", "a01"));  // equal values: fewer leading zeros first
  BOOST_TEST(!natural_less("a01", "a1"));
  BOOST_TEST(natural_less("a-9", "a.1"));  // '-' < '.' bytewise
  BOOST_TEST(natural_less("x99999999999999999999998", "x99999999999999999999999"));  // no overflow
  BOOST_TEST(natural_less("x9", "x10000000000000000000000"));
  BOOST_TEST(!natural_less("web", "web"));
  // A strict weak order over a mixed set: sorting gives the expected sequence.
  std::vector<std::string> names{"pkg10", "pkg2", "pkg1", "db", "pkg02", "pkg", "pkg1a", "Pkg3"};
  std::sort(names.begin(), names.end(), [](const auto& a, const auto& b) { return natural_less(a, b); });
  const std::vector<std::string> want{"Pkg3", "db", "pkg", "pkg1", "pkg1a", "pkg2", "pkg02", "pkg10"};
  BOOST_TEST(names == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(watch_rows_sort_by_any_column) {
  BOOST_TEST((pkgctl::parse_sort_column("holders") == pkgctl::SortColumn::holders));
  BOOST_TEST((pkgctl::parse_sort_column("root") == pkgctl::SortColumn::generation));
  BOOST_TEST(!pkgctl::parse_sort_column("age").has_value());
  BOOST_TEST(pkgctl::sort_column_names().find("name, version") == 0u);
  std::vector<pkgctl::WatchRow> rows{{pkg("pkg10", "1.10", 1), 0u, 3u},
                                     {pkg("pkg2", "1.9", 5), 2u, 0u},
                                     {pkg("pkg1", "1.9", 5), std::nullopt, 1u}};
  const auto names = [&] {
    std::string out;
    for (const auto& r : rows) out += r.p.name + " ";
    return out;
  };
  pkgctl::sort_rows(rows, pkgctl::SortColumn::name);
  BOOST_TEST(names() == "pkg1 pkg2 pkg10 ");
  pkgctl::sort_rows(rows, pkgctl::SortColumn::generation);
  BOOST_TEST(names() == "pkg10 pkg1 pkg2 ");  // ties by name
  pkgctl::sort_rows(rows, pkgctl::SortColumn::version);
  BOOST_TEST(names() == "pkg1 pkg2 pkg10 ");  // 1.9 < 1.10
  pkgctl::sort_rows(rows, pkgctl::SortColumn::holders);
  BOOST_TEST(names() == "pkg2 pkg1 pkg10 ");
  pkgctl::sort_rows(rows, pkgctl::SortColumn::waiters);
  BOOST_TEST(names() == "pkg1 pkg10 pkg2 ");  // unknown first
  const auto table = pkgctl::render_watch_table(rows);
  BOOST_TEST(table[0].substr(table[0].size() - 16) == "WAITERS  HOLDERS", table[0]);
  BOOST_TEST(table[1].rfind("pkg1 ", 0) == 0u);
  BOOST_TEST(table[1].substr(table[1].size() - 16) == "      -        1", table[1]);
}

BOOST_AUTO_TEST_CASE(watch_json_line_is_the_dump_object_with_its_event) {
  auto p = pkg("pkg2", "1.0", 3);
  const std::string line = pkgctl::watch_json_line("changed", pkgctl::dump_package_json(p));
  BOOST_TEST(line.find('\n') == std::string::npos);
  const auto v = boost::json::parse(line).as_object();
  BOOST_TEST(v.at("event").as_string() == "changed");
  auto rest = v;
  rest.erase("event");
  BOOST_TEST((rest == boost::json::parse(pkgctl::dump_package_json(p)).as_object()));  // erase() reorders
  BOOST_TEST(line.rfind("{\"event\":\"changed\",\"name\":\"pkg2\",", 0) == 0u, line);
}

BOOST_AUTO_TEST_CASE(watch_keys_from_terminal_bytes) {
  using K = pkgctl::WatchKey;
  const auto keys = pkgctl::parse_watch_keys("\x1b[A\x1b[B\x1b[5~\x1b[6~\x1b[H\x1b[F\x1bOH\x1b[4~xjkgG q");
  const std::vector<K> want{K::up, K::down, K::page_up, K::page_down, K::home, K::end, K::home, K::end,
                            K::down, K::up, K::home, K::end, K::page_down, K::quit};
  BOOST_TEST((keys == want));
  BOOST_TEST((pkgctl::parse_watch_keys("\x03") == std::vector<K>{K::quit}));
  BOOST_TEST(pkgctl::parse_watch_keys("\x1b[Z").empty());  // unknown: ignored, byte by byte
}

// `pkgctl dump` streams (issue 15): the same bytes as rendering a whole snapshot, table and JSON,
// for a real segment (names out of slot order, a removed package, an event of a child key).
BOOST_AUTO_TEST_CASE(streamed_dump_matches_the_snapshot_render) {
  test::SegmentName seg("renderstream");
  SegmentOptions o;
  o.capacity = 64;
  auto store = Store::create(seg.str(), o);
  BOOST_TEST_REQUIRE(store.has_value(), (store ? std::string() : store.error().message));
  for (const char* n : {"zeta", "alpha", "a-very-long-package-name-for-width", "mid", "b"})
    BOOST_TEST_REQUIRE(store->update(n, "1.0", Settings()).has_value());
  BOOST_TEST_REQUIRE(store->handle_event(kEventRemove, "mid").has_value());
  BOOST_TEST_REQUIRE(store->handle_event(kEventSchedule, "b").has_value());
  auto view = View::open(seg.str());
  BOOST_TEST_REQUIRE(view.has_value());
  const auto snap = pkgctl::take_snapshot(*view);
  BOOST_TEST_REQUIRE(snap.has_value());
  for (const bool as_json : {false, true}) {
    std::ostringstream out;
    BOOST_TEST_REQUIRE(pkgctl::write_dump(*view, as_json, out).has_value());
    const std::string whole =
        as_json ? pkgctl::dump_json(*snap) + "\n" : pkgctl::render_dump_text(*snap);
    BOOST_TEST(out.str() == whole);
  }
  test::SegmentName empty_seg("renderempty");
  auto empty_store = Store::create(empty_seg.str(), o);
  BOOST_TEST_REQUIRE(empty_store.has_value());
  auto empty_view = View::open(empty_seg.str());
  BOOST_TEST_REQUIRE(empty_view.has_value());
  std::ostringstream table, js;
  BOOST_TEST_REQUIRE(pkgctl::write_dump(*empty_view, false, table).has_value());
  BOOST_TEST(table.str() == pkgctl::render_dump_text(*pkgctl::take_snapshot(*empty_view)));
  BOOST_TEST_REQUIRE(pkgctl::write_dump(*empty_view, true, js).has_value());
  BOOST_TEST(js.str() == pkgctl::dump_json(*pkgctl::take_snapshot(*empty_view)) + "\n");
}
