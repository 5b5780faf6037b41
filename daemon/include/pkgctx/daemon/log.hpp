// pkgctx/daemon/log.hpp — the daemon's log, the one place its lines leave the process.
//
// Two sinks, chosen once by init():
//  - The journal, when stderr is connected to it (systemd's rule, systemd.exec(5): $JOURNAL_STREAM
//    holds "DEV:INO" equal to stderr's st_dev:st_ino). Each message is one datagram of journald's
//    native protocol with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, PKGCTX_SEGMENT and the message's
//    own structured fields (below), so `journalctl PKGCTX_PACKAGE=foo` finds a package's lines.
//    The send never blocks (MSG_DONTWAIT): when journald's queue is full, its socket is missing
//    or the datagram is refused, the line goes to stderr instead — still into the journal, as
//    plain text — so no line is lost and the event loop never waits for journald.
//  - Otherwise stderr, one line per message with a journald/syslog priority prefix
//    ("<6>pkgctxd: listening on …"). On a terminal the prefix is dropped and warnings and errors
//    say so in words. One write(2) per line: lines never interleave.
// Any thread may log (the etcd follower's threads do); the sinks are serialised by a mutex.
//
// Structured fields (journal only; the plain line carries the same facts in its text):
//   PKGCTX_SEGMENT   every line: the segment this daemon owns (set_segment)
//   PKGCTX_OP        a write's op (update, event, delete, update_settings, drain, …)
//   PKGCTX_PACKAGE   the package name as the client sent it (cut at 160 bytes)
//   PKGCTX_RESULT    "ok" or the error code (forbidden, invalid_name, …)
//   PKGCTX_CHANGE    an update's change (created, version, settings, none)
//   PKGCTX_PEER_UID, PKGCTX_PEER_PID  the client's credentials (SO_PEERCRED)
//   PKGCTX_REVISION  the etcd revision a followed change came from
// Values are sent in the protocol's length-prefixed form when they hold a newline, so no value
// (a hostile package name) can end its field and forge another.
//
// House rule: each failure is logged once, where its context is known, as
// "Failed to <verb> <object>: <why>".
#pragma once

#include <initializer_list>
#include <optional>
#include <string_view>

namespace pkgctx::daemon::log {

enum class Level : int { err = 3, warning = 4, notice = 5, info = 6, debug = 7 };

// Decides the sink and the line format from stderr (see above); reads $JOURNAL_STREAM.
void init(std::string_view ident);
// The segment named by PKGCTX_SEGMENT on every journal entry from now on.
void set_segment(std::string_view segment);
void set_max_level(Level level) noexcept;
Level max_level() noexcept;
bool enabled(Level level) noexcept;

// One structured field: `name` is a journal field name ([A-Z0-9_], not starting with '_'),
// `value` any bytes; a field with an empty value is left out ("no package" has no field).
struct Field {
  std::string_view name;
  std::string_view value;
};

void write(Level level, std::string_view message, std::initializer_list<Field> fields = {}) noexcept;
inline void error(std::string_view m, std::initializer_list<Field> f = {}) noexcept { write(Level::err, m, f); }
inline void warning(std::string_view m, std::initializer_list<Field> f = {}) noexcept { write(Level::warning, m, f); }
inline void notice(std::string_view m, std::initializer_list<Field> f = {}) noexcept { write(Level::notice, m, f); }
inline void info(std::string_view m, std::initializer_list<Field> f = {}) noexcept { write(Level::info, m, f); }
inline void debug(std::string_view m, std::initializer_list<Field> f = {}) noexcept { write(Level::debug, m, f); }

// While a Batch lives, stderr lines are gathered and written together — by flush(), when 64 KiB have
// gathered, and when the Batch ends — so a burst of audit lines costs one write(2), not one a
// line. The event loop holds one per wake-up and flushes before it sends answers, so a line
// about a request is out before its answer. Batches do not nest. Journal entries are sent at
// once (one datagram each).
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
