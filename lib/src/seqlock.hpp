// Internal: sequence-lock helpers over atomic words. Do not depend on it outside lib/.
//
// Writers (holding the store mutex) bracket a change with begin()/end(); readers copy words with
// relaxed loads and validate. Readers never block writers.
#pragma once

#include "pkgctx/layout.hpp"

#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <sched.h>
#include <string_view>

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
inline constexpr std::uint64_t meta(bool used, std::size_t name_len, std::size_t version_len,
                                    std::size_t maintenance_len = 0) noexcept {
  return (used ? 1u : 0u) | (std::uint64_t{name_len} << 8) | (std::uint64_t{version_len} << 16) |
         (std::uint64_t{maintenance_len} << 24);
}
inline constexpr bool meta_used(std::uint64_t m) noexcept { return m & 1; }
inline constexpr std::size_t meta_name_len(std::uint64_t m) noexcept { return (m >> 8) & 0xff; }
inline constexpr std::size_t meta_version_len(std::uint64_t m) noexcept { return (m >> 16) & 0xff; }
inline constexpr std::size_t meta_maintenance_len(std::uint64_t m) noexcept { return (m >> 24) & 0xff; }

// Bytes [0, n) of `p` (n < 8) as the zero-padded word memcpy would make of them, and the mask of
// those bytes in a word. A shift loop, not memcpy/memset with a variable length: GCC turns byte
// loops into library calls, which cost more than the few bytes they move here.
inline std::uint64_t tail_word(const char* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  if constexpr (std::endian::native == std::endian::little) {
    for (std::size_t k = 0; k < n; ++k) v |= std::uint64_t{static_cast<unsigned char>(p[k])} << (8 * k);
  } else {
    std::memcpy(&v, p, n);
  }
  return v;
}
inline std::uint64_t tail_mask(std::size_t n) noexcept {
  if constexpr (std::endian::native == std::endian::little) {
    return (std::uint64_t{1} << (8 * n)) - 1;  // n < 8
  } else {
    std::uint64_t m = 0;
    std::memset(&m, 0xff, n);
    return m;
  }
}

// Do the zero-padded words at `w` hold exactly `bytes`? Relaxed loads, word by word: no copy, no
// memcmp call.
inline bool words_equal(const layout::AU64* w, std::string_view bytes) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t want;
    std::memcpy(&want, bytes.data() + i, 8);
    if (w[i / 8].load(std::memory_order_relaxed) != want) return false;
  }
  if (i < bytes.size()) {
    const std::size_t n = bytes.size() - i;
    if ((w[i / 8].load(std::memory_order_relaxed) & tail_mask(n)) != tail_word(bytes.data() + i, n)) return false;
  }
  return true;
}

// Does the record hold package `name` (hash `hash`)? Relaxed loads: a writer (the only one) uses
// it as is; a reader validates the slot's sequence around it.
inline bool holds_name(const layout::SlotData& d, std::string_view name, std::uint64_t hash) noexcept {
  const std::uint64_t mt = d.w[layout::dw::kMeta].load(std::memory_order_relaxed);
  return meta_used(mt) && d.w[layout::dw::kHash].load(std::memory_order_relaxed) == hash &&
         meta_name_len(mt) == name.size() && words_equal(&d.w[layout::dw::kName], name);
}

}  // namespace pkgctx::detail
