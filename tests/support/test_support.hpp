// Shared helpers for pkgctx tests: unique segment names, segment cleanup, child processes.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/store.hpp"
#include "pkgctx/token.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <ostream>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

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

// Every test binary linking this support library runs in its own runtime directory: a global
// fixture makes a mkdtemp directory under /dev/shm (mode 0755, so `nobody` may traverse it),
// sets PKGCTX_RUNTIME_DIR to it (forked daemons, pkgctl and workers inherit it) and removes it
// at the end. A PKGCTX_RUNTIME_DIR set by the caller is kept.
// The path of segment object `object` ("<name>", "<name>.lock") there.
std::string segment_path(const std::string& object);

// Removes every pkgctx object that belongs to `name` (the table and its companions).
void remove_segment(const std::string& name);

// Forks; the child resets signal handlers to their defaults, runs `body` and _exit()s with its
// return value (or 99 if it threw). Returns the child's pid.
pid_t spawn(const std::function<int()>& body);

// waitpid(); returns the exit code, or 128+signal if the child was killed.
int wait_exit(pid_t pid);

// Sends `line` on the stream socket `sock` with descriptor `fd` attached (SCM_RIGHTS), as the
// SDK registers its lease page ({"op":"register"}); true if the whole line went out.
bool send_with_fd(int sock, std::string_view line, int fd);

// Blocks until the main thread of process `pid` sleeps in a futex syscall (futex or
// futex_waitv, read from /proc/<pid>/syscall); false if it does not within 10 s.
bool await_futex_sleep(pid_t pid);

// Runs `body` in a child (as spawn() does) that first drops to nobody:nogroup with the
// supplementary `groups`; waits and returns its exit code (90 if it could not drop).
int as_nobody(const std::vector<gid_t>& groups, const std::function<int()>& body);

// Path of the shared test data folder (../shared/testdata), or "" when absent.
std::string shared_testdata();

// A pipe that sequences processes on real events, one byte at a time. Make it before fork():
// every process then holds both ends. Only the constructor uses Boost.Test (it ends the test
// case if pipe() fails), so children may call the rest.
class Pipe {
 public:
  Pipe();
  ~Pipe();
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;

  void send(char c) const;
  // Blocks for the next byte; '\0' on an error or end of file.
  char recv() const;

  void signal() const { send('x'); }
  // Waits at most `timeout` for the next byte. Since every process holds both ends, a dead peer
  // never shows as end of file: the timeout bounds the wait instead.
  bool await(std::chrono::milliseconds timeout = std::chrono::seconds(60)) const;

 private:
  int fd_[2] = {-1, -1};
};

// `bytes` of anonymous MAP_SHARED memory (zero-filled), shared with children forked after the
// call; ends the test case if mmap() fails. shared_block<T>() puts a value-initialised T there
// (never unmapped).
void* shared_memory(std::size_t bytes);
template <class T>
T* shared_block() {
  return new (shared_memory(sizeof(T))) T();
}

// Rewrites the layout version in the frozen prefix of segment `name` (its shared-memory object,
// not through any mapping), so tests get a segment of another layout version as a newer or
// older pkgctx would leave it. Ends the test case if the object cannot be written.
void set_layout_version(const std::string& name, std::uint32_t version);

// SegmentOptions with `capacity` package slots and a `settings_bytes` settings arena; the rest
// default.
SegmentOptions segment_options(std::uint32_t capacity, std::uint64_t settings_bytes);

// Store::create(name, opts); ends the test case, naming the error, if it fails.
Store create_store(const std::string& name, const SegmentOptions& opts);

// create_store(), then package `package` at `version` with `settings`; ends the test case if
// either step fails.
Store create_store_with(const std::string& name, const SegmentOptions& opts, const std::string& version,
                        const Settings& settings = Settings(), const std::string& package = "pkg");

}  // namespace pkgctx::test

// Printing for Boost.Test diagnostics.
namespace pkgctx {
inline std::ostream& operator<<(std::ostream& os, Errc e) { return os << errc_name(e); }
inline std::ostream& operator<<(std::ostream& os, const Error& e) { return os << errc_name(e.code) << ": " << e.message; }
inline std::ostream& operator<<(std::ostream& os, Liveness l) { return os << liveness_name(l); }
inline std::ostream& operator<<(std::ostream& os, Cause c) { return os << cause_name(c); }
}  // namespace pkgctx
