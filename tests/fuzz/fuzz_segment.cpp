// Fuzz target: the segment opener and the read side on arbitrary bytes (DESIGN.md §9: a corrupt
// or foreign segment is refused, not trusted).
//
// Each input becomes the contents of a POSIX shared-memory object that Segment::open maps
// read-only. Input byte 0 picks the mode:
//  * 0 mod 4: the rest of the input is the whole object (mostly refused by the header checks);
//  * otherwise: the rest is a list of patches (offset, length, bytes) applied to the image of a
//    real, small, populated segment, so most inputs pass the header checks and reach the reader's
//    bounds checks (view.cpp) with corrupt slots, index entries, lengths and offsets.
// When the opener accepts, every read a worker or pkgctl could make must return (a value or an
// error) without touching memory outside the mapping: list(), read(), find(), token(),
// need_update(), info(), Token::parse of a printed token.
//
// Sequence counters are forced even after patching: an odd one makes readers back off for a
// second (by design: a writer may be inside), which would only slow the fuzzer down.
#include "pkgctx/store.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

namespace {

namespace layout = pkgctx::layout;

std::string g_name;
int g_fd = -1;
std::vector<unsigned char> g_image;  // a populated segment, byte for byte
std::uint32_t g_capacity = 0;
std::uint64_t g_slots_offset = 0;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_segment: %s\n", what);
  std::abort();
}

std::string g_dir;  // the runtime directory this run made (removed at exit)

void cleanup() {
  ::unlink(pkgctx::object_path(g_name).c_str());
  if (!g_dir.empty()) ::rmdir(g_dir.c_str());
}

// What View promises of every record it returns (DESIGN §4.1: no trust in bytes): valid name
// and version, and settings that match their checksum and cannot split a line.
void check_record(const pkgctx::PackageRecord& r, bool with_settings) {
  if (!pkgctx::is_valid_name(r.name, layout::kMaxName)) fail("a record with an invalid name got through");
  if (!r.version.empty() && !pkgctx::validate_version(r.version)) fail("a record with an invalid version got through");
  if (!with_settings) return;
  if (pkgctx::checksum_bytes(r.settings) != r.checksum) fail("settings that do not match their checksum got through");
  for (const char c : r.settings)
    if (static_cast<unsigned char>(c) < 0x20) fail("settings with a control byte got through");
}

void build_image() {
  const std::string tmpl = g_name + "-tmpl";
  pkgctx::Segment::remove(tmpl);
  pkgctx::SegmentOptions o;
  o.capacity = 4;
  o.settings_bytes = 512;
  auto store = pkgctx::Store::create(tmpl, o);
  if (!store) fail("cannot create the template segment");
  (void)store->update("alpha", "1.0", pkgctx::Settings::parse(R"({"k":"a fairly long settings value, two chunks","n":[1,2,3]})").value());
  (void)store->update("b", "2", pkgctx::Settings::parse(R"({"x":true})").value());
  (void)store->update("gone", "1", pkgctx::Settings());
  (void)store->handle_event(pkgctx::kEventRemove, "gone");
  (void)store->erase("gone");
  (void)store->handle_event(pkgctx::kEventSchedule, "b");
  (void)store->handle_event(pkgctx::kEventRemove, "b");
  (void)store->update("c-3", "x", pkgctx::Settings());
  const auto& pre = store->segment().header().prefix;
  g_capacity = pre.capacity;
  g_slots_offset = pre.slots_offset;
  g_image.resize(pre.total_bytes);
  std::memcpy(g_image.data(), &store->segment().header(), g_image.size());
  pkgctx::Segment::remove(tmpl);
}

// Even sequence counters in `img` (header index_seq and every slot's seq), where they fit.
void even_sequences(std::vector<unsigned char>& img) {
  auto clear_low_bit = [&](std::size_t off) {
    if (off + 8 <= img.size()) img[off] &= 0xfe;  // little-endian: bit 0 is in the first byte
  };
  clear_low_bit(offsetof(layout::Header, index_seq));
  for (std::uint32_t i = 0; i < g_capacity; ++i)
    clear_low_bit(g_slots_offset + std::size_t{i} * sizeof(layout::Slot) + offsetof(layout::Slot, data) +
                  offsetof(layout::SlotData, seq));
}

void exercise(const pkgctx::View& view) {
  const pkgctx::SegmentInfo info = view.segment().info();
  (void)pkgctx::liveness(info);
  std::vector<std::string> names = {"alpha", "b", "c-3", "gone", "zz"};
  auto listed = view.list(true);
  if (!listed && listed.error().code != pkgctx::Errc::corrupt) fail("list() failed with another code than corrupt");
  for (const pkgctx::PackageRecord& r : listed ? *listed : std::vector<pkgctx::PackageRecord>{}) {
    check_record(r, true);
    if (r.slot >= view.segment().capacity()) fail("list() returned a slot beyond the capacity");
    if (r.name.empty() || r.name.size() > layout::kMaxName || r.version.size() > layout::kMaxVersion)
      fail("list() returned an impossible record");
    if (r.settings.size() != r.settings_size) fail("list() returned settings of the wrong size");
    names.push_back(r.name);
  }
  for (const std::string& n : names) {
    (void)view.find(n);
    if (auto r = view.read(n, true)) {
      check_record(*r, true);
      (void)view.need_update(n, r->version, r->checksum);
    }
    for (int e = 0; e <= 7; e += 3) {
      if (auto t = view.token(n, e)) {
        (void)t->cancelled();
        (void)t->cause();
        auto back = pkgctx::core::Token::parse(t->str(), view.segment());
        if (!back) fail("a token of this segment does not parse back");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_name = "pkgctx-fuzz-seg-" + std::to_string(::getpid());
  if (const char* env = std::getenv("PKGCTX_RUNTIME_DIR"); !env || !*env) {
    char tmpl[] = "/dev/shm/pkgctx-fuzz-XXXXXX";
    if (!::mkdtemp(tmpl)) fail("mkdtemp");
    g_dir = tmpl;
    ::setenv("PKGCTX_RUNTIME_DIR", tmpl, 1);
  }
  build_image();
  g_fd = ::open(pkgctx::object_path(g_name).c_str(), O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (g_fd < 0) fail("open the fuzzed segment");
  std::atexit(cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::vector<unsigned char> img;
  if (data[0] % 4 == 0) {
    img.assign(data + 1, data + size);
  } else {
    img = g_image;
    // Patches: [offset: 2 bytes, scaled to the image][length: 1 byte][bytes…].
    for (std::size_t i = 1; i + 3 <= size;) {
      const std::size_t off = (std::size_t{data[i]} | std::size_t{data[i + 1]} << 8) * img.size() / 65536;
      std::size_t len = data[i + 2] % 17;
      i += 3;
      len = std::min({len, size - i, img.size() - off});
      std::memcpy(img.data() + off, data + i, len);
      i += len;
    }
    if (data[0] % 4 == 3) img.resize(img.size() - (img.size() / 4));  // a truncated object
    even_sequences(img);
  }
  if (::ftruncate(g_fd, 0) != 0 || ::ftruncate(g_fd, static_cast<off_t>(img.size())) != 0) fail("ftruncate");
  if (!img.empty() && ::pwrite(g_fd, img.data(), img.size(), 0) != static_cast<ssize_t>(img.size())) fail("pwrite");

  auto seg = pkgctx::Segment::open(g_name, pkgctx::Access::read_only);
  if (!seg) {
    if (seg.error().message.empty()) fail("refusal without a message");
    return 0;
  }
  exercise(pkgctx::View(*seg));
  return 0;
}
