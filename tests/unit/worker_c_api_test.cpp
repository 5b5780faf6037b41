// The C API (pkgctx.h): codes, messages, NULL handling, buffers, and every call once.
#define BOOST_TEST_MODULE worker_c_api
#include <boost/test/unit_test.hpp>

#include "pkgctx.h"
#include "pkgctx/store.hpp"
#include "jcs_vectors.hpp"
#include "test_support.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <string>

using namespace pkgctx;
using namespace std::chrono_literals;
using pkgctx::test::SegmentName;

namespace {

struct Fixture {
  SegmentName name;
  Store store;
  pkgctx_worker_t* worker = nullptr;

  Fixture() : store(create(name)) { BOOST_TEST_REQUIRE(pkgctx_attach(name.c_str(), &worker) == PKGCTX_OK); }
  ~Fixture() { pkgctx_detach(worker); }

  static Store create(const std::string& n) {
    return test::create_store_with(n, test::segment_options(16, 4096), "1.0",
                                   Settings::parse(R"({"z":[1,2],"a":"\u00e9"})").value());
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(codes_and_messages) {
  BOOST_TEST(pkgctx_strerror(PKGCTX_OK) == std::string("success"));
  for (int code : {1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30, 31, 32, 33}) {
    BOOST_TEST(std::string(pkgctx_strerror(code)) != "unknown pkgctx error code", code);
    BOOST_TEST(std::string(pkgctx_errname(code)) == errc_name(static_cast<Errc>(code)));
  }
  BOOST_TEST(pkgctx_strerror(999) == std::string("unknown pkgctx error code"));
  BOOST_TEST(pkgctx_strerror(-1) == std::string("unknown pkgctx error code"));
  BOOST_TEST(pkgctx_version() == std::string("0.1.0"));

  SegmentName missing("missing");
  pkgctx_worker_t* w = reinterpret_cast<pkgctx_worker_t*>(0x1);
  BOOST_TEST(pkgctx_attach(missing.c_str(), &w) == PKGCTX_SEGMENT_MISSING);
  BOOST_TEST(w == nullptr);
  BOOST_TEST(std::string(pkgctx_last_error()).find(missing.str()) != std::string::npos);
  BOOST_TEST(pkgctx_attach(nullptr, &w) == PKGCTX_INVALID_NAME);
  BOOST_TEST(pkgctx_attach("x", nullptr) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_attach("a/b", &w) == PKGCTX_INVALID_NAME);
}

BOOST_AUTO_TEST_CASE(null_handles_never_crash) {
  pkgctx_token_t* t = nullptr;
  pkgctx_package_t p;
  pkgctx_daemon_t d;
  int flag = 7;
  BOOST_TEST(pkgctx_token(nullptr, "pkg", 0, &t) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_token_parse(nullptr, "x", &t) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_read(nullptr, "pkg", &p) == PKGCTX_IO_ERROR);
  BOOST_TEST(p.version == nullptr);
  BOOST_TEST(pkgctx_need_update(nullptr, "pkg", "1", "0000000000000000", &flag) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_daemon(nullptr, &d) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_refresh(nullptr, &flag) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_cancelled(nullptr) == 0);
  pkgctx_check_t never{};
  BOOST_TEST(pkgctx_token_check(nullptr, &never) == PKGCTX_INVALID_TOKEN);
  BOOST_TEST(pkgctx_check_cancelled(&never) == 0);  // a check that never fires, not a crash
  BOOST_TEST(pkgctx_token_check(nullptr, nullptr) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_cause(nullptr) == std::string("none"));
  BOOST_TEST(pkgctx_cause_code(nullptr) == PKGCTX_CAUSE_NONE);
  BOOST_TEST(pkgctx_wait(nullptr, 0) == PKGCTX_INVALID_TOKEN);
  char buf[8] = "junk";
  BOOST_TEST(pkgctx_token_str(nullptr, buf, sizeof buf) == 0u);
  BOOST_TEST(buf[0] == '\0');
  BOOST_TEST(pkgctx_token_dup(nullptr) == nullptr);
  pkgctx_watch_t* watch = nullptr;
  BOOST_TEST(pkgctx_watch(nullptr, [](void*) {}, nullptr, &watch) == PKGCTX_INVALID_TOKEN);
  pkgctx_token_free(nullptr);
  pkgctx_detach(nullptr);
  pkgctx_package_free(nullptr);
  pkgctx_unwatch(nullptr);
  int fd = 7;
  BOOST_TEST(pkgctx_watch_fd(nullptr, &fd, &watch) == PKGCTX_INVALID_TOKEN);
  BOOST_TEST(fd == -1);
  BOOST_TEST(watch == nullptr);
  BOOST_TEST(pkgctx_liveness_name(99) == std::string("unknown"));
}

BOOST_FIXTURE_TEST_CASE(tokens, Fixture) {
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", PKGCTX_EVENT_SCHEDULE, &t) == PKGCTX_OK);
  BOOST_TEST(pkgctx_cancelled(t) == 0);
  BOOST_TEST(pkgctx_cause(t) == std::string("none"));

  char text[PKGCTX_TOKEN_STR_MAX + 1];
  const size_t len = pkgctx_token_str(t, text, sizeof text);
  BOOST_TEST(len == std::strlen(text));
  BOOST_TEST(len <= static_cast<size_t>(PKGCTX_TOKEN_STR_MAX));
  char small[10];
  BOOST_TEST(pkgctx_token_str(t, small, sizeof small) == len);  // full length, truncated copy
  BOOST_TEST(std::string(small) == std::string(text, 9));

  pkgctx_token_t* parsed = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token_parse(worker, text, &parsed) == PKGCTX_OK);
  pkgctx_token_t* copy = pkgctx_token_dup(t);
  BOOST_TEST_REQUIRE(copy != nullptr);
  pkgctx_check_t check{}, other_key{};
  BOOST_TEST_REQUIRE(pkgctx_token_check(t, &check) == PKGCTX_OK);
  pkgctx_token_t* key3 = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", 3, &key3) == PKGCTX_OK);
  BOOST_TEST_REQUIRE(pkgctx_token_check(key3, &other_key) == PKGCTX_OK);
  BOOST_TEST(pkgctx_check_cancelled(&check) == 0);

  // Wait times out, then a reschedule cancels all three.
  const auto t0 = std::chrono::steady_clock::now();
  BOOST_TEST(pkgctx_wait(t, 30) == PKGCTX_TIMED_OUT);
  BOOST_TEST((std::chrono::steady_clock::now() - t0 >= 30ms));
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  BOOST_TEST(pkgctx_wait(t, -1) == PKGCTX_OK);
  BOOST_TEST(pkgctx_check_cancelled(&check) == 1);      // the inlined check agrees
  BOOST_TEST(pkgctx_check_cancelled(&other_key) == 0);  // another key's child lives on
  pkgctx_token_free(key3);
  for (auto* x : {t, parsed, copy}) {
    BOOST_TEST(pkgctx_cancelled(x) == 1);
    BOOST_TEST(pkgctx_cause(x) == std::string("rescheduled"));
    BOOST_TEST(pkgctx_cause_code(x) == PKGCTX_CAUSE_RESCHEDULED);
  }
  pkgctx_token_free(t);
  pkgctx_token_free(parsed);
  pkgctx_token_free(copy);

  pkgctx_token_t* bad = reinterpret_cast<pkgctx_token_t*>(0x1);
  BOOST_TEST(pkgctx_token(worker, "absent", 0, &bad) == PKGCTX_NO_SUCH_PACKAGE);
  BOOST_TEST(bad == nullptr);
  BOOST_TEST(std::string(pkgctx_last_error()).find("absent") != std::string::npos);
  BOOST_TEST(pkgctx_token(worker, "pkg", 8, &bad) == PKGCTX_INVALID_EVENT);
  BOOST_TEST(pkgctx_token(worker, "a b", 0, &bad) == PKGCTX_INVALID_NAME);
  BOOST_TEST(pkgctx_token(worker, nullptr, 0, &bad) == PKGCTX_INVALID_NAME);
  BOOST_TEST(pkgctx_token_parse(worker, "pkgctx1:garbage", &bad) == PKGCTX_INVALID_TOKEN);
  BOOST_TEST(pkgctx_token_parse(worker, nullptr, &bad) == PKGCTX_INVALID_TOKEN);
}

BOOST_FIXTURE_TEST_CASE(reads, Fixture) {
  pkgctx_package_t p;
  BOOST_TEST_REQUIRE(pkgctx_read(worker, "pkg", &p) == PKGCTX_OK);
  const Settings expected = Settings::parse(R"({"a":"é","z":[1,2]})").value();
  BOOST_TEST(p.version == std::string("1.0"));
  BOOST_TEST(p.settings == expected.canonical());
  BOOST_TEST(p.settings_len == expected.canonical().size());
  BOOST_TEST(p.checksum == expected.checksum());
  BOOST_TEST(p.checksum_hex == expected.checksum_hex());
  pkgctx_package_free(&p);
  BOOST_TEST(p.version == nullptr);
  BOOST_TEST(p.settings == nullptr);
  BOOST_TEST(pkgctx_read(worker, "absent", &p) == PKGCTX_NO_SUCH_PACKAGE);

  int need = -1;
  const std::string hex = expected.checksum_hex();
  BOOST_TEST(pkgctx_need_update(worker, "pkg", "1.0", hex.c_str(), &need) == PKGCTX_OK);
  BOOST_TEST(need == 0);
  BOOST_TEST(pkgctx_need_update(worker, "pkg", "2.0", hex.c_str(), &need) == PKGCTX_OK);
  BOOST_TEST(need == 1);
  BOOST_TEST(pkgctx_need_update(worker, "pkg", "1.0", "xyz", &need) == PKGCTX_INVALID_SETTINGS);

  pkgctx_daemon_t d;
  BOOST_TEST(pkgctx_daemon(worker, &d) == PKGCTX_OK);
  BOOST_TEST(d.liveness == PKGCTX_DAEMON_NONE);
  store.segment().mark_daemon_running(1234, 1'000'000'000);
  BOOST_TEST(pkgctx_daemon(worker, &d) == PKGCTX_OK);
  BOOST_TEST(d.liveness == PKGCTX_DAEMON_ALIVE);
  BOOST_TEST(d.pid == 1234);
  BOOST_TEST(pkgctx_liveness_name(d.liveness) == std::string("alive"));

  int moved = -1;
  BOOST_TEST(pkgctx_refresh(worker, &moved) == PKGCTX_OK);
  BOOST_TEST(moved == 0);
}

BOOST_FIXTURE_TEST_CASE(watches, Fixture) {
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", PKGCTX_EVENT_UPDATE, &t) == PKGCTX_OK);
  std::atomic<int> fired{0};
  auto bump = [](void* arg) {
    auto* f = static_cast<std::atomic<int>*>(arg);
    f->fetch_add(1);
    f->notify_all();
  };
  pkgctx_watch_t* watch = nullptr;
  pkgctx_watch_t* dropped = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_watch(t, bump, &fired, &watch) == PKGCTX_OK);
  std::atomic<int> never{0};
  BOOST_TEST_REQUIRE(pkgctx_watch(t, bump, &never, &dropped) == PKGCTX_OK);
  pkgctx_unwatch(dropped);
  BOOST_TEST_REQUIRE(store.handle_event(kEventUpdate, "pkg").has_value());
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (fired.load() == 0 && std::chrono::steady_clock::now() < deadline) fired.wait(0);
  BOOST_TEST(fired.load() == 1);
  pkgctx_unwatch(watch);
  BOOST_TEST(never.load() == 0);
  // Already cancelled: runs inline.
  pkgctx_watch_t* late = nullptr;
  BOOST_TEST(pkgctx_watch(t, bump, &fired, &late) == PKGCTX_OK);
  BOOST_TEST(fired.load() == 2);
  pkgctx_unwatch(late);
  pkgctx_token_free(t);
}

namespace {

// poll() for POLLIN on `fd` for at most `timeout_ms`: 1 readable, 0 not, -1 error.
int readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  const int rc = ::poll(&p, 1, timeout_ms);
  return rc < 0 ? -1 : (rc == 1 && (p.revents & POLLIN) ? 1 : 0);
}

}  // namespace

// The pollable wait: another process cancels, poll() in this one wakes; the fd is the watch's.
BOOST_FIXTURE_TEST_CASE(watch_fd_wakes_poll_on_a_cancel_from_another_process, Fixture) {
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", PKGCTX_EVENT_UPDATE, &t) == PKGCTX_OK);
  pkgctx_watch_t* watch = nullptr;
  int fd = -1;
  BOOST_TEST_REQUIRE(pkgctx_watch_fd(t, &fd, &watch) == PKGCTX_OK);
  BOOST_TEST_REQUIRE(fd >= 0);
  BOOST_TEST((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  BOOST_TEST((::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0);
  BOOST_TEST(readable(fd, 0) == 0);  // live token: not readable

  test::Pipe go;
  const pid_t child = test::spawn([&] {
    if (!go.await()) return 3;
    return store.handle_event(kEventUpdate, "pkg") ? 0 : 4;
  });
  BOOST_TEST(readable(fd, 50) == 0);  // still live while the child waits for the go
  go.signal();
  BOOST_TEST(readable(fd, 10'000) == 1);
  BOOST_TEST(pkgctx_cancelled(t) == 1);
  BOOST_TEST(std::string(pkgctx_cause(t)) == "update_event");
  BOOST_TEST(test::wait_exit(child) == 0);
  BOOST_TEST(readable(fd, 0) == 1);  // level-triggered: stays readable

  // Already cancelled: readable at once.
  pkgctx_watch_t* late = nullptr;
  int late_fd = -1;
  BOOST_TEST_REQUIRE(pkgctx_watch_fd(t, &late_fd, &late) == PKGCTX_OK);
  BOOST_TEST(late_fd != fd);
  BOOST_TEST(readable(late_fd, 0) == 1);

  // pkgctx_unwatch closes the fd (nothing else opens descriptors in this test meanwhile).
  pkgctx_unwatch(watch);
  errno = 0;
  BOOST_TEST(::fcntl(fd, F_GETFD) == -1);
  BOOST_TEST(errno == EBADF);
  pkgctx_unwatch(late);
  pkgctx_token_free(t);
}

// A watch dropped before the cancellation never signals, and its fd is closed.
BOOST_FIXTURE_TEST_CASE(watch_fd_unwatched_before_cancel, Fixture) {
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", PKGCTX_EVENT_SCHEDULE, &t) == PKGCTX_OK);
  pkgctx_watch_t* dropped = nullptr;
  pkgctx_watch_t* kept = nullptr;
  int dropped_fd = -1;
  int kept_fd = -1;
  BOOST_TEST_REQUIRE(pkgctx_watch_fd(t, &dropped_fd, &dropped) == PKGCTX_OK);
  BOOST_TEST_REQUIRE(pkgctx_watch_fd(t, &kept_fd, &kept) == PKGCTX_OK);
  pkgctx_unwatch(dropped);
  BOOST_TEST(::fcntl(dropped_fd, F_GETFD) == -1);
  BOOST_TEST_REQUIRE(store.handle_event(kEventSchedule, "pkg").has_value());
  BOOST_TEST(readable(kept_fd, 10'000) == 1);
  BOOST_TEST(std::string(pkgctx_cause(t)) == "rescheduled");
  pkgctx_unwatch(kept);
  pkgctx_token_free(t);
}

// --- v2 (DESIGN §2.1, §3): pkgctx_read2, caller-named causes, pkgctx_checksum ----------------------
BOOST_FIXTURE_TEST_CASE(read2_returns_settings_version_and_maintenance, Fixture) {
  UpdateOptions o;
  o.settings_version = 6;
  o.maintenance = "frozen-1";
  BOOST_REQUIRE(store.update("web", "2.0", Settings::parse(R"({"a":1})").value(), o));
  pkgctx_package2_t p;
  BOOST_TEST_REQUIRE(pkgctx_read2(worker, "web", &p) == PKGCTX_OK);
  BOOST_TEST(p.version == std::string("2.0"));
  BOOST_TEST(std::string(p.settings, p.settings_len) == R"({"a":1})");
  BOOST_TEST(p.settings_version == 6u);
  BOOST_TEST(p.maintenance == std::string("frozen-1"));
  BOOST_TEST(p.checksum_hex == Settings::parse(R"({"a":1})").value().checksum_hex());
  pkgctx_package2_free(&p);
  BOOST_TEST(p.version == nullptr);
  pkgctx_package2_free(nullptr);
  // The v1 call still answers, unchanged.
  pkgctx_package_t v1;
  BOOST_TEST_REQUIRE(pkgctx_read_n(worker, "web", 3, &v1) == PKGCTX_OK);
  BOOST_TEST(v1.version == std::string("2.0"));
  pkgctx_package_free(&v1);
  BOOST_TEST(pkgctx_read2(worker, "nosuch", &p) == PKGCTX_NO_SUCH_PACKAGE);
  BOOST_TEST(p.version == nullptr);
  BOOST_TEST(pkgctx_read2_n(worker, "web", 3, nullptr) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_read2(nullptr, "web", &p) == PKGCTX_IO_ERROR);
}

BOOST_FIXTURE_TEST_CASE(read2_of_a_corrupt_maintenance_is_corrupt, Fixture) {
  UpdateOptions o;
  o.maintenance = "ok";
  BOOST_REQUIRE(store.update("web", "1.0", Settings(), o));
  auto& h = const_cast<layout::Header&>(store.segment().header());
  auto* slots = reinterpret_cast<layout::Slot*>(reinterpret_cast<std::byte*>(&h) + h.prefix.slots_offset);
  auto& w = slots[store.view().find("web").value()].data.w[layout::dw::kMaintenance];
  const auto good = w.load();
  w.store(0x0a6b6f);  // "ok\n"…: a byte outside [A-Za-z0-9._-] within the stored length
  auto& meta = slots[store.view().find("web").value()].data.w[layout::dw::kMeta];
  const auto m = meta.load();
  meta.store((m & ~(std::uint64_t{0xff} << 24)) | (std::uint64_t{3} << 24));
  pkgctx_package2_t p;
  BOOST_TEST(pkgctx_read2(worker, "web", &p) == PKGCTX_CORRUPT);
  BOOST_TEST(pkgctx_errname(PKGCTX_CORRUPT) == std::string("corrupt"));
  meta.store(m);
  w.store(good);
  BOOST_TEST_REQUIRE(pkgctx_read2(worker, "web", &p) == PKGCTX_OK);
  BOOST_TEST(p.maintenance == std::string("ok"));
  pkgctx_package2_free(&p);
}

BOOST_FIXTURE_TEST_CASE(named_causes_through_the_c_api, Fixture) {
  pkgctx_token_t* t = nullptr;
  BOOST_TEST_REQUIRE(pkgctx_token(worker, "pkg", PKGCTX_EVENT_UPDATE, &t) == PKGCTX_OK);
  char buf[PKGCTX_CAUSE_NAME_MAX + 1];
  size_t len = 99;
  BOOST_TEST(pkgctx_cause_text(t, buf, sizeof buf, &len) == PKGCTX_OK);
  BOOST_TEST(buf == std::string("none"));
  BOOST_TEST(len == 4u);
  BOOST_REQUIRE(store.handle_event(kEventUpdate, "pkg", "a_rather_long_cause_name_of_32ch"));
  BOOST_TEST(pkgctx_cause_code(t) == PKGCTX_CAUSE_NAMED);
  BOOST_TEST(pkgctx_cause(t) == std::string("named"));
  BOOST_TEST(pkgctx_cause_text(t, buf, sizeof buf, &len) == PKGCTX_OK);
  BOOST_TEST(buf == std::string("a_rather_long_cause_name_of_32ch"));
  BOOST_TEST(len == 32u);
  char small[5];
  BOOST_TEST(pkgctx_cause_text(t, small, sizeof small, &len) == PKGCTX_OK);  // truncated as snprintf
  BOOST_TEST(small == std::string("a_ra"));
  BOOST_TEST(len == 32u);
  BOOST_TEST(pkgctx_cause_text(t, nullptr, 0, &len) == PKGCTX_OK);
  BOOST_TEST(len == 32u);
  BOOST_TEST(pkgctx_cause_text(t, nullptr, 4, &len) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_cause_text(nullptr, buf, sizeof buf, &len) == PKGCTX_OK);
  BOOST_TEST(buf == std::string("none"));
  // A corrupt stored name is an error, never printed.
  auto& h = const_cast<layout::Header&>(store.segment().header());
  h.cause_names[0].w[0].store(0x2121);
  BOOST_TEST(pkgctx_cause_text(t, buf, sizeof buf, &len) == PKGCTX_CORRUPT);
  BOOST_TEST(buf == std::string(""));
  pkgctx_token_free(t);
}

BOOST_AUTO_TEST_CASE(checksum_matches_every_conformance_vector) {
  for (const test::JcsVector& v : test::load_jcs_vectors()) {
    BOOST_TEST_CONTEXT(v.name) {
      char hex[17] = "x";
      char* canonical = reinterpret_cast<char*>(1);
      const int rc = pkgctx_checksum(v.input.data(), v.input.size(), hex, &canonical);
      if (v.error.empty()) {
        BOOST_TEST_REQUIRE(rc == PKGCTX_OK, pkgctx_last_error());
        BOOST_TEST(hex == v.checksum);
        BOOST_TEST(canonical == v.canonical);
        pkgctx_string_free(canonical);
        char hex2[17];
        BOOST_TEST(pkgctx_checksum(v.input.data(), v.input.size(), hex2, nullptr) == PKGCTX_OK);  // canonical optional
        BOOST_TEST(hex2 == v.checksum);
      } else {
        BOOST_TEST(pkgctx_errname(rc) == v.error);
        BOOST_TEST(hex == std::string(""));
        BOOST_TEST(canonical == nullptr);
      }
    }
  }
  char hex[17];
  BOOST_TEST(pkgctx_checksum(nullptr, 3, hex, nullptr) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_checksum("{}", 2, nullptr, nullptr) == PKGCTX_IO_ERROR);
  BOOST_TEST(pkgctx_checksum("", 0, hex, nullptr) == PKGCTX_INVALID_SETTINGS);
  pkgctx_string_free(nullptr);
}
