// pkgctxd as a process: systemd notifications, ownership of the segment, crash and restart,
// replacing incompatible segments, SIGHUP reloads. Every step waits on a real condition: READY=1
// on a fake NOTIFY_SOCKET, a process exit, a waiter asleep on its futex.
#define BOOST_TEST_MODULE daemon_lifecycle
#include <boost/test/unit_test.hpp>

#include "daemon_env.hpp"
#include "pkgctx/store.hpp"
#include "pkgctx/view.hpp"

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <sys/mman.h>
#include <sys/stat.h>
#include <thread>

using namespace pkgctx;
using namespace std::chrono_literals;
namespace json = boost::json;
using daemon::testing::DaemonOptions;
using daemon::testing::DaemonProcess;

namespace {

using test::call;
using test::connect;

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

struct Env : test::DaemonEnv {
  Env() : DaemonEnv("life") {}
};

// In a child: tries an update through the socket; 0 if the answer's code is `expect` ("" = ok).
int try_update_as_nobody(const std::string& sock, const std::string& expect, const std::vector<gid_t>& groups = {}) {
  return test::as_nobody(groups, [&] {
    auto c = Client::connect(sock, 5000ms);
    if (!c) {
      std::fprintf(stderr, "nobody: %s\n", c.error().message.c_str());
      return 10;
    }
    auto a = c->call(json::object{{"op", "update"}, {"name", "by-nobody"}, {"version", "1"}});
    if (!a) return 11;
    const bool ok = a->at("ok").as_bool();
    if (expect.empty()) return ok ? 0 : 12;
    if (ok) return 13;
    if (a->at("error").at("code").as_string() != expect) return 14;
    // Reads stay open.
    auto d = c->call(json::object{{"op", "dump"}});
    return d && d->at("ok").as_bool() ? 0 : 15;
  });
}

}  // namespace

BOOST_AUTO_TEST_CASE(notifies_systemd_heartbeats_and_stops_cleanly) {
  Env env;
  DaemonOptions o = env.opts();
  o.watchdog = 200ms;
  DaemonProcess d(env.dir, o);
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(contains(d.ready_message(), "STATUS=Serving segment " + env.seg.str()));

  // WATCHDOG=1 at half of WATCHDOG_USEC: several within a second.
  BOOST_TEST(d.notify().wait_for("WATCHDOG=1", 2000ms).has_value());
  BOOST_TEST(d.notify().wait_for("WATCHDOG=1", 2000ms).has_value());

  // Modes: segment 0640, socket 0660.
  struct stat st {};
  BOOST_TEST_REQUIRE(::stat(test::segment_path(env.seg.str()).c_str(), &st) == 0);
  BOOST_TEST((st.st_mode & 0777) == 0640u);
  BOOST_TEST_REQUIRE(::stat(env.sock.c_str(), &st) == 0);
  BOOST_TEST((st.st_mode & 0777) == 0660u);
  BOOST_TEST(S_ISSOCK(st.st_mode));

  // The header names the daemon and its heartbeat moves.
  auto view = View::open(env.seg);
  BOOST_TEST_REQUIRE(view.has_value());
  SegmentInfo info = view->segment().info();
  BOOST_TEST(info.daemon_pid == d.pid());
  BOOST_TEST(info.heartbeat_interval_ns == 50'000'000u);
  BOOST_TEST(liveness_name(liveness(info)) == "alive");
  const auto beat = info.heartbeat_mono_ns;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (view->segment().info().heartbeat_mono_ns == beat && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  BOOST_TEST(view->segment().info().heartbeat_mono_ns > beat);

  d.signal(SIGTERM);
  BOOST_TEST(d.notify().wait_for("STOPPING=1", 5000ms).has_value());
  BOOST_TEST(d.wait_for(10s).value_or(-1) == 0);
  BOOST_TEST(::access(env.sock.c_str(), F_OK) != 0, "the socket file is removed on a clean stop");
  BOOST_TEST(liveness_name(liveness(view->segment().info())) == "stopped");
  const std::string log = d.stderr_text();
  BOOST_TEST(contains(log, "<6>pkgctxd: Created segment " + env.seg.str()), log);
  BOOST_TEST(contains(log, "<6>pkgctxd: Ready"), log);
  BOOST_TEST(contains(log, "<6>pkgctxd: Stopping on SIGTERM"), log);
}

BOOST_AUTO_TEST_CASE(kill9_loses_no_acknowledged_change_and_tokens_stay_live) {
  Env env;
  std::map<std::string, std::string> acked;  // name → token
  {
    DaemonProcess d(env.dir, env.opts());
    BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
    Client c = connect(env.sock);
    // A pipelined burst; the daemon dies right after its 500th answer was read.
    std::string batch;
    for (int i = 0; i < 1000; ++i)
      batch += R"({"op":"update","name":"p)" + std::to_string(i) + R"(","version":"1","settings":{"i":)" +
               std::to_string(i) + "}}\n";
    BOOST_TEST_REQUIRE(c.send_raw(batch).has_value());
    for (int i = 0; i < 500; ++i) {
      auto a = c.receive();
      BOOST_TEST_REQUIRE(a.has_value());
      BOOST_TEST_REQUIRE(a->at("ok").as_bool());
      acked[std::string(a->at("name").as_string())] = std::string(a->at("context").as_string());
    }
    d.signal(SIGKILL);
    BOOST_TEST(d.wait() == 128 + SIGKILL);
  }
  auto view = View::open(env.seg);
  BOOST_TEST_REQUIRE(view.has_value());
  std::vector<core::Token> tokens;
  for (const auto& [name, text] : acked) {
    auto rec = view->read(name);
    BOOST_TEST_REQUIRE(rec.has_value(), name);
    BOOST_TEST(rec->version == "1");
    auto t = core::Token::parse(text, view->segment());
    BOOST_TEST_REQUIRE(t.has_value());
    BOOST_TEST(!t->cancelled());
    tokens.push_back(*t);
  }
  BOOST_TEST(liveness_name(liveness(view->segment().info())) != "stopped");

  // Restart: re-attaches (same epoch), cancels nothing, serves the same data.
  const auto epoch = view->segment().info().epoch;
  DaemonProcess d2(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d2.ready(), d2.stderr_text());
  BOOST_TEST(contains(d2.stderr_text(), "Re-attached to segment"));
  auto view2 = View::open(env.seg);
  BOOST_TEST_REQUIRE(view2.has_value());
  BOOST_TEST(view2->segment().info().epoch == epoch);
  BOOST_TEST(view2->segment().info().daemon_pid == d2.pid());
  for (const core::Token& t : tokens) BOOST_TEST(!t.cancelled());
  Client c = connect(env.sock);
  auto s = call(c, R"({"op":"settings","name":"p7"})");
  BOOST_TEST(s.at("version") == "1");
  BOOST_TEST(json::serialize(s.at("settings")) == R"({"i":7})");
  BOOST_TEST(call(c, R"({"op":"dump"})").at("segment").at("used").as_int64() >= 500);
  // The same segment: a version change through the new daemon cancels an old token.
  auto t0 = core::Token::parse(acked.at("p0"), view2->segment());
  BOOST_TEST_REQUIRE(t0.has_value());
  BOOST_TEST(call(c, R"({"op":"update","name":"p0","version":"2"})").at("change") == "version");
  BOOST_TEST(t0->cancelled());
  BOOST_TEST(cause_name(t0->cause()) == "version_changed");
}

BOOST_AUTO_TEST_CASE(clean_restart_reattaches_without_cancelling) {
  Env env;
  std::string token_text;
  {
    DaemonProcess d(env.dir, env.opts());
    BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
    Client c = connect(env.sock);
    token_text = std::string(call(c, R"({"op":"update","name":"keep","version":"1"})").at("context").as_string());
    d.signal(SIGTERM);
    BOOST_TEST(d.wait_for(10s).value_or(-1) == 0);
  }
  auto view = View::open(env.seg);
  BOOST_TEST_REQUIRE(view.has_value());
  auto t = core::Token::parse(token_text, view->segment());
  BOOST_TEST_REQUIRE(t.has_value());
  DaemonProcess d(env.dir, env.opts({"--capacity", "99"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(!t->cancelled());
  BOOST_TEST(contains(d.stderr_text(), "keeps the size it was created with"), d.stderr_text());
}

BOOST_AUTO_TEST_CASE(a_second_daemon_on_the_same_segment_is_refused) {
  Env env;
  DaemonProcess first(env.dir, env.opts());
  BOOST_TEST_REQUIRE(first.ready(), first.start_failure());

  DaemonOptions o = env.opts();
  o.args[3] = env.dir / "other.sock";
  DaemonProcess second(env.dir, o);
  BOOST_TEST(!second.ready());
  BOOST_TEST(second.wait() == 1);
  const std::string log = second.stderr_text();
  BOOST_TEST(contains(log, "<3>pkgctxd: Failed to lock segment " + env.seg.str() + ": already served by another pkgctxd (pid " +
                               std::to_string(first.pid()) + ")"),
             log);
  BOOST_TEST(::access((env.dir / "other.sock").c_str(), F_OK) != 0);

  // Another segment on the first one's socket is refused too, and the socket is left alone.
  test::SegmentName other("other");
  DaemonOptions o2 = env.opts();
  o2.args[1] = other.str();
  DaemonProcess third(env.dir, o2);
  BOOST_TEST(!third.ready());
  BOOST_TEST(third.wait() == 1);
  BOOST_TEST(contains(third.stderr_text(), "Failed to open control socket " + env.sock + ": another process is serving"),
             third.stderr_text());
  // … and the segment it created for this start is gone again, waiters board included.
  BOOST_TEST(contains(third.stderr_text(), "Removed segment " + other.str() + ", created by this failed start"),
             third.stderr_text());
  BOOST_TEST(::access(test::segment_path(other.str()).c_str(), F_OK) != 0);
  BOOST_TEST(::access(test::segment_path(other.str() + ".waiters").c_str(), F_OK) != 0);

  // A segment it re-attached to stays, whatever happens to the start.
  DaemonOptions o3 = o2;
  o3.args[3] = env.dir / "other.sock";
  {
    DaemonProcess owner(env.dir, o3);
    BOOST_TEST_REQUIRE(owner.ready(), owner.start_failure());
    Client oc = connect(env.dir / "other.sock");
    BOOST_TEST(call(oc, R"({"op":"update","name":"kept","version":"1"})").at("ok") == true);
    owner.signal(SIGTERM);
    BOOST_TEST(owner.wait_for(10s).value_or(-1) == 0);
  }
  DaemonProcess fourth(env.dir, o2);
  BOOST_TEST(!fourth.ready());
  BOOST_TEST(fourth.wait() == 1);
  BOOST_TEST(!contains(fourth.stderr_text(), "Removed segment"), fourth.stderr_text());
  auto kept = View::open(other);
  BOOST_TEST_REQUIRE(kept.has_value(), (kept ? std::string() : kept.error().message));
  BOOST_TEST(kept->read("kept", false).has_value());

  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"dump"})").at("daemon").at("pid") == first.pid());
}

BOOST_AUTO_TEST_CASE(an_incompatible_segment_is_retired_and_its_waiters_woken) {
  Env env;
  SegmentOptions o;
  o.capacity = 8;
  auto old = Store::create(env.seg, o);
  BOOST_TEST_REQUIRE(old.has_value());
  auto up = old->update("w", "1", Settings{});
  BOOST_TEST_REQUIRE(up.has_value());
  const core::Token token = *up->token;
  test::set_layout_version(env.seg, layout::kLayoutVersion + 1);  // as a newer pkgctx left it

  const pid_t waiter = test::spawn([&] {
    const bool cancelled = token.wait(30s);
    return cancelled && token.cause() == Cause::kSegmentRetired ? 0 : 1;
  });
  // Start the daemon only once the waiter sleeps.
  BOOST_TEST_REQUIRE(test::await_futex_sleep(waiter));

  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(test::wait_exit(waiter) == 0);
  BOOST_TEST(token.cancelled());
  BOOST_TEST(cause_name(token.cause()) == "segment_retired");
  BOOST_TEST(contains(d.stderr_text(), "<5>pkgctxd: Retired incompatible segment " + env.seg.str()), d.stderr_text());

  auto fresh = View::open(env.seg);
  BOOST_TEST_REQUIRE(fresh.has_value(), (fresh ? std::string() : fresh.error().message));
  BOOST_TEST(fresh->segment().info().layout_version == layout::kLayoutVersion);
  BOOST_TEST(fresh->segment().info().used == 0u);
}

BOOST_AUTO_TEST_CASE(half_created_and_foreign_objects_are_replaced) {
  Env env;
  const std::string object = test::segment_path(env.seg.str());
  // A creator that died before writing the magic: zero-filled.
  int fd = ::open(object.c_str(), O_CREAT | O_RDWR, 0640);
  BOOST_TEST_REQUIRE(fd >= 0);
  BOOST_TEST_REQUIRE(::ftruncate(fd, 1 << 16) == 0);
  ::close(fd);
  {
    DaemonProcess d(env.dir, env.opts());
    BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
    BOOST_TEST(contains(d.stderr_text(), "left half-created"), d.stderr_text());
    d.signal(SIGTERM);
    BOOST_TEST(d.wait_for(10s).value_or(-1) == 0);
  }
  BOOST_TEST(View::open(env.seg).has_value());

  // Something that is not a pkgctx segment at all.
  Segment::remove(env.seg);
  fd = ::open(object.c_str(), O_CREAT | O_RDWR, 0640);
  BOOST_TEST_REQUIRE(fd >= 0);
  const std::string junk(8192, 'J');
  BOOST_TEST_REQUIRE(::write(fd, junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
  ::close(fd);
  DaemonProcess d(env.dir, env.opts());
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  BOOST_TEST(contains(d.stderr_text(), "<4>pkgctxd: Removing " + object), d.stderr_text());
  BOOST_TEST(View::open(env.seg).has_value());
}

BOOST_AUTO_TEST_CASE(peers_off_the_allow_list_cannot_write_and_sighup_reloads_it) {
  Env env;
  BOOST_TEST_REQUIRE(::chmod(env.dir.path().c_str(), 0755) == 0);  // nobody must reach the socket
  const std::string conf = env.dir / "pkgctxd.conf";
  const auto write_conf = [&](const std::string& extra) {
    std::ofstream(conf) << "# test config\nsocket_mode = 0666\n" << extra;
  };
  write_conf("");
  DaemonProcess d(env.dir, env.opts({"--config", conf}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());

  BOOST_TEST(try_update_as_nobody(env.sock, "forbidden") == 0);
  // Root writes (default allow-list).
  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"update","name":"by-root","version":"1"})").at("ok") == true);

  // Reload: nobody is now allowed by uid.
  write_conf("allow_uids = nobody\n");
  d.signal(SIGHUP);
  BOOST_TEST_REQUIRE(d.notify().wait_for("RELOADING=1", 5000ms).has_value());
  BOOST_TEST_REQUIRE(d.notify().wait_for("READY=1", 5000ms).has_value());
  BOOST_TEST(try_update_as_nobody(env.sock, "") == 0);
  BOOST_TEST(contains(d.stderr_text(), "Reloaded configuration from " + conf + ": allow_uids: \"\" -> \"65534\""),
             d.stderr_text());

  // Allowed by a supplementary group (SO_PEERGROUPS), not by uid.
  write_conf("allow_gids = 4242\ncapacity = 5\n");
  d.signal(SIGHUP);
  BOOST_TEST_REQUIRE(d.notify().wait_for("READY=1", 5000ms).has_value());
  BOOST_TEST(try_update_as_nobody(env.sock, "forbidden") == 0);
  BOOST_TEST(try_update_as_nobody(env.sock, "", {4242}) == 0);
  BOOST_TEST(contains(d.stderr_text(), "<4>pkgctxd: Ignored change of capacity"), d.stderr_text());

  // A broken config on reload keeps the running one.
  write_conf("allow_gids = 4242\nbogus_key = 1\n");
  d.signal(SIGHUP);
  BOOST_TEST_REQUIRE(d.notify().wait_for("READY=1", 5000ms).has_value());
  BOOST_TEST(contains(d.stderr_text(), "<3>pkgctxd: Failed to reload configuration"), d.stderr_text());
  BOOST_TEST(try_update_as_nobody(env.sock, "", {4242}) == 0);
  BOOST_TEST(d.running());

  // An endless file in its place is refused at once, not read forever.
  BOOST_TEST_REQUIRE(::unlink(conf.c_str()) == 0);
  BOOST_TEST_REQUIRE(::symlink("/dev/zero", conf.c_str()) == 0);
  d.signal(SIGHUP);
  BOOST_TEST_REQUIRE(d.notify().wait_for("READY=1", 5000ms).has_value());
  BOOST_TEST(contains(d.stderr_text(), "Failed to reload configuration: cannot read config file " + conf +
                                           ": a character device, not a regular file; keeping the current one"),
             d.stderr_text());
  BOOST_TEST(try_update_as_nobody(env.sock, "", {4242}) == 0);
}

BOOST_AUTO_TEST_CASE(environment_names_segment_and_socket) {
  Env env;
  DaemonOptions o;
  o.env = {{"PKGCTX_SEGMENT", env.seg.str()}, {"PKGCTX_SOCKET", env.sock}};
  DaemonProcess d(env.dir, o);
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  Client c = connect(env.sock);
  BOOST_TEST(call(c, R"({"op":"dump"})").at("segment").at("name").as_string() == env.seg.str());
}

BOOST_AUTO_TEST_CASE(configuration_errors_exit_2_with_one_line) {
  Env env;
  DaemonProcess missing(env.dir, env.opts({"--config", env.dir / "absent.conf"}));
  BOOST_TEST(!missing.ready());
  BOOST_TEST(missing.wait() == 2);
  BOOST_TEST(contains(missing.stderr_text(), "<3>pkgctxd: Failed to load configuration: cannot read config file " +
                                                 env.dir / "absent.conf" + ": No such file or directory"),
             missing.stderr_text());
  for (const auto& [path, why] : {std::pair{env.dir.path(), "a directory"}, std::pair{std::string("/dev/zero"),
                                                                                      "a character device"}}) {
    DaemonProcess special(env.dir, env.opts({"--config", path}));
    BOOST_TEST(special.wait() == 2);
    BOOST_TEST(contains(special.stderr_text(), "cannot read config file " + path + ": " + why + ", not a regular file"),
               special.stderr_text());
  }
  DaemonProcess bad_flag(env.dir, env.opts({"--capacity", "lots"}));
  BOOST_TEST(bad_flag.wait() == 2);
  BOOST_TEST(contains(bad_flag.stderr_text(), "--capacity: capacity: \"lots\" is not a non-negative integer"),
             bad_flag.stderr_text());
}
