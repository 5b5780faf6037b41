// pkgctx/settings.hpp — package settings: a JSON object, its RFC 8785 (JCS) canonical form and
// its checksum, XXH3-64 of the canonical bytes as 16 lowercase hex digits.
//
// Any language can compute the checksum, so a controller may call NeedUpdate with its own.
// Empty settings are `{}` (checksum of the two bytes "{}").
#pragma once

#include "pkgctx/error.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pkgctx {

// Configurable input limits (DESIGN.md §3). Defaults are the contract's.
struct Limits {
  std::size_t max_name = 128;               // bytes of [A-Za-z0-9._-]
  std::size_t max_version = 128;            // printable ASCII bytes (0x20..0x7e)
  std::size_t max_settings = 1024 * 1024;   // canonical bytes
  std::size_t max_depth = 64;               // nesting depth of settings JSON
};

// A validated, canonical settings object. Immutable; cheap to move.
class Settings {
 public:
  // `{}`.
  Settings();

  // Parses `json` (must be one JSON object; I-JSON: no duplicate keys, no lone surrogates,
  // numbers representable as IEEE-754 doubles), canonicalises it (RFC 8785) and checksums it.
  // Errors: invalid_settings (names the problem and its byte offset where known),
  // settings_too_large (canonical size over limits.max_settings).
  static Result<Settings> parse(std::string_view json, const Limits& limits = {});

  // Wraps bytes already known to be canonical (e.g. read back from the segment) with their
  // stored checksum. No validation: for trusted sources only.
  static Settings from_canonical(std::string canonical, std::uint64_t checksum);

  const std::string& canonical() const noexcept { return canonical_; }
  std::uint64_t checksum() const noexcept { return checksum_; }
  std::string checksum_hex() const { return format_checksum(checksum_); }
  bool empty() const noexcept { return canonical_.size() == 2; }

  friend bool operator==(const Settings& a, const Settings& b) noexcept {
    return a.checksum_ == b.checksum_ && a.canonical_ == b.canonical_;
  }

 private:
  Settings(std::string canonical, std::uint64_t checksum)
      : canonical_(std::move(canonical)), checksum_(checksum) {}
  std::string canonical_;
  std::uint64_t checksum_;

 public:
  static std::string format_checksum(std::uint64_t c);
};

// RFC 8785 canonical form of any JSON text (object, array or scalar at the top).
Result<std::string> canonicalize_json(std::string_view json, const Limits& limits = {});

// Checks settings bytes read from a segment (View::read checked their checksum and that they are
// one line): they must be exactly the canonical form of a JSON object. Errors: corrupt, naming
// `what`.
Result<void> check_canonical_settings(std::string_view bytes, const std::string& what);

// XXH3-64 of `bytes`.
std::uint64_t checksum_bytes(std::string_view bytes) noexcept;

// Parses exactly 16 hex digits (either case). Errors: invalid_settings naming the bad text.
Result<std::uint64_t> parse_checksum(std::string_view hex);

// Input validation of DESIGN.md §3. Messages name the offending byte and its position.
// A name is 1..max_name bytes of [A-Za-z0-9._-], not "." or "..". is_valid_name is the
// allocation-free test (a 256-entry table) of the lookup hot paths; validate_name adds the message.
namespace detail {
inline constexpr auto kNameByte = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 256; ++c)
    t[c] = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
  return t;
}();
Result<void> explain_bad_name(std::string_view name, std::size_t max_name);
}  // namespace detail
inline bool is_valid_name(std::string_view name, std::size_t max_name) noexcept {
  if (name.empty() || name.size() > max_name) return false;
  bool ok = true;
  for (const char c : name) ok &= detail::kNameByte[static_cast<unsigned char>(c)];
  return ok && name != "." && name != "..";
}
inline Result<void> validate_name(std::string_view name, const Limits& limits = {}) {
  if (is_valid_name(name, limits.max_name)) return {};
  return detail::explain_bad_name(name, limits.max_name);
}

// A segment name (the shared-memory objects "/<name>" and "/<name>.waiters"): 1..200 bytes of
// [A-Za-z0-9._-], not starting with '.'. Errors: invalid_name.
Result<void> validate_segment_name(std::string_view name);
Result<void> validate_version(std::string_view version, const Limits& limits = {});
// DESIGN §2.1: a maintenance mode is 0..64 bytes of [A-Za-z0-9._-] ("" = managed normally).
bool is_valid_maintenance(std::string_view mode) noexcept;
Result<void> validate_maintenance(std::string_view mode);  // Errors: invalid_maintenance
// DESIGN §2.1: a caller-named cause is [a-z][a-z0-9_]{0,31}.
bool is_valid_cause_name(std::string_view name) noexcept;
Result<void> validate_cause_name(std::string_view name);   // Errors: invalid_cause

}  // namespace pkgctx
