#include "pkgctx/segment.hpp"

#include "mapping.hpp"
#include "pkgctx/futex.hpp"
#include "robust_mutex.hpp"

#include <boost/interprocess/shared_memory_object.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <random>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

namespace pkgctx {

namespace bip = boost::interprocess;
using namespace layout;

namespace {

std::string hex(u64 v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

u64 round_up(u64 v, u64 to) { return (v + to - 1) / to * to; }

u64 next_pow2(u64 v) {
  u64 p = 1;
  while (p < v) p <<= 1;
  return p;
}

Error from_interprocess(const bip::interprocess_exception& e, const std::string& what) {
  switch (e.get_error_code()) {
    case bip::not_found_error: return {Errc::segment_missing, what + ": no such segment"};
    case bip::security_error: return {Errc::permission_denied, what + ": permission denied"};
    case bip::already_exists_error: return {Errc::segment_exists, what + ": already exists"};
    default: return {Errc::io_error, what + ": " + e.what()};
  }
}

// Sizes of the regions for a capacity and arena size, in layout order.
struct Plan {
  u64 slots_offset, index_offset, index_slots, freelist_offset, bitmap_offset, bitmap_words,
      arena_offset, arena_bytes, total;
};

Plan plan(u32 capacity, u64 settings_bytes) {
  Plan p{};
  p.slots_offset = round_up(sizeof(Header), kCacheLine);
  p.index_offset = p.slots_offset + u64{capacity} * sizeof(Slot);
  p.index_slots = next_pow2(std::max<u64>(16, u64{capacity} * 2));  // load factor ≤ 1/2
  p.freelist_offset = round_up(p.index_offset + p.index_slots * 8, kCacheLine);
  p.arena_bytes = round_up(std::max<u64>(settings_bytes, kChunk), kChunk);
  p.bitmap_words = (p.arena_bytes / kChunk + 63) / 64;
  p.bitmap_offset = round_up(p.freelist_offset + u64{capacity} * 4, kCacheLine);
  p.arena_offset = round_up(p.bitmap_offset + p.bitmap_words * 8, kCacheLine);
  p.total = round_up(p.arena_offset + p.arena_bytes, 4096);
  return p;
}

// Checks every header field a reader will trust; fills the mapping's derived pointers.
Result<void> validate(detail::Mapping& m, u64 object_size) {
  const std::string& n = m.name;
  if (object_size == 0) return make_error(Errc::segment_not_ready, "segment " + n + " is being created (empty)");
  if (object_size < sizeof(Prefix))
    return make_error(Errc::segment_truncated, "segment " + n + ": " + std::to_string(object_size) +
                                                   " bytes, shorter than the " + std::to_string(sizeof(Prefix)) +
                                                   "-byte prefix");
  auto* pre = reinterpret_cast<const Prefix*>(m.base);
  if (pre->magic == 0) return make_error(Errc::segment_not_ready, "segment " + n + " is being created (no magic yet)");
  if (pre->magic != kMagic)
    return make_error(Errc::segment_foreign,
                      "segment " + n + " is not a pkgctx segment: magic expected " + hex(kMagic) + ", found " + hex(pre->magic));
  if (pre->layout_version != kLayoutVersion)
    return make_error(Errc::segment_version, "segment " + n + " has layout version " +
                                                 std::to_string(pre->layout_version) + ", this build reads version " +
                                                 std::to_string(kLayoutVersion));
  auto state = static_cast<State>(pre->state.load(std::memory_order_acquire));
  if (state == State::kInitialising) return make_error(Errc::segment_not_ready, "segment " + n + " is being created");
  if (pre->abi_fingerprint != abi_fingerprint())
    return make_error(Errc::segment_version, "segment " + n + " was built with ABI " + hex(pre->abi_fingerprint) +
                                                 ", this build expects " + hex(abi_fingerprint()));
  if (pre->total_bytes > object_size)
    return make_error(Errc::segment_truncated, "segment " + n + ": header says " + std::to_string(pre->total_bytes) +
                                                   " bytes, the object has " + std::to_string(object_size));
  if (pre->total_bytes < sizeof(Header) || pre->prefix_bytes != sizeof(Prefix))
    return make_error(Errc::segment_foreign, "segment " + n + ": header sizes are inconsistent");
  if (state != State::kLive && state != State::kRetired)
    return make_error(Errc::segment_foreign, "segment " + n + ": unknown state " + std::to_string(static_cast<u32>(state)));

  auto* h = reinterpret_cast<Header*>(m.base);
  // Recompute the plan from the capacity and arena size and require the header to match it
  // exactly: a reader then trusts offsets it derived itself.
  const u32 cap = pre->capacity;
  if (cap == 0 || cap > (1u << 26))
    return make_error(Errc::segment_foreign, "segment " + n + ": capacity " + std::to_string(cap) + " is out of range");
  if (h->arena_bytes == 0 || h->arena_bytes % kChunk != 0 || h->arena_bytes > (u64{1} << 40))
    return make_error(Errc::segment_foreign, "segment " + n + ": settings area size is invalid");
  const Plan p = plan(cap, h->arena_bytes);
  if (pre->slots_offset != p.slots_offset || pre->slot_stride != sizeof(Slot) || pre->root_gen_offset != kRootGenOffset ||
      pre->wake_offset != kWakeOffset || pre->gen_count != kGenCount || h->index_offset != p.index_offset || h->index_slots != p.index_slots ||
      h->freelist_offset != p.freelist_offset || h->bitmap_offset != p.bitmap_offset ||
      h->bitmap_words != p.bitmap_words || h->arena_offset != p.arena_offset || pre->total_bytes != p.total)
    return make_error(Errc::segment_foreign, "segment " + n + ": region offsets do not match its capacity");
  if (h->max_name == 0 || h->max_name > kMaxName || h->max_version == 0 || h->max_version > kMaxVersion)
    return make_error(Errc::segment_foreign, "segment " + n + ": limits out of range");

  m.header = h;
  m.capacity = cap;
  m.slots = reinterpret_cast<Slot*>(m.base + p.slots_offset);
  m.index = reinterpret_cast<AU64*>(m.base + p.index_offset);
  m.index_mask = p.index_slots - 1;
  m.freelist = reinterpret_cast<u32*>(m.base + p.freelist_offset);
  m.bitmap = reinterpret_cast<AU64*>(m.base + p.bitmap_offset);
  m.arena = reinterpret_cast<AU64*>(m.base + p.arena_offset);
  m.arena_bytes = p.arena_bytes;
  if (state == State::kRetired)
    return make_error(Errc::segment_retired, "segment " + n + " has been retired; re-attach to the new one");
  return {};
}

// Maps the waiters board if this process may write it (workers are in the group). Best effort:
// without it, waits poll.
void map_waiters(detail::Mapping& m) {
  try {
    bip::shared_memory_object obj(bip::open_only, detail::waiters_object(m.name).c_str(), bip::read_write);
    bip::offset_t size = 0;
    if (!obj.get_size(size) || static_cast<u64>(size) < sizeof(WaitersHeader) + u64{m.capacity} * 4) return;
    bip::mapped_region r(obj, bip::read_write);
    auto* wh = static_cast<const WaitersHeader*>(r.get_address());
    if (wh->magic != kWaitersMagic || wh->epoch != m.header->prefix.epoch || wh->capacity != m.capacity) return;
    m.waiter_counts = reinterpret_cast<AU32*>(static_cast<std::byte*>(r.get_address()) + sizeof(WaitersHeader));
    m.waiters = std::move(r);
  } catch (const bip::interprocess_exception&) {
  }
}

void chown_group(bip::shared_memory_object& obj, gid_t group) {
  if (group != static_cast<gid_t>(-1)) {
    if (::fchown(obj.get_mapping_handle().handle, static_cast<uid_t>(-1), group) != 0) {
      throw bip::interprocess_exception(bip::error_info(bip::security_error));
    }
  }
}

}  // namespace

std::uint64_t name_hash(std::string_view name) noexcept { return XXH3_64bits(name.data(), name.size()); }

std::uint64_t mono_now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<u64>(ts.tv_sec) * 1'000'000'000u + static_cast<u64>(ts.tv_nsec);
}

std::uint64_t realtime_now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<u64>(ts.tv_sec) * 1'000'000'000u + static_cast<u64>(ts.tv_nsec);
}

Result<Segment> Segment::create(const std::string& name, const SegmentOptions& opts) {
  if (auto ok = validate_segment_name(name); !ok) return ok.error();
  if (opts.capacity == 0 || opts.capacity > (1u << 26))
    return make_error(Errc::invalid_settings, "capacity " + std::to_string(opts.capacity) + " is out of range 1..67108864");
  if (opts.limits.max_name == 0 || opts.limits.max_name > kMaxName || opts.limits.max_version == 0 ||
      opts.limits.max_version > kMaxVersion)
    return make_error(Errc::invalid_settings, "name and version limits must be 1..128 bytes");
  const Plan p = plan(opts.capacity, opts.settings_bytes);
  auto m = std::make_shared<detail::Mapping>();
  m->name = name;
  m->writable = true;
  const std::string what = "segment " + name;
  try {
    bip::permissions perm(static_cast<unsigned>(opts.mode));
    bip::shared_memory_object obj(bip::create_only, detail::table_object(name).c_str(), bip::read_write, perm);
    chown_group(obj, opts.group);
    obj.truncate(static_cast<bip::offset_t>(p.total));
    m->table = bip::mapped_region(obj, bip::read_write);
    m->base = static_cast<std::byte*>(m->table.get_address());

    auto* h = reinterpret_cast<Header*>(m->base);
    Prefix& pre = h->prefix;
    pre.magic = kMagic;
    pre.layout_version = kLayoutVersion;
    pre.prefix_bytes = sizeof(Prefix);
    pre.total_bytes = p.total;
    pre.abi_fingerprint = abi_fingerprint();
    std::random_device rd;
    pre.epoch = (u64{rd()} << 32 | rd()) ^ realtime_now_ns();
    pre.capacity = opts.capacity;
    pre.slots_offset = p.slots_offset;
    pre.slot_stride = sizeof(Slot);
    pre.root_gen_offset = kRootGenOffset;
    pre.wake_offset = kWakeOffset;
    pre.gen_count = kGenCount;
    detail::init_robust_mutex(&pre.mutex);

    h->max_name = static_cast<u32>(opts.limits.max_name);
    h->max_version = static_cast<u32>(opts.limits.max_version);
    h->max_settings = opts.limits.max_settings;
    h->index_offset = p.index_offset;
    h->index_slots = p.index_slots;
    h->freelist_offset = p.freelist_offset;
    h->bitmap_offset = p.bitmap_offset;
    h->bitmap_words = p.bitmap_words;
    h->arena_offset = p.arena_offset;
    h->arena_bytes = p.arena_bytes;
    h->created_realtime_ns.store(realtime_now_ns(), std::memory_order_relaxed);

    // Free list: popping from the top hands out slot 0 first.
    auto* fl = reinterpret_cast<u32*>(m->base + p.freelist_offset);
    for (u32 i = 0; i < opts.capacity; ++i) fl[i] = opts.capacity - 1 - i;
    h->free_top.store(opts.capacity, std::memory_order_relaxed);
    // The bitmap's tail bits beyond the arena are marked used so the allocator never hands them out.
    const u64 chunks = p.arena_bytes / kChunk;
    if (chunks % 64 != 0) {
      auto* bm = reinterpret_cast<AU64*>(m->base + p.bitmap_offset);
      bm[p.bitmap_words - 1].store(~u64{0} << (chunks % 64), std::memory_order_relaxed);
    }

    // The waiters board: group-writable so workers may announce that they sleep.
    {
      bip::permissions wperm(static_cast<unsigned>(opts.mode | 0060));
      bip::shared_memory_object::remove(detail::waiters_object(name).c_str());
      bip::shared_memory_object wobj(bip::create_only, detail::waiters_object(name).c_str(), bip::read_write, wperm);
      chown_group(wobj, opts.group);
      wobj.truncate(static_cast<bip::offset_t>(sizeof(WaitersHeader) + u64{opts.capacity} * 4));
      bip::mapped_region wr(wobj, bip::read_write);
      auto* wh = static_cast<WaitersHeader*>(wr.get_address());
      wh->magic = kWaitersMagic;
      wh->epoch = pre.epoch;
      wh->capacity = opts.capacity;
    }

    // Ready marker last: an opener never sees a half-built segment as live.
    pre.state.store(static_cast<u32>(State::kLive), std::memory_order_release);
    if (auto v = validate(*m, p.total); !v) return v.error();
  } catch (const bip::interprocess_exception& e) {
    return from_interprocess(e, what);
  }
  map_waiters(*m);
  return Segment(std::move(m));
}

Result<Segment> Segment::open(const std::string& name, Access access) {
  if (auto ok = validate_segment_name(name); !ok) return ok.error();
  auto m = std::make_shared<detail::Mapping>();
  m->name = name;
  m->writable = access == Access::read_write;
  const auto mode = m->writable ? bip::read_write : bip::read_only;
  try {
    bip::shared_memory_object obj(bip::open_only, detail::table_object(name).c_str(), mode);
    bip::offset_t size = 0;
    if (!obj.get_size(size)) return make_error(Errc::io_error, "segment " + name + ": cannot read its size");
    if (size == 0) return make_error(Errc::segment_not_ready, "segment " + name + " is being created (empty)");
    m->table = bip::mapped_region(obj, mode);
    m->base = static_cast<std::byte*>(m->table.get_address());
    if (auto v = validate(*m, static_cast<u64>(size)); !v) return v.error();
  } catch (const bip::interprocess_exception& e) {
    return from_interprocess(e, "segment " + name);
  }
  map_waiters(*m);
  return Segment(std::move(m));
}

void Segment::remove(const std::string& name) noexcept {
  bip::shared_memory_object::remove(detail::table_object(name).c_str());
  bip::shared_memory_object::remove(detail::waiters_object(name).c_str());
}

Result<void> Segment::retire(const std::string& name) {
  // Uses only the frozen prefix: the segment may be of a layout this build does not know.
  try {
    bip::shared_memory_object obj(bip::open_only, detail::table_object(name).c_str(), bip::read_write);
    bip::offset_t size = 0;
    if (!obj.get_size(size) || static_cast<u64>(size) < sizeof(Prefix))
      return make_error(Errc::segment_foreign, "segment " + name + ": too short to be a pkgctx segment");
    bip::mapped_region r(obj, bip::read_write);
    auto* base = static_cast<std::byte*>(r.get_address());
    auto* pre = reinterpret_cast<Prefix*>(base);
    if (pre->magic != kMagic)
      return make_error(Errc::segment_foreign, "segment " + name + " is not a pkgctx segment: magic " + hex(pre->magic));
    const u64 end = pre->slots_offset + u64{pre->capacity} * pre->slot_stride;
    const u64 gens = std::max<u32>(pre->gen_count, 1);
    if (pre->slot_stride < 8 || pre->root_gen_offset + 8 * gens > pre->slot_stride || pre->wake_offset + 4 > pre->slot_stride ||
        pre->root_gen_offset % 8 != 0 || pre->wake_offset % 4 != 0 || pre->slots_offset % 8 != 0 ||
        end > static_cast<u64>(size))
      return make_error(Errc::segment_foreign, "segment " + name + ": retirement fields are out of bounds");
    {
      detail::RobustLock lock(&pre->mutex);  // a dead owner is fine: the segment is going away
      pre->state.store(static_cast<u32>(State::kRetired), std::memory_order_seq_cst);
      for (u32 i = 0; i < pre->capacity; ++i) {
        std::byte* s = base + pre->slots_offset + u64{i} * pre->slot_stride;
        auto* gen = reinterpret_cast<AU64*>(s + pre->root_gen_offset);
        auto* wake = reinterpret_cast<AU32*>(s + pre->wake_offset);
        for (u64 g = 0; g < gens; ++g) gen[g].fetch_add(1, std::memory_order_seq_cst);  // root first
        wake->fetch_add(1, std::memory_order_seq_cst);
        futex::wake(wake);
      }
    }
  } catch (const bip::interprocess_exception& e) {
    return from_interprocess(e, "segment " + name);
  }
  remove(name);
  return {};
}

void Segment::retire_mapped() const {
  // Same protocol as retire(), with the cause ring set so tokens can say why.
  auto& m = *map_;
  detail::RobustLock lock(&m.header->prefix.mutex);
  m.header->prefix.state.store(static_cast<u32>(State::kRetired), std::memory_order_seq_cst);
  auto bump = [](AU64& gen, CauseRing& ring) {
    const u64 g = gen.load(std::memory_order_relaxed) + 1;
    set_ring_cause(ring, g, Cause::kSegmentRetired);
    gen.store(g, std::memory_order_release);
  };
  for (u32 i = 0; i < m.capacity; ++i) {
    Slot& s = m.slots[i];
    bump(s.gens.root, s.causes.root);  // root first (see SlotGens)
    for (u32 k = 0; k < kChildKeys; ++k) bump(s.gens.child[k], s.causes.child[k]);
    s.gens.wake.fetch_add(1, std::memory_order_seq_cst);
    futex::wake(&s.gens.wake);
  }
  remove(m.name);
}

const std::string& Segment::name() const noexcept { return map_->name; }
bool Segment::writable() const noexcept { return map_->writable; }
layout::Header& Segment::header() const noexcept { return *map_->header; }
layout::Slot& Segment::slot(std::uint32_t i) const noexcept { return map_->slots[i]; }
std::atomic<std::uint64_t>* Segment::index() const noexcept { return map_->index; }
std::uint32_t* Segment::freelist() const noexcept { return map_->freelist; }
std::atomic<std::uint64_t>* Segment::bitmap() const noexcept { return map_->bitmap; }
std::atomic<std::uint64_t>* Segment::arena() const noexcept { return map_->arena; }
std::atomic<std::uint32_t>* Segment::waiter_counts() const noexcept { return map_->waiter_counts; }
std::uint32_t Segment::capacity() const noexcept { return map_->capacity; }

SegmentInfo Segment::info() const {
  const Header& h = *map_->header;
  const Prefix& p = h.prefix;
  SegmentInfo i;
  i.name = map_->name;
  i.layout_version = p.layout_version;
  i.abi_fingerprint = p.abi_fingerprint;
  i.epoch = p.epoch;
  i.total_bytes = p.total_bytes;
  i.state = static_cast<State>(p.state.load(std::memory_order_acquire));
  i.capacity = p.capacity;
  i.used = h.used_slots.load(std::memory_order_relaxed);
  i.settings_bytes = h.arena_bytes;
  i.settings_used = h.settings_used.load(std::memory_order_relaxed);
  i.commits = h.commits.load(std::memory_order_relaxed);
  i.repairs = h.repairs.load(std::memory_order_relaxed);
  i.max_name = h.max_name;
  i.max_version = h.max_version;
  i.max_settings = h.max_settings;
  i.created_realtime_ns = h.created_realtime_ns.load(std::memory_order_relaxed);
  i.daemon_pid = h.daemon_pid.load(std::memory_order_relaxed);
  i.daemon_state = static_cast<DaemonState>(h.daemon_state.load(std::memory_order_acquire));
  i.daemon_start_realtime_ns = h.daemon_start_realtime_ns.load(std::memory_order_relaxed);
  i.heartbeat_mono_ns = h.heartbeat_mono_ns.load(std::memory_order_relaxed);
  i.heartbeat_interval_ns = h.heartbeat_interval_ns.load(std::memory_order_relaxed);
  return i;
}

void Segment::mark_daemon_running(pid_t pid, std::uint64_t heartbeat_interval_ns) const noexcept {
  Header& h = *map_->header;
  h.daemon_pid.store(pid, std::memory_order_relaxed);
  h.daemon_start_realtime_ns.store(realtime_now_ns(), std::memory_order_relaxed);
  h.heartbeat_interval_ns.store(heartbeat_interval_ns, std::memory_order_relaxed);
  h.heartbeat_mono_ns.store(mono_now_ns(), std::memory_order_relaxed);
  h.daemon_state.store(static_cast<u32>(DaemonState::kRunning), std::memory_order_release);
}

void Segment::heartbeat() const noexcept {
  map_->header->heartbeat_mono_ns.store(mono_now_ns(), std::memory_order_release);
}

void Segment::mark_daemon_stopped() const noexcept {
  map_->header->daemon_state.store(static_cast<u32>(DaemonState::kStopped), std::memory_order_release);
}

Liveness liveness(const SegmentInfo& info) noexcept {
  switch (info.daemon_state) {
    case DaemonState::kNone: return Liveness::none;
    case DaemonState::kStopped: return Liveness::stopped;
    case DaemonState::kRunning: break;
  }
  const u64 now = mono_now_ns();
  const u64 interval = info.heartbeat_interval_ns ? info.heartbeat_interval_ns : 1'000'000'000u;
  const u64 age = now > info.heartbeat_mono_ns ? now - info.heartbeat_mono_ns : 0;
  return age > 3 * interval ? Liveness::stale : Liveness::alive;
}

}  // namespace pkgctx
