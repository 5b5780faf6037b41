#include "pkgctx/daemon/log.hpp"

#include <cerrno>
#include <string>
#include <unistd.h>

namespace pkgctx::daemon::log {
namespace {

struct State {
  std::string ident = "pkgctxd";
  bool prefixes = true;
  Level max = Level::info;
  bool batching = false;
  std::string pending;  // lines gathered by a Batch
};

constexpr std::size_t kBatchBytes = 64 * 1024;

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

}  // namespace

void init(std::string_view ident) {
  State& s = state();
  s.ident = std::string(ident);
  // A terminal gets words; the journal, a pipe or a file get machine-readable prefixes.
  s.prefixes = ::isatty(STDERR_FILENO) == 0;
}

void set_max_level(Level level) noexcept { state().max = level; }
Level max_level() noexcept { return state().max; }
bool enabled(Level level) noexcept { return static_cast<int>(level) <= static_cast<int>(state().max); }

void write(Level level, std::string_view message) noexcept {
  if (!enabled(level)) return;
  try {
    State& s = state();
    std::string line;
    line.reserve(message.size() + s.ident.size() + 16);
    if (s.prefixes) {
      line += '<';
      line += static_cast<char>('0' + static_cast<int>(level));
      line += '>';
    }
    line += s.ident;
    line += ": ";
    if (!s.prefixes && level <= Level::warning) line += level == Level::err ? "error: " : "warning: ";
    // One message, one line: a stray newline would split it in the journal.
    for (char c : message) line += (c == '\n' || c == '\r') ? ' ' : c;
    line += '\n';
    if (s.batching) {
      s.pending += line;
      if (s.pending.size() >= kBatchBytes) flush();
      return;
    }
    write_all(line.data(), line.size());
  } catch (...) {
    // Out of memory while logging: nothing sensible left to do.
  }
}

Batch::Batch() noexcept { state().batching = true; }

Batch::~Batch() {
  flush();
  state().batching = false;
}

void flush() noexcept {
  State& s = state();
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
