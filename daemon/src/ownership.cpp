#include "pkgctx/daemon/ownership.hpp"

#include "pkgctx/daemon/log.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>
#include <thread>
#include <unistd.h>

namespace pkgctx::daemon {

SegmentLock::~SegmentLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

Result<SegmentLock> SegmentLock::acquire(const std::string& segment, const std::string& dir) {
  const std::string object = segment + ".lock";
  const std::string path = object_path(object, dir);
  // 0644: another user's daemon can still open it read-only, take the lock and be refused
  // with a clear message instead of a permission error.
  auto opened = open_trusted(dir, object, O_RDWR | O_CREAT, 0644);
  if (!opened && opened.error().code == Errc::untrusted_segment) {
    // Only the directory's owner could have put it there (open_trusted checked the directory):
    // replace it without writing through it. A symlink is unlinked, never followed.
    log::warning("Replacing lock " + path + ": " + opened.error().message);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      return make_error(Errc::untrusted_segment, opened.error().message + "; cannot remove it: " + std::strerror(errno));
    opened = open_trusted(dir, object, O_RDWR | O_CREAT | O_EXCL, 0644);
  }
  if (!opened && opened.error().code == Errc::permission_denied) opened = open_trusted(dir, object, O_RDONLY);
  if (!opened) return make_error(opened.error().code, "cannot open lock: " + opened.error().message);
  const int fd = *opened;
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    const int err = errno;
    std::string holder;
    if (err == EWOULDBLOCK) {
      char buf[32] = {};
      const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      if (n > 0) {
        holder = std::string(buf, static_cast<std::size_t>(n));
        while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
      }
    }
    ::close(fd);
    if (err == EWOULDBLOCK)
      return make_error(Errc::busy, "already served by another pkgctxd" +
                                        (holder.empty() ? std::string() : " (pid " + holder + ")") + "; lock " + path);
    return make_error(Errc::io_error, "cannot lock " + path + ": " + std::strerror(err));
  }
  // Best effort: the holder's pid, for the next daemon's refusal message.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    [[maybe_unused]] const ssize_t n = ::pwrite(fd, pid.data(), pid.size(), 0);
  }
  return SegmentLock(fd, path);
}

std::string_view takeover_name(Takeover t) noexcept {
  switch (t) {
    case Takeover::created: return "created";
    case Takeover::reattached: return "reattached";
    case Takeover::replaced: return "replaced";
  }
  return "unknown";
}

namespace {

Result<OwnedSegment> create(const std::string& name, const SegmentOptions& opts, Takeover how,
                            std::uint64_t predecessor = 0) {
  SegmentOptions o = opts;
  o.predecessor_epoch = predecessor;
  auto store = Store::create(name, o);
  if (!store) return store.error();
  log::info("Created segment " + name + ": " + std::to_string(opts.capacity) + " package slots, " +
            std::to_string(store->segment().info().settings_bytes) + " settings bytes");
  OwnedSegment owned;
  owned.store.emplace(std::move(*store));
  owned.how = how;
  return owned;
}

}  // namespace

Result<OwnedSegment> take_segment(const std::string& name, const SegmentOptions& opts) {
  using namespace std::chrono_literals;
  const auto not_ready_deadline = std::chrono::steady_clock::now() + 200ms;
  for (int attempt = 0;; ++attempt) {
    auto store = Store::open(name, opts.dir);
    if (store) {
      const SegmentInfo info = store->segment().info();
      if (info.capacity != opts.capacity || info.settings_bytes < opts.settings_bytes)
        log::notice("Segment " + name + " keeps the size it was created with (" + std::to_string(info.capacity) +
                    " slots, " + std::to_string(info.settings_bytes) +
                    " settings bytes); the configured size applies when it is next created");
      if (store->repair_if_needed()) log::notice("Repaired segment " + name + " after a writer died mid-write");
      log::info("Re-attached to segment " + name + ": " + std::to_string(info.used) + " packages, nothing cancelled");
      OwnedSegment owned;
      owned.store.emplace(std::move(*store));
      owned.how = Takeover::reattached;
      return owned;
    }
    const Error& e = store.error();
    if (attempt >= 3) return e;  // the name keeps changing under us: someone else is writing it
    switch (e.code) {
      case Errc::untrusted_segment: {
        // The directory is trusted (the lock was taken in it), so an untrusted table or a symlink
        // there was left by its owner or root: replace it, never writing through it.
        log::warning("Replacing segment " + name + " without using it: " + e.message);
        Segment::remove(name, opts.dir);
        return create(name, opts, Takeover::replaced);
      }
      case Errc::segment_missing: {
        auto created = create(name, opts, Takeover::created);
        if (!created && created.error().code == Errc::segment_exists) continue;  // appeared meanwhile
        return created;
      }
      case Errc::segment_version:
      case Errc::segment_foreign:
      case Errc::segment_truncated: {
        auto retired = Segment::retire(name, opts.dir);
        if (retired) {
          log::notice("Retired incompatible segment " + name + " (" + e.message +
                      "); its tokens report segment_retired");
          return create(name, opts, Takeover::replaced, *retired);
        }
        if (retired.error().code == Errc::segment_missing) continue;
        if (retired.error().code == Errc::segment_foreign || retired.error().code == Errc::untrusted_segment) {
          // Not a pkgctx segment at all, too damaged to retire, or not to be written: nothing can
          // be attached to it, and this daemon owns the name.
          log::warning("Removing " + object_path(name, opts.dir) + ": " + retired.error().message);
          Segment::remove(name, opts.dir);
          return create(name, opts, Takeover::replaced);
        }
        return retired.error();
      }
      case Errc::segment_not_ready:
        // A creator is writing it, or died doing so. Holding the lock, no daemon is; give an
        // embedded creator a moment, then replace it.
        if (std::chrono::steady_clock::now() < not_ready_deadline) {
          std::this_thread::sleep_for(10ms);
          --attempt;
          continue;
        }
        log::notice("Replacing segment " + name + ", left half-created by a creator that died (" + e.message + ")");
        Segment::remove(name, opts.dir);
        return create(name, opts, Takeover::replaced);
      case Errc::segment_retired:
        log::notice("Replacing segment " + name + ", retired but not yet removed");
        Segment::remove(name, opts.dir);
        return create(name, opts, Takeover::replaced);
      default:
        return e;
    }
  }
}

}  // namespace pkgctx::daemon
