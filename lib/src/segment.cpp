#include "pkgctx/segment.hpp"

#include "mapping.hpp"
#include "name_hash.hpp"
#include "pkgctx/futex.hpp"
#include "robust_mutex.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <random>
#include <utility>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace pkgctx {

using namespace layout;

namespace {

std::string hex(u64 v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

u64 round_up(u64 v, u64 to) { return (v + to - 1) / to * to; }

std::string octal(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

Error sys_error(int err, const std::string& what) {
  switch (err) {
    case ENOENT: return {Errc::segment_missing, what + ": no such segment"};
    case EACCES:
    case EPERM: return {Errc::permission_denied, what + ": permission denied"};
    case EEXIST: return {Errc::segment_exists, what + ": already exists"};
    case ELOOP: return {Errc::untrusted_segment, what + " is a symbolic link: refused"};
    default: return {Errc::io_error, what + ": " + std::strerror(err)};
  }
}

// A descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  explicit Fd(int f) noexcept : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Result<detail::Region> map_fd(int fd, u64 size, bool writable, const std::string& what) {
  void* p = ::mmap(nullptr, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return sys_error(errno, what);
  return detail::Region(p, size);
}

// Sizes of the regions for a capacity and arena size, in layout order.
struct Plan {
  u64 slots_offset, waiters_offset, index_offset, index_entries, freelist_offset, bitmap_offset, bitmap_words,
      arena_offset, arena_bytes, total;
};

Plan plan(u32 capacity, u64 settings_bytes) {
  Plan p{};
  p.slots_offset = round_up(sizeof(Header), kCacheLine);
  p.waiters_offset = p.slots_offset + u64{capacity} * sizeof(Slot);
  p.index_offset = round_up(p.waiters_offset + u64{capacity} * 4, kCacheLine);
  p.index_entries = index_entries_for(capacity);
  p.freelist_offset = round_up(p.index_offset + p.index_entries * sizeof(IndexEntry), kCacheLine);
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
  if (cap == 0 || cap > kMaxCapacity)
    return make_error(Errc::segment_foreign, "segment " + n + ": capacity " + std::to_string(cap) + " is out of range");
  if (h->arena_bytes == 0 || h->arena_bytes % kChunk != 0 || h->arena_bytes > (u64{1} << 40))
    return make_error(Errc::segment_foreign, "segment " + n + ": settings area size is invalid");
  const Plan p = plan(cap, h->arena_bytes);
  if (pre->slots_offset != p.slots_offset || pre->slot_stride != sizeof(Slot) || pre->root_gen_offset != kRootGenOffset ||
      pre->wake_offset != kWakeOffset || pre->gen_count != kGenCount || h->index_offset != p.index_offset || h->index_entries != p.index_entries || h->waiters_offset != p.waiters_offset ||
      h->freelist_offset != p.freelist_offset || h->bitmap_offset != p.bitmap_offset ||
      h->bitmap_words != p.bitmap_words || h->arena_offset != p.arena_offset || pre->total_bytes != p.total)
    return make_error(Errc::segment_foreign, "segment " + n + ": region offsets do not match its capacity");
  if (h->max_name == 0 || h->max_name > kMaxName || h->max_version == 0 || h->max_version > kMaxVersion)
    return make_error(Errc::segment_foreign, "segment " + n + ": limits out of range");

  m.header = h;
  m.capacity = cap;
  m.slots = reinterpret_cast<Slot*>(m.base + p.slots_offset);
  m.index = reinterpret_cast<IndexEntry*>(m.base + p.index_offset);
  m.index_entries = p.index_entries;
  m.index_slot_bits = index_slot_bits(cap);
  m.freelist = reinterpret_cast<u32*>(m.base + p.freelist_offset);
  m.bitmap = reinterpret_cast<AU64*>(m.base + p.bitmap_offset);
  m.arena = reinterpret_cast<AU64*>(m.base + p.arena_offset);
  m.arena_bytes = p.arena_bytes;
  m.waiter_counts = reinterpret_cast<AU32*>(m.base + p.waiters_offset);
  if (state == State::kRetired)
    return make_error(Errc::segment_retired, "segment " + n + " has been retired; re-attach to the new one");
  return {};
}

// Makes a freshly created object's mode exact (whatever the umask) and its group `group`.
Result<void> set_owner_mode(int fd, mode_t mode, gid_t group, const std::string& what) {
  if (group != static_cast<gid_t>(-1) && ::fchown(fd, static_cast<uid_t>(-1), group) != 0)
    return sys_error(errno, what + ": chown to group " + std::to_string(group));
  if (::fchmod(fd, mode) != 0) return sys_error(errno, what + ": chmod " + octal(mode));
  return {};
}

// Creates `object` in `dir` (exclusive, never through a symlink), sized `size`, and maps it.
Result<detail::Region> create_object(const std::string& dir, const std::string& object, mode_t mode, gid_t group,
                                     u64 size) {
  const std::string what = object_path(object, dir);
  auto fd = open_trusted(dir, object, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (!fd) return fd.error();
  Fd f(*fd);
  if (auto ok = set_owner_mode(f.fd, mode, group, what); !ok) return ok.error();
  if (::ftruncate(f.fd, static_cast<off_t>(size)) != 0) return sys_error(errno, what + ": truncate");
  return map_fd(f.fd, size, true, what);
}

}  // namespace

std::string runtime_dir() {
  const char* env = std::getenv("PKGCTX_RUNTIME_DIR");
  return env && *env ? std::string(env) : std::string(kDefaultRuntimeDir);
}

std::string object_path(const std::string& object, const std::string& dir) {
  return (dir.empty() ? runtime_dir() : dir) + "/" + object;
}

Result<uid_t> check_runtime_dir(const std::string& dir_in) {
  const std::string dir = dir_in.empty() ? runtime_dir() : dir_in;
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return make_error(Errc::segment_missing, "runtime directory " + dir + " does not exist");
    return sys_error(err, "runtime directory " + dir);
  }
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  ::close(fd);
  if (rc != 0) return sys_error(errno, "runtime directory " + dir);
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return make_error(Errc::untrusted_segment, "runtime directory " + dir + " (owner uid " + std::to_string(st.st_uid) +
                                                   ", mode " + octal(st.st_mode) +
                                                   ") is writable by others: anyone could plant the segment there");
  return st.st_uid;
}

Result<int> open_trusted(const std::string& dir_in, const std::string& object, int flags, mode_t create_mode) {
  const std::string dir = dir_in.empty() ? runtime_dir() : dir_in;
  const std::string what = dir + "/" + object;
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return make_error(Errc::segment_missing, what + ": no such segment (the runtime directory does not exist: is "
                                                      "pkgctxd running? PKGCTX_RUNTIME_DIR must name its --runtime-dir)");
    return sys_error(err, "runtime directory " + dir);
  }
  Fd d(dfd);
  struct stat dst {};
  if (::fstat(d.fd, &dst) != 0) return sys_error(errno, "runtime directory " + dir);
  if (dst.st_mode & (S_IWGRP | S_IWOTH))
    return make_error(Errc::untrusted_segment, "runtime directory " + dir + " (owner uid " + std::to_string(dst.st_uid) +
                                                   ", mode " + octal(dst.st_mode) +
                                                   ") is writable by others: anyone could plant the segment there");
  const int fd = ::openat(d.fd, object.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, create_mode);
  if (fd < 0) return sys_error(errno, what);
  Fd f(fd);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return sys_error(errno, what);
  if (!S_ISREG(st.st_mode) || st.st_uid != dst.st_uid || (st.st_mode & (S_IWGRP | S_IWOTH)))
    return make_error(Errc::untrusted_segment,
                      what + " is not to be trusted: " + (S_ISREG(st.st_mode) ? "a file" : "not a regular file") +
                          " owned by uid " + std::to_string(st.st_uid) + " with mode " + octal(st.st_mode) +
                          "; expected the runtime directory's owner (uid " + std::to_string(dst.st_uid) +
                          ") and no write access for group or others");
  // O_NONBLOCK only kept a planted FIFO from blocking the open; it means nothing for a file.
  if (::fcntl(f.fd, F_SETFL, ::fcntl(f.fd, F_GETFL) & ~O_NONBLOCK) != 0) return sys_error(errno, what);
  return std::exchange(f.fd, -1);
}

std::uint64_t name_hash(std::string_view name) noexcept { return detail::hash_name(name); }

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
  if (opts.capacity == 0 || opts.capacity > kMaxCapacity)
    return make_error(Errc::invalid_settings, "capacity " + std::to_string(opts.capacity) + " is out of range 1..67108864");
  if (opts.limits.max_name == 0 || opts.limits.max_name > kMaxName || opts.limits.max_version == 0 ||
      opts.limits.max_version > kMaxVersion)
    return make_error(Errc::invalid_settings, "name and version limits must be 1..128 bytes");
  if (opts.mode & 022)
    return make_error(Errc::invalid_settings, "segment mode " + octal(opts.mode) +
                                                  " lets others write the table; readers would refuse it");
  const Plan p = plan(opts.capacity, opts.settings_bytes);
  auto m = std::make_shared<detail::Mapping>();
  m->name = name;
  m->dir = opts.dir.empty() ? runtime_dir() : opts.dir;
  m->writable = true;
  auto table = create_object(m->dir, detail::table_object(name), opts.mode, opts.group, p.total);
  if (!table) return table.error();
  m->table = std::move(*table);
  m->base = static_cast<std::byte*>(m->table.get());

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
  h->index_entries = p.index_entries;
  h->freelist_offset = p.freelist_offset;
  h->bitmap_offset = p.bitmap_offset;
  h->bitmap_words = p.bitmap_words;
  h->arena_offset = p.arena_offset;
  h->arena_bytes = p.arena_bytes;
  h->waiters_offset = p.waiters_offset;
  h->predecessor_epoch = opts.predecessor_epoch;
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

  // Ready marker last: an opener never sees a half-built segment as live.
  pre.state.store(static_cast<u32>(State::kLive), std::memory_order_release);
  if (auto v = validate(*m, p.total); !v) return v.error();
  return Segment(std::move(m));
}

Result<Segment> Segment::open(const std::string& name, Access access, const std::string& dir) {
  if (auto ok = validate_segment_name(name); !ok) return ok.error();
  auto m = std::make_shared<detail::Mapping>();
  m->name = name;
  m->dir = dir.empty() ? runtime_dir() : dir;
  m->writable = access == Access::read_write;
  auto fd = open_trusted(m->dir, detail::table_object(name), m->writable ? O_RDWR : O_RDONLY);
  if (!fd) return fd.error();
  Fd f(*fd);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return make_error(Errc::io_error, "segment " + name + ": cannot read its size");
  const u64 size = static_cast<u64>(st.st_size);
  if (size == 0) return make_error(Errc::segment_not_ready, "segment " + name + " is being created (empty)");
  // Map what the header says, never more than the object: a huge sparse object costs nothing.
  u64 want = size;
  if (size >= sizeof(Prefix)) {
    Prefix pre{};
    if (::pread(f.fd, &pre, sizeof pre, 0) != static_cast<ssize_t>(sizeof pre))
      return make_error(Errc::io_error, "segment " + name + ": cannot read its header");
    if (pre.total_bytes >= sizeof(Header) && pre.total_bytes <= size) want = pre.total_bytes;
  }
  auto r = map_fd(f.fd, want, m->writable, "segment " + name);
  if (!r) return r.error();
  m->table = std::move(*r);
  m->base = static_cast<std::byte*>(m->table.get());
  if (auto v = validate(*m, size); !v) return v.error();
  return Segment(std::move(m));
}

void Segment::remove(const std::string& name, const std::string& dir) noexcept {
  try {
    ::unlink(object_path(detail::table_object(name), dir).c_str());  // unlink(2) never follows the last link
    // A v2 daemon's group-writable waiters board, if one is left over: nothing reads it any more.
    ::unlink(object_path(name + ".waiters", dir).c_str());
  } catch (...) {
  }
}

Result<std::uint64_t> Segment::retire(const std::string& name, const std::string& dir) {
  // Uses only the frozen prefix: the segment may be of a layout this build does not know. The
  // object is written only if trusted, and only where it already holds data.
  auto fd = open_trusted(dir, detail::table_object(name), O_RDWR);
  if (!fd) return fd.error();
  Fd f(*fd);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return sys_error(errno, "segment " + name);
  const u64 size = static_cast<u64>(st.st_size);
  Prefix pre{};
  if (size < sizeof(Prefix) || ::pread(f.fd, &pre, sizeof pre, 0) != static_cast<ssize_t>(sizeof pre))
    return make_error(Errc::segment_foreign, "segment " + name + ": too short to be a pkgctx segment");
  if (pre.magic != kMagic)
    return make_error(Errc::segment_foreign, "segment " + name + " is not a pkgctx segment: magic " + hex(pre.magic));
  const u64 end = pre.slots_offset + u64{pre.capacity} * pre.slot_stride;
  const u64 gens = std::max<u32>(pre.gen_count, 1);
  if (pre.slot_stride < 8 || pre.root_gen_offset + 8 * gens > pre.slot_stride || pre.wake_offset + 4 > pre.slot_stride ||
      pre.root_gen_offset % 8 != 0 || pre.wake_offset % 4 != 0 || pre.slots_offset % 8 != 0 ||
      pre.slots_offset < sizeof(Prefix) || end > size)
    return make_error(Errc::segment_foreign, "segment " + name + ": retirement fields are out of bounds");
  auto r = map_fd(f.fd, end, true, "segment " + name);
  if (!r) return r.error();
  auto* base = static_cast<std::byte*>(r->get());
  auto* mp = reinterpret_cast<Prefix*>(base);
  const u64 epoch = mp->epoch;
  {
    detail::RobustLock lock(&mp->mutex);  // a dead owner is fine: the segment is going away
    mp->state.store(static_cast<u32>(State::kRetired), std::memory_order_seq_cst);
    // Only slots whose generation words lie in data extents: a hole was never written, so no
    // token watches it, and writing it would allocate a page (a planted sparse object could
    // otherwise make this write its whole apparent size).
    off_t pos = static_cast<off_t>(pre.slots_offset);
    while (static_cast<u64>(pos) < end) {
      const off_t data = ::lseek(f.fd, pos, SEEK_DATA);
      if (data < 0) break;  // ENXIO: no more data
      off_t hole = ::lseek(f.fd, data, SEEK_HOLE);
      if (hole < 0) hole = static_cast<off_t>(end);
      const u64 d = static_cast<u64>(data), h = std::min<u64>(static_cast<u64>(hole), end);
      if (d >= end) break;
      u64 i = d > pre.slots_offset + pre.root_gen_offset
                  ? (d - pre.slots_offset - pre.root_gen_offset + pre.slot_stride - 1) / pre.slot_stride
                  : 0;
      for (; i < pre.capacity; ++i) {
        const u64 at = pre.slots_offset + i * pre.slot_stride;
        if (at + pre.root_gen_offset >= h) break;
        auto* gen = reinterpret_cast<AU64*>(base + at + pre.root_gen_offset);
        auto* wake = reinterpret_cast<AU32*>(base + at + pre.wake_offset);
        for (u64 g = 0; g < gens; ++g) gen[g].fetch_add(1, std::memory_order_seq_cst);  // root first
        wake->fetch_add(1, std::memory_order_seq_cst);
        futex::wake(wake);
      }
      pos = hole > data ? hole : data + 1;
    }
  }
  remove(name, dir);
  return epoch;
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
  remove(m.name, m.dir);
}

const std::string& Segment::name() const noexcept { return map_->name; }
bool Segment::writable() const noexcept { return map_->writable; }
layout::Header& Segment::header() const noexcept { return *map_->header; }
layout::Slot& Segment::slot(std::uint32_t i) const noexcept { return map_->slots[i]; }
std::atomic<std::uint32_t>* Segment::index() const noexcept { return map_->index; }
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
  i.wakes = h.wakes.load(std::memory_order_relaxed);
  i.max_name = h.max_name;
  i.max_version = h.max_version;
  i.max_settings = h.max_settings;
  i.created_realtime_ns = h.created_realtime_ns.load(std::memory_order_relaxed);
  i.follow_revision = h.follow_revision.load(std::memory_order_relaxed);
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
  const u32 before = h.daemon_state.exchange(static_cast<u32>(DaemonState::kRunning), std::memory_order_seq_cst);
  if (before != static_cast<u32>(DaemonState::kNone)) return;
  // From now on writers wake only counted waits. A process that began an uncounted wait before
  // (trusting every cancellation to wake it) read the wake word before the state: bump and wake
  // every word once so it re-reads the state and re-checks in slices until it registers.
  for (u32 s = 0; s < map_->capacity; ++s) {
    map_->slots[s].gens.wake.fetch_add(1, std::memory_order_seq_cst);
    futex::wake(&map_->slots[s].gens.wake);
  }
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
