// Internal: the state behind a Segment handle. Do not depend on it outside lib/.
#pragma once

#include "pkgctx/layout.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <sys/mman.h>
#include <utility>

namespace pkgctx::detail {

// One mmap(2)ed range, unmapped on destruction. (Boost.Interprocess maps only objects it opened
// by name, following symlinks; the segment is opened by descriptor after checking it.)
class Region {
 public:
  Region() = default;
  Region(void* addr, std::size_t size) noexcept : addr_(addr), size_(size) {}
  Region(Region&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Region& operator=(Region&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  ~Region() { reset(); }
  void* get() const noexcept { return addr_; }

 private:
  void reset() noexcept {
    if (addr_) ::munmap(addr_, size_);
    addr_ = nullptr;
  }
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

struct Mapping {
  std::string name;
  std::string dir;  // the runtime directory it was opened in
  Region table;
  bool writable = false;

  // Validated views into `table` (set once by the opener, never changed).
  std::byte* base = nullptr;
  layout::Header* header = nullptr;
  layout::Slot* slots = nullptr;
  std::atomic<std::uint32_t>* index = nullptr;
  std::uint64_t index_entries = 0;     // a multiple of layout::kIndexLine
  unsigned index_slot_bits = 0;        // layout::index_slot_bits(capacity)
  std::uint32_t* freelist = nullptr;
  std::atomic<std::uint64_t>* bitmap = nullptr;
  std::atomic<std::uint64_t>* arena = nullptr;
  std::uint64_t arena_bytes = 0;
  std::uint32_t capacity = 0;
  std::atomic<std::uint32_t>* waiter_counts = nullptr;  // capacity counts (daemon-written)
};

// The object names of a segment.
inline std::string table_object(const std::string& name) { return name; }

}  // namespace pkgctx::detail
