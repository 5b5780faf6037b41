// Internal: the writers' robust, process-shared pthread mutex. Do not depend on it outside lib/.
//
// Boost 1.81's interprocess_mutex cannot be recovered after its owner dies (it throws
// not_recoverable forever), so pkgctx uses a robust pthread mutex directly: when the owner died
// inside the critical section, pthread_mutex_lock returns EOWNERDEAD, the new owner repairs the
// protected state and calls pthread_mutex_consistent.
#pragma once

#include <mutex>
#include <pthread.h>

namespace pkgctx::detail {

void init_robust_mutex(pthread_mutex_t* m);

class RobustLock {
 public:
  // Blocks until locked. owner_died() tells whether the previous owner died holding it; the
  // caller must repair before unlocking (the mutex is marked consistent in the constructor).
  explicit RobustLock(pthread_mutex_t* m);
  // Never blocks: owns() tells whether the lock was taken.
  RobustLock(pthread_mutex_t* m, std::try_to_lock_t);
  ~RobustLock();
  RobustLock(const RobustLock&) = delete;
  RobustLock& operator=(const RobustLock&) = delete;
  bool owner_died() const noexcept { return owner_died_; }
  bool owns() const noexcept { return owns_; }

 private:
  pthread_mutex_t* m_;
  bool owner_died_ = false;
  bool owns_ = false;
};

}  // namespace pkgctx::detail
