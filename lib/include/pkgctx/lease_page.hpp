// pkgctx/lease_page.hpp — the page a registered worker shares with the daemon (DESIGN §2.2).
//
// Each worker process creates one page (a sealed memfd: it can neither shrink nor grow, so the
// daemon's mapping never SIGBUSes) and hands it to the daemon with its `register` request. The
// worker writes its leases there without any syscall; the daemon reads them when a drain asks
// who still holds a cancelled context. The daemon trusts no byte of it: every lease is read
// under its sequence counter, fields are range-checked, and a lying worker can only make drains
// that name its own leases wait (or miss them: only its own acknowledgement suffers).
//
// The daemon writes the `notify` word: non-zero while a drain waits on one of this page's
// leases. A task ends with one load of it and, only when set, one byte sent on the registration
// connection, so the daemon re-checks the page at once.
//
// Waits. A thread about to sleep on a slot's wake word publishes a `Wait` record here and sends
// one byte; the daemon reads the page's records (validated like leases), raises the waiter count
// of each waited slot in the table (layout.hpp) — one per record — and acknowledges each record
// it read by storing its sequence in `ack` (with `counted`) and futex-waking `ack`. The thread
// sleeps on the wake word only after the acknowledgement, re-checking its token first, so no
// write between the two is lost. Each record carries its token's snapshot (the value of the
// generation word the token watches when it was taken): the daemon counts a wait only while that
// word still equals it (raised first, then compared, so a cancellation after the comparison
// finds the count raised and wakes), and otherwise acknowledges it uncounted (its token is
// cancelled: the worker returns at once). A counted wait whose word has moved past its snapshot
// is retired by the daemon on its own: it lowers the count, then stores 0 in `counted` — right
// after its own writes, after the etcd follower's, and on every tick for writers outside the
// daemon. So a worker whose wait ended because its token is cancelled withdraws it without a
// byte; one that ended otherwise (timeout, a daemon change) sends one, so the daemon lowers the
// count, unless it finds its acknowledged record uncounted. A client's counts all go when it
// dies. A worker that lies here can only raise counts (writers then make a futex syscall for
// nothing) or lose its own wake-ups. In particular a lie in `snapshot`, which the daemon only
// compares with the word of the record's own slot and key, can only un-count its own wait (never
// counted, or retired at once: it loses its wake-up) or over-count it (a byte it skips keeps its
// own count raised until the record changes or it dies).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace pkgctx::lease {

inline constexpr std::uint64_t kMagic = 0x3165676170736c70ull;  // "plspage1"
inline constexpr std::uint32_t kLeases = 1024;                  // leases per process at once
inline constexpr std::uint32_t kWaits = 256;                    // waits per process at once

// One lease. The owner thread writes it as a seqlock writer (seq odd while writing); the
// daemon copies it and keeps the copy only if seq was even and unchanged around the copy.
struct alignas(64) Lease {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> active{0};  // 1 while the task runs
  std::atomic<std::uint32_t> slot{0};
  std::atomic<std::uint32_t> key{0};
  std::atomic<std::uint64_t> epoch{0};     // the segment the token belongs to
  std::atomic<std::uint64_t> snapshot{0};  // the token's watched-word snapshot
  std::atomic<std::uint64_t> root{0};      // the token's root generation (reported)
  std::atomic<std::uint64_t> begin_ns{0};  // CLOCK_MONOTONIC_COARSE at begin
};

// One wait record: seqlocked like a lease (worker-written), plus the daemon's acknowledgement.
struct alignas(64) Wait {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint32_t> active{0};  // 1 while the thread waits
  std::atomic<std::uint32_t> slot{0};
  std::atomic<std::uint32_t> key{0};     // reported by the clients op
  std::atomic<std::uint64_t> epoch{0};   // the segment the token belongs to
  std::atomic<std::uint64_t> snapshot{0};  // the token's watched-word snapshot
  // Daemon-written: the last `seq` it read (a futex word), and whether it counted the wait then
  // (0: it could not — another segment, a bad slot — so the waiter must re-check in slices; or its
  // token was cancelled already; or, stored later, the daemon retired it: its token is cancelled
  // and its count gone).
  alignas(32) std::atomic<std::uint32_t> ack{0};
  std::atomic<std::uint32_t> counted{0};
};
static_assert(sizeof(Wait) == 64 && offsetof(Wait, snapshot) == 24);

struct Header {
  std::uint64_t magic = kMagic;
  std::uint32_t leases = kLeases;
  std::uint32_t pad = 0;
  std::atomic<std::uint32_t> used{0};  // hint: no lease at or past this index is active
  std::atomic<std::uint32_t> waits_used{0};  // hint: no wait at or past this index is active
  alignas(64) std::atomic<std::uint32_t> notify{0};  // daemon-written (see above)
};

struct Page {
  alignas(64) Header header;
  Lease lease[kLeases];
  Wait wait[kWaits];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free);

// A lease as the daemon read it, consistent.
struct LeaseCopy {
  std::uint32_t index = 0;
  std::uint32_t slot = 0;
  std::uint32_t key = 0;
  std::uint64_t epoch = 0;
  std::uint64_t snapshot = 0;
  std::uint64_t root = 0;
  std::uint64_t begin_ns = 0;
};

// Reads lease `i` of `page` (shared with an untrusted writer). True with `out` filled when the
// lease is active and was read consistently; false when it is free. `busy` is set when it kept
// changing (odd or moving sequence on every attempt).
inline bool read_lease(const Page& page, std::uint32_t i, LeaseCopy& out, bool& busy) noexcept {
  const Lease& l = page.lease[i];
  for (int attempt = 0; attempt < 4; ++attempt) {
    const std::uint32_t s1 = l.seq.load(std::memory_order_acquire);
    if (s1 & 1u) continue;
    const std::uint32_t active = l.active.load(std::memory_order_relaxed);
    out = {i, l.slot.load(std::memory_order_relaxed), l.key.load(std::memory_order_relaxed),
           l.epoch.load(std::memory_order_relaxed), l.snapshot.load(std::memory_order_relaxed),
           l.root.load(std::memory_order_relaxed), l.begin_ns.load(std::memory_order_relaxed)};
    std::atomic_thread_fence(std::memory_order_acquire);
    if (l.seq.load(std::memory_order_relaxed) != s1) continue;
    return active != 0;
  }
  busy = true;
  return false;
}

// A wait record as the daemon read it, consistent.
struct WaitCopy {
  std::uint32_t seq = 0;
  bool active = false;
  std::uint32_t slot = 0;
  std::uint32_t key = 0;
  std::uint64_t epoch = 0;
  std::uint64_t snapshot = 0;
};

// Reads wait record `i` (untrusted). False when it kept changing.
inline bool read_wait(const Page& page, std::uint32_t i, WaitCopy& out) noexcept {
  const Wait& w = page.wait[i];
  for (int attempt = 0; attempt < 4; ++attempt) {
    const std::uint32_t s1 = w.seq.load(std::memory_order_acquire);
    if (s1 & 1u) continue;
    out = {s1, w.active.load(std::memory_order_relaxed) != 0, w.slot.load(std::memory_order_relaxed),
           w.key.load(std::memory_order_relaxed), w.epoch.load(std::memory_order_relaxed),
           w.snapshot.load(std::memory_order_relaxed)};
    std::atomic_thread_fence(std::memory_order_acquire);
    if (w.seq.load(std::memory_order_relaxed) == s1) return true;
  }
  return false;
}

}  // namespace pkgctx::lease
