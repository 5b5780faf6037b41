// Internal: the hash of a package name in the index (pkgctx::name_hash exports the same one).
// Inlined (XXH_INLINE_ALL) because every lookup starts with it and its result is the address of
// the index line: a call into libxxhash through the PLT would delay that load.
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdint>
#include <string_view>

namespace pkgctx::detail {

inline std::uint64_t hash_name(std::string_view name) noexcept { return XXH3_64bits(name.data(), name.size()); }

}  // namespace pkgctx::detail
