// Fuzz target: the token parser (Token::parse) against a real, small segment.
//
// Input byte 0 picks the mode:
//  * even: the rest is token text, as a controller would hand it over;
//  * odd: the rest is binary fields (slot, key, root and child generations, epoch yes/no) that
//    the harness prints as a token *with correct check digits*, so the fuzzer gets past them to
//    the checks behind (epoch, slot and key ranges, generations not in the future). The check
//    digits are recomputed here the way token.cpp does; the initialiser verifies that on a real
//    token, so a format change fails loudly instead of silently weakening the target.
// An accepted token must be usable (cancelled(), cause(), wait(0)) and print back to the text it
// was parsed from (canonical form), which must parse again to the same token.
#include "pkgctx/store.hpp"

#include <xxhash.h>

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <unistd.h>

namespace {

std::string g_name;
std::optional<pkgctx::Store> g_store;

std::uint32_t check_digits(std::uint64_t epoch, std::uint32_t slot, std::uint32_t key, std::uint64_t root,
                           std::uint64_t child) {
  const std::uint64_t fields[] = {epoch, slot, key, root, child};
  return static_cast<std::uint32_t>(XXH3_64bits(fields, sizeof fields));
}

std::string signed_token(std::uint64_t epoch, std::uint32_t slot, std::uint32_t key, std::uint64_t root,
                         std::uint64_t child) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "pkgctx1:%016" PRIx64 ":%u:%u:%" PRIx64 ":%" PRIx64 ":%08x", epoch, slot, key, root,
                child, check_digits(epoch, slot, key, root, child));
  return buf;
}

[[noreturn]] void fail(const char* what, const std::string& text) {
  std::fprintf(stderr, "fuzz_token: %s: %s\n", what, text.c_str());
  std::abort();
}

void cleanup() { pkgctx::Segment::remove(g_name); }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_name = "pkgctx-fuzz-token-" + std::to_string(::getpid());
  pkgctx::Segment::remove(g_name);
  pkgctx::SegmentOptions o;
  o.capacity = 4;
  o.settings_bytes = 1024;
  auto s = pkgctx::Store::create(g_name, o);
  if (!s) fail("cannot create the segment", s.error().message);
  g_store.emplace(std::move(*s));
  std::atexit(cleanup);
  // Generations above zero in every counter kind, a removed and a deleted package.
  auto& st = *g_store;
  (void)st.update("a", "1", pkgctx::Settings());
  (void)st.update("b", "1", pkgctx::Settings());
  for (int e = 0; e <= 7; ++e) (void)st.handle_event(e, "a");
  (void)st.update("a", "2", pkgctx::Settings());
  (void)st.handle_event(pkgctx::kEventRemove, "b");
  (void)st.erase("b");
  (void)st.update("c", "1", pkgctx::Settings());
  // The harness's check digits must be the library's.
  const pkgctx::core::Token t = st.view().token("a", 3).value();
  if (signed_token(st.segment().info().epoch, t.slot(), t.key(), t.root_generation(), t.child_generation()) != t.str())
    fail("check digits here differ from token.cpp's; update signed_token()", t.str());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const pkgctx::Segment& seg = g_store->segment();
  std::string text;
  if (data[0] % 2 == 0) {
    text.assign(reinterpret_cast<const char*>(data + 1), size - 1);
  } else {
    std::uint8_t f[22] = {};
    std::memcpy(f, data + 1, std::min<std::size_t>(size - 1, sizeof f));
    std::uint32_t slot;
    std::uint64_t root, child;
    std::memcpy(&slot, f, 4);
    std::memcpy(&root, f + 4, 8);
    std::memcpy(&child, f + 12, 8);
    const std::uint32_t key = f[20] % 10;  // 8, 9: out of range
    if (f[21] & 1) slot %= 6;              // mostly near the real capacity (4)
    if (f[21] & 2) root %= 32;             // mostly near the real generations
    if (f[21] & 4) child %= 8;
    const std::uint64_t epoch = (f[21] & 8) ? ~seg.info().epoch : seg.info().epoch;
    text = signed_token(epoch, slot, key, root, child);
  }
  const auto t = pkgctx::core::Token::parse(text, seg);
  if (!t) {
    if (t.error().code != pkgctx::Errc::invalid_token) fail("refused with a code other than invalid_token", text);
    return 0;
  }
  if (t->slot() >= seg.capacity() || t->key() > 7) fail("accepted an out-of-range slot or key", text);
  if (t->is_root() && t->child_generation() != 0) fail("accepted a root token with a child generation", text);
  const bool c = t->cancelled();
  const pkgctx::Cause cause = t->cause();
  if (c != (cause != pkgctx::Cause::kNone)) fail("cancelled() and cause() disagree", text);
  if (t->wait(std::chrono::nanoseconds(0)) != c) fail("wait(0) disagrees with cancelled()", text);
  const std::string printed = t->str();
  const auto again = pkgctx::core::Token::parse(printed, seg);
  if (!again || again->str() != printed) fail("printed token does not parse back", text + " → " + printed);
  return 0;
}
