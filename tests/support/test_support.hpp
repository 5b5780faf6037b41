// Shared helpers for pkgctx tests: unique segment names, segment cleanup, child processes.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/token.hpp"

#include <functional>
#include <ostream>
#include <string>
#include <sys/types.h>

namespace pkgctx::test {

// A segment name unique to this process and call ("t-<pid>-<n>-<tag>"), so `ctest -j` runs
// never collide. The segment is removed when the guard dies.
class SegmentName {
 public:
  explicit SegmentName(const std::string& tag = "seg");
  ~SegmentName();
  SegmentName(const SegmentName&) = delete;
  SegmentName& operator=(const SegmentName&) = delete;
  const std::string& str() const noexcept { return name_; }
  const char* c_str() const noexcept { return name_.c_str(); }
  operator const std::string&() const noexcept { return name_; }

 private:
  std::string name_;
};

// Removes every pkgctx shared-memory object that belongs to `name` (the table and its
// companions).
void remove_segment(const std::string& name);

// Forks; the child resets signal handlers to their defaults, runs `body` and _exit()s with its
// return value (or 99 if it threw). Returns the child's pid.
pid_t spawn(const std::function<int()>& body);

// waitpid(); returns the exit code, or 128+signal if the child was killed.
int wait_exit(pid_t pid);

// Path of the shared test data folder (../shared/testdata), or "" when absent.
std::string shared_testdata();

}  // namespace pkgctx::test

// Printing for Boost.Test diagnostics.
namespace pkgctx {
inline std::ostream& operator<<(std::ostream& os, Errc e) { return os << errc_name(e); }
inline std::ostream& operator<<(std::ostream& os, const Error& e) { return os << errc_name(e.code) << ": " << e.message; }
inline std::ostream& operator<<(std::ostream& os, Liveness l) { return os << liveness_name(l); }
inline std::ostream& operator<<(std::ostream& os, Cause c) { return os << cause_name(c); }
}  // namespace pkgctx
