// pkgctx/layout.hpp — the shared-memory layout: the single truth shared by the store (writers),
// the worker SDK and pkgctl (readers). Internal: plugin authors use worker-sdk's API instead.
//
// A segment is one POSIX shared-memory object "/<name>" laid out as:
//
//   [Prefix  ]  stable across every layout version: identity, state, the writers' mutex and the
//               "retirement contract" (where each slot's generations and wake word are), so a
//               newer daemon can retire a segment whose layout it does not otherwise know.
//   [Header  ]  layout v2: limits, daemon liveness, occupancy counters, crash journal, offsets.
//   [Slots   ]  capacity × Slot (640 bytes): generations, cause rings, seqlocked package data.
//   [Waiters ]  capacity × u32 waiter counts (v3), written by the daemon alone (see below).
//   [Index   ]  open-addressing hash of name → slot: atomic 32-bit entries, a probe starting on
//               a 64-byte line (see "Index entries" below).
//   [FreeList]  capacity × u32 free slot numbers (writer-only, rebuilt on crash repair).
//   [Bitmap  ]  one bit per 64-byte chunk of the settings arena (writer-only, rebuilt).
//   [Arena   ]  canonical settings bytes, 64-byte chunks.
//
// Waiter counts: one u32 per slot, the number of registered waits the daemon knows of on that
// slot's wake word, so a writer makes the futex-wake syscall only when someone sleeps there.
// Only the daemon writes them, on behalf of registered workers (their lease pages say what they
// wait on; the daemon raises the count and acknowledges before the worker sleeps, and lowers it
// when the wait ends or the worker dies). Workers map the whole table read-only: no worker can
// zero or inflate another's count. A wait without a registration sleeps in bounded slices. A
// segment no daemon ever served (daemon_state kNone: an embedded store) counts nothing: its
// writers wake on every cancellation.
// (v2 had a group-writable companion object "/<name>.waiters" instead: any worker could zero it.)
//
// Memory ordering, in one paragraph: generation counters only grow; a writer stores the new
// cause into the ring *before* the release-store of the generation, so a reader that
// acquire-loads a changed generation sees the cause. Package data is published under a per-slot
// sequence lock (odd while written); readers copy with relaxed atomic loads and validate the
// sequence after an acquire fence. Every field a reader copies is an atomic word, so there is no
// data race anywhere (TSan-clean), and every value read from the segment is bounds-checked
// before use: a corrupt segment yields errors, never wild reads.
#pragma once

#include "pkgctx/types.hpp"

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <pthread.h>
#include <type_traits>

namespace pkgctx::layout {

inline constexpr std::uint64_t kMagic = 0x31585443474b50ULL;  // "PKGCTX1\0" little-endian
// v2: cause rings of 16 entries (v1: 8), so a token's cause stays exact for 8 further events;
// settings_version, maintenance, per-package base generations and caller-named causes (§2.1).
// v3: waiter counts in the table, written by the daemon alone (v2's group-writable board is
// gone), and the followed cluster store's applied revision (Header::follow_revision, DESIGN §10),
// committed by the same journal as the write that applied it.
// v4: 32-bit index entries (fingerprint and slot) and about 1.25 entries per slot, every probe
// starting on a line: 100k packages' index is 640 KB instead of 2 MB, so a cold name lookup finds
// it in cache and pays for the slot's line alone (DESIGN §8).
inline constexpr std::uint32_t kLayoutVersion = 4;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::size_t kMaxName = 128;
inline constexpr std::size_t kMaxVersion = 128;
inline constexpr std::size_t kChunk = 64;          // settings arena allocation unit
inline constexpr std::uint32_t kFirstChildKey = 2;
inline constexpr std::uint32_t kLastChildKey = 7;
inline constexpr std::uint32_t kChildKeys = kLastChildKey - kFirstChildKey + 1;
inline constexpr std::uint32_t kCauseRing = 16;    // causes remembered per generation counter
inline constexpr std::size_t kMaxMaintenance = 64;  // maintenance mode: ≤ 64 bytes of [A-Za-z0-9._-]
inline constexpr std::size_t kMaxCauseName = 32;    // caller-named cause: [a-z][a-z0-9_]{0,31}
inline constexpr std::uint32_t kMaxCauseNames = 64; // distinct caller-named causes per segment

using u8 = std::uint8_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
using AU32 = std::atomic<u32>;
using AU64 = std::atomic<u64>;

static_assert(AU32::is_always_lock_free && AU64::is_always_lock_free,
              "shared atomics must be lock-free (and never 16 bytes: read-only maps fault)");

// Segment life cycle (Prefix::state). Written last by the creator: an opener that sees
// kInitialising knows "not yet", not "never".
enum class State : u32 { kInitialising = 0, kLive = 1, kRetired = 2 };

// Why a token was cancelled (pkgctx/types.hpp). Stored in cause rings, one byte per generation:
// 0..kMaxCause the built-in causes, kFirstNamedCause + i the caller-named cause i of the
// segment's cause table (Header::cause_names).
using Cause = ::pkgctx::Cause;
inline constexpr u8 kMaxCause = 6;
inline constexpr u8 kFirstNamedCause = kMaxCause + 1;
static_assert(kFirstNamedCause + kMaxCauseNames <= 256);
inline constexpr bool is_named_cause(Cause c) { return static_cast<u8>(c) >= kFirstNamedCause; }

// A cause ring: byte (gen % kCauseRing) is the cause that produced generation gen, so a token
// cancelled by generation g reads its exact cause until generation g + kCauseRing overwrites it:
// the cancelling event and 15 further ones (DESIGN §2 promises 8). Each byte lives in one
// atomic word; only writers holding the mutex (or retiring the segment) store into a ring.
struct CauseRing {
  AU64 w[kCauseRing / 8];
};
static_assert(kCauseRing % 8 == 0 && (kCauseRing & (kCauseRing - 1)) == 0);

inline Cause ring_cause(const CauseRing& r, u64 gen) {
  const u64 i = gen % kCauseRing;
  const u8 c = static_cast<u8>(r.w[i / 8].load(std::memory_order_relaxed) >> (i % 8 * 8));
  // A named cause is returned as is: whoever prints it resolves it through the cause table,
  // which validates the index and the name (a corrupt one is an error there).
  return c < kFirstNamedCause + kMaxCauseNames ? static_cast<Cause>(c) : Cause::kNone;  // a corrupt byte says nothing
}
inline void set_ring_cause(CauseRing& r, u64 gen, Cause c) {
  const u64 i = gen % kCauseRing;
  const unsigned shift = static_cast<unsigned>(i % 8) * 8;
  AU64& word = r.w[i / 8];
  word.store((word.load(std::memory_order_relaxed) & ~(u64{0xff} << shift)) | (u64{static_cast<u8>(c)} << shift),
             std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------
// Prefix: frozen. Any future layout version keeps these fields at these offsets.
struct alignas(kCacheLine) Prefix {
  u64 magic;                 // kMagic; written by the creator before anything else
  u32 layout_version;        // kLayoutVersion of the creator
  u32 prefix_bytes;          // sizeof(Prefix)
  u64 total_bytes;           // size of the whole object
  u64 abi_fingerprint;       // abi_fingerprint() of the creator (sizes, alignments, offsets)
  u64 epoch;                 // random per creation; tokens carry it
  AU32 state;                // State; kLive is the ready marker, written last
  u32 capacity;              // number of slots
  u64 slots_offset;          // retirement contract: slot i at slots_offset + i * slot_stride
  u32 slot_stride;
  u32 root_gen_offset;       //   … its first 64-bit generation at this offset in the slot
  u32 wake_offset;           //   … its 32-bit futex wake word at this offset in the slot
  u32 gen_count;             //   … gen_count consecutive 64-bit generations (0 means 1); to
                             //   retire, bump every one of them, then the wake word
  // Writers' robust, process-shared mutex (own cache line).
  alignas(kCacheLine) pthread_mutex_t mutex;
};

// ---------------------------------------------------------------------------------------------
// Crash journal: the undo record of the one write in progress. Written and read only by the
// mutex holder. See store.cpp for the protocol.
enum class JournalState : u32 { kIdle = 0, kPrepared = 1, kCommitted = 2 };

inline constexpr std::size_t kDataWords = 53;  // SlotData::w

struct Journal {
  AU32 state;         // JournalState; every other field is complete before it moves
  u32 slot;
  u32 child_key;      // 0 = no child bump
  u8 root_cause;      // Cause of the root bump, kNone = no root bump
  u8 child_cause;
  u8 pad[2];
  u64 new_root_gen;   // generation values to store on commit (stores, so redo is idempotent)
  u64 new_child_gen[kChildKeys];  // 0 = this child generation does not move
  u64 old_data[kDataWords];  // the slot's data words before the write
  u32 old_used;       // slot was in use before the write
  u32 new_cause_count;  // Header::cause_count to store on commit (a name the write registered; 0: unchanged)
  u64 new_follow_revision;  // Header::follow_revision to store on commit (0: unchanged)
};

// One caller-named cause (Header::cause_names): written once, by the mutex holder, before the
// commit that publishes cause_count past it; never changed afterwards.
struct CauseName {
  AU64 len;                       // 1..kMaxCauseName
  AU64 w[kMaxCauseName / 8];      // the name, zero-padded
};

struct alignas(kCacheLine) Header {
  Prefix prefix;

  // Limits fixed at creation (≤ the layout maxima).
  u32 max_name;
  u32 max_version;
  u64 max_settings;

  // Regions.
  u64 index_offset;
  u64 index_entries;    // 32-bit entries, a multiple of kIndexLine
  u64 freelist_offset;
  u64 bitmap_offset;
  u64 bitmap_words;
  u64 arena_offset;
  u64 arena_bytes;      // multiple of kChunk
  u64 waiters_offset;   // capacity × AU32 waiter counts (daemon-written)
  // The epoch of the segment this one replaced when the daemon retired it (0: none), so a token
  // printed from the old one still reads "cancelled: segment_retired" in a fresh process.
  u64 predecessor_epoch;

  // Daemon liveness (written by the owning daemon; 0 = no daemon ever attached).
  alignas(kCacheLine) std::atomic<std::int32_t> daemon_pid;
  AU32 daemon_state;     // DaemonState
  AU64 daemon_start_realtime_ns;
  AU64 heartbeat_mono_ns;   // CLOCK_MONOTONIC of the last heartbeat
  AU64 heartbeat_interval_ns;
  AU64 created_realtime_ns;

  // Occupancy and statistics (writers under the mutex; readers relaxed, informational).
  alignas(kCacheLine) AU32 used_slots;
  AU32 free_top;          // entries in the free list
  AU64 settings_used;     // bytes of arena in use (whole chunks)
  AU64 commits;           // committed writes
  AU64 repairs;           // crash repairs performed
  AU64 index_tombstones;
  AU64 index_seq;         // odd while the index is being rebuilt; readers retry
  AU64 wakes;             // futex-wake syscalls writers made (someone waited on the slot)

  alignas(kCacheLine) Journal journal;

  // Caller-named causes (DESIGN §2.1). Entries below cause_count are immutable; cause_count
  // only grows, stored (release) by a commit before the generations that use the new name.
  alignas(kCacheLine) AU32 cause_count;
  u32 cause_pad;
  CauseName cause_names[kMaxCauseNames];

  // The last revision of the followed cluster store (etcd, DESIGN §10) whose change this segment
  // holds (0: none applied). Stored by the mutex holder with the commit of the write that applied
  // that revision (Journal::new_follow_revision), so a crash never separates the two; readers
  // load it relaxed.
  alignas(kCacheLine) AU64 follow_revision;
};

enum class DaemonState : u32 { kNone = 0, kRunning = 1, kStopped = 2 };

// ---------------------------------------------------------------------------------------------
// A package slot.
//
// Line 0 (gens): read by every cancelled() check, written only on cancellation.
// Lines 1..2 (causes): read after a token sees cancellation.
// Lines 3..7 (data): seqlocked package record.
//
// Every token watches exactly one word, so cancelled() is one acquire load and one compare: a
// root token watches `root`; a child token of key k watches `child[k-2]`, which moves on every
// root bump *and* on HandleEvent(k) (a child is cancelled when its root is). A root bump stores
// `root` first and the child words after it, so a reader that sees a child word move also sees
// the root move. child[k-2] - root = the key-k events in the slot's life.
struct alignas(kCacheLine) SlotGens {
  AU64 root;                 // bumped by root events, version changes, delete, retirement
  AU64 child[kChildKeys];    // child[k-2]: bumped with every root bump and by HandleEvent(k)
  AU32 wake;                 // futex word: bumped on every cancellation in this slot
  u32 pad;
};

// The one word a token of event key `key` watches: `root` for the root keys, child[key-2] for a
// child key (keys are validated by whoever took them).
inline const AU64& watched_word(const SlotGens& g, u32 key) {
  return key >= kFirstChildKey ? g.child[key - kFirstChildKey] : g.root;
}

struct alignas(kCacheLine) SlotCauses {
  CauseRing root;                 // the cause that produced each root generation
  CauseRing child[kChildKeys];    // the same for child[k-2] (root causes included)
};

// Data word indexes (each an AU64).
namespace dw {
inline constexpr std::size_t kMeta = 0;      // bit 0: used; bits 8..15 name len; 16..23 version len;
                                             // 24..31 maintenance len
inline constexpr std::size_t kHash = 1;      // name hash (XXH3-64)
inline constexpr std::size_t kSettingsOff = 2;  // byte offset in the arena
inline constexpr std::size_t kSettingsLen = 3;  // 0 means "{}"
inline constexpr std::size_t kChecksum = 4;
inline constexpr std::size_t kName = 5;      // 16 words
inline constexpr std::size_t kVersion = 21;  // 16 words
inline constexpr std::size_t kSettingsVersion = 37;  // settings schema version (§2.1)
inline constexpr std::size_t kMaintenance = 38;      // 8 words: the maintenance mode (§2.1)
// The slot's generations when this package was created (a slot outlives its tenants: old tokens
// need the words to keep moving forward), so what is shown for a package is its own history.
inline constexpr std::size_t kBaseRoot = 46;
inline constexpr std::size_t kBaseChild = 47;        // kChildKeys words
}  // namespace dw
static_assert(dw::kMaintenance == dw::kSettingsVersion + 1 && dw::kBaseRoot == dw::kMaintenance + kMaxMaintenance / 8);
static_assert(dw::kBaseChild + kChildKeys == kDataWords);

struct alignas(kCacheLine) SlotData {
  AU64 seq;                  // even: stable; odd: a writer is inside
  AU64 w[kDataWords];
};

struct alignas(kCacheLine) Slot {
  SlotGens gens;
  SlotCauses causes;
  SlotData data;
};

// Index entries (v4). Linear probing over 32-bit entries; a name's probe starts at the first
// entry of its home line (from the hash's high half), so it usually reads that one line. An entry
// is (fingerprint << slot_bits) | (slot + 1): slot_bits = bit_width(capacity + 1), so the slot
// field is never all ones and kIndexTomb is no entry; the fingerprint is the hash's low
// 32 - slot_bits bits (≥ 5 at the largest capacity), which spares most slot visits of a probe
// that passes other names. A reader still checks the slot against the capacity (a corrupt entry
// never indexes outside the table) and the slot's record for the name.
using IndexEntry = AU32;
inline constexpr u32 kIndexEmpty = 0;
inline constexpr u32 kIndexTomb = ~u32{0};
inline constexpr u64 kIndexLine = kCacheLine / sizeof(IndexEntry);  // entries per line
inline constexpr u32 kMaxCapacity = u32{1} << 26;
// Entries for a capacity: 1.25 per slot, whole lines, so a full table loads it to 0.8 at most.
inline constexpr u64 index_entries_for(u32 capacity) {
  return (u64{capacity} + capacity / 4 + kIndexLine) / kIndexLine * kIndexLine;
}
inline constexpr unsigned index_slot_bits(u32 capacity) { return static_cast<unsigned>(std::bit_width(u64{capacity} + 1)); }
static_assert(index_slot_bits(kMaxCapacity) <= 27, "the largest table keeps 5 fingerprint bits");
// First entry of the probe for `hash` (a multiply maps the high half onto the lines).
inline constexpr u64 index_home(u64 hash, u64 entries) {
  return (((hash >> 32) * (entries / kIndexLine)) >> 32) * kIndexLine;
}
// The entry after `i` in a probe, wrapping at the end of the index.
inline constexpr u64 index_next(u64 i, u64 entries) { return i + 1 == entries ? 0 : i + 1; }
inline constexpr u32 index_entry(u64 hash, u32 slot, unsigned slot_bits) {
  return static_cast<u32>(hash << slot_bits) | (slot + 1);
}
// The slot an entry names; an entry whose slot field is 0 (kIndexEmpty) yields ~0u.
inline constexpr u32 index_slot(u32 entry, unsigned slot_bits) {
  return (entry & ((u32{1} << slot_bits) - 1)) - 1;
}
inline constexpr bool index_tag_matches(u32 entry, u64 hash, unsigned slot_bits) {
  return ((entry ^ static_cast<u32>(hash << slot_bits)) >> slot_bits) == 0;
}

// --- static checks ----------------------------------------------------------------------------
static_assert(std::is_standard_layout_v<Prefix> && std::is_standard_layout_v<Header>);
static_assert(std::is_standard_layout_v<Slot> && std::is_trivially_destructible_v<Slot>);
// The frozen prefix: every field at the offset and size any pkgctx, past or future, reads it
// from to identify a segment and retire it (Segment::retire). Changing one of these breaks the
// retirement of old segments by new daemons: do not, whatever the layout version.
#define PKGCTX_FROZEN(field, offset, size) \
  static_assert(offsetof(Prefix, field) == (offset) && sizeof(Prefix::field) == (size), "frozen prefix: " #field)
PKGCTX_FROZEN(magic, 0, 8);
PKGCTX_FROZEN(layout_version, 8, 4);
PKGCTX_FROZEN(prefix_bytes, 12, 4);
PKGCTX_FROZEN(total_bytes, 16, 8);
PKGCTX_FROZEN(abi_fingerprint, 24, 8);
PKGCTX_FROZEN(epoch, 32, 8);
PKGCTX_FROZEN(state, 40, 4);
PKGCTX_FROZEN(capacity, 44, 4);
PKGCTX_FROZEN(slots_offset, 48, 8);
PKGCTX_FROZEN(slot_stride, 56, 4);
PKGCTX_FROZEN(root_gen_offset, 60, 4);
PKGCTX_FROZEN(wake_offset, 64, 4);
PKGCTX_FROZEN(gen_count, 68, 4);
PKGCTX_FROZEN(mutex, 128, sizeof(pthread_mutex_t));  // the platform's robust mutex, own line
#undef PKGCTX_FROZEN
static_assert(kMagic == 0x31585443474b50ULL && static_cast<u32>(State::kLive) == 1 && static_cast<u32>(State::kRetired) == 2,
              "frozen prefix: the magic and the state values");
static_assert(sizeof(SlotGens) == kCacheLine, "a check touches exactly one line per slot");
static_assert(sizeof(SlotCauses) == 2 * kCacheLine);
static_assert(sizeof(Slot) == 640);
static_assert(offsetof(Slot, gens) == 0 && offsetof(SlotGens, root) == 0);
static_assert(offsetof(SlotGens, child) == offsetof(SlotGens, root) + 8, "retirement: generations are consecutive");

inline constexpr std::size_t kRootGenOffset = offsetof(Slot, gens) + offsetof(SlotGens, root);
inline constexpr std::size_t kWakeOffset = offsetof(Slot, gens) + offsetof(SlotGens, wake);
inline constexpr std::uint32_t kGenCount = 1 + kChildKeys;

// A fingerprint of everything two builds must agree on to share a segment.
constexpr u64 abi_fingerprint() {
  const u64 parts[] = {sizeof(Prefix),       sizeof(Header),          sizeof(Slot),
                       sizeof(SlotData),     sizeof(Journal),         alignof(Slot),
                       sizeof(pthread_mutex_t), offsetof(Header, journal), offsetof(Header, daemon_pid),
                       offsetof(Header, used_slots), kDataWords,      kChunk,
                       kCauseRing,           kChildKeys,              offsetof(Header, waiters_offset),
                       offsetof(Header, cause_names), kMaxCauseNames,
                       offsetof(Header, follow_revision), sizeof(IndexEntry), kIndexLine};
  u64 h = 0xcbf29ce484222325ULL;  // FNV-1a over the parts
  for (u64 p : parts) {
    for (int i = 0; i < 8; ++i) {
      h ^= (p >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

}  // namespace pkgctx::layout
