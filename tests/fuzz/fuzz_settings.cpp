// Fuzz target: the settings parser and RFC 8785 canonicaliser (Settings::parse,
// canonicalize_json) on arbitrary bytes.
//
// Beyond "no crash, no sanitizer report", it checks the properties a checksum contract needs:
//  * the canonical form is a fixed point: canonicalising it again gives the same bytes;
//  * Settings::parse accepts exactly the inputs whose canonical form is an object, with that
//    canonical form and checksum_bytes() of it as the checksum;
//  * parsing the canonical form back gives an equal Settings.
#include "pkgctx/settings.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

[[noreturn]] void fail(const char* what, std::string_view in, const std::string& detail) {
  std::fprintf(stderr, "fuzz_settings: %s\n  input: %.*s\n  %s\n", what, static_cast<int>(in.size() > 400 ? 400 : in.size()),
               in.data(), detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  pkgctx::Limits lim;
  lim.max_settings = 64 * 1024;  // small enough that the over-limit path is reachable
  lim.max_depth = 32;

  const auto canon = pkgctx::canonicalize_json(in, lim);
  if (canon) {
    if (canon->empty()) fail("empty canonical form", in, "");
    const auto again = pkgctx::canonicalize_json(*canon, lim);
    if (!again) fail("canonical form is refused", in, *canon + " → " + again.error().message);
    if (*again != *canon) fail("canonical form is not a fixed point", in, *canon + " → " + *again);
  }

  const auto s = pkgctx::Settings::parse(in, lim);
  if (s) {
    if (!canon) fail("parse accepts what canonicalize_json refuses", in, canon.error().message);
    if (s->canonical() != *canon) fail("parse and canonicalize_json disagree", in, s->canonical() + " vs " + *canon);
    if (s->canonical().front() != '{') fail("settings are not an object", in, s->canonical());
    if (s->checksum() != pkgctx::checksum_bytes(s->canonical())) fail("checksum is not XXH3 of the canonical form", in, "");
    const auto back = pkgctx::Settings::parse(s->canonical(), lim);
    if (!back || !(*back == *s)) fail("canonical settings do not parse back equal", in, s->canonical());
    const auto sum = pkgctx::parse_checksum(s->checksum_hex());
    if (!sum || *sum != s->checksum()) fail("checksum_hex does not parse back", in, s->checksum_hex());
  } else if (canon && canon->front() == '{') {
    fail("parse refuses an object canonicalize_json accepts", in, s.error().message);
  } else if (s.error().message.empty()) {
    fail("refusal without a message", in, "");
  }
  return 0;
}
