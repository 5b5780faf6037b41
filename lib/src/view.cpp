#include "pkgctx/view.hpp"

#include "mapping.hpp"
#include "seqlock.hpp"
#include "pkgctx/settings.hpp"

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
// sequence value that look was validated against.
Match slot_holds(const detail::Mapping& m, u32 slot, std::string_view name, u64 hash, u64* seq_out = nullptr) {
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
    u64 i = hash & m.index_mask;
    for (u64 probes = 0; probes <= m.index_mask; ++probes, i = (i + 1) & m.index_mask) {
      const u64 e = m.index[i].load(std::memory_order_acquire);
      if (e == kIndexEmpty) break;
      if (e == kIndexTomb || !index_tag_matches(e, hash)) continue;
      const u32 slot = index_slot(e);
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

}  // namespace

Result<View> View::open(const std::string& name) {
  auto seg = Segment::open(name, Access::read_only);
  if (!seg) return seg.error();
  return View(std::move(*seg));
}

Result<std::uint32_t> View::find(std::string_view name) const {
  const auto& m = *seg_.mapping();
  if (auto v = validate_name(name, {.max_name = m.header->max_name}); !v) return v.error();
  const u64 hash = name_hash(name);
  return probe(m, name, hash, [&](u32 slot) { return slot_holds(m, slot, name, hash); });
}

bool View::read_slot(std::uint32_t slot, PackageRecord& out, bool with_settings) const {
  return read_slot_checked(slot, out, with_settings) == SlotRead::ok;
}

View::SlotRead View::read_slot_checked(std::uint32_t slot, PackageRecord& out, bool with_settings) const {
  const auto& m = *seg_.mapping();
  if (slot >= m.capacity) return SlotRead::empty;
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
    if (!detail::meta_used(mt) || !sane) return SlotRead::empty;  // free, or corrupt: not a package
    if (!is_valid_maintenance(out.maintenance)) return SlotRead::corrupt;
    out.slot = slot;
    // Generations after the record: a delete or re-create rewrites the record before it moves
    // a generation, so these are never below the bases read above.
    const u64 root = s.gens.root.load(std::memory_order_acquire);
    out.root_generation = root - base[0];
    for (u32 k = 0; k < kChildKeys; ++k)
      out.child_generations[k] = s.gens.child[k].load(std::memory_order_acquire) - base[1 + k];
    out.last_cause = root == base[0] ? Cause::kNone : ring_cause(s.causes.root, root);
    auto text = pkgctx::cause_text(m, out.last_cause);
    if (!text) return SlotRead::corrupt;
    out.last_cause_name = std::move(*text);
    return SlotRead::ok;
  } while (backoff.next());
  return SlotRead::empty;
}

Result<std::string> View::cause_text(Cause c) const { return pkgctx::cause_text(*seg_.mapping(), c); }

Result<PackageRecord> View::read(std::string_view name, bool with_settings) const {
  // The slot found may be reused by another package before it is read: re-check the name.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    auto slot = find(name);
    if (!slot) return slot.error();
    PackageRecord r;
    const SlotRead got = read_slot_checked(*slot, r, with_settings);
    if (got == SlotRead::corrupt)
      return make_error(Errc::corrupt, "package \"" + std::string(name) + "\" in segment " + seg_.name() +
                                           ": a stored maintenance mode or cause name fails validation");
    if (got == SlotRead::ok && r.name == name) return r;
  }
  return busy(name);
}

Result<core::Token> View::token(std::string_view name, int event) const {
  if (auto e = validate_event(event); !e) return e.error();
  const auto& m = *seg_.mapping();
  if (auto v = validate_name(name, {.max_name = m.header->max_name}); !v) return v.error();
  const u64 hash = name_hash(name);
  const auto key = static_cast<std::uint32_t>(event);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    core::Token t;
    bool mine = false;
    auto slot = probe(m, name, hash, [&](u32 s) {
      u64 seq = 0;
      const Match r = slot_holds(m, s, name, hash, &seq);
      if (r != Match::yes) return r;
      t = core::Token::snapshot(seg_.mapping(), s, key);
      // The snapshot belongs to `name` only if the slot still holds it afterwards. An unchanged
      // record sequence proves it without another look (a delete or re-create rewrites the
      // record before it moves a generation); otherwise look again.
      mine = m.slots[s].data.seq.load(std::memory_order_acquire) == seq ||
             slot_holds(m, s, name, hash) == Match::yes;
      return Match::yes;
    });
    if (!slot) return slot.error();
    if (mine) return t;
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

std::vector<PackageRecord> View::list(bool with_settings) const {
  std::vector<PackageRecord> out;
  const u32 cap = seg_.capacity();
  for (u32 i = 0; i < cap; ++i) {
    PackageRecord r;
    if (read_slot(i, r, with_settings)) out.push_back(std::move(r));
  }
  return out;
}

}  // namespace pkgctx
