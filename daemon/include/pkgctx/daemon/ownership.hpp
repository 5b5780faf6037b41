// pkgctx/daemon/ownership.hpp — one daemon per segment, and taking the segment over.
//
// The owner holds an exclusive flock(2) on "<runtime dir>/<segment>.lock" (opened as every
// segment object is: no symlink, owner and mode checked on the descriptor; an untrusted one is
// unlinked and recreated, never written). The kernel drops it when the process dies however it dies, so a
// crashed daemon never blocks its successor, and no one else is creating or replacing the
// segment while the lock is held. The lock file is never unlinked: unlinking would let a
// second daemon lock a fresh inode while the first still holds the old one.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/store.hpp"

#include <optional>
#include <string>

namespace pkgctx::daemon {

class SegmentLock {
 public:
  // Takes the lock without blocking and records this pid in the file.
  // Errors: busy ("segment X is already served by pid N"), permission_denied, io_error.
  // Errors also: untrusted_segment (the runtime directory is writable by others).
  static Result<SegmentLock> acquire(const std::string& segment, const std::string& dir);

  SegmentLock(SegmentLock&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  SegmentLock& operator=(SegmentLock&&) = delete;
  SegmentLock(const SegmentLock&) = delete;
  ~SegmentLock();
  const std::string& path() const noexcept { return path_; }  // "<runtime dir>/<segment>.lock"

 private:
  SegmentLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_ = -1;
  std::string path_;
};

enum class Takeover {
  created,     // there was no segment
  reattached,  // a compatible segment: attached as is, nothing cancelled
  replaced,    // an incompatible, half-created or retired one was retired/removed, a new one made
};
std::string_view takeover_name(Takeover t) noexcept;

struct OwnedSegment {
  std::optional<Store> store;
  Takeover how = Takeover::created;
};

// With the lock held: re-attaches to a compatible segment without cancelling anything, or
// creates one with `opts`. An incompatible segment (another layout version or ABI, or not a
// pkgctx segment at all) is retired — its waiters wake with segment_retired — and replaced; so is
// a segment left "being created" by a creator that died. Logs what it did.
// An untrusted object at the name (another owner, writable by others, a symlink) is unlinked
// and replaced without being written. Everything happens in opts.dir.
// Errors: permission_denied, io_error, segment_exists (created meanwhile by a non-daemon writer).
Result<OwnedSegment> take_segment(const std::string& name, const SegmentOptions& opts);

}  // namespace pkgctx::daemon
