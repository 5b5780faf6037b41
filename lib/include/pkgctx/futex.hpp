// pkgctx/futex.hpp — a minimal shared (not _PRIVATE) futex wrapper for cross-process sleeps on a
// 32-bit word in shared memory. std::atomic::wait/notify cannot be used: libstdc++ tracks waiters
// per process. FUTEX_WAIT works on a read-only mapping.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pkgctx::futex {

enum class WaitResult { woken, value_changed, timed_out, interrupted };

// Sleeps while *word == expected, at most `timeout` (negative or zero: do not sleep).
WaitResult wait(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;
// Wakes up to `count` sleepers on `word`; returns how many were woken.
int wake(const std::atomic<std::uint32_t>* word, int count = INT32_MAX) noexcept;

}  // namespace pkgctx::futex
