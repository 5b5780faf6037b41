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
//   through a pointer into it kills the process with SIGSEGV. The only thing a worker writes is
//   its waiter count on the small "<name>.waiters" board, so writers know when a futex wake is
//   needed. Workers need read access to "/dev/shm/<name>" and read-write access to
//   "/dev/shm/<name>.waiters" (the daemon's group); without the latter, wait() polls every 10 ms.
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
// Errors. Worker, CancelCallback and StopBridge never throw: every call is noexcept, and an
// unexpected failure inside (even out-of-memory) comes back as io_error.
// Fallible calls return pkgctx::Result<T>: a value, or an Error whose `code` is a pkgctx::Errc
// (error.hpp; the same numbers as the C API's PKGCTX_* codes) and whose `message` is one line
// naming what was wrong. The codes each call can return are listed with it.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>

namespace pkgctx {

struct WorkerOptions {
  // How often a lookup also checks whether the segment name now refers to another shared-memory
  // object (a segment replaced without being retired). The check is one shm_open + fstat; a
  // lookup pays it at most once per interval (and always after a miss). Zero: on every lookup.
  // Negative: never (only retirement, misses and refresh() re-attach).
  std::chrono::milliseconds recheck_interval{1000};
};

// The daemon that owns the segment, as its header tells.
struct DaemonStatus {
  Liveness liveness = Liveness::none;  // none / alive / stale (heartbeat older than 3 intervals) / stopped
  std::int32_t pid = 0;                // 0 when no daemon ever attached
  std::uint64_t start_realtime_ns = 0; // CLOCK_REALTIME when it started
  std::uint64_t heartbeat_age_ns = 0;  // CLOCK_MONOTONIC now minus its last heartbeat
  std::uint64_t heartbeat_interval_ns = 0;
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
  //   invalid_name       `segment` is empty, longer than 200 bytes or contains '/'.
  //   io_error           anything else the kernel refused.
  static Result<Worker> attach(std::string segment, WorkerOptions options = {}) noexcept;

  Worker(Worker&&) noexcept;
  Worker& operator=(Worker&&) noexcept;
  ~Worker();

  // The token of package `name`'s current context for `event` (0 update, 1 remove: the root;
  // 2..7: that child key). Lock-free; allocation-free unless an error is returned. The token is
  // a snapshot: take it when the task starts, not when it ends.
  // Errors:
  //   invalid_event    not 0..7.
  //   invalid_name     not 1..128 bytes of [A-Za-z0-9._-].
  //   no_such_package  the table has no package of that name.
  //   busy             a writer died in the middle of writing this package; the daemon repairs
  //                    the table on its next heartbeat: try again.
  //   any attach() error, when the segment was retired and re-attaching failed.
  Result<Token> token(std::string_view name, int event) const noexcept;

  // One consistent snapshot of package `name`: version ("" once removed), pending settings (RFC
  // 8785 canonical JSON, "{}" when empty) and their checksum, all from the same committed write,
  // even while writers change them (validated by the slot's sequence counter and retried).
  // Errors: invalid_name, no_such_package, busy, attach() errors after a retirement (as token()).
  Result<PackageRecord> read(std::string_view name) const noexcept;

  // DESIGN.md §2 NeedUpdate: true when the package is absent, or its version or settings
  // checksum differs from the given ones. Errors: invalid_name, busy, attach() errors.
  Result<bool> need_update(std::string_view name, std::string_view version, std::uint64_t checksum) const noexcept;

  // Parses a token's printable form (Token::str(), e.g. handed over by a controller). A token of
  // a segment this Worker attached before a re-attachment is accepted and reports
  // segment_retired. Errors:
  //   invalid_token  garbled, forged (check digits), from a segment this Worker never attached
  //                  (other epoch), slot or key out of range, generations in the future.
  Result<Token> parse_token(std::string_view text) const noexcept;

  // The owning daemon's liveness from the segment header (heartbeat on CLOCK_MONOTONIC; a clean
  // shutdown reads "stopped", a killed or hung daemon "stale"). Errors: attach() errors after a
  // retirement.
  Result<DaemonStatus> daemon() const noexcept;

  // Checks now whether the segment was retired or replaced, and re-attaches if so. Returns
  // whether it re-attached. Errors: attach() errors (the current mapping is kept).
  Result<bool> refresh() const noexcept;

  const std::string& name() const noexcept;
  // The current mapping (read-only) and its epoch. For tools and tests.
  Segment segment() const noexcept;
  std::uint64_t epoch() const noexcept;

 private:
  struct Impl;
  explicit Worker(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------
// Callbacks on cancellation, and the std::stop_token bridge.
//
// One watcher thread per process serves every registration (it is started by the first one and
// then lives for the process). It sleeps in futex_waitv(2) on the wake words of all watched
// slots at once (up to 127 distinct slots; beyond that, and on kernels before 5.16 or without a
// writable waiters board, it also polls every millisecond). A writer wakes it like any waiter,
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
  static Result<CancelCallback> create(const Token& token, std::function<void()> fn) noexcept;

  CancelCallback() noexcept = default;  // registers nothing
  CancelCallback(CancelCallback&& other) noexcept;
  CancelCallback& operator=(CancelCallback&& other) noexcept;
  CancelCallback(const CancelCallback&) = delete;
  CancelCallback& operator=(const CancelCallback&) = delete;
  ~CancelCallback();

  // Unregisters now (as the destructor does).
  void reset() noexcept;

 private:
  explicit CancelCallback(std::uint64_t id) noexcept : id_(id) {}
  std::uint64_t id_ = 0;  // 0: nothing registered
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
  static Result<StopBridge> create(const Token& token, std::stop_source source = {}) noexcept;

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

}  // namespace pkgctx
