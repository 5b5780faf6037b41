// Internal: futex_waitv(2) (Linux 5.16+), to sleep on several 32-bit futex words at once (shared,
// not _PRIVATE: the words may be in the segment, a lease page or this process's memory).
#pragma once

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

namespace pkgctx::detail {

// Mirror of the kernel's struct futex_waitv (linux/futex.h has it from 5.16 headers on).
struct WaitV {
  std::uint64_t val;
  std::uint64_t uaddr;
  std::uint32_t flags;
  std::uint32_t reserved;
};
static_assert(sizeof(WaitV) == 24);
inline constexpr std::uint32_t kFutex32 = 2;  // FUTEX_32

template <class Word>
WaitV waitv_entry(const Word* word, std::uint32_t value) noexcept {
  return WaitV{value, reinterpret_cast<std::uintptr_t>(word), kFutex32, 0};
}

// Sleeps until a word differs from its value or is woken, or CLOCK_MONOTONIC reaches `deadline`
// (nullptr: none). Returns the syscall's result (-1 with errno: EAGAIN a word moved, ETIMEDOUT,
// EINTR; ENOSYS before 5.16; EPERM under a seccomp filter).
inline long futex_waitv(WaitV* v, unsigned n, const timespec* deadline) noexcept {
  return ::syscall(SYS_futex_waitv, v, n, 0u, deadline, CLOCK_MONOTONIC);
}

// Whether a futex_waitv result means the call itself cannot be used here.
inline bool waitv_unusable(long rc) noexcept { return rc < 0 && errno != EAGAIN && errno != ETIMEDOUT && errno != EINTR; }

// CLOCK_MONOTONIC now + `ns`.
inline timespec mono_deadline(std::int64_t ns) noexcept {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
  t.tv_nsec += static_cast<long>(ns % 1'000'000'000);
  if (t.tv_nsec >= 1'000'000'000) {
    t.tv_sec += 1;
    t.tv_nsec -= 1'000'000'000;
  }
  return t;
}

}  // namespace pkgctx::detail
