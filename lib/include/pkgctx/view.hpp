// pkgctx/view.hpp — lock-free reads of the package table (workers, pkgctl, the store's reads).
//
// A View never takes the writers' mutex and works on a read-only mapping. Multi-field reads (a
// name lookup, a version, settings bytes) are validated by the slot's sequence counter and
// retried, so a result is always one committed state of the package, never a mix.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/token.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pkgctx {

struct PackageRecord {
  std::string name;
  std::string version;            // "" = removed
  std::string settings;           // canonical JSON (only when asked for)
  std::uint64_t checksum = 0;     // XXH3-64 of the canonical settings
  std::uint64_t settings_size = 0;
  std::uint64_t settings_version = 0;  // DESIGN §2.1
  std::string maintenance;              // "" = managed normally
  std::uint32_t slot = 0;
  // The package's own history: generations counted from its creation (a slot's words outlive
  // their tenants, old tokens need them), so a new package starts at 0 whatever the slot held.
  std::uint64_t root_generation = 0;
  // Key k's generation at [k-2]: moves with every root bump too (it is what a child token
  // watches), so child_generations[k-2] - root_generation = the package's key-k events.
  std::array<std::uint64_t, layout::kChildKeys> child_generations{};
  Cause last_cause = Cause::kNone;  // cause of the latest root generation of this package
  std::string last_cause_name;      // its text ("none", a built-in or a caller-named cause)
};

class View {
 public:
  View() = default;
  explicit View(Segment segment) : seg_(std::move(segment)) {}
  // Opens "<dir>/<name>" read-only, dir "" meaning runtime_dir() (errors as Segment::open).
  static Result<View> open(const std::string& name, const std::string& dir = {});

  const Segment& segment() const noexcept { return seg_; }

  // Slot of `name`. Errors: invalid_name, no_such_package.
  Result<std::uint32_t> find(std::string_view name) const;
  // One consistent snapshot of a package. Every field read is validated first (DESIGN §4.1):
  // name and version against their character sets and limits, sizes and offsets against the
  // mapping, maintenance and cause names against theirs, and, with settings, the bytes as
  // canonical JSON matching the stored checksum. Errors: invalid_name, no_such_package, corrupt.
  Result<PackageRecord> read(std::string_view name, bool with_settings = true) const;
  // The token of the package's current context for `event` (0/1: root; 2..7: that child key).
  // Errors: invalid_event, invalid_name, no_such_package.
  Result<core::Token> token(std::string_view name, int event) const;
  // DESIGN.md §2 NeedUpdate; maintenance compared only when given (§2.1). Errors: invalid_name,
  // corrupt.
  Result<bool> need_update(std::string_view name, std::string_view version, std::uint64_t checksum,
                           std::optional<std::string_view> maintenance = std::nullopt) const;
  // The text of a cause read from this segment (a caller-named one through the segment's cause
  // table). Errors: corrupt (index past the table, or a stored name that is not a cause name).
  Result<std::string> cause_text(Cause c) const;
  // Every package, in slot order (validated as read() does). Errors: corrupt.
  Result<std::vector<PackageRecord>> list(bool with_settings = false) const;

  // Reads slot `slot`: true if it holds a package, false if it is free (or kept changing).
  // Errors: corrupt (a record that fails validation; the message names the slot).
  Result<bool> read_slot(std::uint32_t slot, PackageRecord& out, bool with_settings) const;

  // Drops this process's mappings of the slot table's pages (madvise MADV_DONTNEED on the shared
  // mapping): the pages stay in the segment and the next read maps them again (a minor fault
  // each). A scan of a large table calls it now and then so its resident size stays bounded by
  // what it keeps, not by the table (100k slots are ~60 MB). Nothing read or written changes.
  void release_slot_pages() const noexcept;

 private:
  Segment seg_;
};

}  // namespace pkgctx
