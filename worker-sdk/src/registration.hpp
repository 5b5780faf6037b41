// Internal: a worker handle's registration with pkgctxd and its lease page (DESIGN §2.2).
//
// The page is this process's own memfd (sealed: the daemon refuses it otherwise); tasks write
// their leases there with no syscall. One connection to the daemon stays open for the handle's
// life: the daemon learns of the process's death from its EOF (and a pidfd). A background thread
// reconnects and re-registers the same page when the daemon comes back, so its leases are known
// again. The socket keeps one descriptor number for the handle's life (a reconnection dup2()s
// the new connection onto it), so a task ending on another thread never writes to a recycled
// descriptor.
//
// Waits (lease_page.hpp): wait() publishes a wait record on the page, sends a byte, and sleeps
// on the slot's wake word only once the daemon acknowledged that it counted the wait (writers
// then wake it exactly). Until then — not registered, the daemon down or slow, all records
// taken — it re-checks its token every kWaitSlice (token.hpp). A state word, bumped whenever the
// connection comes or goes, is slept on together with the wake word (futex_waitv), so a counted
// sleeper learns at once that its count is gone with the daemon, and an uncounted one that it
// can now be counted.
#pragma once

#include "pkgctx.h"
#include "pkgctx/error.hpp"
#include "pkgctx/lease_page.hpp"
#include "pkgctx/token.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <unistd.h>

namespace pkgctx::detail {
class Registration;
}

// The C API's task: one per lease index, kept with the registration (no allocation per task).
struct pkgctx_task_s {
  pkgctx::detail::Registration* reg = nullptr;
  int lease = -1;                       // -1: ended
  const pkgctx_token_t* token = nullptr;
  pkgctx_token_t* owned = nullptr;      // pkgctx_task_begin's own token
};

namespace pkgctx::detail {

class Registration {
 public:
  // Creates the page and the thread; with `connect_now`, registers now if the daemon answers
  // within a few seconds (`registered()` tells), else (or without it) keeps trying in the
  // background. `socket`: the daemon's socket. Errors: io_error (memfd, mmap, thread).
  static Result<std::shared_ptr<Registration>> start(std::string socket, bool connect_now = true);
  ~Registration();
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

  bool registered() const noexcept { return registered_.load(std::memory_order_acquire); }
  // False in a child forked from the process that started it: the page and the connection are
  // the parent's, so the child's waits must not be counted (or withdrawn) through them.
  bool owned_here() const noexcept { return ::getpid() == pid_; }
  const std::string& socket() const noexcept { return socket_; }

  // A free lease index, or -1 when all kLeases are taken. No syscall.
  int claim() noexcept;
  // Writes lease `i` (claimed) as active. No syscall.
  void begin(int i, std::uint32_t slot, std::uint32_t key, std::uint64_t epoch, std::uint64_t snapshot,
             std::uint64_t root) noexcept;
  // Ends lease `i` and frees its index: one load of the notify word, and one byte to the daemon
  // only when a drain waits on this page.
  void end(int i) noexcept;

  // Sleeps until `token` is cancelled or `timeout` passes, counted by the daemon when it can be
  // (see above); returns token.cancelled().
  bool wait(const core::Token& token, std::chrono::nanoseconds timeout) noexcept;

  // The pieces of wait() for the watcher, which multiplexes many slots on one thread.
  // Bumped and futex-woken on every (dis)connection.
  const std::atomic<std::uint32_t>& state_word() const noexcept { return state_; }
  int wait_claim() noexcept;  // a free wait record, or -1
  // Publishes record `i` as waiting on `token`'s slot and asks the daemon to count it (one byte).
  // Returns the sequence its acknowledgement will carry.
  std::uint32_t wait_publish(int i, const core::Token& token) noexcept;
  // True once the daemon acknowledged `seq` of record `i`; `counted` says whether it counted it.
  bool wait_acked(int i, std::uint32_t seq, bool& counted) const noexcept;
  const std::atomic<std::uint32_t>& wait_ack_word(int i) const noexcept { return page_->wait[i].ack; }
  // Withdraws record `i`, last published as `published` (0: never), and frees it. The daemon
  // lowers its count on the byte, sent unless the record's token is `cancelled` (the daemon
  // retires such a wait by itself) or the daemon acknowledged that publication and its record
  // says it is not counted (never was, or retired already).
  void wait_withdraw(int i, std::uint32_t published, bool cancelled) noexcept;

  lease::Page& page() noexcept { return *page_; }
  pkgctx_task_s& task(int i) noexcept { return tasks_[i]; }

 private:
  Registration() = default;
  void run() noexcept;            // the background thread
  bool connect_and_register() noexcept;
  void ping() noexcept;           // one byte: the daemon re-reads the page
  void set_registered(bool up) noexcept;

  std::string socket_;
  pid_t pid_ = ::getpid();
  int memfd_ = -1;
  lease::Page* page_ = nullptr;
  int sock_ = -1;                 // stable number; a connected socket while registered
  int stop_fd_ = -1;              // eventfd: the destructor wakes the thread
  std::atomic<bool> registered_{false};
  std::atomic<std::uint32_t> state_{0};
  std::atomic<std::uint64_t> bits_[lease::kLeases / 64] = {};
  std::atomic<std::uint64_t> wait_bits_[lease::kWaits / 64] = {};
  std::thread thread_;
  pkgctx_task_s tasks_[lease::kLeases];
};

}  // namespace pkgctx::detail
