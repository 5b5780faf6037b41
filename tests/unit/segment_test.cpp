// Opening a segment: every way a segment can be wrong is refused with a message that names
// what was expected and what was found.
#define BOOST_TEST_MODULE segment
#include <boost/test/unit_test.hpp>

#include "pkgctx/store.hpp"
#include "test_support.hpp"

#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

using namespace pkgctx;

namespace {

// Writes raw bytes as the segment object "<runtime dir>/<name>".
void write_object(const std::string& name, const std::string& bytes) {
  int fd = ::open(test::segment_path(name).c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
  BOOST_REQUIRE(fd >= 0);
  BOOST_REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

}  // namespace

BOOST_AUTO_TEST_CASE(missing_segment) {
  test::SegmentName seg;
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_missing);
  BOOST_TEST(contains(r.error().message, seg.str()));
}

BOOST_AUTO_TEST_CASE(foreign_bytes_are_refused) {
  test::SegmentName seg;
  write_object(seg.str(), std::string(8192, 'Z'));
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_foreign);
  BOOST_TEST(contains(r.error().message, "magic expected 0x"));
  BOOST_TEST(contains(r.error().message, "found 0x5a5a5a5a5a5a5a5a"));
}

BOOST_AUTO_TEST_CASE(empty_object_is_not_ready_yet) {
  test::SegmentName seg;
  write_object(seg.str(), "");
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_not_ready);
}

BOOST_AUTO_TEST_CASE(short_object_is_truncated) {
  test::SegmentName seg;
  write_object(seg.str(), std::string(10, '\0'));
  BOOST_TEST(Segment::open(seg.str(), Access::read_only).error().code == Errc::segment_truncated);
}

// A whole prefix but not a whole header: refused from the prefix alone (nothing past the object
// is read).
BOOST_AUTO_TEST_CASE(object_with_a_prefix_but_no_header_is_truncated) {
  test::SegmentName seg;
  { Store::create(seg.str()).value(); }
  const std::string path = test::segment_path(seg.str());
  BOOST_REQUIRE(::truncate(path.c_str(), sizeof(layout::Prefix) + 8) == 0);
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_truncated, r.error().message);
}

BOOST_AUTO_TEST_CASE(truncated_segment_is_refused) {
  test::SegmentName seg;
  { Store::create(seg.str()).value(); }
  int fd = ::open(test::segment_path(seg.str()).c_str(), O_RDWR, 0);
  BOOST_REQUIRE(fd >= 0);
  BOOST_REQUIRE(::ftruncate(fd, 64 * 1024) == 0);
  ::close(fd);
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_truncated);
  BOOST_TEST(contains(r.error().message, "the object has 65536"));
}

BOOST_AUTO_TEST_CASE(other_layout_version_is_refused_with_both_versions) {
  test::SegmentName seg;
  SegmentOptions o;
  o.capacity = 8;
  { Segment::create(seg.str(), o).value(); }
  const std::uint32_t other = layout::kLayoutVersion + 1;
  test::set_layout_version(seg.str(), other);
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_version);
  BOOST_TEST(contains(r.error().message, "layout version " + std::to_string(other)));
  BOOST_TEST(contains(r.error().message, "reads version " + std::to_string(layout::kLayoutVersion)));
}

BOOST_AUTO_TEST_CASE(corrupt_offsets_are_refused) {
  test::SegmentName seg;
  SegmentOptions o;
  o.capacity = 8;
  auto s = Segment::create(seg.str(), o).value();
  s.header().index_offset += 64;  // a lie a reader must not trust
  auto r = Segment::open(seg.str(), Access::read_only);
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::segment_foreign);
}

BOOST_AUTO_TEST_CASE(create_refuses_an_existing_segment) {
  test::SegmentName seg;
  auto a = Store::create(seg.str());
  BOOST_REQUIRE(a.has_value());
  auto b = Store::create(seg.str());
  BOOST_REQUIRE(!b);
  BOOST_TEST(b.error().code == Errc::segment_exists);
}

BOOST_AUTO_TEST_CASE(read_only_handle_refuses_writes) {
  test::SegmentName seg;
  auto owner = Store::create(seg.str()).value();
  Store ro(Segment::open(seg.str(), Access::read_only).value());
  auto r = ro.update("a", "1", Settings());
  BOOST_REQUIRE(!r);
  BOOST_TEST(r.error().code == Errc::permission_denied);
}

BOOST_AUTO_TEST_CASE(retired_segment_cancels_every_token) {
  test::SegmentName seg;
  auto store = Store::create(seg.str()).value();
  core::Token a = *store.update("a", "1", Settings())->token;
  core::Token b = **store.handle_event(kEventSchedule, "a");
  store.retire();
  BOOST_TEST(a.cancelled());
  BOOST_TEST(b.cancelled());
  BOOST_TEST(cause_name(a.cause()) == "segment_retired");
  BOOST_TEST(cause_name(b.cause()) == "segment_retired");
  BOOST_TEST(Segment::open(seg.str(), Access::read_only).error().code == Errc::segment_missing);
}

BOOST_AUTO_TEST_CASE(retire_by_name_works_on_another_layout_version) {
  test::SegmentName seg;
  SegmentOptions o;
  o.capacity = 8;
  auto s = Store::create(seg.str(), o).value();
  core::Token t = *s.update("a", "1", Settings())->token;
  core::Token child = **s.handle_event(7, "a");
  test::set_layout_version(seg.str(), layout::kLayoutVersion + 1);  // now foreign to this build
  BOOST_REQUIRE(Segment::retire(seg.str()).has_value());
  BOOST_TEST(t.cancelled());
  BOOST_TEST(child.cancelled());  // the contract lists every generation a token may watch
  BOOST_TEST(cause_name(t.cause()) == "segment_retired");
  BOOST_TEST(cause_name(child.cause()) == "segment_retired");
}

BOOST_AUTO_TEST_CASE(info_and_liveness) {
  test::SegmentName seg;
  auto store = Store::create(seg.str()).value();
  BOOST_TEST(liveness(store.segment().info()) == Liveness::none);
  store.segment().mark_daemon_running(::getpid(), 1'000'000'000);
  BOOST_TEST(liveness(store.segment().info()) == Liveness::alive);
  store.segment().header().heartbeat_mono_ns.store(mono_now_ns() - 10'000'000'000ull);
  BOOST_TEST(liveness(store.segment().info()) == Liveness::stale);
  store.segment().mark_daemon_stopped();
  BOOST_TEST(liveness(store.segment().info()) == Liveness::stopped);
  const auto info = store.segment().info();
  BOOST_TEST(info.capacity == 4096u);
  BOOST_TEST(info.layout_version == layout::kLayoutVersion);
  BOOST_TEST(info.epoch != 0u);
}
