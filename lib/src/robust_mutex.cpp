#include "robust_mutex.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace pkgctx::detail {

namespace {
[[noreturn]] void fatal(const char* what, int rc) {
  // A mutex call failing other than EOWNERDEAD means memory corruption or misuse; continuing
  // could corrupt the shared table for every process.
  std::fprintf(stderr, "<2>pkgctx: %s failed: %s\n", what, std::strerror(rc));
  std::abort();
}
}  // namespace

void init_robust_mutex(pthread_mutex_t* m) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (int rc = pthread_mutex_init(m, &a); rc != 0) fatal("pthread_mutex_init", rc);
  pthread_mutexattr_destroy(&a);
}

RobustLock::RobustLock(pthread_mutex_t* m) : m_(m) {
  int rc = pthread_mutex_lock(m_);
  if (rc == EOWNERDEAD) {
    owner_died_ = true;
    rc = pthread_mutex_consistent(m_);
  }
  if (rc != 0) fatal("pthread_mutex_lock", rc);
  owns_ = true;
}

RobustLock::RobustLock(pthread_mutex_t* m, std::try_to_lock_t) : m_(m) {
  int rc = pthread_mutex_trylock(m_);
  if (rc == EBUSY) return;
  if (rc == EOWNERDEAD) {
    owner_died_ = true;
    rc = pthread_mutex_consistent(m_);
  }
  if (rc != 0) fatal("pthread_mutex_trylock", rc);
  owns_ = true;
}

RobustLock::~RobustLock() {
  if (owns_) pthread_mutex_unlock(m_);
}

}  // namespace pkgctx::detail
