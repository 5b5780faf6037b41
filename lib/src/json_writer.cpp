#include "pkgctx/json_writer.hpp"

#include <boost/json/serializer.hpp>

#include <optional>

namespace pkgctx {

namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one (RFC 3629: no
// overlongs, no surrogates, nothing above U+10FFFF).
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  const std::size_t left = s.size() - i;
  const auto cont = [&](std::size_t k) { return (b(k) & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return left >= 2 && cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (left < 3 || !cont(i + 1) || !cont(i + 2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;   // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (left < 4 || !cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;   // overlong
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// `s` with each byte that is not part of valid UTF-8 replaced by U+FFFD, or nullopt if it is
// valid already (the common case: no copy).
std::optional<std::string> repair_utf8(std::string_view s) {
  std::optional<std::string> fixed;
  std::size_t i = 0, copied = 0;
  while (i < s.size()) {
    const std::size_t n = utf8_sequence(s, i);
    if (n > 0) {
      i += n;
      continue;
    }
    if (!fixed) fixed.emplace();
    fixed->append(s.substr(copied, i - copied)).append("\xEF\xBF\xBD");
    copied = ++i;
  }
  if (fixed) fixed->append(s.substr(copied));
  return fixed;
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  // ASCII that needs no escape (keys, names, tokens: nearly every string) is copied as it is;
  // Boost's serializer would emit the same bytes after setting up its state.
  unsigned escapes = 0;  // no early exit: the loop stays branch-free (and vectorises at -O3)
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    escapes |= static_cast<unsigned>(static_cast<unsigned char>(c - 0x20) >= 0x60) | (c == '"') | (c == '\\');
  }
  if (escapes == 0) {
    out += '"';
    out += s;
    out += '"';
    return;
  }
  // Boost's serializer escapes but copies bytes >= 0x80 as they are, so bad UTF-8 is repaired first.
  const std::optional<std::string> fixed = repair_utf8(s);
  boost::json::serializer sr;
  sr.reset(fixed ? boost::json::string_view(*fixed) : boost::json::string_view(s.data(), s.size()));
  char buf[1024];
  while (!sr.done()) {
    const boost::json::string_view part = sr.read(buf, sizeof buf);
    out.append(part.data(), part.size());
  }
}

}  // namespace pkgctx
