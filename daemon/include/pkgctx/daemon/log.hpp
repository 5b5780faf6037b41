// pkgctx/daemon/log.hpp — the daemon's log: one line per message on stderr.
//
// Each line carries a journald/syslog priority prefix ("<6>pkgctxd: listening on …"), so under
// systemd the journal files it at the right priority. On a terminal the prefix is dropped and
// warnings and errors say so in words. One write(2) per line: lines never interleave.
//
// House rule: each failure is logged once, where its context is known, as
// "Failed to <verb> <object>: <why>".
#pragma once

#include <optional>
#include <string_view>

namespace pkgctx::daemon::log {

enum class Level : int { err = 3, warning = 4, notice = 5, info = 6, debug = 7 };

// Decides the line format from stderr (journal or pipe: prefixes; terminal: words).
void init(std::string_view ident);
void set_max_level(Level level) noexcept;
Level max_level() noexcept;
bool enabled(Level level) noexcept;

void write(Level level, std::string_view message) noexcept;
inline void error(std::string_view m) noexcept { write(Level::err, m); }
inline void warning(std::string_view m) noexcept { write(Level::warning, m); }
inline void notice(std::string_view m) noexcept { write(Level::notice, m); }
inline void info(std::string_view m) noexcept { write(Level::info, m); }
inline void debug(std::string_view m) noexcept { write(Level::debug, m); }

// While a Batch lives, lines are gathered and written together — by flush(), when 64 KiB have
// gathered, and when the Batch ends — so a burst of audit lines costs one write(2), not one a
// line. The event loop holds one per wake-up and flushes before it sends answers, so a line
// about a request is out before its answer. Batches do not nest.
class Batch {
 public:
  Batch() noexcept;
  ~Batch();
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
};
void flush() noexcept;

// "err", "warning", "notice", "info", "debug" (also "error").
std::optional<Level> level_from_name(std::string_view name) noexcept;
std::string_view level_name(Level level) noexcept;

}  // namespace pkgctx::daemon::log
