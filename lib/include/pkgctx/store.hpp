// pkgctx/store.hpp — the package store (DESIGN.md §2) on a shared segment: the write side.
//
// Every write takes the segment's robust process-shared mutex, so any number of Store objects
// in any number of processes may write the same segment. A writer killed inside a write leaves
// the mutex "owner died"; the next writer repairs the table from the crash journal (undoing an
// uncommitted change, finishing a committed one) and rebuilds the derived structures (name
// index, free list, settings bitmap) before going on.
//
// Reads (need_update, pending_settings) take no lock: they go through a View.
// Input is validated before anything is touched; a refused write changes nothing.
#pragma once

#include "pkgctx/error.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace pkgctx {

enum class Change { none, created, version, settings };
std::string_view change_name(Change c) noexcept;  // "none", "created", "version", "settings"

struct UpdateResult {
  std::optional<core::Token> token;  // a new root token, or none (settings-only or no change)
  Change change = Change::none;
};

// The optional arguments of Update (DESIGN §2.1); the defaults are the v1 behaviour.
struct UpdateOptions {
  std::uint64_t settings_version = 0;  // schema version of the settings, stored beside them
  std::string_view maintenance;        // pending mode, ≤ 64 bytes of [A-Za-z0-9._-]; "" = managed
  bool force = false;                  // the same version handled as a version change
  std::string_view cause;              // "" or [a-z][a-z0-9_]{0,31}: what cancelled tokens report
  // Nonzero: the cluster-store revision this write applies (DESIGN §10). It becomes the
  // segment's follow_revision with the write's commit (or alone, when nothing changed), so
  // after a crash the segment holds both or neither.
  std::uint64_t follow_revision = 0;
};

class Store {
 public:
  // Creates a new segment and owns it (errors as Segment::create).
  static Result<Store> create(const std::string& name, const SegmentOptions& opts = {});
  // Attaches read-write to an existing segment in `dir` ("": runtime_dir()) (errors as
  // Segment::open).
  static Result<Store> open(const std::string& name, const std::string& dir = {});
  explicit Store(Segment segment);

  // Update(name, version, settings). A change of settings_version or maintenance alone is a
  // settings-only change. Errors: invalid_name, invalid_version, invalid_maintenance,
  // invalid_cause, too_many_causes, table_full, settings_full, settings_too_large.
  Result<UpdateResult> update(std::string_view name, std::string_view version, const Settings& settings,
                              const UpdateOptions& opts = {});
  // UpdateSettings(name, settings, settings_version): stores settings for a tracked package
  // (present with a version) without touching its version or any token. True iff the checksum
  // or settings_version changed; false for an absent or removed package (nothing changed) or no
  // change.
  // Errors: invalid_name, settings_full, settings_too_large.
  Result<bool> update_settings(std::string_view name, const Settings& settings, std::uint64_t settings_version = 0);
  // HandleEvent(event, name): no token when the package is absent. `cause` ("" = built-in) names
  // what the tokens this call cancels report. Errors: invalid_event, invalid_name, invalid_cause,
  // too_many_causes.
  Result<std::optional<core::Token>> handle_event(int event, std::string_view name, std::string_view cause = {});
  // Delete(name). A nonzero `follow_revision` is committed with it (or stored alone when there
  // is nothing to delete), as UpdateOptions::follow_revision. Errors: invalid_name.
  Result<bool> erase(std::string_view name, std::uint64_t follow_revision = 0);
  // The followed cluster store's last applied revision (0: none): stored under the mutex by a
  // write that applied no change (a revision that touched nothing here, or a full resync).
  void set_follow_revision(std::uint64_t revision);
  std::uint64_t follow_revision() const noexcept;
  // NeedUpdate(name, version, checksum[, maintenance]): maintenance compared only when given.
  // Errors: invalid_name, invalid_maintenance.
  Result<bool> need_update(std::string_view name, std::string_view version, std::uint64_t checksum,
                           std::optional<std::string_view> maintenance = std::nullopt) const;
  // GetPendingSettings(name) (settings_version and maintenance: view().read(name)).
  // Errors: invalid_name, no_such_package, corrupt.
  Result<Settings> pending_settings(std::string_view name) const;

  const Segment& segment() const noexcept { return seg_; }
  const View& view() const noexcept { return view_; }
  const Limits& limits() const noexcept { return limits_; }

  // Marks the segment retired: every token is cancelled with cause segment_retired and every
  // waiter woken. The segment is unlinked.
  void retire();

  // If a writer died holding the mutex, repairs the table now (the daemon calls this on every
  // heartbeat so readers never wait long on a slot left mid-write). Never blocks on a live
  // writer. Returns true if a repair was made.
  bool repair_if_needed();

 private:
  Segment seg_;
  View view_;
  Limits limits_;
};

#if defined(PKGCTX_FAULT_INJECTION)
// Test-only fault injection, present only in builds configured with PKGCTX_FAULT_INJECTION=ON
// (the test, sanitizer and fuzz builds; release builds have no crash point at all). Arms the
// crash point <op>:<step>: the writer SIGKILLs itself there, inside the critical section. Ops:
// "write" (the steps every write passes through, store.cpp's WriteStep) and "repair" (the crash
// repair a writer runs after finding the previous owner dead). Op "" disarms.
void set_crash_point(std::string_view op, int step) noexcept;
// The number of steps of an op, so tests can try every one.
int fault_steps(std::string_view op) noexcept;
// The first "write" step at which the write is committed: a writer killed there or later
// leaves the state after the write.
int fault_first_committed_step() noexcept;
#endif

}  // namespace pkgctx
