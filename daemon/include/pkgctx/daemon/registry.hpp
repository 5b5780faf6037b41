// pkgctx/daemon/registry.hpp — known workers, their leases, and acknowledged drains (DESIGN §2.2).
//
// A worker registers once per attachment (op "register" on a connection it keeps open), passing
// its lease page (pkgctx/lease_page.hpp) as a sealed memfd. The registry maps the page and holds a
// pidfd of the peer (from SO_PEERCRED at register: the registering process is blocked on the
// answer, so the pid is its own). A client is forgotten, and everything it held released at once,
// when its connection reaches EOF or its pidfd becomes readable — never by pid number.
//
// A drain waits, without blocking the event loop, until no live lease holds a cancelled context
// of the package (of its key). It raises the notify word of every page it scans before reading
// the leases (both sides seq_cst), so a task that ends after the scan always sends its byte; the
// registry re-checks that page on the byte (ping), on the client's death, and on every tick
// (which also catches a page that lies or stays busy). The answer is queued for the server.
//
// Waits (lease_page.hpp): the registry alone writes the table's waiter counts. It zeroes them when
// it starts (no client is known yet), raises one per wait record a client publishes and
// acknowledges the record, lowers it when the record is withdrawn, and lowers all of a client's
// when it is removed. Records are re-read on every byte of the client (and when it registers,
// when the raise also wakes the slot: a re-registering worker may sleep on a stale value).
// A record is counted only while the word its token watches still equals the record's snapshot.
// A counted wait whose word moved past it (its token is cancelled) is retired by the registry
// itself: its count goes down and its record says so, and its worker sends no byte to withdraw
// it. That happens right after a write of the loop's own thread or of the etcd follower's that
// woke someone (retire_woken), and on every tick for writers outside the daemon.
#pragma once

#include "pkgctx/daemon/protocol.hpp"
#include "pkgctx/lease_page.hpp"
#include "pkgctx/store.hpp"

#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace pkgctx::daemon {

struct Holder {
  pid_t pid = 0;
  uid_t uid = 0;
  std::string comm;
  std::uint32_t key = 0;
  std::uint64_t generation = 0;  // the lease's root generation
  std::string cause;             // why that context was cancelled
  std::uint64_t age_ms = 0;      // since the task began
};

class Registry {
 public:
  struct Client {
    std::uint64_t conn = 0;
    Peer peer;
    std::string comm;
    std::uint64_t since_realtime_ns = 0;
    int pidfd = -1;
    lease::Page* page = nullptr;
    struct Counted {
      std::uint32_t slot = 0;
      std::uint32_t key = 0;
      std::uint32_t seq = 0;       // the record's sequence this entry is for
      bool retired = false;        // its count was lowered (or never kept): not counted again for `seq`
      std::uint64_t snapshot = 0;  // the record's: its token is cancelled once `key`'s word moves past it
    };
    std::map<std::uint32_t, Counted> waits;  // wait record index → the count it raised
    std::uint32_t live = 0;                  // entries of `waits` not retired
  };
  // One counted wait of a client, as shown by the clients op.
  struct WaitInfo {
    std::string name;  // the package now in the slot ("" if none)
    std::uint32_t key = 0;
  };
  // One active lease of a client, as read now (for the clients op and tests).
  struct LeaseInfo {
    std::string name;  // the package now in the lease's slot ("" if none)
    std::uint32_t key = 0;
    std::uint64_t generation = 0;
    bool cancelled = false;
    std::uint64_t age_ms = 0;
  };

  // Zeroes the store's waiter counts: whatever a previous daemon raised is forgotten (its
  // clients re-register and publish their waits again).
  explicit Registry(Store& store, std::uint32_t max_clients = 4096);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  void set_max_clients(std::uint32_t n) noexcept { max_clients_ = n; }
  std::uint32_t max_clients() const noexcept { return max_clients_; }

  // Registers connection `conn` of `peer` with its page `memfd` (always taken: closed on error).
  // Errors (code, message) for the protocol: bad_request (no descriptor, not a sealed memfd of
  // the page's size, bad magic), too_many_clients, already registered.
  std::optional<std::pair<std::string_view, std::string>> add(std::uint64_t conn, const Peer& peer, int memfd);
  bool registered(std::uint64_t conn) const { return clients_.count(conn) != 0; }
  int pidfd(std::uint64_t conn) const;  // -1 if none
  std::size_t size() const noexcept { return clients_.size(); }
  const std::map<std::uint64_t, Client>& clients() const noexcept { return clients_; }
  std::vector<LeaseInfo> leases(const Client& c) const;
  std::vector<WaitInfo> waits(const Client& c) const;  // the counted ones (retired skipped)
  // Leases on package slot `slot` (any context), for delete's in_flight.
  std::uint64_t leases_on(std::uint32_t slot) const;

  // The client's connection or process ended: its leases are released, drains re-checked.
  void remove(std::uint64_t conn);
  // `bytes` arrived on the registration connection: a notified task ended, or a wait record
  // changed.
  void ping(std::uint64_t conn, std::size_t bytes);
  std::uint64_t pings() const noexcept { return pings_; }  // bytes, since the daemon started

  // The segment's wake-syscall count now (Header::wakes): read it before a write of the loop's
  // thread and pass it to retire_woken() after.
  std::uint64_t wakes() const noexcept;
  // If a write since `wakes_before` woke someone, retires every counted wait whose token is
  // cancelled (its watched word moved past the record's snapshot): lowers its count, stores 0 in
  // its record's `counted` (so its worker sends no byte) and keeps it, uncounted, until the
  // record changes. O(counted waits), nothing when nobody was woken. Not while another writer is
  // inside a write: the next call, or the next tick, does it then.
  void retire_woken(std::uint64_t wakes_before);
  std::uint64_t retired() const noexcept { return retired_; }  // since the daemon started

  // Starts a drain for the answer of connection `conn`. `prefix` is the answer's opening, up to
  // and including its last member (e.g. {"ok":true,"id":1,"name":"x"), without a trailing comma;
  // `finish(drained, holders)` may append more members (delete's) before "drained" and
  // "holders"; `holders` is how many the answer lists (0 when drained).
  // Answers at once (into the ready queue) when nothing holds.
  using Finish = std::function<std::string(bool drained, std::size_t holders)>;
  void drain(std::uint64_t conn, std::string prefix, std::uint32_t slot, std::optional<std::uint32_t> key,
             std::uint64_t timeout_ms, Finish finish = {});
  // A drain the daemon waits on itself (the etcd follower's delete), answering no connection:
  // `holders(list)` when it starts holding and whenever the set of holding workers changes,
  // `done(drained, holders)` once when it ends (holders: those left on a timeout). Both run on
  // the loop's thread, inside registry calls: they must not call back into the registry.
  using Holders = std::function<void(const std::vector<Holder>&)>;
  using Done = std::function<void(bool drained, const std::vector<Holder>& holders)>;
  void drain(std::uint32_t slot, std::uint64_t timeout_ms, Holders holders, Done done);
  // The connection waiting for a drain's answer went away.
  void forget_drains(std::uint64_t conn);
  std::size_t pending_drains() const noexcept { return drains_.size(); }

  // Re-checks every drain and answers those past their deadline (call on each tick and when
  // next_deadline_ns() passes); retires the counted waits whose tokens are cancelled, whoever
  // cancelled them.
  void tick();
  std::uint64_t next_deadline_ns() const noexcept;  // 0: none

  // Answers ready to go: (connection, line ending in '\n').
  std::vector<std::pair<std::uint64_t, std::string>> take_answers() { return std::exchange(ready_, {}); }

 private:
  struct Drain {
    std::uint64_t conn = 0;
    std::string prefix;
    std::uint32_t slot = 0;
    std::optional<std::uint32_t> key;
    std::uint64_t deadline_ns = 0;
    Finish finish;
    Holders on_holders;  // the daemon's own drains (conn 0): instead of an answer line
    Done on_done;
    std::set<std::uint64_t> holding;  // clients holding at the last scan
  };
  // Holders of `d` in client `c` (raising c's notify word first).
  void scan_client(const Client& c, const Drain& d, std::vector<Holder>* out, bool& holds) const;
  bool full_scan(Drain& d, std::vector<Holder>* out);
  std::list<Drain>::iterator start(Drain d, std::uint64_t timeout_ms);
  void report_if_changed(Drain& d, const std::set<std::uint64_t>& before);
  void finish(std::list<Drain>::iterator it, bool drained);
  void recheck(std::uint64_t conn);
  void clear_notify_unused();
  // Re-reads `c`'s wait records: raises, lowers and acknowledges (`wake`: wake raised slots).
  void sync_waits(Client& c, bool wake);
  void drop_waits(Client& c);
  void note_live(const Client& c);  // keeps `waiting_` in step with c.live
  // retire_woken()'s scan, whatever the wake count (`wakes_now`: the count it is done for).
  void retire_cancelled(std::uint64_t wakes_now);

  Store& store_;
  std::uint32_t max_clients_;
  std::map<std::uint64_t, Client> clients_;
  std::set<std::uint64_t> waiting_;  // clients with a live counted wait (retirement's scope)
  std::uint64_t pings_ = 0;
  std::uint64_t retired_ = 0;
  std::vector<std::pair<Client*, std::uint32_t>> retiring_;  // retirement's scratch (kept: no allocation)
  std::uint64_t scanned_wakes_ = ~0ull;  // the wake count of the last complete retirement scan
  std::list<Drain> drains_;
  std::vector<std::pair<std::uint64_t, std::string>> ready_;
};

}  // namespace pkgctx::daemon
