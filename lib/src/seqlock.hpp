// Internal: sequence-lock helpers over atomic words. Do not depend on it outside lib/.
//
// Writers (holding the store mutex) bracket a change with begin()/end(); readers copy words with
// relaxed loads and validate. Readers never block writers.
#pragma once

#include "pkgctx/layout.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <sched.h>

namespace pkgctx::detail {

inline void write_begin(layout::AU64& seq) noexcept {
  seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
}

inline void write_end(layout::AU64& seq) noexcept {
  seq.store(seq.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

// Copies `bytes` bytes out of atomic words (relaxed): a reader's side of the seqlock.
inline void copy_out(char* dst, const layout::AU64* src, std::size_t bytes) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const std::uint64_t w = src[i / 8].load(std::memory_order_relaxed);
    std::memcpy(dst + i, &w, 8);
  }
  if (i < bytes) {
    const std::uint64_t w = src[i / 8].load(std::memory_order_relaxed);
    std::memcpy(dst + i, &w, bytes - i);
  }
}

// Copies bytes into atomic words (relaxed), zero-padding the last word.
inline void copy_in(layout::AU64* dst, const char* src, std::size_t bytes) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, src + i, 8);
    dst[i / 8].store(w, std::memory_order_relaxed);
  }
  if (i < bytes) {
    std::uint64_t w = 0;
    std::memcpy(&w, src + i, bytes - i);
    dst[i / 8].store(w, std::memory_order_relaxed);
  }
}

// Backoff for readers that find a writer inside: spin briefly, then yield. Gives up (returns
// false) after `limit`: a writer that died mid-write leaves the sequence odd until the next
// writer (or the daemon's heartbeat) repairs the table.
class Backoff {
 public:
  explicit Backoff(std::chrono::milliseconds limit = std::chrono::milliseconds(1000)) : limit_(limit) {}
  bool next() noexcept {
    if (++spins_ < 64) return true;
    if (spins_ == 64) start_ = std::chrono::steady_clock::now();
    sched_yield();
    return (spins_ & 255) != 0 || std::chrono::steady_clock::now() - start_ < limit_;
  }

 private:
  std::chrono::milliseconds limit_;
  unsigned spins_ = 0;
  std::chrono::steady_clock::time_point start_{};
};

// Meta word of SlotData.
inline constexpr std::uint64_t meta(bool used, std::size_t name_len, std::size_t version_len) noexcept {
  return (used ? 1u : 0u) | (std::uint64_t{name_len} << 8) | (std::uint64_t{version_len} << 16);
}
inline constexpr bool meta_used(std::uint64_t m) noexcept { return m & 1; }
inline constexpr std::size_t meta_name_len(std::uint64_t m) noexcept { return (m >> 8) & 0xff; }
inline constexpr std::size_t meta_version_len(std::uint64_t m) noexcept { return (m >> 16) & 0xff; }

}  // namespace pkgctx::detail
