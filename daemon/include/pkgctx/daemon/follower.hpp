// pkgctx/daemon/follower.hpp — pkgctxd following the fleet's desired state in etcd (DESIGN §10).
//
// Keys: PREFIX/packages/NAME holds {"version","settings","settings_version","maintenance",
// "force"} (only "version" required); PREFIX/status/HOST/NAME is this host's report.
//
// Two threads of their own, so no etcd wait ever holds the event loop:
//  - the follower applies the watch of PREFIX/packages/ through the Store (thread-safe: every
//    write takes the segment's robust mutex; the loop's socket writes take the same mutex).
//    Events are applied in revision order; the revision of the last event of a revision is
//    committed with that event's write (Store's follow_revision), so after a crash the segment
//    says exactly which revision it holds and the watch resumes at the next one. Earlier events
//    of a multi-key revision (a txn) are idempotent when replayed (a put of the same value changes
//    nothing, a remove of a removed package is skipped) — except "force", which a replay of a
//    txn cut by a crash may apply twice. With no revision yet, or when etcd compacted the one
//    needed, it lists the prefix and applies the difference (never with "force": nothing that
//    did not change is cancelled), deleting the packages etcd owned and no longer has.
//    A put is Update; a delete is event remove (cancelling the contexts, cause "removed"), then
//    a drain, then Delete (DESIGN §10). A write that woke counted waits tells the loop, which
//    retires them (FollowOptions::woke). The registry's drains live in the event loop, so the
//    follower hands the drain over (FollowOptions::drain, posted to the loop) and waits for its
//    end, at most etcd_drain_ms (then it deletes anyway, logging who still held): while it waits
//    the host status of the package lists the holders. SIGTERM ends the wait at once without the
//    Delete, so the revision stays unapplied and the restarted daemon drains and deletes again
//    (the remove itself is not repeated: the record says it was done). On a re-attached segment
//    a drain in the daemon's first 2 s waits until then, so the workers (retrying every 200 ms)
//    have re-registered.
//    A value that does not parse or that the store refuses is logged and skipped (its revision
//    counts as applied), so one bad key cannot stall the host.
//    A watch silent for etcd_watch_idle_ms has its member probed on a second connection (a
//    linearizable read, same bound): no answer (hung, or cut off from its quorum) → the watch
//    resumes through the next endpoint.
//    The owned set (the packages etcd holds, whose local writes are refused) persists in
//    FollowOptions::owned_file beside the segment, so a daemon restarted while etcd is
//    unreachable still refuses local writes to them, and a full resync deletes only packages etcd
//    owned, never ones created through the socket. It is saved before a put creates a package and
//    after a delete removes one, so the file never misses a package etcd owns.
//  - the reporter keeps a lease (etcd_status_ttl_s) alive and writes the status of each changed
//    package (coalesced, one txn per batch), so a dead host's status expires with its lease; a
//    package whose delete is draining adds "holders" (pid, uid, comm, key, generation, cause,
//    age_ms), reported again whenever the set of holding workers changes.
// etcd unreachable: both retry with backoff (100 ms doubling to 5 s); the daemon meanwhile serves
// the segment as it is, and the follower catches up from its revision when etcd returns.
#pragma once

#include "pkgctx/daemon/registry.hpp"
#include "pkgctx/error.hpp"
#include "pkgctx/store.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace pkgctx::etcd {
class Client;
struct Event;
}  // namespace pkgctx::etcd

namespace pkgctx::daemon {

struct FollowOptions {
  std::vector<std::string> endpoints;
  std::string prefix;               // without trailing '/'
  std::string host;                 // the status keys' HOST
  std::uint32_t status_ttl_s = 10;
  std::uint64_t drain_ms = 30000;   // longest wait for a deleted package's tasks to end
  std::uint64_t watch_idle_ms = 2000;  // a watch silent this long: the member is probed
  std::string owned_file;           // where the owned set persists ("": nowhere)
  // A drain this soon after start() waits until then: the daemon re-attached its segment and
  // the workers have not all re-registered yet (0: a new segment, no one to wait for).
  std::uint64_t reregister_grace_ms = 0;
  // Starts a drain of `name`'s cancelled contexts on the event loop (Registry's own drain); the
  // callbacks run there. Called from the follower thread. Unset: deletes do not wait.
  std::function<void(const std::string& name, std::uint64_t timeout_ms, Registry::Holders, Registry::Done)> drain;
  // A write of the follower thread woke someone (Header::wakes moved past `wakes_before`): the
  // loop retires the counted waits it cancelled (Registry::retire_woken), so their workers send
  // no byte. Called from the follower thread. Unset: the registry's tick retires them.
  std::function<void(std::uint64_t wakes_before)> woke;
};

class EtcdFollower {
 public:
  EtcdFollower(Store& store, FollowOptions options);
  ~EtcdFollower();  // stops and joins
  EtcdFollower(const EtcdFollower&) = delete;
  EtcdFollower& operator=(const EtcdFollower&) = delete;

  // Starts both threads. Errors: io_error (eventfd, thread).
  Result<void> start();
  void stop();

  // Whether etcd holds a key for `name` (as last seen: listed or watched, or as the owned set's
  // file said at start, before etcd answered). Any thread.
  bool owns(std::string_view name) const;

 private:
  void follow_loop();
  void status_loop();
  Result<void> resync(etcd::Client& client);
  Result<void> refresh_owned(etcd::Client& client);
  // false: stopped before the revision (or the resync) was applied in full.
  bool apply_revision(const std::vector<etcd::Event>& events, std::size_t begin, std::size_t end);
  void apply_put(const std::string& name, std::string_view value, std::uint64_t revision, bool allow_force);
  bool apply_delete(const std::string& name, std::uint64_t revision);
  bool drain(const std::string& name);  // false: stopped while waiting
  std::string package_name(std::string_view key) const;  // "" when not a valid package key
  void load_owned();
  void save_owned();  // the follower thread only
  bool pause(std::uint64_t ms) const;  // false when stopping
  void mark(const std::string& name);
  std::uint64_t wakes() const noexcept;  // the segment's wake-syscall count now
  void woke_since(std::uint64_t wakes_before);  // after a write: FollowOptions::woke if it woke

  Store& store_;
  FollowOptions o_;
  std::string packages_prefix_, status_prefix_;
  int stop_fd_ = -1;
  std::chrono::steady_clock::time_point started_;
  std::thread follower_, reporter_;
  mutable std::mutex mu_;  // guards owned_, dirty_, draining_, drain_done_, stopping_
  std::condition_variable changed_;  // dirty_ or stopping_ (the reporter waits on it)
  std::condition_variable drained_;  // drain_done_ or stopping_ (the follower waits on it)
  std::map<std::string, std::vector<Holder>, std::less<>> draining_;  // pending drains' holders
  std::uint64_t drain_seq_ = 0, drain_done_ = 0;
  std::set<std::string, std::less<>> owned_;
  std::set<std::string> dirty_;
  bool stopping_ = false;
};

}  // namespace pkgctx::daemon
