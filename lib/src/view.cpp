#include "pkgctx/view.hpp"

#include "mapping.hpp"
#include "name_hash.hpp"
#include "seqlock.hpp"
#include "pkgctx/settings.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace pkgctx {

using namespace layout;

namespace {

Error busy(std::string_view name) {
  return make_error(Errc::busy, "package \"" + std::string(name) +
                                    "\" is being written by a writer that may have died; try again after the "
                                    "daemon repairs the table");
}

Error absent(std::string_view name) {
  return make_error(Errc::no_such_package, "no such package \"" + std::string(name) + "\"");
}

enum class Match { yes, no, torn };

// Does `slot` hold `name` (one consistent look)? On yes, `*seq_out` (if given) is the slot's
// sequence value that look was validated against. Inlined: a cold lookup waits for the record's
// line, and a call delays the load that starts it (measured in bench/: the cold row ~10% faster).
[[gnu::always_inline]] inline Match slot_holds(const detail::Mapping& m, u32 slot, std::string_view name, u64 hash,
                                               u64* seq_out = nullptr) {
  const SlotData& d = m.slots[slot].data;
  detail::Backoff backoff;
  do {
    const u64 s1 = d.seq.load(std::memory_order_acquire);
    if (s1 & 1) continue;
    const bool eq = detail::holds_name(d, name, hash);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (d.seq.load(std::memory_order_relaxed) == s1) {
      if (seq_out) *seq_out = s1;
      return eq ? Match::yes : Match::no;
    }
  } while (backoff.next());
  return Match::torn;
}


// Probes the index for `name` (already validated and hashed). `visit(slot)` judges each slot
// whose index tag matches; Match::yes ends the probe with that slot.
template <class Visit>
Result<u32> probe(const detail::Mapping& m, std::string_view name, u64 hash, Visit&& visit) {
  detail::Backoff backoff;
  do {
    const u64 s1 = m.header->index_seq.load(std::memory_order_acquire);
    if (s1 & 1) continue;  // the index is being rebuilt
    std::optional<u32> found;
    bool torn = false;
    const unsigned bits = m.index_slot_bits;
    u64 i = index_home(hash, m.index_entries);
    for (u64 probes = 0; probes < m.index_entries; ++probes, i = index_next(i, m.index_entries)) {
      const u32 e = m.index[i].load(std::memory_order_acquire);
      if (e == kIndexEmpty) break;
      if (e == kIndexTomb || !index_tag_matches(e, hash, bits)) continue;
      const u32 slot = index_slot(e, bits);
      if (slot >= m.capacity) continue;  // corrupt entry: never trusted as an index
      const Match r = visit(slot);
      if (r == Match::yes) {
        found = slot;
        break;
      }
      if (r == Match::torn) torn = true;
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (m.header->index_seq.load(std::memory_order_relaxed) != s1) continue;
    if (found) return *found;
    if (torn) return busy(name);
    return absent(name);
  } while (backoff.next());
  return busy(name);
}

Error corrupt(const detail::Mapping& m, u32 slot, const std::string& why) {
  return make_error(Errc::corrupt, "segment " + m.name + " is corrupt: slot " + std::to_string(slot) + ": " + why);
}

// Checks a record copied out of a stable slot before anyone prints or trusts it.
Result<void> check_record(const detail::Mapping& m, u32 slot, const PackageRecord& r, bool with_settings) {
  const Header& h = *m.header;
  if (!is_valid_name(r.name, h.max_name)) return corrupt(m, slot, "the package name is not a valid name");
  if (!r.version.empty() && !validate_version(r.version, {.max_version = h.max_version}))
    return corrupt(m, slot, "the version of \"" + r.name + "\" is not printable ASCII within the limit");
  if (with_settings) {
    if (checksum_bytes(r.settings) != r.checksum)
      return corrupt(m, slot, "the settings of \"" + r.name + "\" do not match their checksum");
    // Canonical JSON is one object without a raw control byte (strings escape them), so bytes
    // that pass cannot split an answer line. The full canonical-form check needs the JSON parser
    // of the core (check_canonical_settings), which the worker SDK does not link.
    const std::string_view b = r.settings;
    bool clean = b.size() >= 2 && b.front() == '{' && b.back() == '}';
    for (const char c : b) clean &= static_cast<unsigned char>(c) >= 0x20;
    if (!clean) return corrupt(m, slot, "the settings of \"" + r.name + "\" are not canonical JSON");
  }
  return {};
}

}  // namespace

Result<View> View::open(const std::string& name, const std::string& dir) {
  auto seg = Segment::open(name, Access::read_only, dir);
  if (!seg) return seg.error();
  return View(std::move(*seg));
}

Result<std::uint32_t> View::find(std::string_view name) const {
  const auto& m = *seg_.mapping();
  if (auto v = validate_name(name, {.max_name = m.header->max_name}); !v) return v.error();
  const u64 hash = detail::hash_name(name);
  return probe(m, name, hash, [&](u32 slot) { return slot_holds(m, slot, name, hash); });
}

Result<bool> View::read_slot(std::uint32_t slot, PackageRecord& out, bool with_settings) const {
  const auto& m = *seg_.mapping();
  if (slot >= m.capacity) return false;
  const Slot& s = m.slots[slot];
  const SlotData& d = s.data;
  std::array<u64, 1 + kChildKeys> base{};
  detail::Backoff backoff;
  do {
    const u64 s1 = d.seq.load(std::memory_order_acquire);
    if (s1 & 1) continue;
    const u64 mt = d.w[dw::kMeta].load(std::memory_order_relaxed);
    const std::size_t nl = detail::meta_name_len(mt), vl = detail::meta_version_len(mt);
    const std::size_t ml = detail::meta_maintenance_len(mt);
    const u64 off = d.w[dw::kSettingsOff].load(std::memory_order_relaxed);
    const u64 len = d.w[dw::kSettingsLen].load(std::memory_order_relaxed);
    const u64 sum = d.w[dw::kChecksum].load(std::memory_order_relaxed);
    const bool sane = nl >= 1 && nl <= kMaxName && vl <= kMaxVersion && off % 8 == 0 && len <= m.arena_bytes &&
                      off <= m.arena_bytes - len;
    if (detail::meta_used(mt) && sane) {
      out.name.resize(nl);
      detail::copy_out(out.name.data(), &d.w[dw::kName], nl);
      out.version.resize(vl);
      detail::copy_out(out.version.data(), &d.w[dw::kVersion], vl);
      out.maintenance.resize(std::min(ml, kMaxMaintenance + 1));  // one byte over: validated below
      detail::copy_out(out.maintenance.data(), &d.w[dw::kMaintenance], std::min(out.maintenance.size(), kMaxMaintenance));
      out.settings_version = d.w[dw::kSettingsVersion].load(std::memory_order_relaxed);
      for (std::size_t i = 0; i < base.size(); ++i) base[i] = d.w[dw::kBaseRoot + i].load(std::memory_order_relaxed);
      out.settings_size = len == 0 ? 2 : len;
      out.checksum = sum;
      if (with_settings) {
        if (len == 0) {
          out.settings = "{}";
        } else {
          out.settings.resize(len);
          detail::copy_out(out.settings.data(), &m.arena[off / 8], len);
        }
      }
    }
    std::atomic_thread_fence(std::memory_order_acquire);
    if (d.seq.load(std::memory_order_relaxed) != s1) continue;
    if (!detail::meta_used(mt)) return false;
    if (!sane) return corrupt(m, slot, "its sizes or offsets do not fit the segment");
    if (auto ok = check_record(m, slot, out, with_settings); !ok) return ok.error();
    if (!is_valid_maintenance(out.maintenance)) return corrupt(m, slot, "its maintenance mode is not [A-Za-z0-9._-]{0,64}");
    out.slot = slot;
    // Generations after the record: a delete or re-create rewrites the record before it moves
    // a generation, so these are never below the bases read above.
    const u64 root = s.gens.root.load(std::memory_order_acquire);
    if (root < base[0]) return corrupt(m, slot, "its base generation is above the slot's generation");
    out.root_generation = root - base[0];
    for (u32 k = 0; k < kChildKeys; ++k) {
      const u64 g = s.gens.child[k].load(std::memory_order_acquire);
      if (g < base[1 + k]) return corrupt(m, slot, "its base generation is above the slot's generation");
      out.child_generations[k] = g - base[1 + k];
    }
    out.last_cause = root == base[0] ? Cause::kNone : ring_cause(s.causes.root, root);
    auto text = pkgctx::cause_text(m, out.last_cause);
    if (!text) return text.error();
    out.last_cause_name = std::move(*text);
    return true;
  } while (backoff.next());
  return false;
}

Result<std::string> View::cause_text(Cause c) const { return pkgctx::cause_text(*seg_.mapping(), c); }

Result<PackageRecord> View::read(std::string_view name, bool with_settings) const {
  // The slot found may be reused by another package before it is read: re-check the name.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    auto slot = find(name);
    if (!slot) return slot.error();
    PackageRecord r;
    auto got = read_slot(*slot, r, with_settings);
    if (!got) return got.error();
    if (*got && r.name == name) return r;
  }
  return busy(name);
}

Result<core::Token> View::token(std::string_view name, int event) const {
  if (!is_valid_event(event)) return validate_event(event).error();  // the message from the one place
  const auto& m = *seg_.mapping();
  if (auto v = validate_name(name, {.max_name = m.header->max_name}); !v) return v.error();
  const u64 hash = detail::hash_name(name);
  const auto key = static_cast<std::uint32_t>(event);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    u64 seq = 0;
    auto slot = probe(m, name, hash, [&](u32 s) {
      // The snapshot reads the generations' line: start that miss beside the record's.
      __builtin_prefetch(&m.slots[s].gens);
      return slot_holds(m, s, name, hash, &seq);
    });
    if (!slot) return slot.error();
    Result<core::Token> t = core::Token::snapshot(seg_.mapping(), m.slots[*slot].gens, m.header->prefix.epoch, *slot, key);
    // The snapshot belongs to `name` only if the slot still holds it afterwards. An unchanged
    // record sequence proves it without another look (a delete or re-create rewrites the
    // record before it moves a generation); otherwise look again.
    if (m.slots[*slot].data.seq.load(std::memory_order_acquire) == seq || slot_holds(m, *slot, name, hash) == Match::yes)
      return t;
  }
  return busy(name);
}

Result<bool> View::need_update(std::string_view name, std::string_view version, std::uint64_t checksum,
                               std::optional<std::string_view> maintenance) const {
  auto r = read(name, false);
  if (!r) {
    if (r.error().code == Errc::no_such_package) return true;
    return r.error();
  }
  return r->version != version || r->checksum != checksum || (maintenance && r->maintenance != *maintenance);
}

void View::release_slot_pages() const noexcept {
  const auto& m = *seg_.mapping();
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(m.slots) & ~(page - 1);
  const auto end = reinterpret_cast<std::uintptr_t>(m.slots + m.capacity);
  // Whole pages (the first may hold header words too: dropping a shared page loses nothing).
  ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

Result<std::vector<PackageRecord>> View::list(bool with_settings) const {
  std::vector<PackageRecord> out;
  const u32 cap = seg_.capacity();
  for (u32 i = 0; i < cap; ++i) {
    PackageRecord r;
    auto got = read_slot(i, r, with_settings);
    if (!got) return got.error();
    if (*got) out.push_back(std::move(r));
  }
  return out;
}

}  // namespace pkgctx
