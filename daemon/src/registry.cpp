#include "pkgctx/daemon/registry.hpp"

#include "pkgctx/futex.hpp"
#include "pkgctx/json_writer.hpp"
#include "pkgctx/daemon/log.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <fstream>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace pkgctx::daemon {

namespace {

using pkgctx::JsonWriter;

std::uint64_t clock_ns(clockid_t id) {
  timespec ts{};
  ::clock_gettime(id, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}
// The clock the SDK stamps leases with.
std::uint64_t coarse_ns() { return clock_ns(CLOCK_MONOTONIC_COARSE); }
std::uint64_t mono_ns() { return clock_ns(CLOCK_MONOTONIC); }

std::string comm_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string s;
  std::getline(f, s);
  if (s.size() > 64) s.resize(64);
  return s;
}

constexpr unsigned kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

}  // namespace

Registry::Registry(Store& store, std::uint32_t max_clients) : store_(store), max_clients_(max_clients) {
  const Segment& seg = store_.segment();
  for (std::uint32_t i = 0; i < seg.capacity(); ++i) seg.waiter_counts()[i].store(0, std::memory_order_seq_cst);
}

Registry::~Registry() {
  for (auto& [conn, c] : clients_) {
    if (c.pidfd >= 0) ::close(c.pidfd);
    drop_waits(c);
    ::munmap(c.page, sizeof(lease::Page));
  }
}

std::optional<std::pair<std::string_view, std::string>> Registry::add(std::uint64_t conn, const Peer& peer, int memfd) {
  const auto refuse = [&](std::string_view code, std::string why) -> std::optional<std::pair<std::string_view, std::string>> {
    if (memfd >= 0) ::close(memfd);
    return std::pair<std::string_view, std::string>{code, std::move(why)};
  };
  if (clients_.count(conn)) return refuse(code::kBadRequest, "this connection is already registered");
  if (memfd < 0)
    return refuse(code::kBadRequest, "\"register\" needs the lease page passed with the request (SCM_RIGHTS)");
  if (clients_.size() >= max_clients_)
    return refuse(code::kTooManyClients, "too many registered workers: the daemon knows at most " +
                                             std::to_string(max_clients_) + " at once (max_registered)");
  // Sealed against shrinking (else a mapped read could SIGBUS), growing and unsealing.
  const int seals = ::fcntl(memfd, F_GET_SEALS);
  if (seals < 0 || (static_cast<unsigned>(seals) & kRequiredSeals) != kRequiredSeals)
    return refuse(code::kBadRequest, "the lease page must be a memfd sealed with F_SEAL_SHRINK, F_SEAL_GROW and F_SEAL_SEAL");
  struct stat st {};
  if (::fstat(memfd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::size_t>(st.st_size) != sizeof(lease::Page))
    return refuse(code::kBadRequest, "the lease page must be exactly " + std::to_string(sizeof(lease::Page)) + " bytes");
  void* p = ::mmap(nullptr, sizeof(lease::Page), PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (p == MAP_FAILED) return refuse(code::kBadRequest, std::string("cannot map the lease page: ") + std::strerror(errno));
  ::close(memfd);
  auto* page = static_cast<lease::Page*>(p);
  if (page->header.magic != lease::kMagic || page->header.leases != lease::kLeases) {
    ::munmap(p, sizeof(lease::Page));
    return std::pair<std::string_view, std::string>{code::kBadRequest, "the lease page has another layout (magic or size)"};
  }
  Client c;
  c.conn = conn;
  c.peer = peer;
  c.comm = comm_of(peer.pid);
  c.since_realtime_ns = clock_ns(CLOCK_REALTIME);
  c.pidfd = static_cast<int>(::syscall(SYS_pidfd_open, peer.pid, 0));
  c.page = page;
  // A drain waiting now must see this page's leases (a worker re-registering after a restart).
  page->header.notify.store(drains_.empty() ? 0 : 1, std::memory_order_seq_cst);
  auto& added = clients_.emplace(conn, std::move(c)).first->second;
  sync_waits(added, true);
  log::debug("Registered worker " + peer.describe());
  return std::nullopt;
}

int Registry::pidfd(std::uint64_t conn) const {
  auto it = clients_.find(conn);
  return it == clients_.end() ? -1 : it->second.pidfd;
}

void Registry::remove(std::uint64_t conn) {
  forget_drains(conn);
  auto it = clients_.find(conn);
  if (it == clients_.end()) return;
  if (it->second.pidfd >= 0) ::close(it->second.pidfd);
  drop_waits(it->second);
  ::munmap(it->second.page, sizeof(lease::Page));
  log::debug("Forgot worker " + it->second.peer.describe());
  clients_.erase(it);
  recheck(conn);
}

void Registry::ping(std::uint64_t conn, std::size_t bytes) {
  pings_ += bytes;
  if (auto it = clients_.find(conn); it != clients_.end()) sync_waits(it->second, false);
  recheck(conn);
}

void Registry::sync_waits(Client& c, bool wake) {
  lease::Page& page = *c.page;
  const Segment& seg = store_.segment();
  std::atomic<std::uint32_t>* counts = seg.waiter_counts();
  const std::uint64_t epoch = seg.header().prefix.epoch;
  const std::uint32_t used = std::min(page.header.waits_used.load(std::memory_order_acquire), lease::kWaits);
  // A retired entry's count went down when it was retired.
  const auto forget = [&](std::map<std::uint32_t, Client::Counted>::iterator it) {
    if (!it->second.retired) {
      counts[it->second.slot].fetch_sub(1, std::memory_order_seq_cst);
      --c.live;
    }
    return c.waits.erase(it);
  };
  for (auto it = c.waits.lower_bound(used); it != c.waits.end();) it = forget(it);
  for (std::uint32_t i = 0; i < used; ++i) {
    lease::WaitCopy w;
    // A record that kept changing keeps what it had: its next byte (the writer sends one after
    // every change) brings it back here.
    if (!lease::read_wait(page, i, w)) continue;
    auto it = c.waits.find(i);
    // A wait ended by its token's cancellation, not withdrawn yet: it stays uncounted
    // (acknowledged already).
    if (it != c.waits.end() && it->second.retired && w.active && w.seq == it->second.seq) continue;
    const bool valid = w.active && w.epoch == epoch && w.slot < seg.capacity() && w.key <= layout::kLastChildKey;
    if (it != c.waits.end() && (!valid || it->second.slot != w.slot || it->second.retired)) {
      forget(it);
      it = c.waits.end();
    }
    if (valid && (it == c.waits.end() || it->second.seq != w.seq)) {
      const bool fresh = it == c.waits.end();
      if (fresh) {
        // Raised (seq_cst) before the acknowledgement below: any write after the waiter's
        // re-check sees it and wakes.
        counts[w.slot].fetch_add(1, std::memory_order_seq_cst);
        ++c.live;
        it = c.waits.emplace(i, Client::Counted{}).first;
      }
      it->second = Client::Counted{w.slot, w.key, w.seq, false, w.snapshot};  // published again: same count
      // Compared after the raise (both seq_cst, as a writer's bump of the wake word and its load
      // of the count): a cancellation this load misses finds the count raised and wakes. One it
      // sees means the record's token is cancelled already: acknowledged uncounted, its worker
      // returns at once and withdraws it without a byte (it is not asleep on this count: it
      // waits for this acknowledgement first).
      if (layout::watched_word(seg.slot(w.slot).gens, w.key).load(std::memory_order_seq_cst) != w.snapshot) {
        counts[w.slot].fetch_sub(1, std::memory_order_seq_cst);
        --c.live;
        it->second.retired = true;
      } else if (fresh && wake) {
        futex::wake(&seg.slot(w.slot).gens.wake);
      }
    }
    const bool counted = it != c.waits.end() && !it->second.retired;
    lease::Wait& rec = page.wait[i];
    if (w.active && rec.ack.load(std::memory_order_relaxed) != w.seq) {
      rec.counted.store(counted ? 1 : 0, std::memory_order_relaxed);
      rec.ack.store(w.seq, std::memory_order_seq_cst);
      futex::wake(&rec.ack);
    } else if (counted && rec.counted.load(std::memory_order_relaxed) == 0) {
      // Acknowledged uncounted already (by a previous daemon, which may have retired it): its
      // worker would withdraw it without a byte. Say it is counted, then look again (both
      // seq_cst, as the withdrawal's store and its load of `counted`): a withdrawal that missed
      // this store is seen here, and its count goes at once.
      rec.counted.store(1, std::memory_order_seq_cst);
      if (rec.seq.load(std::memory_order_seq_cst) != w.seq) forget(it);
    }
  }
  note_live(c);
}

void Registry::drop_waits(Client& c) {
  std::atomic<std::uint32_t>* counts = store_.segment().waiter_counts();
  for (const auto& [i, w] : c.waits)
    if (!w.retired) counts[w.slot].fetch_sub(1, std::memory_order_seq_cst);
  c.waits.clear();
  c.live = 0;
  note_live(c);
}

void Registry::note_live(const Client& c) {
  if (c.live != 0)
    waiting_.insert(c.conn);
  else
    waiting_.erase(c.conn);
}

std::uint64_t Registry::wakes() const noexcept {
  return store_.segment().header().wakes.load(std::memory_order_relaxed);
}

void Registry::retire_woken(std::uint64_t wakes_before) {
  const std::uint64_t now = wakes();
  if (now == wakes_before || now == scanned_wakes_) return;
  retire_cancelled(now);
}

void Registry::retire_cancelled(std::uint64_t wakes_now) {
  if (waiting_.empty()) return;
  const Segment& seg = store_.segment();
  retiring_.clear();
  for (const std::uint64_t conn : waiting_) {
    Client& c = clients_.at(conn);
    for (auto& [i, w] : c.waits) {
      // Generations only grow: a word past the record's snapshot means its token is cancelled.
      if (!w.retired && layout::watched_word(seg.slot(w.slot).gens, w.key).load(std::memory_order_acquire) != w.snapshot)
        retiring_.push_back({&c, i});
    }
  }
  if (retiring_.empty()) {
    scanned_wakes_ = wakes_now;
    return;
  }
  // Another writer (the etcd follower's thread, another process with the store) may have moved a
  // word and not yet read the count to decide its wake: lowering it now could cost that sleeper
  // its wake-up. The journal is idle only after the wake decision of every write whose move was
  // seen above (acquire loads of the words, then of the state); otherwise a later pass does it.
  if (seg.header().journal.state.load(std::memory_order_acquire) != static_cast<std::uint32_t>(layout::JournalState::kIdle))
    return;
  std::atomic<std::uint32_t>* counts = seg.waiter_counts();
  for (const auto& [c, i] : retiring_) {
    Client::Counted& w = c->waits.at(i);
    counts[w.slot].fetch_sub(1, std::memory_order_seq_cst);
    // After the count went down (seq_cst, as the worker's withdrawal and its load of this): a
    // worker that reads 0 for its acknowledged record owes the daemon no byte.
    c->page->wait[i].counted.store(0, std::memory_order_seq_cst);
    w.retired = true;
    --c->live;
    ++retired_;
    note_live(*c);
  }
  scanned_wakes_ = wakes_now;
}

std::vector<Registry::WaitInfo> Registry::waits(const Client& c) const {
  std::vector<WaitInfo> out;
  for (const auto& [i, w] : c.waits) {
    if (w.retired) continue;
    WaitInfo info;
    PackageRecord rec;
    if (auto r = store_.view().read_slot(w.slot, rec, false); r && *r) info.name = rec.name;
    info.key = w.key;
    out.push_back(std::move(info));
  }
  return out;
}

void Registry::scan_client(const Client& c, const Drain& d, std::vector<Holder>* out, bool& holds) const {
  lease::Page& page = *c.page;
  page.header.notify.store(1, std::memory_order_seq_cst);
  const Segment& seg = store_.segment();
  const std::uint64_t epoch = seg.header().prefix.epoch;
  const std::uint32_t used = std::min(page.header.used.load(std::memory_order_acquire), lease::kLeases);
  const std::uint64_t now = coarse_ns();
  std::string cause;
  for (std::uint32_t i = 0; i < used; ++i) {
    lease::LeaseCopy l;
    bool busy = false;
    const bool active = lease::read_lease(page, i, l, busy);
    // A lease that kept changing is skipped: an honest one is mid-begin or mid-end (the tick
    // reads it again), and a liar could claim any lease anyway — it only delays drains of the
    // packages it claims to hold, never hides another worker's lease.
    if (busy) continue;
    if (!active || l.epoch != epoch || l.slot != d.slot || l.key > layout::kLastChildKey) continue;
    if (d.key && l.key != *d.key) continue;
    const core::Token now_tok = core::Token::snapshot(seg.mapping(), l.slot, l.key);
    if (now_tok.snapshot() == l.snapshot) continue;  // a live context never blocks a drain
    holds = true;
    if (!out) return;
    if (cause.empty()) {
      PackageRecord rec;
      auto r = store_.view().read_slot(d.slot, rec, false);
      cause = r && *r ? rec.last_cause_name : std::string("delete");
    }
    out->push_back({c.peer.pid, c.peer.uid, c.comm, l.key, l.root, cause,
                    now > l.begin_ns ? (now - l.begin_ns) / 1'000'000 : 0});
  }
}

bool Registry::full_scan(Drain& d, std::vector<Holder>* out) {
  d.holding.clear();
  for (const auto& [conn, c] : clients_) {
    bool holds = false;
    scan_client(c, d, out, holds);
    if (holds) d.holding.insert(conn);
  }
  return d.holding.empty();
}

std::list<Registry::Drain>::iterator Registry::start(Drain d, std::uint64_t timeout_ms) {
  const std::uint64_t cap = 86'400'000ull;  // a day: keeps the arithmetic far from overflow
  d.deadline_ns = mono_ns() + std::min(timeout_ms, cap) * 1'000'000ull;
  drains_.push_back(std::move(d));
  return std::prev(drains_.end());
}

void Registry::drain(std::uint64_t conn, std::string prefix, std::uint32_t slot, std::optional<std::uint32_t> key,
                     std::uint64_t timeout_ms, Finish finish_fn) {
  Drain d;
  d.conn = conn;
  d.prefix = std::move(prefix);
  d.slot = slot;
  d.key = key;
  d.finish = std::move(finish_fn);
  auto it = start(std::move(d), timeout_ms);
  if (full_scan(*it, nullptr) || timeout_ms == 0) finish(it, it->holding.empty());
  clear_notify_unused();
}

void Registry::drain(std::uint32_t slot, std::uint64_t timeout_ms, Holders holders, Done done) {
  Drain d;
  d.slot = slot;
  d.on_holders = std::move(holders);
  d.on_done = std::move(done);
  auto it = start(std::move(d), timeout_ms);
  if (full_scan(*it, nullptr) || timeout_ms == 0)
    finish(it, it->holding.empty());
  else
    report_if_changed(*it, {});
  clear_notify_unused();
}

// The daemon's own drains hear of every change in who holds them.
void Registry::report_if_changed(Drain& d, const std::set<std::uint64_t>& before) {
  if (!d.on_holders || d.holding == before) return;
  std::vector<Holder> holders;
  full_scan(d, &holders);
  d.on_holders(holders);
}

void Registry::finish(std::list<Drain>::iterator it, bool drained) {
  std::vector<Holder> holders;
  if (!drained) full_scan(*it, &holders);
  if (it->on_done) {
    it->on_done(drained, holders);
    drains_.erase(it);
    return;
  }
  std::string line = std::move(it->prefix);
  if (it->finish) line += it->finish(drained, holders.size());
  line += drained ? ",\"drained\":true,\"holders\":" : ",\"drained\":false,\"holders\":";
  JsonWriter w(line);
  w.begin_array();
  for (const Holder& h : holders) {
    w.begin_object();
    w.key("pid").num(std::int64_t{h.pid}).key("uid").num(std::uint64_t{h.uid}).key("comm").str(h.comm);
    w.key("key").num(std::uint64_t{h.key}).key("generation").num(h.generation).key("cause").str(h.cause);
    w.key("age_ms").num(h.age_ms);
    w.end_object();
  }
  w.end_array();
  line += "}\n";
  ready_.emplace_back(it->conn, std::move(line));
  drains_.erase(it);
}

void Registry::recheck(std::uint64_t conn) {
  for (auto it = drains_.begin(); it != drains_.end();) {
    auto next = std::next(it);
    const std::set<std::uint64_t> before = it->holding;
    if (it->holding.erase(conn)) {
      if (auto c = clients_.find(conn); c != clients_.end()) {
        bool holds = false;
        scan_client(c->second, *it, nullptr, holds);
        if (holds) it->holding.insert(conn);
      }
      // The last known holder let go: one full pass catches leases begun since.
      if (it->holding.empty() && full_scan(*it, nullptr))
        finish(it, true);
      else
        report_if_changed(*it, before);
    }
    it = next;
  }
  clear_notify_unused();
}

void Registry::forget_drains(std::uint64_t conn) {
  // conn 0 is no connection: the daemon's own drains end only by finishing.
  for (auto it = drains_.begin(); it != drains_.end();) it = it->conn == conn ? drains_.erase(it) : std::next(it);
}

void Registry::tick() {
  // The catch-all for cancellations by writers outside the daemon (whatever the wake count says).
  retire_cancelled(wakes());
  const std::uint64_t now = mono_ns();
  for (auto it = drains_.begin(); it != drains_.end();) {
    auto next = std::next(it);
    const std::set<std::uint64_t> before = it->holding;
    if (full_scan(*it, nullptr)) {
      finish(it, true);
    } else if (now >= it->deadline_ns) {
      finish(it, false);
    } else {
      report_if_changed(*it, before);
    }
    it = next;
  }
  clear_notify_unused();
}

std::uint64_t Registry::next_deadline_ns() const noexcept {
  std::uint64_t next = 0;
  for (const Drain& d : drains_)
    if (next == 0 || d.deadline_ns < next) next = d.deadline_ns;
  return next;
}

// A page no pending drain waits on has its notify word lowered: its tasks end without a send.
void Registry::clear_notify_unused() {
  for (auto& [conn, c] : clients_) {
    bool wanted = false;
    for (const Drain& d : drains_) wanted = wanted || d.holding.count(conn) != 0;
    if (!wanted && c.page->header.notify.load(std::memory_order_relaxed) != 0)
      c.page->header.notify.store(0, std::memory_order_relaxed);
  }
}

std::vector<Registry::LeaseInfo> Registry::leases(const Client& c) const {
  std::vector<LeaseInfo> out;
  const Segment& seg = store_.segment();
  const std::uint64_t epoch = seg.header().prefix.epoch;
  const std::uint32_t used = std::min(c.page->header.used.load(std::memory_order_acquire), lease::kLeases);
  const std::uint64_t now = coarse_ns();
  for (std::uint32_t i = 0; i < used; ++i) {
    lease::LeaseCopy l;
    bool busy = false;
    if (!lease::read_lease(*c.page, i, l, busy) || l.epoch != epoch || l.slot >= seg.capacity() ||
        l.key > layout::kLastChildKey)
      continue;
    LeaseInfo info;
    PackageRecord rec;
    if (auto r = store_.view().read_slot(l.slot, rec, false); r && *r) info.name = rec.name;
    info.key = l.key;
    info.generation = l.root;
    info.cancelled = core::Token::snapshot(seg.mapping(), l.slot, l.key).snapshot() != l.snapshot;
    info.age_ms = now > l.begin_ns ? (now - l.begin_ns) / 1'000'000 : 0;
    out.push_back(std::move(info));
  }
  return out;
}

std::uint64_t Registry::leases_on(std::uint32_t slot) const {
  std::uint64_t n = 0;
  const std::uint64_t epoch = store_.segment().header().prefix.epoch;
  for (const auto& [conn, c] : clients_) {
    const std::uint32_t used = std::min(c.page->header.used.load(std::memory_order_acquire), lease::kLeases);
    for (std::uint32_t i = 0; i < used; ++i) {
      lease::LeaseCopy l;
      bool busy = false;
      if (lease::read_lease(*c.page, i, l, busy) && l.epoch == epoch && l.slot == slot) ++n;
    }
  }
  return n;
}

}  // namespace pkgctx::daemon
