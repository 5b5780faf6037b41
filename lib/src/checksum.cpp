// checksum.cpp — the parts of settings.hpp that need no JSON parser: checksums, wrapping
// canonical bytes already stored in a segment, and name/version validation.
//
// It lives in pkgctx_reader (no Boost.JSON), so the worker SDK can verify names, read settings
// back and compare checksums without linking the canonicaliser. settings.cpp (pkgctx_core) holds
// the parsing side.

#include "pkgctx/settings.hpp"

#include "pkgctx/layout.hpp"

#include <xxhash.h>

#include <string>

namespace pkgctx {
namespace {

constexpr char kHex[] = "0123456789abcdef";

// A byte as shown in messages: 'c' when printable ASCII, \xNN otherwise.
std::string show_byte(unsigned char c) {
  if (c >= 0x20 && c < 0x7f) return std::string{'\'', static_cast<char>(c), '\''};
  return std::string{'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
}

// `s` in double quotes for messages, non-printable bytes as \xNN, cut after 64 bytes.
std::string quoted(std::string_view s) {
  constexpr std::size_t max = 64;
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += std::string{'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
    }
  }
  if (s.size() > max) out += "...";
  out += '"';
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::uint64_t checksum_bytes(std::string_view bytes) noexcept {
  return static_cast<std::uint64_t>(XXH3_64bits(bytes.data(), bytes.size()));
}

std::string Settings::format_checksum(std::uint64_t c) {
  std::string out(16, '0');
  for (std::size_t i = 16; i-- > 0; c >>= 4) out[i] = kHex[c & 0xf];
  return out;
}

Result<std::uint64_t> parse_checksum(std::string_view hex) {
  // Controllers compute checksums in other languages; accept either case, require the full width
  // so a truncated or padded value is never silently read as a different checksum.
  if (hex.size() != 16) {
    return make_error(Errc::invalid_settings, "checksum " + quoted(hex) + " is not 16 hex digits");
  }
  std::uint64_t value = 0;
  for (std::size_t i = 0; i < hex.size(); ++i) {
    const int d = hex_value(hex[i]);
    if (d < 0) {
      return make_error(Errc::invalid_settings, "checksum " + quoted(hex) + ": byte " +
                                                    show_byte(static_cast<unsigned char>(hex[i])) + " at " +
                                                    std::to_string(i) + " is not a hex digit");
    }
    value = value << 4 | static_cast<std::uint64_t>(d);
  }
  return value;
}

Settings::Settings() : canonical_("{}"), checksum_(checksum_bytes("{}")) {}

Settings Settings::from_canonical(std::string canonical, std::uint64_t checksum) {
  return Settings(std::move(canonical), checksum);
}

Result<void> detail::explain_bad_name(std::string_view name, std::size_t max_name) {
  if (name.empty()) return make_error(Errc::invalid_name, "name is empty");
  if (name.size() > max_name) {
    return make_error(Errc::invalid_name, "name " + quoted(name) + " is " + std::to_string(name.size()) +
                                              " bytes, over the limit of " + std::to_string(max_name));
  }
  for (std::size_t i = 0; i < name.size(); ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (!kNameByte[c]) {
      return make_error(Errc::invalid_name, "name " + quoted(name) + ": byte " + show_byte(c) + " at " +
                                                std::to_string(i) + " is not allowed (use [A-Za-z0-9._-])");
    }
  }
  // Names end up in paths and command lines, where these two mean "here" and "parent".
  return make_error(Errc::invalid_name, "name " + quoted(name) + " is not allowed (it is confusing in paths)");
}

Result<void> validate_segment_name(std::string_view name) {
  constexpr std::size_t kMax = 200;  // the object names stay well under NAME_MAX with ".waiters"
  bool ok = !name.empty() && name.size() <= kMax && name.front() != '.';
  for (const char c : name) ok = ok && detail::kNameByte[static_cast<unsigned char>(c)];
  if (ok) return {};
  return make_error(Errc::invalid_name,
                    quoted(name) + " is not a segment name (1..200 bytes of [A-Za-z0-9._-], not starting with '.')");
}

Result<void> validate_version(std::string_view version, const Limits& limits) {
  if (version.empty()) {
    return make_error(Errc::invalid_version, "version is empty (an empty version means \"removed\" and cannot be set)");
  }
  if (version.size() > limits.max_version) {
    return make_error(Errc::invalid_version, "version " + quoted(version) + " is " + std::to_string(version.size()) +
                                                 " bytes, over the limit of " + std::to_string(limits.max_version));
  }
  for (std::size_t i = 0; i < version.size(); ++i) {
    const auto c = static_cast<unsigned char>(version[i]);
    if (c < 0x20 || c > 0x7e) {
      return make_error(Errc::invalid_version, "version " + quoted(version) + ": byte " + show_byte(c) + " at " +
                                                   std::to_string(i) + " is not printable ASCII (0x20..0x7e)");
    }
  }
  return {};
}

bool is_valid_maintenance(std::string_view mode) noexcept {
  if (mode.size() > layout::kMaxMaintenance) return false;
  for (const char c : mode)
    if (!detail::kNameByte[static_cast<unsigned char>(c)]) return false;
  return true;
}

Result<void> validate_maintenance(std::string_view mode) {
  if (is_valid_maintenance(mode)) return {};
  return make_error(Errc::invalid_maintenance,
                    "maintenance " + quoted(mode) + " is not 0..64 bytes of [A-Za-z0-9._-]");
}

bool is_valid_cause_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > layout::kMaxCauseName || name.front() < 'a' || name.front() > 'z') return false;
  for (const char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

Result<void> validate_cause_name(std::string_view name) {
  if (is_valid_cause_name(name)) return {};
  return make_error(Errc::invalid_cause, "cause " + quoted(name) + " is not a cause name ([a-z][a-z0-9_]{0,31})");
}

}  // namespace pkgctx
