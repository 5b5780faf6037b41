// `pkgctl watch`: the live view. Rendering is in render.cpp; this file owns the terminal.
#include "pkgctl/cli.hpp"
#include "pkgctl/render.hpp"

#include "pkgctx/view.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <iostream>
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

// Installs handlers for the life of the object (no SA_RESTART: poll/nanosleep return EINTR) and
// puts the previous ones back.
class SignalScope {
 public:
  explicit SignalScope(bool winch) {
    g_quit = 0;
    g_resized = 0;
    struct sigaction sa{};
    sa.sa_handler = on_quit_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; ++i) sigaction(kQuit[i], &sa, &old_[i]);
    if (winch) {
      sa.sa_handler = on_winch;
      sigaction(SIGWINCH, &sa, &old_winch_);
      winch_ = true;
    }
  }
  ~SignalScope() {
    for (int i = 0; i < 3; ++i) sigaction(kQuit[i], &old_[i], nullptr);
    if (winch_) sigaction(SIGWINCH, &old_winch_, nullptr);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  static constexpr int kQuit[3] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction old_[3]{};
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
// exception) leaves the terminal as it was.
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

// Waits up to `ns` for a key; returns true if the user asked to quit.
bool wait_for_quit_key(bool keys, std::uint64_t ns) {
  pollfd p{keys ? STDIN_FILENO : -1, POLLIN, 0};
  const int ms = static_cast<int>(ns / 1'000'000);
  if (::poll(&p, 1, ms) > 0 && (p.revents & POLLIN)) {
    char buf[64];
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    for (ssize_t i = 0; i < n; ++i)
      if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 /* Ctrl-C */ || buf[i] == 4 /* Ctrl-D */) return true;
  }
  return false;
}

void sleep_ns(std::uint64_t ns) {
  timespec ts{static_cast<time_t>(ns / 1'000'000'000u), static_cast<long>(ns % 1'000'000'000u)};
  ::nanosleep(&ts, nullptr);  // a signal cuts it short; the caller checks g_quit
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

int watch_terminal(Attachment& att, std::uint64_t interval_ns, long count) {
  SignalScope signals(true);
  TerminalScope term;
  ChangeTracker tracker;
  std::string why;
  for (long frame = 0; !g_quit && (count <= 0 || frame < count); ++frame) {
    int rows, cols;
    terminal_size(rows, cols);
    g_resized = 0;
    const std::uint64_t now = pkgctx::mono_now_ns();
    std::string status = term.keys() ? " q quit" : " Ctrl-C quits";
    status += " | refresh " + std::to_string(interval_ns / 1'000'000) + " ms | reverse video: changed in the last 2 s";
    const pkgctx::View* v = att.get(why);
    auto snap = v ? take_snapshot(*v) : pkgctx::Result<Snapshot>(pkgctx::make_error(pkgctx::Errc::segment_missing, why));
    if (!snap) why = snap.error().message;
    if (snap) {
      const Snapshot& s = *snap;
      tracker.observe(s, now);
      status += " | " + std::to_string(tracker.changes()) + " changes seen";
      write_all(STDOUT_FILENO, render_watch_frame(s, tracker, now, rows, cols, status));
    } else {
      write_all(STDOUT_FILENO, "\x1b[H\x1b[2J" + why + " (retrying)\n\x1b[" + std::to_string(rows) + ";1H" + status);
    }
    if (wait_for_quit_key(term.keys(), interval_ns)) break;
  }
  return kExitOk;
}

int watch_plain(Attachment& att, std::uint64_t interval_ns, long count, Io io) {
  SignalScope signals(false);
  std::string last, why;
  bool missing_reported = false;
  for (long printed = 0; !g_quit && (count <= 0 || printed < count);) {
    const pkgctx::View* v = att.get(why);
    auto snap = v ? take_snapshot(*v) : pkgctx::Result<Snapshot>(pkgctx::make_error(pkgctx::Errc::segment_missing, why));
    if (!snap) why = snap.error().message;
    if (snap) {
      missing_reported = false;
      const Snapshot& s = *snap;
      // Print when the table or the daemon's liveness changed (not for heartbeat ticks).
      std::string key = std::string(pkgctx::liveness_name(s.liveness)) + "\n";
      for (const auto& l : render_table(s.packages)) key += l + "\n";
      if (key != last) {
        io.out << "--- " << local_time_text(s.taken_realtime_ns, true) << '\n' << render_dump_text(s) << std::endl;
        last = std::move(key);
        ++printed;
      }
    } else if (!missing_reported) {
      io.out << "--- " << local_time_text(pkgctx::realtime_now_ns(), true) << '\n' << why << " (retrying)" << std::endl;
      missing_reported = true;
      last.clear();
    }
    if (count > 0 && printed >= count) break;
    sleep_ns(interval_ns);
  }
  return kExitOk;
}

}  // namespace

int run_watch(const std::string& segment, double interval_s, long count, Io io) {
  Attachment att(segment);
  std::string why;
  if (!att.get(why)) {
    io.err << "pkgctl: " << why << '\n';
    return kExitUnreachable;
  }
  const auto interval_ns = static_cast<std::uint64_t>(interval_s * 1e9);
  const bool terminal = &io.out == &std::cout && ::isatty(STDOUT_FILENO);
  if (terminal) {
    std::cout.flush();
    return watch_terminal(att, interval_ns, count);
  }
  return watch_plain(att, interval_ns, count, io);
}

}  // namespace pkgctl
