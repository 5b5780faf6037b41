#include "pkgctx/futex.hpp"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace pkgctx::futex {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

WaitResult wait(const std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept {
  if (timeout.count() <= 0) return WaitResult::timed_out;
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  // FUTEX_WAIT (shared): the kernel keys the wait on the backing object, so a sleeper on a
  // read-only mapping is woken by a writer on its own read-write mapping.
  long rc = ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(word), FUTEX_WAIT, expected, &ts,
                      nullptr, 0);
  if (rc == 0) return WaitResult::woken;
  switch (errno) {
    case EAGAIN: return WaitResult::value_changed;
    case ETIMEDOUT: return WaitResult::timed_out;
    default: return WaitResult::interrupted;
  }
}

int wake(const std::atomic<std::uint32_t>* word, int count) noexcept {
  long rc = ::syscall(SYS_futex, reinterpret_cast<const std::uint32_t*>(word), FUTEX_WAKE, count, nullptr,
                      nullptr, 0);
  return rc < 0 ? 0 : static_cast<int>(rc);
}

}  // namespace pkgctx::futex
