#include "pkgctx/token.hpp"

#include "mapping.hpp"
#include "pkgctx/futex.hpp"
#include "pkgctx/segment.hpp"
#include "pkgctx/settings.hpp"
#include "seqlock.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <thread>
#include <xxhash.h>

namespace pkgctx {

using namespace layout;

namespace {

// The word a default token watches: never changes.
const AU64 kNeverChanges{0};
// The word a token of a retired predecessor segment watches (a generation never
// reaches this value): always moved.
const AU64 kPredecessorRetired{~u64{0}};

constexpr std::string_view kTokenPrefix = "pkgctx1";

u32 check_digits(u64 epoch, u32 slot, u32 key, u64 root, u64 child) {
  const u64 fields[] = {epoch, slot, key, root, child};
  return static_cast<u32>(XXH3_64bits(fields, sizeof fields));
}

// The cause that produced generation `snap + 1`, or the latest if the ring moved past it.
Cause cause_after(const CauseRing& ring, u64 snap, u64 now) {
  return ring_cause(ring, now - (snap + 1) < kCauseRing ? snap + 1 : now);
}

template <class T>
bool parse_number(std::string_view s, int base, std::size_t max_digits, T& out) {
  if (s.empty() || s.size() > max_digits) return false;
  for (char c : s) {
    const bool ok = base == 16 ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) : (c >= '0' && c <= '9');
    if (!ok) return false;
  }
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

namespace {

Error bad_event(std::string_view shown) {
  return make_error(Errc::invalid_event,
                    "event " + std::string(shown) + " is not update (0), remove (1), schedule or a child key 2..7 (schedule is 2)");
}

}  // namespace

Result<int> parse_event(std::string_view text) {
  if (text == "update") return kEventUpdate;
  if (text == "remove") return kEventRemove;
  if (text == "schedule") return kEventSchedule;
  if (text.size() == 1 && text[0] >= '0' && text[0] <= '0' + kMaxEvent) return text[0] - '0';
  std::string shown(text.substr(0, 64));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e || c == '"') c = '?';
  return bad_event("\"" + shown + "\"");
}

Result<int> validate_event(std::int64_t event) {
  if (event < 0 || event > kMaxEvent) return bad_event(std::to_string(event));
  return static_cast<int>(event);
}

constexpr std::string_view kTokenAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-";

Result<TokenText> parse_token_text(std::string_view text) {
  auto bad = [&](const std::string& why) {
    std::string shown(text.substr(0, 64));
    for (char& c : shown) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
    }
    return make_error(Errc::invalid_token, "token \"" + shown + (text.size() > 64 ? "…" : "") + "\": " + why);
  };
  if (text.size() > 128) return bad("longer than 128 characters");
  // Named before the field checks, which would blame whichever field the stray byte sits in.
  if (const auto i = text.find_first_not_of(kTokenAlphabet); i != std::string_view::npos) {
    const bool space = text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r';
    if (space && text.find_first_not_of(" \t\r\n", i) == std::string_view::npos)
      return bad("ends in whitespace (trim it: a token is only [A-Za-z0-9._:-])");
    return bad("character " + std::to_string(i + 1) + " is not one of [A-Za-z0-9._:-]");
  }
  std::string_view f[7];
  std::size_t n = 0, start = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == ':') {
      if (n == 7) return bad("too many fields (expected 7 separated by ':')");
      f[n++] = text.substr(start, i - start);
      start = i + 1;
    }
  }
  if (n != 7) return bad("expected 7 fields separated by ':', found " + std::to_string(n));
  if (f[0] != kTokenPrefix) return bad("does not start with \"pkgctx1:\"");
  TokenText t;
  u32 check = 0;
  if (f[1].size() != 16 || !parse_number(f[1], 16, 16, t.epoch)) return bad("epoch is not 16 hex digits");
  if (!parse_number(f[2], 10, 10, t.slot)) return bad("slot is not a number");
  if (!parse_number(f[3], 10, 1, t.key) || t.key > kLastChildKey) return bad("event key is not 0..7");
  if (!parse_number(f[4], 16, 16, t.root)) return bad("root generation is not hex");
  if (!parse_number(f[5], 16, 16, t.child)) return bad("child generation is not hex");
  if (f[6].size() != 8 || !parse_number(f[6], 16, 8, check)) return bad("check digits are not 8 hex digits");
  if (check != check_digits(t.epoch, t.slot, t.key, t.root, t.child)) return bad("check digits do not match (garbled or forged)");
  if (t.key < kFirstChildKey && t.child != 0) return bad("a root token has no child generation");
  return t;
}

Result<std::string> cause_text(const detail::Mapping& m, Cause c) {
  if (!is_named_cause(c)) return std::string(cause_name(c));
  const u32 i = static_cast<u8>(c) - kFirstNamedCause;
  // Entries below cause_count are complete and immutable (acquire pairs with the commit).
  const u32 count = m.header->cause_count.load(std::memory_order_acquire);
  if (i >= count || i >= kMaxCauseNames)
    return make_error(Errc::corrupt, "segment " + m.name + ": cause " + std::to_string(static_cast<u8>(c)) +
                                         " is past its table of " + std::to_string(count) + " cause names");
  const CauseName& e = m.header->cause_names[i];
  const u64 len = e.len.load(std::memory_order_relaxed);
  std::string name(len <= kMaxCauseName ? len : 0, '\0');
  detail::copy_out(name.data(), e.w, name.size());
  if (!is_valid_cause_name(name))
    return make_error(Errc::corrupt, "segment " + m.name + ": cause name " + std::to_string(i) + " is not a cause name");
  return name;
}

namespace core {

Token::Token() noexcept : watched_(&kNeverChanges) {}

// The same snapshot as the inline overload, in the other order: the mapping's reference first,
// then the loads. The store returns its tokens through here right after its own write, and this
// order measured 16 ns cheaper there (schedule_no_waiter ~54 -> ~37 ns, bench/micro_bench.cpp);
// the inline order is the cheaper one for a reader's lookup (token_by_name_hot ~25 -> ~19 ns).
Token Token::snapshot(const std::shared_ptr<detail::Mapping>& map, std::uint32_t slot, std::uint32_t key) noexcept {
  Token t;
  t.map_ = map;
  const SlotGens& g = map->slots[slot].gens;
  if (key >= kFirstChildKey) {
    // The child word before the root (a writer stores them the other way round): the printed
    // root generation is then never older than the context the child belongs to.
    t.watched_ = &g.child[key - kFirstChildKey];
    t.snap_ = t.watched_->load(std::memory_order_acquire);
    t.root_snap_ = g.root.load(std::memory_order_acquire);
  } else {
    t.watched_ = &g.root;
    t.snap_ = t.root_snap_ = g.root.load(std::memory_order_acquire);
  }
  t.epoch_ = map->header->prefix.epoch;
  t.slot_ = slot;
  t.key_ = key;
  return t;
}

Cause Token::cause() const noexcept {
  if (!cancelled()) return Cause::kNone;
  if (watched_ == &kPredecessorRetired) return Cause::kSegmentRetired;
  if (static_cast<State>(map_->header->prefix.state.load(std::memory_order_acquire)) == State::kRetired)
    return Cause::kSegmentRetired;
  // The ring of the watched word holds the cause of each of its moves (a child's ring gets its
  // root's causes too), so the first move after the snapshot is the event that cancelled it.
  const SlotCauses& c = map_->slots[slot_].causes;
  const CauseRing& ring = is_root() ? c.root : c.child[key_ - kFirstChildKey];
  return cause_after(ring, snap_, watched_->load(std::memory_order_acquire));
}

Result<std::string> Token::cause_text() const {
  const Cause c = cause();
  if (!map_ || c == Cause::kNone) return std::string(cause_name(c));
  return pkgctx::cause_text(*map_, c);
}

bool Token::wait(std::chrono::nanoseconds timeout) const noexcept {
  using clock = std::chrono::steady_clock;
  if (cancelled()) return true;
  const auto deadline = clock::now() + timeout;
  if (!map_) {  // never cancelled: just sleep the timeout out
    const AU32 dummy{0};
    while (clock::now() < deadline) futex::wait(&dummy, 0, deadline - clock::now());
    return false;
  }
  // Unregistered: on a daemon's segment no writer counts this sleep, so it re-checks every
  // kWaitSlice; on an embedded store's every cancellation wakes it.
  const AU32& wake = map_->slots[slot_].gens.wake;
  while (true) {
    const u32 w = wake.load(std::memory_order_seq_cst);
    if (cancelled()) return true;
    const auto now = clock::now();
    if (now >= deadline) return false;
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now);
    if (writers_count_waits()) left = std::min<std::chrono::nanoseconds>(left, kWaitSlice);
    futex::wait(&wake, w, left);
  }
}

bool Token::writers_count_waits() const noexcept {
  return map_ && map_->header->daemon_state.load(std::memory_order_seq_cst) != static_cast<u32>(layout::DaemonState::kNone);
}

// A predecessor's token has no slot in this mapping (and is cancelled already).
const std::atomic<std::uint32_t>* Token::wake_word() const noexcept {
  return map_ && watched_ != &kPredecessorRetired ? &map_->slots[slot_].gens.wake : nullptr;
}

Token::Text Token::text() const noexcept {
  Text t;
  if (!map_) {
    t.size = kNoneText.copy(t.data, sizeof t.data);
    return t;
  }
  // The fields of str()'s format, in lowercase hex (at least `width` digits) or decimal, each
  // followed by `tail` (to_chars: no locale, no format string to interpret).
  char* p = t.data;
  char* const end = t.data + sizeof t.data;
  const auto hex = [&](u64 v, std::size_t width, std::string_view tail) {
    char digits[16];
    const auto n = static_cast<std::size_t>(std::to_chars(digits, digits + sizeof digits, v, 16).ptr - digits);
    if (n < width) p = std::fill_n(p, width - n, '0');
    p = std::copy_n(digits, n, p);
    p += tail.copy(p, tail.size());
  };
  const auto dec = [&](u32 v) {
    p = std::to_chars(p, end, v).ptr;
    *p++ = ':';
  };
  p += kTokenPrefix.copy(p, kTokenPrefix.size());
  *p++ = ':';
  hex(epoch_, 16, ":");
  dec(slot_);
  dec(key_);
  hex(root_snap_, 0, ":");
  hex(child_generation(), 0, ":");
  hex(check_digits(epoch_, slot_, key_, root_snap_, child_generation()), 8, "");
  t.size = static_cast<std::size_t>(p - t.data);
  return t;
}

std::string Token::str() const { return std::string(text().view()); }

Result<Token> Token::parse(std::string_view text, const Segment& segment) {
  auto fields = parse_token_text(text);
  if (!fields) return fields.error();
  const auto [epoch, slot, key, root, child] = *fields;
  auto bad = [&](const std::string& why) {
    std::string shown(text.substr(0, 64));  // printable: parse_token_text accepted it
    return make_error(Errc::invalid_token, "token \"" + shown + (text.size() > 64 ? "…" : "") + "\": " + why);
  };
  if (!segment.valid()) return bad("no segment to check it against");
  const auto& map = segment.mapping();
  const u64 predecessor = map->header->predecessor_epoch;
  if (epoch != map->header->prefix.epoch && predecessor != 0 && epoch == predecessor) {
    // Printed from the segment this one replaced: that segment was retired, so the token is
    // cancelled (its mapping is gone; the word it watches is a constant that has moved).
    Token t;
    t.map_ = map;
    t.watched_ = &kPredecessorRetired;
    t.snap_ = key >= kFirstChildKey ? child : root;
    t.root_snap_ = root;
    t.epoch_ = epoch;
    t.slot_ = slot;
    t.key_ = key;
    return t;
  }
  if (epoch != map->header->prefix.epoch) {
    char buf[80];
    std::snprintf(buf, sizeof buf, "from another segment (epoch %016llx, this one is %016llx)",
                  static_cast<unsigned long long>(epoch), static_cast<unsigned long long>(map->header->prefix.epoch));
    return bad(buf);
  }
  if (slot >= map->capacity) return bad("slot " + std::to_string(slot) + " is beyond the table's capacity");
  const bool is_child = key >= kFirstChildKey;
  const SlotGens& g = map->slots[slot].gens;
  if (root > g.root.load(std::memory_order_acquire)) return bad("root generation is in the future");
  if (is_child && child > layout::watched_word(g, key).load(std::memory_order_acquire))
    return bad("child generation is in the future");
  Token t;
  t.map_ = map;
  t.watched_ = &layout::watched_word(g, key);
  t.snap_ = is_child ? child : root;
  t.root_snap_ = root;
  t.epoch_ = epoch;
  t.slot_ = slot;
  t.key_ = key;
  return t;
}

}  // namespace core
}  // namespace pkgctx
