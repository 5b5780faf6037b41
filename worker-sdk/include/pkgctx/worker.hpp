// pkgctx/worker.hpp — the worker SDK: what a plugin process links to learn, without any IPC call,
// whether the work it is doing is still wanted.
//
// A controller (the pkgctxd daemon, or any program embedding pkgctx::core) keeps a table of
// packages — name, version, pending settings, settings checksum — in a shared-memory segment,
// plus per-package generation counters. A worker attaches to that segment read-only, takes a
// *token* when a task starts (a snapshot of the counters), and asks the token whether it has been
// cancelled: one acquire load and one compare, no syscall, no lock.
//
//   auto worker = pkgctx::Worker::attach("pkgctx");            // Result<Worker>
//   if (!worker) { log(worker.error().message); return; }
//   auto token = worker->token("my-plugin", pkgctx::kEventUpdate);
//   auto state = worker->read("my-plugin");                     // version + settings, consistent
//   while (!token->cancelled()) do_some_work(state->settings);
//   log(pkgctx::cause_name(token->cause()));                    // "version_changed", …
//
// Events (DESIGN.md §2): 0 update and 1 remove take the package's *root* token, cancelled by the
// next root event, a version change or deletion. 2 (schedule) .. 7 take a *child* token, also
// cancelled by the next HandleEvent of the same key (cause "rescheduled").
//
// ---------------------------------------------------------------------------------------------
// Process and thread rules (read these before you ship a plugin)
//
// * Read-only map. The table is mapped PROT_READ: a worker cannot change it, and a stray write
//   through a pointer into it kills the process with SIGSEGV. A worker writes only its own lease
//   page (tasks, and the waits the daemon counts for it, so writers know when a futex wake is
//   needed). Workers need read access to "<dir>/<name>" (the daemon's group), and the daemon's
//   socket for exact wake-ups; without a registration, wait() re-checks every 50 ms.
//   <dir> is $PKGCTX_RUNTIME_DIR, else /run/pkgctx; objects there that the directory's owner
//   does not own, or that others may write, are refused (untrusted_segment).
// * Lifetime. A Token keeps its mapping alive: it stays valid after the Worker that made it is
//   destroyed, and after the segment is retired and unlinked (it then reports segment_retired).
// * Threads. A Worker is safe to use from any number of threads at once (every member is const
//   and internally synchronised). A Token is an immutable value: copy it freely, call its const
//   members from any thread. A moved-from Worker may only be destroyed or assigned to.
// * Signals. Token::cancelled() is async-signal-safe (one atomic load; no lock, no allocation,
//   no syscall). Nothing else here is: cause() is lock-free but not promised, and str(), read(),
//   token(), wait() allocate or sleep.
// * fork(). The child inherits the mapping: Workers and Tokens keep working in it (read-only,
//   nothing to re-open). The stop_token watcher thread does not survive fork(): registrations
//   (CancelCallback, StopBridge) made before fork() never fire in the child, and destroying the
//   child's copies is harmless (it never waits); register again in the child. The SDK's fork
//   handlers keep its registry consistent whatever other threads were doing.
// * Re-attachment. When the daemon replaces the segment (an incompatible restart marks the old
//   one retired, wakes every waiter and creates a new one), every token of the old mapping is
//   cancelled with cause segment_retired, and the Worker's next lookup re-opens the segment by
//   name. A segment replaced *without* retirement (removed by hand, then re-created) is noticed
//   by a lookup that misses, by refresh(), and otherwise within WorkerOptions::recheck_interval.
//   A Worker keeps every mapping it attached until it is destroyed (re-attachment is rare: a
//   daemon upgrade), so a concurrent lookup never touches an unmapped page.
// * Memory ordering. If cancelled() returns true, everything the writer stored before cancelling
//   (the new version, settings, cause) is visible to the caller: read() after a cancellation
//   returns the state that cancelled the token or a newer one.
//
// ABI. This header is a header-only layer over the C API (pkgctx.h): libpkgctx.so.1 exports
// only pkgctx_* C functions, so no std::string, std::function or Boost type crosses the library
// boundary, and a plugin built with another standard library or Boost still works.
//
// Errors. Worker, Token, CancelCallback and StopBridge never throw: every call is noexcept, and
// an unexpected failure inside (even out-of-memory) comes back as io_error.
// Fallible calls return pkgctx::Result<T>: a value, or an Error whose `code` is a pkgctx::Errc
// (pkgctx/error.hpp; the same numbers as the C API's PKGCTX_* codes) and whose `message` is one line
// naming what was wrong. The codes each call can return are listed with it.
#pragma once

#include "pkgctx.h"
#include "pkgctx/error.hpp"
#include "pkgctx/types.hpp"

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

namespace pkgctx {

namespace sdk_detail {
// The error of the C call that just failed on this thread.
inline Error last_error(int code) {
  try {
    return Error{static_cast<Errc>(code), pkgctx_last_error()};
  } catch (...) {
    return Error{};  // out of memory for the message: the code alone
  }
}
inline Error out_of_memory(const char* what) noexcept {
  try {
    return Error{Errc::io_error, std::string(what) + ": out of memory"};
  } catch (...) {
    return Error{Errc::io_error, {}};
  }
}
// The word a default token watches: never changes.
inline constexpr std::uint64_t kNeverMoves = 0;
}  // namespace sdk_detail

// A context token: a snapshot of a package's generation counters, taken by Worker::token() or
// parsed back by Worker::parse_token(). It can only observe; the store (the daemon) holds the
// power to cancel. A root token (events 0 update, 1 remove) is cancelled when its package's root
// generation moves: the next root event, a version change, deletion or segment retirement. A
// child token (key 2..7) is also cancelled by the next HandleEvent of its key. Cancellation is
// permanent. A default-constructed token is never cancelled.
class Token {
 public:
  Token() noexcept = default;

  // One acquire load and one compare, inline: no call into the library, no syscall, no lock, no
  // allocation; async-signal-safe. If it returns true, everything the writer stored before
  // cancelling (the new version, settings, cause) is visible to the caller.
  bool cancelled() const noexcept {
    // Hinted "live" so the compiler lays the live path out straight (measured in bench/).
    return __builtin_expect(__atomic_load_n(check_.word, __ATOMIC_ACQUIRE) != check_.snapshot, 0);
  }

  // Why it was cancelled: the cause of the event that cancelled it (for a child cancelled
  // through its root, the root's cause); Cause::kNone while live. Exact while at most 8 further
  // events that this token would have seen followed; the most recent of them after that.
  Cause cause() const noexcept { return static_cast<Cause>(pkgctx_cause_code(handle_.get())); }

  // cause() as text, caller-named causes included (DESIGN §2.1): "none" while live, a built-in
  // name, or the name the cancelling call gave. Errors: corrupt (the stored name fails validation).
  Result<std::string> cause_text() const noexcept {
    char buf[PKGCTX_CAUSE_NAME_MAX + 1];
    if (const int rc = pkgctx_cause_text(handle_.get(), buf, sizeof buf, nullptr); rc != PKGCTX_OK)
      return sdk_detail::last_error(rc);
    try {
      return std::string(buf);
    } catch (...) {
      return sdk_detail::out_of_memory("a cause");
    }
  }

  // Sleeps until cancelled or `timeout` passes; returns cancelled(). Futex on the slot's wake
  // word, counted by the daemon through the worker's registration (started in the background by
  // the first wait), so the writer wakes only when someone waits. Unregistered (the daemon
  // down), it still works, re-checking every 50 ms (an embedded store's segment, which no daemon
  // serves, wakes on every cancellation).
  bool wait(std::chrono::nanoseconds timeout) const noexcept {
    if (!handle_) {  // never cancelled: sleep the timeout out
      std::this_thread::sleep_for(timeout);
      return false;
    }
    return pkgctx_wait_ns(handle_.get(), timeout.count() < 0 ? 0 : timeout.count()) == PKGCTX_OK;
  }

  // Printable form (≤ 128 chars of [A-Za-z0-9._:-]), for handing a token to another process
  // (Worker::parse_token reads it back); "pkgctx1:none" for a default token.
  std::string str() const {
    if (!handle_) return "pkgctx1:none";
    std::array<char, PKGCTX_TOKEN_STR_MAX + 1> buf{};
    const std::size_t n = pkgctx_token_str(handle_.get(), buf.data(), buf.size());
    return std::string(buf.data(), n < buf.size() ? n : buf.size() - 1);
  }

  bool is_root() const noexcept { return info_.key < kEventSchedule; }
  std::uint32_t slot() const noexcept { return info_.slot; }
  std::uint32_t key() const noexcept { return info_.key; }
  std::uint64_t root_generation() const noexcept { return info_.root_generation; }
  // A child token's snapshot of its key's generation (which moves with the root too); 0 for a
  // root token.
  std::uint64_t child_generation() const noexcept { return info_.child_generation; }
  bool valid() const noexcept { return handle_ != nullptr; }  // false for a default token

  // The C handle, for passing this token to C code (valid while this Token lives).
  const pkgctx_token_t* c_handle() const noexcept { return handle_.get(); }

 private:
  friend class Worker;
  // Takes ownership of `h` (freed when the last copy goes). On failure `h` is freed.
  static Result<Token> adopt(pkgctx_token_t* h) noexcept {
    Token t;
    try {
      t.handle_ = std::shared_ptr<pkgctx_token_t>(h, pkgctx_token_free);
    } catch (...) {
      pkgctx_token_free(h);
      return sdk_detail::out_of_memory("taking a token");
    }
    pkgctx_token_check(h, &t.check_);
    pkgctx_token_info(h, &t.info_);
    return t;
  }

  // The hot pair first: the one word this token watches and its snapshot.
  pkgctx_check_t check_{&sdk_detail::kNeverMoves, 0};
  pkgctx_token_info_t info_{};
  std::shared_ptr<pkgctx_token_t> handle_;  // immutable and shared by copies
};

struct WorkerOptions {
  // How often a lookup also checks whether the segment name now refers to another shared-memory
  // object (a segment replaced without being retired). The check is one shm_open + fstat; a
  // lookup pays it at most once per interval (and always after a miss). Zero: on every lookup.
  // Negative: never (only retirement, misses and refresh() re-attach).
  std::chrono::milliseconds recheck_interval{1000};
};

// One consistent snapshot of a package (Worker::read).
struct Package {
  std::string version;        // "" once removed
  std::string settings;       // RFC 8785 canonical JSON, "{}" when empty
  std::uint64_t checksum = 0; // XXH3-64 of settings
  std::string checksum_hex;   // the same, as 16 lowercase hex digits
  std::uint64_t settings_version = 0;  // schema version of the settings (DESIGN §2.1)
  std::string maintenance;             // pending maintenance mode; "" = managed normally
};

// A settings checksum (pkgctx::checksum): what the store computes for the same settings.
struct Checksum {
  std::uint64_t value = 0;
  std::string hex;        // 16 lowercase hex digits
  std::string canonical;  // the RFC 8785 canonical form
};

// The daemon that owns the segment, as its header tells.
struct DaemonStatus {
  Liveness liveness = Liveness::none;  // none / alive / stale (heartbeat older than 3 intervals) / stopped
  std::int32_t pid = 0;                // 0 when no daemon ever attached
  std::uint64_t start_realtime_ns = 0; // CLOCK_REALTIME when it started
  std::uint64_t heartbeat_age_ns = 0;  // CLOCK_MONOTONIC now minus its last heartbeat
  std::uint64_t heartbeat_interval_ns = 0;
};

// A task on a context (DESIGN §2.2): the token plus a lease the daemon sees, so a drain waits
// until the task ends (destructor or end()) or the process dies. Beginning and ending touch only
// this process's own lease page (no syscall; ending sends one byte only while a drain waits on
// this process). Move-only. End tasks before their Worker goes.
class Task {
 public:
  Task() noexcept = default;
  Task(Task&& o) noexcept : token_(std::move(o.token_)), task_(std::exchange(o.task_, nullptr)) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      end();
      token_ = std::move(o.token_);
      task_ = std::exchange(o.task_, nullptr);
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() { end(); }

  const Token& token() const noexcept { return token_; }
  bool cancelled() const noexcept { return token_.cancelled(); }
  bool active() const noexcept { return task_ != nullptr; }
  // Ends the task now (idempotent): the lease is gone, a waiting drain is told at once.
  void end() noexcept { pkgctx_task_end(std::exchange(task_, nullptr)); }

 private:
  friend class Worker;
  Token token_;
  pkgctx_task_t* task_ = nullptr;
};

class Worker {
 public:
  // Attaches read-only to the segment "/<segment>" (pkgctxd's default name is "pkgctx").
  // Errors:
  //   segment_missing    no such segment: the daemon has not started (yet), or another name.
  //   segment_not_ready  being created right now: try again in a few milliseconds.
  //   segment_foreign    "/<segment>" is not a pkgctx segment (bad magic, impossible sizes).
  //   segment_version    a pkgctx segment of another layout version or ABI: upgrade the SDK.
  //   segment_truncated  shorter than its header says (corrupt).
  //   segment_retired    being replaced by the daemon right now: try again.
  //   permission_denied  this process may not read it (join the daemon's group).
  //   invalid_name       `segment` is not 1..200 bytes of [A-Za-z0-9._-] or starts with '.'.
  //   io_error           anything else the kernel refused.
  static Result<Worker> attach(std::string segment, WorkerOptions options = {}) noexcept {
    try {
      pkgctx_options_t o{};
      o.recheck_always = options.recheck_interval.count() == 0;
      o.recheck_interval_ms = options.recheck_interval.count() < 0 ? -1 : options.recheck_interval.count();
      pkgctx_worker_t* h = nullptr;
      if (const int rc = pkgctx_attach_with(segment.data(), segment.size(), &o, &h); rc != PKGCTX_OK)
        return sdk_detail::last_error(rc);
      return Worker(std::move(segment), h);
    } catch (...) {
      return sdk_detail::out_of_memory("attaching");
    }
  }

  // The token of package `name`'s current context for `event` (0 update, 1 remove: the root;
  // 2..7: that child key). Lock-free. The token is a snapshot: take it when the task starts,
  // not when it ends.
  // Errors:
  //   invalid_event    not 0..7.
  //   invalid_name     not 1..128 bytes of [A-Za-z0-9._-].
  //   no_such_package  the table has no package of that name.
  //   busy             a writer died in the middle of writing this package; the daemon repairs
  //                    the table on its next heartbeat: try again.
  //   any attach() error, when the segment was retired and re-attaching failed.
  Result<Token> token(std::string_view name, int event) const noexcept {
    try {
      pkgctx_token_t* h = nullptr;
      if (const int rc = pkgctx_token_n(handle_.get(), name.data(), name.size(), event, &h); rc != PKGCTX_OK)
        return sdk_detail::last_error(rc);
      return Token::adopt(h);
    } catch (...) {
      return sdk_detail::out_of_memory("taking a token");
    }
  }

  // One consistent snapshot of package `name`: version ("" once removed), pending settings (RFC
  // 8785 canonical JSON, "{}" when empty), their checksum, settings_version and maintenance mode,
  // all from the same committed write, even while writers change them (validated by the slot's
  // sequence counter and retried). Errors: invalid_name, no_such_package, busy, corrupt,
  // attach() errors after a retirement (as token()).
  Result<Package> read(std::string_view name) const noexcept {
    pkgctx_package2_t p{};
    try {
      if (const int rc = pkgctx_read2_n(handle_.get(), name.data(), name.size(), &p); rc != PKGCTX_OK)
        return sdk_detail::last_error(rc);
      Package r{std::string(p.version), std::string(p.settings, p.settings_len), p.checksum,
                std::string(p.checksum_hex), p.settings_version, std::string(p.maintenance)};
      pkgctx_package2_free(&p);
      return r;
    } catch (...) {
      pkgctx_package2_free(&p);
      return sdk_detail::out_of_memory("reading a package");
    }
  }

  // DESIGN.md §2 NeedUpdate: true when the package is absent, or its version or settings
  // checksum differs from the given ones. Errors: invalid_name, busy, attach() errors.
  Result<bool> need_update(std::string_view name, std::string_view version, std::uint64_t checksum) const noexcept {
    try {
      char hex[17];
      std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(checksum));
      int out = 0;
      if (const int rc = pkgctx_need_update_n(handle_.get(), name.data(), name.size(), version.data(), version.size(), hex, &out);
          rc != PKGCTX_OK)
        return sdk_detail::last_error(rc);
      return out != 0;
    } catch (...) {
      return sdk_detail::out_of_memory("need_update");
    }
  }

  // Parses a token's printable form (Token::str(), e.g. handed over by a controller). A token of
  // a segment this Worker attached before a re-attachment is accepted and reports
  // segment_retired. Errors:
  //   invalid_token  garbled, forged (check digits), from a segment this Worker never attached
  //                  (other epoch), slot or key out of range, generations in the future.
  Result<Token> parse_token(std::string_view text) const noexcept {
    try {
      pkgctx_token_t* h = nullptr;
      if (const int rc = pkgctx_token_parse_n(handle_.get(), text.data(), text.size(), &h); rc != PKGCTX_OK)
        return sdk_detail::last_error(rc);
      return Token::adopt(h);
    } catch (...) {
      return sdk_detail::out_of_memory("parsing a token");
    }
  }

  // The owning daemon's liveness from the segment header (heartbeat on CLOCK_MONOTONIC; a clean
  // shutdown reads "stopped", a killed or hung daemon "stale"). Errors: attach() errors after a
  // retirement.
  Result<DaemonStatus> daemon() const noexcept {
    pkgctx_daemon_t d{};
    if (const int rc = pkgctx_daemon(handle_.get(), &d); rc != PKGCTX_OK) return sdk_detail::last_error(rc);
    return DaemonStatus{static_cast<Liveness>(d.liveness), d.pid, d.start_realtime_ns, d.heartbeat_age_ns,
                        d.heartbeat_interval_ns};
  }

  // Checks now whether the segment was retired or replaced, and re-attaches if so. Returns
  // whether it re-attached. Errors: attach() errors (the current mapping is kept).
  Result<bool> refresh() const noexcept {
    int reattached = 0;
    if (const int rc = pkgctx_refresh(handle_.get(), &reattached); rc != PKGCTX_OK) return sdk_detail::last_error(rc);
    return reattached != 0;
  }

  // Begins a task on package `name`'s current context for `event` (token(), then the lease).
  // Errors: token() errors; busy (1024 tasks at once on this Worker).
  Result<Task> begin(std::string_view name, int event) const noexcept {
    auto t = token(name, event);
    if (!t) return t.error();
    return begin(std::move(*t));
  }
  // Begins a task on `token`'s context. Errors: busy; invalid_token (a default token).
  Result<Task> begin(Token token) const noexcept {
    Task task;
    task.token_ = std::move(token);
    if (const int rc = pkgctx_task_begin_token(handle_.get(), task.token_.c_handle(), &task.task_); rc != PKGCTX_OK)
      return sdk_detail::last_error(rc);
    return task;
  }
  // Registers with pkgctxd at `socket` (empty: $PKGCTX_SOCKET or /run/pkgctx/pkgctxd.sock); the
  // first begin() does this implicitly. Errors: daemon_unreachable (retried in the background;
  // tasks work meanwhile), io_error.
  Result<void> register_daemon(const std::string& socket = {}) const noexcept {
    if (const int rc = pkgctx_register(handle_.get(), socket.empty() ? nullptr : socket.c_str()); rc != PKGCTX_OK)
      return sdk_detail::last_error(rc);
    return {};
  }
  // Whether the daemon knows this worker now.
  bool registered() const noexcept { return pkgctx_registered(handle_.get()) != 0; }

  const std::string& name() const noexcept { return name_; }
  // The epoch of the segment attached now (it changes when the Worker re-attaches).
  std::uint64_t epoch() const noexcept { return pkgctx_epoch(handle_.get()); }
  // The C handle, for passing this worker to C code (valid while this Worker lives).
  pkgctx_worker_t* c_handle() const noexcept { return handle_.get(); }

 private:
  Worker(std::string name, pkgctx_worker_t* h) noexcept : name_(std::move(name)), handle_(h, pkgctx_detach) {}
  std::string name_;
  std::unique_ptr<pkgctx_worker_t, void (*)(pkgctx_worker_t*)> handle_{nullptr, pkgctx_detach};
};

// ---------------------------------------------------------------------------------------------
// Callbacks on cancellation, and the std::stop_token bridge (over pkgctx_watch).
//
// One watcher thread per process serves every registration (it is started by the first one and
// then lives for the process). It sleeps in futex_waitv(2) on the wake words of all watched
// slots at once (up to 120 distinct slots; beyond that and on kernels before 5.16 it also polls
// every millisecond; a slot the daemon does not count, every 50 ms). A writer wakes it like any waiter,
// so a callback runs a few microseconds after the cancelling write: p50 5 µs, p99 8 µs measured
// on a 2-core machine (tests/unit/worker_stop_test.cpp prints it); within a millisecond for a
// polled slot. Registering a token whose slot is already watched costs no syscall.
//
// Callbacks run on the watcher thread, one at a time: keep them short (request a stop, notify a
// condition), never block in them, never throw (an exception terminates, as in
// std::stop_callback). Memory ordering: a callback sees everything the cancelling writer wrote.

// Runs `fn` once, on the watcher thread, when `token` is cancelled.
//
// If the token is already cancelled, `fn` runs inline in create() before it returns. A default
// (never-cancellable) token registers nothing and never runs `fn`.
//
// Destruction unregisters. It is race-free: after the destructor returns, `fn` is not running
// and will never run. If `fn` is running on the watcher thread, the destructor waits for it to
// return — unless it is called from inside `fn` itself (a callback may destroy its own
// registration), in which case it returns at once.
// Errors of create(): io_error (the watcher thread could not be started).
class CancelCallback {
 public:
  static Result<CancelCallback> create(const Token& token, std::function<void()> fn) noexcept {
    if (!token.valid()) return CancelCallback();
    using Fn = std::function<void()>;
    Fn* arg = new (std::nothrow) Fn(std::move(fn));
    if (!arg) return sdk_detail::out_of_memory("registering a callback");
    // The library releases `arg` once `fn` can no longer run (also on failure).
    pkgctx_watch_t* w = nullptr;
    const int rc = pkgctx_watch_ex(
        token.c_handle(), [](void* a) { (*static_cast<Fn*>(a))(); }, arg, [](void* a) { delete static_cast<Fn*>(a); }, &w);
    if (rc != PKGCTX_OK) return sdk_detail::last_error(rc);
    return CancelCallback(w);
  }

  CancelCallback() noexcept = default;  // registers nothing
  CancelCallback(CancelCallback&& other) noexcept : watch_(std::exchange(other.watch_, nullptr)) {}
  CancelCallback& operator=(CancelCallback&& other) noexcept {
    if (this != &other) {
      reset();
      watch_ = std::exchange(other.watch_, nullptr);
    }
    return *this;
  }
  CancelCallback(const CancelCallback&) = delete;
  CancelCallback& operator=(const CancelCallback&) = delete;
  ~CancelCallback() { reset(); }

  // Unregisters now (as the destructor does).
  void reset() noexcept { pkgctx_unwatch(std::exchange(watch_, nullptr)); }

 private:
  explicit CancelCallback(pkgctx_watch_t* w) noexcept : watch_(w) {}
  pkgctx_watch_t* watch_ = nullptr;  // nullptr: nothing registered
};

// A pollable cancellation (over pkgctx_watch_fd), for event loops (epoll, poll, Boost.Asio's
// posix::stream_descriptor, …): fd() is an eventfd that becomes readable (POLLIN) when `token` is
// cancelled, or at once if it already is, and then stays readable. The fd belongs to this
// object (do not close it); destruction unregisters and closes it. Served by the watcher thread
// above, with the same latency.
// Errors of create(): invalid_token (a default token), io_error (no fd or no watcher thread).
class CancelFd {
 public:
  static Result<CancelFd> create(const Token& token) noexcept {
    int fd = -1;
    pkgctx_watch_t* w = nullptr;
    const int rc = pkgctx_watch_fd(token.c_handle(), &fd, &w);
    if (rc != PKGCTX_OK) return sdk_detail::last_error(rc);
    return CancelFd(w, fd);
  }

  CancelFd() noexcept = default;  // no fd
  CancelFd(CancelFd&& other) noexcept
      : watch_(std::exchange(other.watch_, nullptr)), fd_(std::exchange(other.fd_, -1)) {}
  CancelFd& operator=(CancelFd&& other) noexcept {
    if (this != &other) {
      reset();
      watch_ = std::exchange(other.watch_, nullptr);
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  CancelFd(const CancelFd&) = delete;
  CancelFd& operator=(const CancelFd&) = delete;
  ~CancelFd() { reset(); }

  // The eventfd; -1 for a default-constructed or reset object.
  int fd() const noexcept { return fd_; }

  // Unregisters and closes the fd now (as the destructor does).
  void reset() noexcept {
    pkgctx_unwatch(std::exchange(watch_, nullptr));
    fd_ = -1;
  }

 private:
  CancelFd(pkgctx_watch_t* w, int fd) noexcept : watch_(w), fd_(fd) {}
  pkgctx_watch_t* watch_ = nullptr;
  int fd_ = -1;
};

// A std::stop_source that is requested when a pkgctx token is cancelled, for code written
// against std::stop_token (std::jthread, std::stop_callback, std::condition_variable_any::wait).
//
//   auto bridge = pkgctx::StopBridge::create(*token);
//   std::stop_callback on_stop(bridge->get_token(), [&] { cv.notify_all(); });
//
// request_stop() is called on the watcher thread, so std::stop_callbacks registered on the token
// run there (or inline in create() if the token is already cancelled, or in your thread if you
// request the stop yourself). Destruction unregisters, race-free as CancelCallback; the
// std::stop_source's state lives on while any std::stop_token refers to it.
// Errors of create(): io_error (the watcher thread could not be started).
class StopBridge {
 public:
  // Requests `source` (a fresh one by default) when `token` is cancelled.
  static Result<StopBridge> create(const Token& token, std::stop_source source = {}) noexcept {
    try {
      if (!source.stop_possible() && !source.stop_requested()) source = std::stop_source();
      auto cb = CancelCallback::create(token, [s = source]() mutable { s.request_stop(); });
      if (!cb) return cb.error();
      return StopBridge(std::move(source), std::move(*cb));
    } catch (...) {
      return sdk_detail::out_of_memory("creating a stop bridge");
    }
  }

  StopBridge() noexcept : source_(std::nostopstate) {}
  std::stop_token get_token() const noexcept { return source_.get_token(); }
  std::stop_source& get_source() noexcept { return source_; }
  bool stop_requested() const noexcept { return source_.stop_requested(); }

 private:
  StopBridge(std::stop_source source, CancelCallback cb) noexcept
      : source_(std::move(source)), callback_(std::move(cb)) {}
  std::stop_source source_;
  CancelCallback callback_;
};

// Same as StopBridge::create(token).
inline Result<StopBridge> watch(const Token& token) noexcept { return StopBridge::create(token); }

// The settings checksum of `json` (a JSON object), exactly as the store computes it (DESIGN §3):
// a controller can call NeedUpdate with it. Errors: invalid_settings, settings_too_large.
inline Result<Checksum> checksum(std::string_view json) noexcept {
  char hex[17];
  char* canonical = nullptr;
  if (const int rc = pkgctx_checksum(json.data(), json.size(), hex, &canonical); rc != PKGCTX_OK)
    return sdk_detail::last_error(rc);
  try {
    Checksum c{std::strtoull(hex, nullptr, 16), hex, canonical};
    pkgctx_string_free(canonical);
    return c;
  } catch (...) {
    pkgctx_string_free(canonical);
    return sdk_detail::out_of_memory("a checksum");
  }
}

}  // namespace pkgctx
