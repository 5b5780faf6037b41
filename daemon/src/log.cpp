#include "pkgctx/daemon/log.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace pkgctx::daemon::log {
namespace {

struct State {
  std::mutex mu;  // the follower's threads log too
  std::string ident = "pkgctxd";
  bool prefixes = true;
  std::atomic<Level> max{Level::info};  // read without the mutex: a reload may change it
  bool batching = false;
  std::string pending;  // lines gathered by a Batch
  std::string text;     // a message with its newlines replaced, reused
  std::string line;     // reused for each stderr line written outside a Batch
  int journal_fd = -1;  // the native-protocol datagram socket, when stderr is the journal
  std::string segment;
  std::string datagram;  // reused for each entry
};

constexpr std::size_t kBatchBytes = 64 * 1024;
constexpr char kJournalSocket[] = "/run/systemd/journal/socket";

void write_all(const char* p, std::size_t left) noexcept {
  while (left > 0) {
    const ssize_t n = ::write(STDERR_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

State& state() {
  static State s;
  return s;
}

// systemd.exec(5): $JOURNAL_STREAM is "DEV:INO" of the stream systemd connected stdout/stderr
// to; stderr is still that stream when the numbers match (not redirected since).
bool stderr_is_journal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (!env) return false;
  unsigned long long dev = 0, ino = 0;
  char tail = 0;
  if (std::sscanf(env, "%llu:%llu%c", &dev, &ino, &tail) != 2) return false;
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) != 0) return false;
  return static_cast<unsigned long long>(st.st_dev) == dev && static_cast<unsigned long long>(st.st_ino) == ino;
}

// One field of the native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): "NAME=value\n", or,
// when the value holds a newline, "NAME\n" + its length as 64-bit little-endian + value + "\n",
// so the value cannot end the field early.
void append_field(std::string& out, std::string_view name, std::string_view value) {
  out += name;
  if (value.find('\n') == std::string_view::npos) {
    out += '=';
  } else {
    out += '\n';
    std::uint64_t n = value.size();
    for (int i = 0; i < 8; ++i, n >>= 8) out += static_cast<char>(n & 0xff);
  }
  out += value;
  out += '\n';
}

// Sends one entry; false when journald did not take it (the caller writes the line to stderr).
bool send_journal(State& s, Level level, std::string_view message, std::initializer_list<Field> fields) {
  std::string& d = s.datagram;
  d.clear();
  append_field(d, "MESSAGE", message);
  const char priority[2] = {static_cast<char>('0' + static_cast<int>(level)), 0};
  append_field(d, "PRIORITY", priority);
  append_field(d, "SYSLOG_IDENTIFIER", s.ident);
  if (!s.segment.empty()) append_field(d, "PKGCTX_SEGMENT", s.segment);
  for (const Field& f : fields)
    if (!f.value.empty()) append_field(d, f.name, f.value);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, kJournalSocket, sizeof kJournalSocket);
  // MSG_DONTWAIT: a full journald queue means EAGAIN and the stderr fallback, never a wait.
  // (libsystemd's sd_journal_sendv blocks there and drops the entry when the socket is missing.)
  for (;;) {
    const ssize_t n = ::sendto(s.journal_fd, d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                               reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
    if (n >= 0) return true;
    if (errno != EINTR) return false;
  }
}

// A buffer kept between messages, given back after an unusually long one.
void trim(std::string& buf) {
  if (buf.capacity() > kBatchBytes) std::string().swap(buf);
}

void write_stderr(State& s, Level level, std::string_view message) {
  // Straight into the batch when one is gathering; otherwise into the reused line buffer.
  std::string& line = s.batching ? s.pending : s.line;
  if (!s.batching) line.clear();
  if (s.prefixes) {
    line += '<';
    line += static_cast<char>('0' + static_cast<int>(level));
    line += '>';
  }
  line += s.ident;
  line += ": ";
  if (!s.prefixes && level <= Level::warning) line += level == Level::err ? "error: " : "warning: ";
  line += message;
  line += '\n';
  if (s.batching && s.pending.size() < kBatchBytes) return;
  write_all(line.data(), line.size());
  line.clear();
  trim(line);
}

}  // namespace

void init(std::string_view ident) {
  State& s = state();
  std::lock_guard lock(s.mu);
  s.ident = std::string(ident);
  // A terminal gets words; the journal, a pipe or a file get machine-readable prefixes.
  s.prefixes = ::isatty(STDERR_FILENO) == 0;
  if (s.journal_fd < 0 && stderr_is_journal())
    s.journal_fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // -1: stderr it is
}

void set_segment(std::string_view segment) {
  State& s = state();
  std::lock_guard lock(s.mu);
  s.segment = std::string(segment);
}

void set_max_level(Level level) noexcept { state().max.store(level, std::memory_order_relaxed); }
Level max_level() noexcept { return state().max.load(std::memory_order_relaxed); }
bool enabled(Level level) noexcept { return static_cast<int>(level) <= static_cast<int>(max_level()); }

void write(Level level, std::string_view message, std::initializer_list<Field> fields) noexcept {
  if (!enabled(level)) return;
  try {
    State& s = state();
    std::lock_guard lock(s.mu);
    // One message, one line: a stray newline would split it on stderr and in journalctl's view.
    std::string_view text = message;
    if (message.find('\n') != std::string_view::npos || message.find('\r') != std::string_view::npos) {
      s.text.assign(message);
      std::replace_if(s.text.begin(), s.text.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
      text = s.text;
    }
    if (s.journal_fd < 0 || !send_journal(s, level, text, fields)) write_stderr(s, level, text);
    trim(s.text);
  } catch (...) {
    // Out of memory while logging: nothing sensible left to do.
  }
}

Batch::Batch() noexcept {
  State& s = state();
  std::lock_guard lock(s.mu);
  s.batching = true;
}

Batch::~Batch() {
  flush();
  State& s = state();
  std::lock_guard lock(s.mu);
  s.batching = false;
}

void flush() noexcept {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (s.pending.empty()) return;
  write_all(s.pending.data(), s.pending.size());
  s.pending.clear();
}

std::optional<Level> level_from_name(std::string_view name) noexcept {
  if (name == "err" || name == "error") return Level::err;
  if (name == "warning") return Level::warning;
  if (name == "notice") return Level::notice;
  if (name == "info") return Level::info;
  if (name == "debug") return Level::debug;
  return std::nullopt;
}

std::string_view level_name(Level level) noexcept {
  switch (level) {
    case Level::err: return "err";
    case Level::warning: return "warning";
    case Level::notice: return "notice";
    case Level::info: return "info";
    case Level::debug: return "debug";
  }
  return "info";
}

}  // namespace pkgctx::daemon::log
