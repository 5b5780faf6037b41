// Internal: the state behind a Segment handle. Do not depend on it outside lib/.
#pragma once

#include "pkgctx/layout.hpp"

#include <boost/interprocess/mapped_region.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

namespace pkgctx::detail {

struct Mapping {
  std::string name;
  boost::interprocess::mapped_region table;
  boost::interprocess::mapped_region waiters;  // empty when the board is not writable
  bool writable = false;

  // Validated views into `table` (set once by the opener, never changed).
  std::byte* base = nullptr;
  layout::Header* header = nullptr;
  layout::Slot* slots = nullptr;
  std::atomic<std::uint64_t>* index = nullptr;
  std::uint64_t index_mask = 0;
  std::uint32_t* freelist = nullptr;
  std::atomic<std::uint64_t>* bitmap = nullptr;
  std::atomic<std::uint64_t>* arena = nullptr;
  std::uint64_t arena_bytes = 0;
  std::uint32_t capacity = 0;
  std::atomic<std::uint32_t>* waiter_counts = nullptr;
};

// The object names of a segment.
inline std::string table_object(const std::string& name) { return name; }
inline std::string waiters_object(const std::string& name) { return name + ".waiters"; }

}  // namespace pkgctx::detail
