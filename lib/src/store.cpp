// The write side of the store.
//
// Crash safety. Every write runs under the robust mutex and follows one protocol:
//   1. validate the input and reserve what it needs (slot, settings chunks): a refusal here
//      changes nothing visible;
//   2. write new settings bytes into free (unreferenced) arena chunks;
//   3. journal PREPARED: an undo copy of the slot's data words;
//   4. write the slot's data under its seqlock; update the index;
//   5. journal COMMITTED with the generation values to store (stores, not increments, so
//      redoing them is idempotent); store causes then generations; wake sleepers;
//   6. journal IDLE; release what the old state used (settings chunks, slot).
// A writer that finds the previous owner dead (EOWNERDEAD) undoes a PREPARED write, redoes a
// COMMITTED one, and rebuilds everything derivable from the slots: the name index, the free
// list, the settings bitmap and the counters. A write is committed exactly when its journal
// reached COMMITTED, so no committed change is ever lost and no half-written one survives.
#include "pkgctx/store.hpp"

#include "mapping.hpp"
#include "name_hash.hpp"
#include "pkgctx/futex.hpp"
#include "robust_mutex.hpp"
#include "seqlock.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstring>
#include <optional>
#include <unistd.h>

namespace pkgctx {

using namespace layout;

// --- fault injection (tests only) ----------------------------------------------------------------
// A crash point names a step of the write protocol; in a build without PKGCTX_FAULT_INJECTION it
// expands to nothing, so release binaries carry neither the hooks nor the code that arms them.
namespace {

// The steps of every write (Writer::publish), in order; a write that skips a step (an event
// writes no data record) passes none of its crash points.
enum WriteStep : int {
  kLocked = 1,      // mutex held, nothing touched
  kReserved,        // settings bytes stored in free chunks, a slot popped; journal idle
  kPrepared,        // undo record journaled
  kHalfRecord,      // half the data record written, its sequence odd
  kWritten,         // data record and index written, not committed
  kCommitted,       // journal COMMITTED, no generation moved yet
  kHalfApplied,     // root generation moved, its children not yet
  kApplied,         // every generation moved and sleepers woken, journal still COMMITTED
  kFinished,        // journal idle, old settings not yet released
  kReleased,        // everything done, mutex still held
  kWriteSteps = kReleased
};
// The steps of a crash repair (Writer::repair).
enum RepairStep : int {
  kRepairStarted = 1,
  kHalfRestored,    // half the undo record restored, sequence odd
  kResolved,        // journal undone or redone, not yet idle
  kJournalIdle,
  kRecounted,       // bitmap rebuilt, counters stale
  kIndexEmptied,    // index emptied, index_seq odd (any index rebuild while armed for repair)
  kRepairSteps = kIndexEmptied
};

#if defined(PKGCTX_FAULT_INJECTION)
struct CrashPoint {
  char op[16] = {};
  int step = 0;
};
CrashPoint g_crash_point;

void crash_at(const char* op, int step) {
  if (g_crash_point.step == step && std::strcmp(g_crash_point.op, op) == 0) ::kill(::getpid(), SIGKILL);
}
#define PKGCTX_CRASH_POINT(op, step) crash_at(op, step)
#else
#define PKGCTX_CRASH_POINT(op, step) static_cast<void>(0)
#endif

}  // namespace

#if defined(PKGCTX_FAULT_INJECTION)
int fault_steps(std::string_view op) noexcept {
  if (op == "write") return kWriteSteps;
  if (op == "repair") return kRepairSteps;
  return 0;
}

int fault_first_committed_step() noexcept { return kCommitted; }

void set_crash_point(std::string_view op, int step) noexcept {
  CrashPoint& cp = g_crash_point;
  std::memset(cp.op, 0, sizeof cp.op);
  std::memcpy(cp.op, op.data(), std::min(op.size(), sizeof cp.op - 1));
  cp.step = step;
}
#endif

std::string_view change_name(Change c) noexcept {
  switch (c) {
    case Change::none: return "none";
    case Change::created: return "created";
    case Change::version: return "version";
    case Change::settings: return "settings";
  }
  return "none";
}

// --- the writer: everything that runs under the mutex ------------------------------------------
namespace {

Result<void> check_version(std::string_view version, const Limits& limits) {
  if (!version.empty() && version.size() <= limits.max_version) {
    bool ok = true;
    for (const char c : version) ok &= static_cast<unsigned char>(c - 0x20) < 0x5f;  // 0x20..0x7e
    if (ok) return {};
  }
  return validate_version(version, limits);
}

constexpr u64 kEmptyLen = 0;  // settings length 0 stands for "{}"
const u64 kEmptySettingsChecksum = checksum_bytes("{}");

struct Block {
  u64 off = 0;
  u64 len = 0;  // bytes; 0 = "{}" (no chunks)
};

using Bases = std::array<u64, 1 + kChildKeys>;  // root, then child[k-2]

// The data record a write leaves in a slot. Callers name every field, the flag last: with the
// flag first (padding after it) and a defaulted member, GCC 12 cleared the whole record with
// `rep stos` before storing the fields.
struct Record {
  std::string_view name;
  u64 hash = 0;
  std::string_view version;  // "" = removed
  Block settings;
  u64 checksum = 0;
  u64 settings_version = 0;
  std::string_view maintenance;  // "" = managed normally
  // The slot's generations when this package was created; nullptr: the package stays, so do
  // its bases (no word to rewrite).
  const Bases* base = nullptr;
  bool used = true;  // false: the slot is freed (Delete)
};

// One write, as Writer::publish carries it out. The slot comes last so every designated
// initializer names it last (GCC warns about omitted trailing members).
struct Write {
  const Record* record = nullptr;  // the slot's new data record; nullptr: the record stays
  Cause root_cause = Cause::kNone;  // kNone: no root bump
  u32 child_key = 0;                // 0: no child event
  Cause child_cause = Cause::kRescheduled;  // the cause of a child event (a root bump's children take root_cause)
  Block release{};                  // settings the old record used and the new one does not
  u64 follow_revision = 0;          // Header::follow_revision committed with this write (0: kept)
  u32 slot = 0;
};

u64 chunks_for(u64 len) { return (len + kChunk - 1) / kChunk; }

class Writer {
 public:
  explicit Writer(const Segment& seg)
      : seg_(seg), m_(*seg.mapping()), h_(*m_.header), j_(h_.journal), lock_(&h_.prefix.mutex) {
    if (lock_.owner_died()) repair();
    PKGCTX_CRASH_POINT("write", kLocked);
  }
  // Takes the mutex only if it is free (or its owner died); repairs in that case.
  Writer(const Segment& seg, std::try_to_lock_t)
      : seg_(seg), m_(*seg.mapping()), h_(*m_.header), j_(h_.journal), lock_(&h_.prefix.mutex, std::try_to_lock) {
    if (lock_.owns() && lock_.owner_died()) repair();
  }
  bool repaired() const { return lock_.owns() && lock_.owner_died(); }

  // Slot holding `name`, found without the seqlock: only writers change slots and we are one.
  std::optional<u32> find(std::string_view name, u64 hash) const {
    const unsigned bits = m_.index_slot_bits;
    u64 i = index_home(hash, m_.index_entries);
    for (u64 probes = 0; probes < m_.index_entries; ++probes, i = index_next(i, m_.index_entries)) {
      const u32 e = m_.index[i].load(std::memory_order_relaxed);
      if (e == kIndexEmpty) return std::nullopt;
      if (e == kIndexTomb || !index_tag_matches(e, hash, bits)) continue;
      const u32 s = index_slot(e, bits);
      if (s < m_.capacity && holds(s, name, hash)) return s;
    }
    return std::nullopt;
  }

  bool holds(u32 s, std::string_view name, u64 hash) const { return detail::holds_name(m_.slots[s].data, name, hash); }

  // The stored version of slot `s` compared without building a string.
  std::size_t version_len(u32 s) const {
    return detail::meta_version_len(m_.slots[s].data.w[dw::kMeta].load(std::memory_order_relaxed));
  }
  bool version_is(u32 s, std::string_view v) const {
    return version_len(s) == v.size() && detail::words_equal(&m_.slots[s].data.w[dw::kVersion], v);
  }

  u64 checksum(u32 s) const { return m_.slots[s].data.w[dw::kChecksum].load(std::memory_order_relaxed); }
  u64 settings_version(u32 s) const { return m_.slots[s].data.w[dw::kSettingsVersion].load(std::memory_order_relaxed); }
  bool maintenance_is(u32 s, std::string_view mode) const {
    const SlotData& d = m_.slots[s].data;
    return detail::meta_maintenance_len(d.w[dw::kMeta].load(std::memory_order_relaxed)) == mode.size() &&
           detail::words_equal(&d.w[dw::kMaintenance], mode);
  }
  // The stored version and maintenance mode copied into `buf` (no allocation under the mutex);
  // a length past the field is cut to it.
  std::string_view version(u32 s, std::array<char, kMaxVersion>& buf) const {
    const std::size_t n = std::min(version_len(s), kMaxVersion);
    detail::copy_out(buf.data(), &m_.slots[s].data.w[dw::kVersion], n);
    return {buf.data(), n};
  }
  std::string_view maintenance(u32 s, std::array<char, kMaxMaintenance>& buf) const {
    const SlotData& d = m_.slots[s].data;
    const std::size_t n = std::min(detail::meta_maintenance_len(d.w[dw::kMeta].load(std::memory_order_relaxed)), kMaxMaintenance);
    detail::copy_out(buf.data(), &d.w[dw::kMaintenance], n);
    return {buf.data(), n};
  }
  // The slot's live generations: the bases of a package created in it now.
  Bases gens_now(u32 s) const {
    const SlotGens& g = m_.slots[s].gens;
    Bases b;
    b[0] = g.root.load(std::memory_order_relaxed);
    for (u32 k = 0; k < kChildKeys; ++k) b[1 + k] = g.child[k].load(std::memory_order_relaxed);
    return b;
  }

  // --- caller-named causes ---
  // The ring byte of cause `name`: its entry in the segment's table, or a new entry written past
  // cause_count (invisible until a commit publishes the new count, see commit()). nullopt when
  // the table is full.
  std::optional<Cause> resolve_cause(std::string_view name) {
    const u32 count = std::min(h_.cause_count.load(std::memory_order_relaxed), kMaxCauseNames);
    for (u32 i = 0; i < count; ++i) {
      const CauseName& e = h_.cause_names[i];
      if (e.len.load(std::memory_order_relaxed) == name.size() && detail::words_equal(e.w, name))
        return static_cast<Cause>(kFirstNamedCause + i);
    }
    if (count == kMaxCauseNames) return std::nullopt;
    CauseName& e = h_.cause_names[count];
    for (auto& word : e.w) word.store(0, std::memory_order_relaxed);
    detail::copy_in(e.w, name.data(), name.size());
    e.len.store(name.size(), std::memory_order_relaxed);
    return static_cast<Cause>(kFirstNamedCause + count);
  }
  Block block(u32 s) const {
    const SlotData& d = m_.slots[s].data;
    return {d.w[dw::kSettingsOff].load(std::memory_order_relaxed), d.w[dw::kSettingsLen].load(std::memory_order_relaxed)};
  }

  // --- settings arena ---
  // Reserves chunks for `bytes` and copies them in. Fails (nothing changed) when full.
  std::optional<Block> store_settings(const std::string& bytes) {
    if (bytes == "{}") return Block{0, kEmptyLen};
    const u64 n = chunks_for(bytes.size());
    const u64 total = m_.arena_bytes / kChunk;
    if (n > total) return std::nullopt;
    std::optional<u64> start = find_run(hint_, total, n);
    if (!start) start = find_run(0, std::min(total, hint_ + n), n);
    if (!start) return std::nullopt;
    set_bits(*start, n, true);
    hint_ = *start + n;
    h_.settings_used.fetch_add(n * kChunk, std::memory_order_relaxed);
    detail::copy_in(&m_.arena[*start * kChunk / 8], bytes.data(), bytes.size());
    return Block{*start * kChunk, bytes.size()};
  }

  void release(Block b) {
    if (b.len == kEmptyLen) return;
    const u64 n = chunks_for(b.len);
    set_bits(b.off / kChunk, n, false);
    h_.settings_used.fetch_sub(n * kChunk, std::memory_order_relaxed);
  }

  // --- journal ---
  void prepare(u32 s) {
    j_.slot = s;
    j_.child_key = 0;
    j_.root_cause = static_cast<u8>(Cause::kNone);
    j_.child_cause = static_cast<u8>(Cause::kNone);
    // One block copy, not 53 word loads and stores: only the mutex holder (this writer) stores
    // into a slot's data words, so nothing changes them while they are copied (readers only read).
    static_assert(sizeof(SlotData::w) == sizeof(j_.old_data) && sizeof(AU64) == sizeof(u64));
    std::memcpy(j_.old_data, static_cast<const void*>(m_.slots[s].data.w), sizeof j_.old_data);
    j_.state.store(static_cast<u32>(JournalState::kPrepared), std::memory_order_release);
  }

  // Writes the whole data record of slot `s` under its seqlock.
  void write_data(u32 s, const Record& r) {
    SlotData& d = m_.slots[s].data;
    const u64 old_meta = d.w[dw::kMeta].load(std::memory_order_relaxed);
    detail::write_begin(d.seq);
    d.w[dw::kMeta].store(detail::meta(r.used, r.name.size(), r.version.size(), r.maintenance.size()),
                         std::memory_order_relaxed);
    d.w[dw::kHash].store(r.hash, std::memory_order_relaxed);
    PKGCTX_CRASH_POINT("write", kHalfRecord);
    store_padded(&d.w[dw::kName], detail::meta_name_len(old_meta), r.name);
    store_padded(&d.w[dw::kVersion], detail::meta_version_len(old_meta), r.version);
    d.w[dw::kSettingsOff].store(r.settings.off, std::memory_order_relaxed);
    d.w[dw::kSettingsLen].store(r.settings.len, std::memory_order_relaxed);
    d.w[dw::kChecksum].store(r.checksum, std::memory_order_relaxed);
    d.w[dw::kSettingsVersion].store(r.settings_version, std::memory_order_relaxed);
    store_padded(&d.w[dw::kMaintenance], detail::meta_maintenance_len(old_meta), r.maintenance, kMaxMaintenance / 8);
    if (r.base)
      for (std::size_t i = 0; i < r.base->size(); ++i) d.w[dw::kBaseRoot + i].store((*r.base)[i], std::memory_order_relaxed);
    detail::write_end(d.seq);
  }

  // Stores `bytes` zero-padded to whole words, each word once. Words past both the new and the
  // old length (`old_bytes`) are left alone: every writer zero-pads, so they are zero already
  // (and no reader looks past a length anyway). `max_words`: the field's size (a corrupt old length
  // stays in bounds); names and versions have the same word count.
  static_assert(kMaxName == kMaxVersion);
  static void store_padded(AU64* w, std::size_t old_bytes, std::string_view bytes, std::size_t max_words = kMaxName / 8) {
    std::size_t i = 0;
    for (; i + 8 <= bytes.size(); i += 8) {
      u64 v;
      std::memcpy(&v, bytes.data() + i, 8);
      w[i / 8].store(v, std::memory_order_relaxed);
    }
    if (i < bytes.size()) {
      w[i / 8].store(detail::tail_word(bytes.data() + i, bytes.size() - i), std::memory_order_relaxed);
      i += 8;
    }
    const std::size_t old_words = std::min<std::size_t>((old_bytes + 7) / 8, max_words);
    for (std::size_t k = i / 8; k < old_words; ++k) w[k].store(0, std::memory_order_relaxed);
  }

  // The one publish step of every write, under the mutex: journal the undo record, write the
  // record and the index, commit, move the generations, finish, then release what the old
  // record held. Whatever was reserved before it (settings chunks, a popped slot) is rebuilt
  // from the slots by a repair if the writer dies before the commit.
  // Inlined into each operation, so an event (no record) compiles without the record path:
  // ~5 ns of schedule_no_waiter (a call and the dead record branch; bench/micro_bench.cpp).
  [[gnu::always_inline]] void publish(const Write& w) {
    const u32 s = w.slot;
    PKGCTX_CRASH_POINT("write", kReserved);
    const SlotData& d = m_.slots[s].data;
    const bool was_used = detail::meta_used(d.w[dw::kMeta].load(std::memory_order_relaxed));
    const bool now_used = w.record ? w.record->used : was_used;
    if (w.record) {
      prepare(s);
      PKGCTX_CRASH_POINT("write", kPrepared);
      if (was_used && !now_used) index_erase(s, d.w[dw::kHash].load(std::memory_order_relaxed));
      write_data(s, *w.record);
      if (!was_used && now_used) index_insert(s, w.record->hash);
      // Only the mutex holder writes the counter: plain stores, no locked read-modify-write.
      if (was_used != now_used) {
        const u32 used = h_.used_slots.load(std::memory_order_relaxed);
        h_.used_slots.store(now_used ? used + 1 : used - 1, std::memory_order_relaxed);
      }
    }
    PKGCTX_CRASH_POINT("write", kWritten);
    commit(s, w.root_cause, w.child_key, w.child_cause, w.follow_revision);
    PKGCTX_CRASH_POINT("write", kCommitted);
    apply_commit();
    PKGCTX_CRASH_POINT("write", kApplied);
    finish();
    PKGCTX_CRASH_POINT("write", kFinished);
    release(w.release);
    if (was_used && !now_used) push_slot(s);
    PKGCTX_CRASH_POINT("write", kReleased);
  }

  // Records the cancellations of a write (the targets, so a redo is idempotent). `child_key`
  // 0 = none. A root bump moves every child generation too: a child token watches one word.
  // A caller-named cause used here that resolve_cause() added is published with the commit.
  void commit(u32 s, Cause root_cause, u32 child_key, Cause child_cause, u64 follow_revision) {
    const SlotGens& g = m_.slots[s].gens;
    j_.slot = s;
    j_.new_follow_revision = follow_revision;
    const bool root_bump = root_cause != Cause::kNone;
    j_.root_cause = static_cast<u8>(root_cause);
    j_.child_key = child_key;
    j_.child_cause = static_cast<u8>(child_key != 0 ? child_cause : Cause::kNone);
    // 0 (no count to publish) unless a caller-named cause is used: built-in causes, the common
    // case, leave the cause table's line alone.
    u32 count = 0;
    const Cause child_c = child_key != 0 ? child_cause : Cause::kNone;
    if (is_named_cause(root_cause) || is_named_cause(child_c)) {
      count = h_.cause_count.load(std::memory_order_relaxed);
      for (const Cause c : {root_cause, child_c})
        if (is_named_cause(c)) count = std::max<u32>(count, static_cast<u8>(c) - kFirstNamedCause + 1);
    }
    j_.new_cause_count = std::min(count, kMaxCauseNames);
    j_.new_root_gen = g.root.load(std::memory_order_relaxed) + (root_bump ? 1 : 0);
    for (u32 k = 0; k < kChildKeys; ++k) {
      const bool bump = root_bump || child_key == k + kFirstChildKey;
      j_.new_child_gen[k] = bump ? g.child[k].load(std::memory_order_relaxed) + 1 : 0;
    }
    j_.state.store(static_cast<u32>(JournalState::kCommitted), std::memory_order_release);
  }

  // Publishes the journal's cancellations: root first, then the child words (see SlotGens).
  // Idempotent: a repair redoes it for a writer that died after the commit.
  void apply_commit() {
    const u32 s = j_.slot;
    if (s >= m_.capacity) return;
    Slot& slot = m_.slots[s];
    bool cancelled = false;
    // The new name's entry is complete; publish it before any ring byte that uses it.
    if (j_.new_cause_count != 0 && j_.new_cause_count <= kMaxCauseNames &&
        j_.new_cause_count > h_.cause_count.load(std::memory_order_relaxed))
      h_.cause_count.store(j_.new_cause_count, std::memory_order_release);
    if (j_.new_follow_revision != 0) h_.follow_revision.store(j_.new_follow_revision, std::memory_order_relaxed);
    if (j_.root_cause != static_cast<u8>(Cause::kNone)) {
      set_ring_cause(slot.causes.root, j_.new_root_gen, static_cast<Cause>(j_.root_cause));
      slot.gens.root.store(j_.new_root_gen, std::memory_order_release);
      cancelled = true;
    }
    PKGCTX_CRASH_POINT("write", kHalfApplied);
    const u8 child_cause = j_.root_cause != static_cast<u8>(Cause::kNone) ? j_.root_cause : j_.child_cause;
    for (u32 k = 0; k < kChildKeys; ++k) {
      const u64 gen = j_.new_child_gen[k];
      if (gen == 0) continue;
      set_ring_cause(slot.causes.child[k], gen, static_cast<Cause>(child_cause));
      slot.gens.child[k].store(gen, std::memory_order_release);
      cancelled = true;
    }
    if (cancelled) {
      // Bump the wake word, then look for sleepers (seq_cst, paired with the daemon's raise of
      // the count before it acknowledges a wait): on a daemon's segment the syscall is made only
      // when a counted wait sleeps on this slot (unregistered sleepers wake within their slice).
      // A segment no daemon ever served has nobody to count waits: every cancellation wakes.
      slot.gens.wake.fetch_add(1, std::memory_order_seq_cst);
      if (m_.waiter_counts[s].load(std::memory_order_seq_cst) != 0 ||
          h_.daemon_state.load(std::memory_order_relaxed) == static_cast<u32>(DaemonState::kNone)) {
        futex::wake(&slot.gens.wake);
        h_.wakes.store(h_.wakes.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);  // mutex holder only
      }
    }
  }

  void finish() {
    j_.state.store(static_cast<u32>(JournalState::kIdle), std::memory_order_release);
    // Only the mutex holder writes it: a plain increment, not a locked read-modify-write.
    h_.commits.store(h_.commits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // --- index ---
  // Called with slot `s` already holding its record (used).
  void index_insert(u32 s, u64 hash) {
    maybe_rebuild_index(1);
    u64 i = index_home(hash, m_.index_entries);
    for (u64 probes = 0; probes < m_.index_entries; ++probes, i = index_next(i, m_.index_entries)) {
      const u32 e = m_.index[i].load(std::memory_order_relaxed);
      if (e == kIndexEmpty || e == kIndexTomb) {
        if (e == kIndexTomb) h_.index_tombstones.fetch_sub(1, std::memory_order_relaxed);
        m_.index[i].store(index_entry(hash, s, m_.index_slot_bits), std::memory_order_release);
        return;
      }
    }
    // No free entry although the counters promise one: the index disagrees with them (damaged).
    // A rebuild from the slots (`s` among them) leaves at most capacity of its entries taken.
    rebuild_index();
  }

  void index_erase(u32 s, u64 hash) {
    u64 i = index_home(hash, m_.index_entries);
    for (u64 probes = 0; probes < m_.index_entries; ++probes, i = index_next(i, m_.index_entries)) {
      const u32 e = m_.index[i].load(std::memory_order_relaxed);
      if (e == kIndexEmpty) return;
      if (e != kIndexTomb && index_slot(e, m_.index_slot_bits) == s) {
        m_.index[i].store(kIndexTomb, std::memory_order_release);
        h_.index_tombstones.fetch_add(1, std::memory_order_relaxed);
        return;
      }
    }
  }

  // --- free list ---
  bool has_free_slot() const { return h_.free_top.load(std::memory_order_relaxed) > 0; }
  u32 pop_slot() {
    const u32 top = h_.free_top.load(std::memory_order_relaxed) - 1;
    h_.free_top.store(top, std::memory_order_relaxed);
    return m_.freelist[top];
  }
  void push_slot(u32 s) {
    const u32 top = h_.free_top.load(std::memory_order_relaxed);
    m_.freelist[top] = s;
    h_.free_top.store(top + 1, std::memory_order_relaxed);
  }

  // Rebuilds everything derivable from the slots after a writer died inside a write.
  void repair() {
    h_.repairs.fetch_add(1, std::memory_order_relaxed);
    PKGCTX_CRASH_POINT("repair", kRepairStarted);
    const auto st = static_cast<JournalState>(j_.state.load(std::memory_order_acquire));
    if (st == JournalState::kPrepared && j_.slot < m_.capacity) {
      // Undo: restore the data words and leave the sequence even and new, so a reader that
      // copied half a record retries.
      SlotData& d = m_.slots[j_.slot].data;
      const u64 seq = d.seq.load(std::memory_order_relaxed);
      d.seq.store(seq | 1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_release);
      for (std::size_t i = 0; i < kDataWords; ++i) {
        if (i == kDataWords / 2) PKGCTX_CRASH_POINT("repair", kHalfRestored);
        d.w[i].store(j_.old_data[i], std::memory_order_relaxed);
      }
      d.seq.store((seq | 1) + 1, std::memory_order_release);
    } else if (st == JournalState::kCommitted) {
      apply_commit();  // redo: idempotent stores
    }
    PKGCTX_CRASH_POINT("repair", kResolved);
    j_.state.store(static_cast<u32>(JournalState::kIdle), std::memory_order_release);
    PKGCTX_CRASH_POINT("repair", kJournalIdle);

    // A sequence left odd anywhere else (should not happen) is closed.
    for (u32 s = 0; s < m_.capacity; ++s) {
      SlotData& d = m_.slots[s].data;
      const u64 seq = d.seq.load(std::memory_order_relaxed);
      if (seq & 1) d.seq.store(seq + 1, std::memory_order_release);
    }
    // Free list, bitmap and counters from the slots.
    const u64 total_chunks = m_.arena_bytes / kChunk;
    for (u64 w = 0; w < h_.bitmap_words; ++w) m_.bitmap[w].store(0, std::memory_order_relaxed);
    if (total_chunks % 64 != 0)
      m_.bitmap[h_.bitmap_words - 1].store(~u64{0} << (total_chunks % 64), std::memory_order_relaxed);
    u32 used = 0, top = 0;
    u64 settings_used = 0;
    for (u32 s = m_.capacity; s-- > 0;) {
      const SlotData& d = m_.slots[s].data;
      if (!detail::meta_used(d.w[dw::kMeta].load(std::memory_order_relaxed))) {
        m_.freelist[top++] = s;
        continue;
      }
      ++used;
      const Block b = block(s);
      if (b.len != kEmptyLen && b.off % kChunk == 0 && b.len <= m_.arena_bytes && b.off <= m_.arena_bytes - b.len) {
        set_bits(b.off / kChunk, chunks_for(b.len), true);
        settings_used += chunks_for(b.len) * kChunk;
      }
    }
    PKGCTX_CRASH_POINT("repair", kRecounted);
    h_.free_top.store(top, std::memory_order_relaxed);
    h_.used_slots.store(used, std::memory_order_relaxed);
    h_.settings_used.store(settings_used, std::memory_order_relaxed);
    rebuild_index();
  }

  void maybe_rebuild_index(u32 adding) {
    const u64 load = u64{h_.used_slots.load(std::memory_order_relaxed)} + adding +
                     h_.index_tombstones.load(std::memory_order_relaxed);
    // At most 15/16 of the entries taken (a full table takes 0.8): probes stay short and an
    // insert always finds a free entry, and a rebuild waits for the tombstones of at least
    // 0.17 × capacity deletes, which pay for it.
    if (load * 16 > m_.index_entries * 15) rebuild_index();
  }

  // Readers retry while index_seq is odd.
  void rebuild_index() {
    // A rebuild cut short by a crash left the sequence odd: keep it odd (readers go on retrying)
    // rather than flip it even while the index is empty, and close it once below.
    if (h_.index_seq.load(std::memory_order_relaxed) & 1)
      std::atomic_thread_fence(std::memory_order_release);
    else
      detail::write_begin(h_.index_seq);
    for (u64 i = 0; i < m_.index_entries; ++i) m_.index[i].store(kIndexEmpty, std::memory_order_relaxed);
    PKGCTX_CRASH_POINT("repair", kIndexEmptied);
    for (u32 s = 0; s < m_.capacity; ++s) {
      const SlotData& d = m_.slots[s].data;
      if (!detail::meta_used(d.w[dw::kMeta].load(std::memory_order_relaxed))) continue;
      const u64 hash = d.w[dw::kHash].load(std::memory_order_relaxed);
      u64 i = index_home(hash, m_.index_entries);
      while (m_.index[i].load(std::memory_order_relaxed) != kIndexEmpty) i = index_next(i, m_.index_entries);
      m_.index[i].store(index_entry(hash, s, m_.index_slot_bits), std::memory_order_relaxed);
    }
    h_.index_tombstones.store(0, std::memory_order_relaxed);
    detail::write_end(h_.index_seq);
  }

  // A revision applied by no write (its change was none): stored alone, under the mutex.
  void set_follow_revision(u64 revision) {
    if (revision != 0) h_.follow_revision.store(revision, std::memory_order_relaxed);
  }

  const Segment& segment() const { return seg_; }
  static inline thread_local u64 hint_ = 0;  // next-fit start; only a hint

 private:

  bool bit(u64 c) const { return (m_.bitmap[c / 64].load(std::memory_order_relaxed) >> (c % 64)) & 1; }

  void set_bits(u64 start, u64 n, bool value) {
    for (u64 c = start; c < start + n; ++c) {
      AU64& w = m_.bitmap[c / 64];
      const u64 mask = u64{1} << (c % 64);
      const u64 v = w.load(std::memory_order_relaxed);
      w.store(value ? v | mask : v & ~mask, std::memory_order_relaxed);
    }
  }

  // First run of `n` free chunks starting in [from, to).
  std::optional<u64> find_run(u64 from, u64 to, u64 n) const {
    u64 run = 0, start = from;
    const u64 total = m_.arena_bytes / kChunk;
    for (u64 c = from; c < to || (run > 0 && c < total);) {
      if (run == 0 && c >= to) break;
      const u64 word = m_.bitmap[c / 64].load(std::memory_order_relaxed);
      if (c % 64 == 0 && word == ~u64{0}) {
        run = 0;
        c += 64;
        continue;
      }
      if (c % 64 == 0 && word == 0 && c + 64 <= total) {
        if (run == 0) start = c;
        run += 64;
        c += 64;
      } else {
        if (bit(c)) {
          run = 0;
        } else {
          if (run == 0) start = c;
          ++run;
        }
        ++c;
      }
      if (run >= n) return start;
    }
    return std::nullopt;
  }

  const Segment& seg_;
  detail::Mapping& m_;
  Header& h_;
  Journal& j_;
  detail::RobustLock lock_;
};

Limits limits_of(const Segment& seg) {
  Limits l;
  l.max_name = seg.header().max_name;
  l.max_version = seg.header().max_version;
  l.max_settings = seg.header().max_settings;
  return l;
}

Error read_only_error(const Segment& seg) {
  return make_error(Errc::permission_denied, "segment " + seg.name() + " is mapped read-only; writes go through the daemon");
}

}  // namespace

// --- Store -------------------------------------------------------------------------------------

Store::Store(Segment segment) : seg_(std::move(segment)), view_(seg_), limits_(limits_of(seg_)) {}

Result<Store> Store::create(const std::string& name, const SegmentOptions& opts) {
  auto seg = Segment::create(name, opts);
  if (!seg) return seg.error();
  return Store(std::move(*seg));
}

Result<Store> Store::open(const std::string& name, const std::string& dir) {
  auto seg = Segment::open(name, Access::read_write, dir);
  if (!seg) return seg.error();
  return Store(std::move(*seg));
}

namespace {

// Validates the §2.1 options (nothing touched yet).
Result<void> check_options(const UpdateOptions& o) {
  if (!o.maintenance.empty())  // "" is valid: the common case costs no call
    if (auto v = validate_maintenance(o.maintenance); !v) return v.error();
  if (!o.cause.empty())
    if (auto v = validate_cause_name(o.cause); !v) return v.error();
  return {};
}

// The answers of update(), filled in place: GCC clears a braced UpdateResult temporary with
// `rep stos` first, which costs more than the rest of the answer.
UpdateResult without_token(Change change) {
  UpdateResult r;
  r.change = change;
  return r;
}
// A version change: a new root token.
UpdateResult with_token(const Segment& seg, u32 s, Change change) {
  UpdateResult r = without_token(change);
  r.token.emplace(core::Token::snapshot(seg.mapping(), s, kEventUpdate));
  return r;
}

Error too_many_causes(const Segment& seg, std::string_view name) {
  return make_error(Errc::too_many_causes, "cause \"" + std::string(name) + "\": segment " + seg.name() + " already holds " +
                                               std::to_string(kMaxCauseNames) + " distinct cause names");
}

}  // namespace

Result<UpdateResult> Store::update(std::string_view name, std::string_view version, const Settings& settings,
                                   const UpdateOptions& opts) {
  if (auto v = validate_name(name, limits_); !v) return v.error();
  if (auto v = check_version(version, limits_); !v) return v.error();
  if (auto v = check_options(opts); !v) return v.error();
  if (settings.canonical().size() > limits_.max_settings)
    return make_error(Errc::settings_too_large, "settings of \"" + std::string(name) + "\": " +
                                                    std::to_string(settings.canonical().size()) +
                                                    " canonical bytes, the limit is " + std::to_string(limits_.max_settings));
  if (!seg_.writable()) return read_only_error(seg_);
  const u64 hash = detail::hash_name(name);
  const u64 sum = settings.checksum();
  Writer w(seg_);
  Cause version_cause = Cause::kVersionChanged;
  if (!opts.cause.empty()) {
    const std::optional<Cause> c = w.resolve_cause(opts.cause);
    if (!c) return too_many_causes(seg_, opts.cause);
    version_cause = *c;
  }
  const std::optional<u32> found = w.find(name, hash);
  auto full = [&]() {
    return make_error(Errc::settings_full, "settings area of segment " + seg_.name() + " has no room for " +
                                               std::to_string(settings.canonical().size()) + " bytes (" +
                                               std::to_string(seg_.header().settings_used.load()) + " of " +
                                               std::to_string(seg_.header().arena_bytes) + " in use)");
  };

  if (!found) {
    if (!w.has_free_slot())
      return make_error(Errc::table_full, "package table of segment " + seg_.name() + " is full (" +
                                              std::to_string(seg_.capacity()) + " packages)");
    const auto b = w.store_settings(settings.canonical());
    if (!b) return full();
    const u32 s = w.pop_slot();
    const Bases base = w.gens_now(s);
    const Record r{name, hash, version, *b, sum, opts.settings_version, opts.maintenance, &base, true};
    w.publish({.record = &r, .follow_revision = opts.follow_revision, .slot = s});
    return with_token(seg_, s, Change::created);
  }

  const u32 s = *found;
  const bool same_version = w.version_is(s, version) && !opts.force;
  const bool was_removed = w.version_len(s) == 0;
  const bool same_settings = w.checksum(s) == sum;
  const bool same_extras = w.settings_version(s) == opts.settings_version && w.maintenance_is(s, opts.maintenance);
  if (same_version && same_settings && same_extras) {
    w.set_follow_revision(opts.follow_revision);
    return without_token(Change::none);
  }

  // Settings bytes: reuse the stored block when the checksum is unchanged.
  const Block old = w.block(s);
  const std::optional<Block> nb = same_settings ? std::optional<Block>(old) : w.store_settings(settings.canonical());
  if (!nb) return full();
  const Record r{name, hash, version, *nb, sum, opts.settings_version, opts.maintenance, nullptr, true};
  const bool version_change = !same_version;  // includes re-creating a removed package and force
  w.publish({.record = &r,
             .root_cause = version_change ? version_cause : Cause::kNone,
             .release = same_settings ? Block{} : old,
             .follow_revision = opts.follow_revision,
             .slot = s});
  if (!version_change) return without_token(Change::settings);
  return with_token(seg_, s, was_removed ? Change::created : Change::version);
}

Result<bool> Store::update_settings(std::string_view name, const Settings& settings, std::uint64_t settings_version) {
  if (auto v = validate_name(name, limits_); !v) return v.error();
  if (settings.canonical().size() > limits_.max_settings)
    return make_error(Errc::settings_too_large, "settings of \"" + std::string(name) + "\": " +
                                                    std::to_string(settings.canonical().size()) +
                                                    " canonical bytes, the limit is " + std::to_string(limits_.max_settings));
  if (!seg_.writable()) return read_only_error(seg_);
  const u64 hash = detail::hash_name(name);
  const u64 sum = settings.checksum();
  Writer w(seg_);
  const std::optional<u32> found = w.find(name, hash);
  // Only a tracked package: nothing is created, and a removed one keeps its "{}" (§2: removed
  // means no pending settings until the next Update re-creates it).
  if (!found || w.version_len(*found) == 0) return false;
  const u32 s = *found;
  const bool same_settings = w.checksum(s) == sum;
  if (same_settings && w.settings_version(s) == settings_version) return false;
  const Block old = w.block(s);
  const std::optional<Block> nb = same_settings ? std::optional<Block>(old) : w.store_settings(settings.canonical());
  if (!nb)
    return make_error(Errc::settings_full, "settings area of segment " + seg_.name() + " has no room for " +
                                               std::to_string(settings.canonical().size()) + " bytes");
  // Version and maintenance are kept.
  std::array<char, kMaxVersion> version_buf;
  std::array<char, kMaxMaintenance> maintenance_buf;
  const std::string_view version = w.version(s, version_buf), maintenance = w.maintenance(s, maintenance_buf);
  const Record r{name, hash, version, *nb, sum, settings_version, maintenance, nullptr, true};
  w.publish({.record = &r, .release = same_settings ? Block{} : old, .slot = s});
  return true;
}

Result<std::optional<core::Token>> Store::handle_event(int event, std::string_view name, std::string_view cause) {
  if (!is_valid_event(event)) return validate_event(event).error();  // the message from the one place
  if (auto v = validate_name(name, limits_); !v) return v.error();
  if (!cause.empty())
    if (auto v = validate_cause_name(cause); !v) return v.error();
  if (!seg_.writable()) return read_only_error(seg_);
  const u64 hash = detail::hash_name(name);
  Writer w(seg_);
  std::optional<Cause> named;
  if (!cause.empty()) {
    named = w.resolve_cause(cause);
    if (!named) return too_many_causes(seg_, cause);
  }
  const std::optional<u32> found = w.find(name, hash);
  if (!found) return std::optional<core::Token>();
  const u32 s = *found;
  if (event == kEventRemove) {
    const Record r{name, hash, "", Block{0, kEmptyLen}, kEmptySettingsChecksum, 0, "", nullptr, true};
    w.publish({.record = &r, .root_cause = named.value_or(Cause::kRemoved), .release = w.block(s), .slot = s});
  } else if (event == kEventUpdate) {
    w.publish({.root_cause = named.value_or(Cause::kUpdateEvent), .slot = s});
  } else {
    w.publish({.child_key = static_cast<u32>(event), .child_cause = named.value_or(Cause::kRescheduled), .slot = s});
  }
  return std::optional<core::Token>(core::Token::snapshot(seg_.mapping(), s, static_cast<u32>(event)));
}

Result<bool> Store::erase(std::string_view name, std::uint64_t follow_revision) {
  if (auto v = validate_name(name, limits_); !v) return v.error();
  if (!seg_.writable()) return read_only_error(seg_);
  const u64 hash = detail::hash_name(name);
  Writer w(seg_);
  const std::optional<u32> found = w.find(name, hash);
  if (!found || w.version_len(*found) != 0) {  // absent, or re-created since the remove
    w.set_follow_revision(follow_revision);
    return false;
  }
  const u32 s = *found;
  static constexpr Bases kNoBases{};
  const Record r{"", 0, "", Block{0, kEmptyLen}, 0, 0, "", &kNoBases, false};
  w.publish({.record = &r, .root_cause = Cause::kDeleted, .release = w.block(s), .follow_revision = follow_revision,
             .slot = s});
  return true;
}

void Store::set_follow_revision(std::uint64_t revision) {
  if (!seg_.writable() || revision == 0) return;
  Writer w(seg_);
  w.set_follow_revision(revision);
}

std::uint64_t Store::follow_revision() const noexcept {
  return seg_.header().follow_revision.load(std::memory_order_relaxed);
}

Result<bool> Store::need_update(std::string_view name, std::string_view version, std::uint64_t checksum,
                                std::optional<std::string_view> maintenance) const {
  if (auto v = validate_name(name, limits_); !v) return v.error();
  if (maintenance)
    if (auto v = validate_maintenance(*maintenance); !v) return v.error();
  return view_.need_update(name, version, checksum, maintenance);
}

Result<Settings> Store::pending_settings(std::string_view name) const {
  auto r = view_.read(name, true);
  if (!r) return r.error();
  return Settings::from_canonical(std::move(r->settings), r->checksum);
}

void Store::retire() { seg_.retire_mapped(); }

bool Store::repair_if_needed() {
  if (!seg_.writable()) return false;
  Writer w(seg_, std::try_to_lock);
  return w.repaired();
}

}  // namespace pkgctx
