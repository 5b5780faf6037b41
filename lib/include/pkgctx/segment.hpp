// pkgctx/segment.hpp — creating, opening, retiring and removing a pkgctx segment.
//
// A `Segment` is a cheap, copyable handle on one mapping of the table.
// Tokens keep the mapping alive, so a token taken before the segment was retired and unlinked
// still reads valid memory (and reports `segment_retired`).
//
// Process rules: a mapping is not inherited usefully across fork() by writers (the child must not
// write through a parent's Store); readers may keep using it. Opening validates everything it
// will later trust: magic, layout version, ABI fingerprint, sizes and every region's bounds.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/layout.hpp"
#include "pkgctx/settings.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>

namespace pkgctx {

namespace detail {
struct Mapping;
}

// Where segments live (DESIGN §4.1): a directory only its owner may write. Every object in it
// (the table "<name>", the daemon's "<name>.lock") is opened without following a symlink and
// checked on the descriptor: a regular file owned by the directory's owner and not writable by
// group or others. Readers thus learn whom to
// trust from the directory, never from the object.
inline constexpr const char* kDefaultRuntimeDir = "/run/pkgctx";
// $PKGCTX_RUNTIME_DIR if set and non-empty, else kDefaultRuntimeDir.
std::string runtime_dir();
// `dir` (runtime_dir() if empty) + "/" + `object`.
std::string object_path(const std::string& object, const std::string& dir = {});
// Checks that `dir` (runtime_dir() if empty) is a directory that no one but its owner may write.
// Returns its owner. Errors: segment_missing (no such directory), untrusted_segment, io_error.
Result<uid_t> check_runtime_dir(const std::string& dir = {});
// Opens `object` in `dir` as described above, with open(2) `flags` (O_NOFOLLOW and O_CLOEXEC are
// added; with O_CREAT, `create_mode`). Returns the descriptor (the caller closes it). Errors: segment_missing,
// untrusted_segment (naming owner and mode), permission_denied, segment_exists (O_EXCL), io_error.
Result<int> open_trusted(const std::string& dir, const std::string& object, int flags, mode_t create_mode = 0);

struct SegmentOptions {
  std::uint32_t capacity = 4096;                    // package slots
  std::uint64_t settings_bytes = 16ull << 20;       // settings arena (rounded up to 64 bytes)
  Limits limits;                                    // enforced by writers; stored in the header
  mode_t mode = 0640;                               // table (no group/other write: refused)
  gid_t group = static_cast<gid_t>(-1);             // chown the objects to this group (-1: keep)
  std::string dir;                                  // runtime directory ("": runtime_dir())
  std::uint64_t predecessor_epoch = 0;              // the retired segment this one replaces (0: none)
};

enum class Access { read_only, read_write };

// A summary of the header for tools (pkgctl dump) and liveness checks.
struct SegmentInfo {
  std::string name;
  std::uint32_t layout_version = 0;
  std::uint64_t abi_fingerprint = 0;
  std::uint64_t epoch = 0;
  std::uint64_t total_bytes = 0;
  layout::State state = layout::State::kInitialising;
  std::uint32_t capacity = 0;
  std::uint32_t used = 0;
  std::uint64_t settings_bytes = 0;
  std::uint64_t settings_used = 0;
  std::uint64_t commits = 0;
  std::uint64_t repairs = 0;
  std::uint64_t wakes = 0;  // futex-wake syscalls writers made (a counted waiter on the slot)
  std::uint32_t max_name = 0, max_version = 0;
  std::uint64_t max_settings = 0;
  std::uint64_t created_realtime_ns = 0;
  std::uint64_t follow_revision = 0;  // the followed cluster store's applied revision (0: none)
  // Daemon liveness.
  std::int32_t daemon_pid = 0;
  layout::DaemonState daemon_state = layout::DaemonState::kNone;
  std::uint64_t daemon_start_realtime_ns = 0;
  std::uint64_t heartbeat_mono_ns = 0;
  std::uint64_t heartbeat_interval_ns = 0;
};

Liveness liveness(const SegmentInfo& info) noexcept;  // uses CLOCK_MONOTONIC now

class Segment {
 public:
  // Creates "<dir>/<name>" (dir: opts.dir). Errors: segment_exists,
  // permission_denied, untrusted_segment, io_error, invalid_name (validate_segment_name).
  static Result<Segment> create(const std::string& name, const SegmentOptions& opts = {});
  // Opens and validates an existing segment in `dir` ("": runtime_dir()). Errors:
  // segment_missing, segment_not_ready, segment_foreign, segment_version, segment_truncated,
  // segment_retired, permission_denied, untrusted_segment.
  static Result<Segment> open(const std::string& name, Access access, const std::string& dir = {});
  // Removes the table (and a v2 waiters board left over; mappings stay valid; a symlink is
  // removed, never followed). Missing objects are not an error.
  static void remove(const std::string& name, const std::string& dir = {}) noexcept;
  // Marks the existing segment "<dir>/<name>" retired, whatever its layout version, using only
  // the frozen prefix: bumps the root generations and wake word of every slot whose words were
  // ever written (holes of a sparse object are skipped: nothing there was ever watched, and
  // writing them would allocate every page) and wakes all waiters, then unlinks it. Returns the
  // retired segment's epoch. Errors: segment_missing, segment_foreign, permission_denied,
  // untrusted_segment (nothing written: the caller may unlink it instead).
  static Result<std::uint64_t> retire(const std::string& name, const std::string& dir = {});
  // Same as retire() for a segment this process has mapped read-write.
  void retire_mapped() const;

  Segment() = default;
  bool valid() const noexcept { return map_ != nullptr; }
  const std::string& name() const noexcept;
  bool writable() const noexcept;
  SegmentInfo info() const;

  // Raw access for the store, the SDK and tools. Pointers stay valid while any handle or token
  // of this mapping lives.
  layout::Header& header() const noexcept;
  layout::Slot& slot(std::uint32_t i) const noexcept;
  std::atomic<std::uint32_t>* index() const noexcept;  // Header::index_entries entries
  std::uint32_t* freelist() const noexcept;
  std::atomic<std::uint64_t>* bitmap() const noexcept;
  std::atomic<std::uint64_t>* arena() const noexcept;  // arena_bytes / 8 words
  // The slots' waiter counts (layout.hpp): the daemon's registry raises and lowers them; writers
  // read them to decide on a futex wake. Read-only (a write faults) in a read-only mapping.
  std::atomic<std::uint32_t>* waiter_counts() const noexcept;
  std::uint32_t capacity() const noexcept;
  const std::shared_ptr<detail::Mapping>& mapping() const noexcept { return map_; }

  // Daemon liveness fields (the daemon's own calls).
  void mark_daemon_running(pid_t pid, std::uint64_t heartbeat_interval_ns) const noexcept;
  void heartbeat() const noexcept;
  void mark_daemon_stopped() const noexcept;

 private:
  explicit Segment(std::shared_ptr<detail::Mapping> m) : map_(std::move(m)) {}
  std::shared_ptr<detail::Mapping> map_;
};

// The hash used for names in the index.
std::uint64_t name_hash(std::string_view name) noexcept;

// Monotonic and realtime clocks in nanoseconds.
std::uint64_t mono_now_ns() noexcept;
std::uint64_t realtime_now_ns() noexcept;

}  // namespace pkgctx
