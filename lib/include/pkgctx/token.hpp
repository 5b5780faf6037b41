// pkgctx/token.hpp — a context token: a snapshot of a package's generation counters.
//
// A token can only observe; the store (the daemon) holds the power to cancel. A root token
// (events 0 update, 1 remove) is cancelled when its package's root generation moves: the next
// root event, a version change, deletion or segment retirement. A child token (key 2..7) is also
// cancelled when the child generation of its key moves (the next HandleEvent(key)).
//
// cancelled() is one acquire load and one compare (a child token's word moves with its root as
// well, see layout::SlotGens): no syscall, no lock, no allocation, safe from any thread and from
// a signal handler. Cancellation is permanent.
// A default-constructed token is never cancelled.
//
// Memory ordering: if cancelled() returns true, everything the writer stored before cancelling
// (the new version, settings, cause) is visible to the caller.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/layout.hpp"
#include "pkgctx/types.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace pkgctx {

// How long a wait that no writer will wake sleeps before it re-checks its token: on a segment a
// daemon serves, writers wake only the waits the daemon counted for registered workers, so an
// unregistered wait (the daemon away, no socket) ends within this bound of a cancellation.
inline constexpr std::chrono::milliseconds kWaitSlice{50};

class Segment;
namespace detail {
struct Mapping;
}

// The text of cause `c` of the segment mapped by `m` (caller-named causes from its table).
// Errors: corrupt.
Result<std::string> cause_text(const detail::Mapping& m, Cause c);

// Events (pkgctx/types.hpp), parsed and checked in one place with one message.
// "update" → 0, "remove" → 1, "schedule" → 2, "0".."7" → the number. Errors: invalid_event.
Result<int> parse_event(std::string_view text);
// Errors: invalid_event when `event` is not 0..7.
Result<int> validate_event(std::int64_t event);

// The fields of a printed token, syntax and check digits verified (nothing about a segment).
struct TokenText {
  std::uint64_t epoch = 0;
  std::uint32_t slot = 0;
  std::uint32_t key = 0;
  std::uint64_t root = 0;
  std::uint64_t child = 0;
};
// Errors: invalid_token naming what is wrong.
Result<TokenText> parse_token_text(std::string_view text);

// The core's token (the store's and the SDK implementation's). Plugins see the header-only
// pkgctx::Token of pkgctx/worker.hpp, built on this one through the C API.
namespace core {

class Token {
 public:
  // Never cancelled.
  Token() noexcept;

  // No syscall, no lock, no allocation.
  bool cancelled() const noexcept {
    // Hinted "live" so the compiler lays the live path out straight (measured in bench/).
    return __builtin_expect(watched_->load(std::memory_order_acquire) != snap_, 0);
  }

  // Why it was cancelled: the cause of the event that cancelled it (for a child cancelled
  // through its root, the root's cause); Cause::kNone while live. Exact while at most 15 further
  // events that this token would have seen (root events, and its own key's for a child)
  // followed (the cause ring holds 16; DESIGN promises 8); the most recent of them after that.
  Cause cause() const noexcept;
  // cause() as text: a built-in name, "none", or the caller-named cause (DESIGN §2.1) from the
  // segment's cause table. Errors: corrupt (a stored name fails validation).
  Result<std::string> cause_text() const;

  // Sleeps until cancelled or `timeout` passes; returns cancelled(). Futex on the slot's wake
  // word. On a segment no daemon has served (an embedded store) every cancellation wakes it; on
  // a daemon's segment a writer wakes only the waits the daemon counted for a registered worker
  // (the worker SDK's pkgctx_wait), and this one is not registered: it re-checks every kWaitSlice.
  bool wait(std::chrono::nanoseconds timeout) const noexcept;

  // Printable form (≤ 128 chars of [A-Za-z0-9._:-]):
  //   pkgctx1:<epoch:16 hex>:<slot>:<key>:<root gen hex>:<child gen hex>:<check:8 hex>
  // or kNoneText for a default token (parse() refuses it: it belongs to no segment).
  std::string str() const;
  static constexpr std::string_view kNoneText = "pkgctx1:none";
  // str() without an allocation: the text in a buffer of the caller's (a daemon answer's).
  struct Text {
    char data[128];
    std::size_t size = 0;
    std::string_view view() const noexcept { return {data, size}; }
  };
  Text text() const noexcept;
  // Parses and validates a printed token against `segment`: well-formed, check digits match,
  // same epoch, slot and key in range, generations not in the future. Errors: invalid_token.
  static Result<Token> parse(std::string_view text, const Segment& segment);

  bool is_root() const noexcept { return key_ < layout::kFirstChildKey; }
  std::uint32_t slot() const noexcept { return slot_; }
  std::uint32_t key() const noexcept { return key_; }
  std::uint64_t root_generation() const noexcept { return root_snap_; }
  // A child token's snapshot of its key's generation (which moves with the root too); 0 for a
  // root token.
  std::uint64_t child_generation() const noexcept { return is_root() ? 0 : snap_; }
  bool valid() const noexcept { return map_ != nullptr; }  // false for a default token
  std::uint64_t epoch() const noexcept { return epoch_; }  // the segment it belongs to (0: default)

  // The one word cancelled() loads and the value it compares it with, for checks inlined where
  // this header is not available (the C SDK): cancelled() == (watched_word()->load(acquire) !=
  // snapshot()). The word never changes for a default token. Valid while this token lives.
  const std::atomic<std::uint64_t>* watched_word() const noexcept { return watched_; }
  std::uint64_t snapshot() const noexcept { return snap_; }

  // For the worker SDK's registered waits and its stop_token watcher: the slot's futex wake word
  // (bumped on every cancellation in the slot; a writer wakes it when the slot's waiter count,
  // which only the daemon raises, is not 0). nullptr for a default token and a retired
  // predecessor's. Valid while this token (or another handle on its mapping) lives.
  const std::atomic<std::uint32_t>* wake_word() const noexcept;
  // True when writers wake only counted waits (a daemon serves or served the segment), so an
  // uncounted sleep must re-check every kWaitSlice; false when every cancellation wakes the slot's
  // word (no daemon ever attached) or for a default token. Read it *after* loading the wake word
  // to sleep on: a daemon that takes over bumps every wake word after setting this (seq_cst).
  bool writers_count_waits() const noexcept;

  // For the store and the SDK: a snapshot of the slot's current generations.
  static Token snapshot(const std::shared_ptr<detail::Mapping>& map, std::uint32_t slot, std::uint32_t key) noexcept;
  // The same, given the slot's generations `g` and the segment's epoch: inline, so a name lookup
  // (View::token) builds the token where it returns it (a call and a copy cost its cold path).
  static Token snapshot(const std::shared_ptr<detail::Mapping>& map, const layout::SlotGens& g, std::uint64_t epoch,
                        std::uint32_t slot, std::uint32_t key) noexcept {
    if (key >= layout::kFirstChildKey) {
      // The child word before the root (a writer stores them the other way round): the printed
      // root generation is then never older than the context the child belongs to.
      const std::atomic<std::uint64_t>* w = &g.child[key - layout::kFirstChildKey];
      const std::uint64_t snap = w->load(std::memory_order_acquire);
      return Token(w, snap, map, g.root.load(std::memory_order_acquire), epoch, slot, key);
    }
    const std::uint64_t root = g.root.load(std::memory_order_acquire);
    return Token(&g.root, root, map, root, epoch, slot, key);
  }

 private:
  Token(const std::atomic<std::uint64_t>* watched, std::uint64_t snap, const std::shared_ptr<detail::Mapping>& map,
        std::uint64_t root_snap, std::uint64_t epoch, std::uint32_t slot, std::uint32_t key) noexcept
      : watched_(watched), snap_(snap), map_(map), root_snap_(root_snap), epoch_(epoch), slot_(slot), key_(key) {}

  // The hot pair first: the one word this token watches and its snapshot.
  const std::atomic<std::uint64_t>* watched_;
  std::uint64_t snap_ = 0;
  std::shared_ptr<detail::Mapping> map_;
  std::uint64_t root_snap_ = 0;  // printed; a child token's root generation when taken
  std::uint64_t epoch_ = 0;
  std::uint32_t slot_ = 0;
  std::uint32_t key_ = 0;
};

}  // namespace core
}  // namespace pkgctx
