// `pkgctl watch`: the live view. Rendering is in render.cpp; this file owns the terminal, the
// refresh loop and the daemon's clients query.
#include "pkgctl/cli.hpp"
#include "pkgctl/daemon_link.hpp"
#include "pkgctl/render.hpp"

#include "pkgctx/view.hpp"

#include <boost/json/array.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fnmatch.h>
#include <iostream>
#include <limits>
#include <optional>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

namespace pkgctl {

namespace {

volatile std::sig_atomic_t g_quit = 0;
volatile std::sig_atomic_t g_resized = 0;

extern "C" void on_quit_signal(int) { g_quit = 1; }
extern "C" void on_winch(int) { g_resized = 1; }

// Installs handlers for the life of the object (no SA_RESTART: poll returns EINTR) and puts the
// previous ones back. SIGPIPE is ignored meanwhile: a reader that went away (`| head -3`) shows
// as a failed write or POLLERR on stdout, and watch then ends quietly with exit 0.
class SignalScope {
 public:
  explicit SignalScope(bool winch) {
    g_quit = 0;
    g_resized = 0;
    struct sigaction sa{};
    sa.sa_handler = on_quit_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(kQuit[i], &sa, &old_[i]);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, &old_pipe_);
    if (winch) {
      sa.sa_handler = on_winch;
      sigaction(SIGWINCH, &sa, &old_winch_);
      winch_ = true;
    }
  }
  ~SignalScope() {
    for (int i = 0; i < 3; ++i) sigaction(kQuit[i], &old_[i], nullptr);
    sigaction(SIGPIPE, &old_pipe_, nullptr);
    if (winch_) sigaction(SIGWINCH, &old_winch_, nullptr);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  static constexpr int kQuit[3] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction old_[3]{};
  struct sigaction old_pipe_{};
  struct sigaction old_winch_{};
  bool winch_ = false;
};

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

// The terminal in "watch" mode: alternate screen, hidden cursor, keys unbuffered and unechoed,
// Ctrl-C delivered as a key. The destructor restores everything, so every return path (and an
// exception) leaves the terminal as it was; SIGINT/SIGTERM/SIGHUP only set g_quit, so they
// return through it too.
class TerminalScope {
 public:
  TerminalScope() {
    if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO | ISIG | IEXTEN);
      raw.c_iflag &= ~static_cast<tcflag_t>(IXON | ICRNL);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      keys_ = ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0;
    }
    write_all(STDOUT_FILENO, "\x1b[?1049h\x1b[?25l\x1b[2J");
  }
  ~TerminalScope() {
    write_all(STDOUT_FILENO, "\x1b[0m\x1b[?25h\x1b[?1049l");
    if (keys_) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  TerminalScope(const TerminalScope&) = delete;
  TerminalScope& operator=(const TerminalScope&) = delete;
  bool keys() const noexcept { return keys_; }

 private:
  termios saved_{};
  bool keys_ = false;
};

// Keeps a View on the segment, re-attaching when it was retired or replaced (daemon restart).
class Attachment {
 public:
  explicit Attachment(std::string name) : name_(std::move(name)) {}

  // The current view, or nullptr with `why` set. Re-opens the segment when it was retired, and
  // every 25th call (about 5 s at 200 ms) to notice one that was unlinked or replaced.
  const pkgctx::View* get(std::string& why) {
    const bool retired = view_ && view_->segment().info().state == pkgctx::layout::State::kRetired;
    if (!view_ || retired || ++checks_ % 25 == 0) {
      auto v = pkgctx::View::open(name_);
      if (v) {
        if (!view_ || v->segment().info().epoch != view_->segment().info().epoch) view_ = std::move(*v);
      } else if (v.error().code != pkgctx::Errc::segment_not_ready || retired) {
        why = v.error().message;
        view_.reset();  // never show a retired or unlinked segment's stale contents
      }
    }
    return view_ ? &*view_ : nullptr;
  }

 private:
  std::string name_;
  std::optional<pkgctx::View> view_;
  unsigned checks_ = 0;
};

// What the watch shows: the packages matching the filter, in the chosen order, with the
// daemon-written waiter counts of the table and the daemon's leases.
struct Selection {
  std::optional<std::string> glob;
  SortColumn sort = SortColumn::name;
  std::string label;  // " | sort COL[ | filter GLOB]", for the status line

  bool matches(const std::string& name) const { return !glob || ::fnmatch(glob->c_str(), name.c_str(), 0) == 0; }
  void filter(Snapshot& s) const {
    std::erase_if(s.packages, [&](const pkgctx::PackageRecord& p) { return !matches(p.name); });
  }
};

// Why `g` is not a usable --filter pattern, or nullopt.
std::optional<std::string> glob_problem(const std::string& g) {
  if (g.empty()) return "an empty pattern matches no package";
  for (std::size_t i = 0; i < g.size(); ++i) {
    if (g[i] == '\\') {
      if (++i == g.size()) return "it ends in a lone backslash";
    } else if (g[i] == '[') {
      // A class: "[" ["!"|"^"] "]"? … "]"; unclosed, fnmatch would take the '[' literally,
      // which is never what was meant.
      std::size_t j = i + 1;
      if (j < g.size() && (g[j] == '!' || g[j] == '^')) ++j;
      if (j < g.size() && g[j] == ']') ++j;
      while (j < g.size() && g[j] != ']') {
        if (g[j] == '[' && j + 1 < g.size() && g[j + 1] == ':') {  // [:class:]
          const auto close = g.find(":]", j + 2);
          if (close == std::string::npos) return "an unclosed [: class";
          j = close + 2;
        } else {
          ++j;
        }
      }
      if (j >= g.size()) return "an unclosed [";
      i = j;
    }
  }
  const int r = ::fnmatch(g.c_str(), "", 0);
  if (r != 0 && r != FNM_NOMATCH) return "fnmatch(3) rejects it";
  return std::nullopt;
}

// Asks the daemon for its clients (the `clients` op): the registered workers and the tasks each
// runs. At most once per `every_ns`; in between the last answer stands.
class ClientsQuery {
 public:
  ClientsQuery(std::string socket, std::string request, std::uint64_t every_ns)
      : socket_(std::move(socket)), request_(std::move(request)), every_ns_(every_ns) {}

  const ClientsInfo& get(std::uint64_t now_ns) {
    if (asked_ && now_ns - last_ns_ < every_ns_) return info_;
    asked_ = true;
    last_ns_ = now_ns;
    info_ = ClientsInfo{};
    auto r = call_daemon(socket_, request_, std::chrono::milliseconds(500));
    if (!r) {
      info_.why = r.error().message;
      return info_;
    }
    info_.reachable = true;
    const auto* list = r->if_contains("clients");
    if (!list || !list->is_array()) return info_;
    info_.clients = list->get_array().size();
    for (const auto& c : list->get_array()) {
      const auto* tasks = c.is_object() ? c.get_object().if_contains("tasks") : nullptr;
      if (!tasks || !tasks->is_array()) continue;
      for (const auto& t : tasks->get_array()) {
        const auto* name = t.is_object() ? t.get_object().if_contains("name") : nullptr;
        if (name && name->is_string()) ++info_.holders[std::string(name->get_string())];
      }
    }
    return info_;
  }

 private:
  std::string socket_, request_;
  std::uint64_t every_ns_;
  bool asked_ = false;
  std::uint64_t last_ns_ = 0;
  ClientsInfo info_;
};

// The rows of one frame. The waiter counts are read first and the daemon asked for its clients
// after: a wait is counted only for a registered client, so every waiter a row shows belongs to a
// client the clients line counts (asked the other way round, a client that registers and waits in
// between shows as a waiter the line does not count). `c`: the clients answer the frame shows.
std::vector<WatchRow> watch_rows(const Snapshot& s, const pkgctx::View& v, ClientsQuery& clients, std::uint64_t now,
                                 ClientsInfo& c, SortColumn sort) {
  const std::atomic<std::uint32_t>* counts = v.segment().waiter_counts();
  std::vector<WatchRow> rows;
  rows.reserve(s.packages.size());
  for (const auto& p : s.packages) rows.push_back({p, counts[p.slot].load(std::memory_order_relaxed), std::nullopt});
  c = clients.get(now);
  if (c.reachable) {
    for (auto& r : rows) {
      const auto it = c.holders.find(r.p.name);
      r.holders = it == c.holders.end() ? 0 : it->second;
    }
  }
  sort_rows(rows, sort);
  return rows;
}

// Waits up to `ns` for input on `in` (-1: none) or for the reader of stdout to go away (when
// `out_fd` is not -1). Returns POLLIN-ready on `in`, or sets `gone`.
bool wait_input(int in, int out_fd, std::uint64_t ns, bool& gone) {
  pollfd p[2] = {{in, POLLIN, 0}, {out_fd, 0, 0}};  // POLLERR/POLLHUP are reported unasked
  const int ms = static_cast<int>(std::min<std::uint64_t>(ns / 1'000'000, std::numeric_limits<int>::max()));
  if (::poll(p, 2, ms) <= 0) return false;
  if (p[1].revents & (POLLERR | POLLHUP)) gone = true;
  return (p[0].revents & POLLIN) != 0;
}

void terminal_size(int& rows, int& cols) {
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
    rows = ws.ws_row;
    cols = ws.ws_col;
  } else {
    rows = 24;
    cols = 80;
  }
}

struct Loop {
  Attachment& att;
  ClientsQuery& clients;
  const Selection& sel;
  std::uint64_t interval_ns;
  long count;
  bool colour;
};

int watch_terminal(const Loop& l) {
  SignalScope signals(true);
  TerminalScope term;
  ChangeTracker tracker;
  Scroll scroll;
  std::string why;
  std::optional<Snapshot> snap;
  std::vector<WatchRow> rows;
  ClientsInfo seen_clients;
  std::uint64_t next_refresh = 0;
  long frames = 0;
  bool gone = false;
  const std::string status =
      (term.keys() ? " q quit, arrows/PgUp/PgDn/Home/End scroll" : " Ctrl-C quits") + l.sel.label;
  while (!g_quit && !gone) {
    const std::uint64_t now = pkgctx::mono_now_ns();
    if (now >= next_refresh) {
      next_refresh = now + l.interval_ns;
      ++frames;
      const pkgctx::View* v = l.att.get(why);
      auto s = v ? take_snapshot(*v) : pkgctx::Result<Snapshot>(pkgctx::make_error(pkgctx::Errc::segment_missing, why));
      if (s) {
        l.sel.filter(*s);
        tracker.observe(*s, now);
        rows = watch_rows(*s, *v, l.clients, now, seen_clients, l.sel.sort);
        snap = std::move(*s);
      } else {
        why = s.error().message;
        snap.reset();
      }
    }
    int trows, tcols;
    terminal_size(trows, tcols);
    g_resized = 0;
    if (snap) {
      const std::string st = status + " | " + std::to_string(tracker.changes()) + " changes seen";
      write_all(STDOUT_FILENO,
                render_watch_frame(*snap, rows, seen_clients, tracker, now, trows, tcols, scroll, st, l.colour));
    } else {
      write_all(STDOUT_FILENO, "\x1b[H\x1b[2J" + why + " (retrying)\n\x1b[" + std::to_string(trows) + ";1H" + status);
    }
    if (l.count > 0 && frames >= l.count) break;
    // Sleep until the next refresh; a key, SIGWINCH or a quit signal ends the sleep early.
    const std::uint64_t left = next_refresh > pkgctx::mono_now_ns() ? next_refresh - pkgctx::mono_now_ns() : 0;
    if (!wait_input(term.keys() ? STDIN_FILENO : -1, STDOUT_FILENO, left, gone)) continue;
    char buf[64];
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    for (WatchKey k : parse_watch_keys(std::string_view(buf, n > 0 ? static_cast<std::size_t>(n) : 0))) {
      switch (k) {
        case WatchKey::quit: return kExitOk;
        case WatchKey::up: scroll.top -= std::min<std::size_t>(scroll.top, 1); break;
        case WatchKey::down: ++scroll.top; break;  // the render clamps it to the table
        case WatchKey::page_up: scroll.top -= std::min(scroll.top, scroll.page); break;
        case WatchKey::page_down: scroll.top += scroll.page; break;
        case WatchKey::home: scroll.top = 0; break;
        case WatchKey::end: scroll.top = std::numeric_limits<std::size_t>::max() / 2; break;
      }
    }
  }
  return kExitOk;
}

// Not a terminal (or TERM=dumb): one plain snapshot each time the table, the daemon's liveness or
// its clients changed.
int watch_plain(const Loop& l, Io io, int out_fd) {
  SignalScope signals(false);
  std::string last, why;
  bool missing_reported = false, gone = false;
  for (long printed = 0; !g_quit && !gone && (l.count <= 0 || printed < l.count);) {
    const pkgctx::View* v = l.att.get(why);
    auto snap = v ? take_snapshot(*v) : pkgctx::Result<Snapshot>(pkgctx::make_error(pkgctx::Errc::segment_missing, why));
    if (!snap) why = snap.error().message;
    if (snap) {
      missing_reported = false;
      Snapshot& s = *snap;
      l.sel.filter(s);
      ClientsInfo c;
      const auto table = render_watch_table(watch_rows(s, *v, l.clients, pkgctx::mono_now_ns(), c, l.sel.sort));
      // Print when the table, the clients or the daemon's liveness changed (not for heartbeats).
      std::string key = std::string(pkgctx::liveness_name(s.liveness)) + "\n" + render_clients_line(c) + "\n";
      for (const auto& line : table) key += line + "\n";
      if (key != last) {
        io.out << "--- " << local_time_text(s.taken_realtime_ns, true) << '\n'
               << render_header(s) << render_clients_line(c) << "\n\n";
        for (const auto& line : table) io.out << line << '\n';
        io.out << std::flush;
        last = std::move(key);
        ++printed;
      }
    } else if (!missing_reported) {
      io.out << "--- " << local_time_text(pkgctx::realtime_now_ns(), true) << '\n' << why << " (retrying)" << std::endl;
      missing_reported = true;
      last.clear();
    }
    if (!io.out) return kExitOk;  // the reader went away (EPIPE)
    if (l.count > 0 && printed >= l.count) break;
    wait_input(-1, out_fd, l.interval_ns, gone);
  }
  return kExitOk;
}

// --json: one line per package change. The segment's commit counter says when anything was
// written; only then is the table read again and compared with the last one.
int watch_json(const Loop& l, Io io, int out_fd) {
  SignalScope signals(false);
  std::map<std::string, std::string> last;  // name -> its dump object, as last printed
  std::optional<std::pair<std::uint64_t, std::uint64_t>> last_write;  // (epoch, commits)
  std::string why;
  bool missing_reported = false, gone = false;
  long printed = 0;
  const auto print = [&](std::string_view event, const std::string& package) {
    io.out << watch_json_line(event, package) << '\n' << std::flush;
    ++printed;
    return l.count <= 0 || printed < l.count;
  };
  while (!g_quit && !gone) {
    const pkgctx::View* v = l.att.get(why);
    if (!v) {
      if (!missing_reported) io.err << "pkgctl: " << why << " (retrying)\n";
      missing_reported = true;
    } else {
      missing_reported = false;
      const auto info = v->segment().info();
      const std::pair<std::uint64_t, std::uint64_t> write{info.epoch, info.commits};
      if (write != last_write) {
        auto snap = take_snapshot(*v);
        if (!snap) {  // a record failed validation: said once, read again next time
          if (!missing_reported) io.err << "pkgctl: " << snap.error().message << " (retrying)\n";
          missing_reported = true;
          wait_input(-1, out_fd, l.interval_ns, gone);
          continue;
        }
        l.sel.filter(*snap);
        std::vector<WatchRow> rows;
        for (auto& p : snap->packages) rows.push_back({std::move(p), std::nullopt, std::nullopt});
        sort_rows(rows, SortColumn::name);
        std::map<std::string, std::string> now;
        bool more = true;
        for (const auto& r : rows) {
          std::string obj = dump_package_json(r.p);
          const auto it = last.find(r.p.name);
          if (more && it == last.end()) more = print(last_write ? "created" : "present", obj);
          else if (more && it->second != obj) more = print("changed", obj);
          now.emplace(r.p.name, std::move(obj));
        }
        for (const auto& [name, obj] : last)
          if (more && !now.count(name)) more = print("deleted", obj);
        if (!io.out || !more) return kExitOk;  // EPIPE: the reader went away
        last = std::move(now);
        last_write = write;
      }
    }
    wait_input(-1, out_fd, l.interval_ns, gone);
  }
  return kExitOk;
}

}  // namespace

std::vector<WatchKey> parse_watch_keys(std::string_view in) {
  static constexpr std::pair<std::string_view, WatchKey> kSequences[] = {
      {"\x1b[A", WatchKey::up},         {"\x1bOA", WatchKey::up},        {"\x1b[B", WatchKey::down},
      {"\x1bOB", WatchKey::down},       {"\x1b[5~", WatchKey::page_up},  {"\x1b[6~", WatchKey::page_down},
      {"\x1b[H", WatchKey::home},       {"\x1bOH", WatchKey::home},      {"\x1b[1~", WatchKey::home},
      {"\x1b[7~", WatchKey::home},      {"\x1b[F", WatchKey::end},       {"\x1bOF", WatchKey::end},
      {"\x1b[4~", WatchKey::end},       {"\x1b[8~", WatchKey::end},
  };
  std::vector<WatchKey> keys;
  for (std::size_t i = 0; i < in.size();) {
    bool matched = false;
    for (const auto& [seq, key] : kSequences) {
      if (in.substr(i, seq.size()) == seq) {
        keys.push_back(key);
        i += seq.size();
        matched = true;
        break;
      }
    }
    if (matched) continue;
    switch (in[i++]) {
      case 'q': case 'Q': case 3 /* Ctrl-C */: case 4 /* Ctrl-D */: keys.push_back(WatchKey::quit); break;
      case 'k': keys.push_back(WatchKey::up); break;
      case 'j': keys.push_back(WatchKey::down); break;
      case 'g': keys.push_back(WatchKey::home); break;
      case 'G': keys.push_back(WatchKey::end); break;
      case ' ': keys.push_back(WatchKey::page_down); break;
      default: break;  // an unknown key or sequence byte
    }
  }
  return keys;
}

int run_watch(const WatchOptions& o, Io io) {
  Selection sel;
  if (o.filter) {
    if (auto why = glob_problem(*o.filter)) {
      io.err << "pkgctl: --filter \"" << *o.filter << "\": " << *why << " (a glob on the package name, e.g. 'web-*')\n";
      return kExitUsage;
    }
    sel.glob = o.filter;
  }
  const auto sort = parse_sort_column(o.sort);
  if (!sort) {
    io.err << "pkgctl: --sort \"" << o.sort << "\" is not a column (one of: " << sort_column_names() << ")\n";
    return kExitUsage;
  }
  sel.sort = *sort;
  sel.label = " | sort " + o.sort + (o.filter ? " | filter " + *o.filter : std::string());
  Attachment att(o.segment);
  std::string why;
  if (!att.get(why)) {
    io.err << "pkgctl: " << why << '\n';
    return kExitUnreachable;
  }
  const auto interval_ns = static_cast<std::uint64_t>(o.interval_s * 1e9);
  ClientsQuery clients(o.socket, o.clients_request, std::max<std::uint64_t>(interval_ns, 1'000'000'000));
  const char* no_color = std::getenv("NO_COLOR");
  const Loop loop{att, clients, sel, interval_ns, o.count, !(no_color && *no_color)};
  const bool real_stdout = &io.out == &std::cout;
  const int out_fd = real_stdout ? STDOUT_FILENO : -1;
  if (o.json) return watch_json(loop, io, out_fd);
  const char* term = std::getenv("TERM");
  const bool capable = term && *term && std::string_view(term) != "dumb";
  if (real_stdout && capable && ::isatty(STDOUT_FILENO)) {
    std::cout.flush();
    return watch_terminal(loop);
  }
  return watch_plain(loop, io, out_fd);
}

}  // namespace pkgctl
