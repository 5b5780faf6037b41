// pkgctxd --follow etcd against one real etcd member (DESIGN §10): puts and deletes applied in
// order with one cancellation per change, local writes refused while etcd owns the package, a
// kill -9 mid-stream resumed exactly at the segment's revision, a compacted revision resynced
// cancelling only what changed, etcd down at start (local state served, then caught up), and a
// delete that drains the tasks of the deleted package before deleting it (holders in the status).
#define BOOST_TEST_MODULE etcd_follow
#include "etcd_harness.hpp"

#include "pkgctx/settings.hpp"
#include "pkgctx/worker.hpp"
#include "test_support.hpp"

#include <atomic>

using namespace pkgctx;
using namespace pkgctx::test;
using pkgctx::daemon::testing::DaemonProcess;

namespace {

std::int64_t put(etcd::Client& c, const std::string& key, const std::string& value) {
  std::int64_t rev = 0;
  BOOST_TEST_REQUIRE(eventually([&] {
    auto r = c.put(key, value);
    rev = r ? *r : 0;
    return r.has_value();
  }));
  return rev;
}

std::int64_t del(etcd::Client& c, const std::string& key) {
  std::int64_t rev = 0;
  BOOST_TEST_REQUIRE(eventually([&] {
    auto r = c.delete_key(key);
    rev = r ? *r : 0;
    return r.has_value();
  }));
  return rev;
}

void wait_applied(const SegmentReader& seg, std::int64_t rev) {
  BOOST_TEST_REQUIRE(eventually([&] { return seg.revision() >= static_cast<std::uint64_t>(rev); }),
                     "segment revision " << seg.revision() << " never reached " << rev);
}

PackageRecord read(const SegmentReader& seg, const std::string& name) {
  auto r = seg.view().read(name, false);
  BOOST_TEST_REQUIRE(r.has_value(), name << ": " << (r ? std::string() : r.error().message));
  return *r;
}

std::uint64_t checksum_of(const std::string& settings) { return Settings::parse(settings)->checksum(); }

// A registered worker holding a task on `name`: says 'b' once it began, ends the task on 'e'
// (saying 'd'), exits on 'x'. Exit codes name the failed step.
pid_t holder(const DaemonEnv& env, const std::string& name, const test::Pipe& to_child, const test::Pipe& from_child) {
  return test::spawn([&]() -> int {
    auto w = Worker::attach(env.seg.str());
    if (!w) return 10;
    if (!w->register_daemon(env.sock)) return 11;
    auto task = w->begin(name, 0);
    if (!task) return 12;
    from_child.send('b');
    for (char c; (c = to_child.recv()) != 0;) {
      if (c == 'e') {
        task->end();
        from_child.send('d');
      }
      if (c == 'x') return 0;
    }
    return 13;
  });
}

// This host's status of `name` in etcd, parsed; null when there is none.
boost::json::value status_of(etcd::Client& c, const std::string& prefix, const std::string& name) {
  auto st = c.range_prefix(prefix + "/status/h1/" + name);
  if (!st || st->kvs.size() != 1 || st->kvs[0].key != prefix + "/status/h1/" + name) return nullptr;
  return boost::json::parse(st->kvs[0].value);
}

std::size_t holders_in(const boost::json::value& status) {
  if (!status.is_object() || !status.as_object().contains("holders")) return 0;
  return status.at("holders").as_array().size();
}

}  // namespace

BOOST_AUTO_TEST_CASE(puts_and_deletes_apply_in_order_cancelling_each_change_once) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdf");
  const std::string prefix = unique_prefix("order");
  DaemonProcess d(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  SegmentReader seg(env.seg);
  const std::string key = prefix + "/packages/p";

  wait_applied(seg, put(*c, key, R"({"version":"1","settings":{"a":1}})"));
  PackageRecord p = read(seg, "p");
  BOOST_TEST(p.version == "1");
  BOOST_TEST(p.checksum == checksum_of(R"({"a":1})"));
  BOOST_TEST(p.root_generation == 0u);

  // Each change with a token taken just before it: a version change or a forced one cancels it
  // exactly once; a settings-only change cancels nothing.
  std::string version = "1";
  std::uint64_t expected_gen = 0;
  for (int i = 0; i < 24; ++i) {
    auto t = seg.view().token("p", kEventUpdate);
    BOOST_TEST_REQUIRE(t.has_value());
    std::string value;
    bool cancels = true;
    if (i % 3 == 0) {
      version = "v" + std::to_string(i);
      value = R"({"version":")" + version + R"(","settings":{"a":1}})";
    } else if (i % 3 == 1) {
      value = R"({"version":")" + version + R"(","settings":{"a":1},"force":true,"settings_version":)" + std::to_string(i) + "}";
    } else {
      value = R"({"version":")" + version + R"(","settings":{"a":)" + std::to_string(i) + R"(},"maintenance":"drain"})";
      cancels = false;
    }
    wait_applied(seg, put(*c, key, value));
    if (cancels) ++expected_gen;
    p = read(seg, "p");
    BOOST_TEST(t->cancelled() == cancels, "change " << i);
    BOOST_TEST(p.root_generation == expected_gen, "change " << i);
    BOOST_TEST(p.version == version);
  }
  BOOST_TEST(read(seg, "p").maintenance == "drain");

  // Local writes: refused for the package etcd owns, allowed for others.
  Client ctl = connect(env.sock);
  auto refused = call(ctl, R"({"op":"update","name":"p","version":"local"})");
  BOOST_TEST(refused.at("ok") == false);
  BOOST_TEST(refused.at("error").at("code") == "owned_by_etcd");
  BOOST_TEST(read(seg, "p").version == version);  // nothing changed
  BOOST_TEST(call(ctl, R"({"op":"update","name":"mine","version":"1"})").at("ok") == true);

  // A delete: the context is cancelled (removed) and the package gone.
  auto t = seg.view().token("p", kEventUpdate);
  BOOST_TEST_REQUIRE(t.has_value());
  wait_applied(seg, del(*c, key));
  BOOST_TEST(t->cancelled());
  BOOST_TEST(seg.view().read("p", false).error().code == Errc::no_such_package);

  // A bad value is skipped (logged) and counted as applied; the next good one applies.
  wait_applied(seg, put(*c, prefix + "/packages/bad", R"({"version":1})"));
  BOOST_TEST(seg.view().read("bad", false).error().code == Errc::no_such_package);
  wait_applied(seg, put(*c, prefix + "/packages/good", R"({"version":"1"})"));
  BOOST_TEST(read(seg, "good").version == "1");

  // Status: this host's report, kept under a lease.
  BOOST_TEST(eventually([&] {
    auto st = c->range_prefix(prefix + "/status/h1/good");
    return st && st->kvs.size() == 1 && st->kvs[0].value.find(R"("version":"1")") != std::string::npos;
  }));
}

BOOST_AUTO_TEST_CASE(etcd_owns_false_lets_local_writes_through) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdo");
  const std::string prefix = unique_prefix("owns");
  DaemonProcess d(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1", {"--set", "etcd_owns=false"}));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  SegmentReader seg(env.seg);
  wait_applied(seg, put(*c, prefix + "/packages/p", R"({"version":"1"})"));
  Client ctl = connect(env.sock);
  BOOST_TEST(call(ctl, R"({"op":"update","name":"p","version":"local"})").at("ok") == true);
  BOOST_TEST(read(seg, "p").version == "local");
}

BOOST_AUTO_TEST_CASE(kill_9_mid_stream_resumes_exactly_at_the_segment_revision) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdk");
  const std::string prefix = unique_prefix("kill");
  const std::string key = prefix + "/packages/p", qkey = prefix + "/packages/q";
  auto d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  const std::int64_t first = put(*c, key, R"({"version":"v0"})");
  wait_applied(*seg, first);

  // Every change of p cancels once: alternately a new version and the same version forced, so a
  // change applied twice would show as one generation too many, a lost one as one too few.
  constexpr int kChanges = 400;
  std::atomic<std::int64_t> last{0};
  bool q_present = false;
  std::thread writer([&] {
    auto w = etcd.client();
    for (int i = 1; i <= kChanges; ++i) {
      const std::string v = "v" + std::to_string(i - i % 2);
      last = put(*w, key, i % 2 ? R"({"version":")" + v + R"(","force":true})" : R"({"version":")" + v + R"("})");
      if (i % 10 == 0) {
        q_present = !q_present;
        last = q_present ? put(*w, qkey, R"({"version":"1"})") : del(*w, qkey);
      }
    }
  });
  // Kill it once it is well into the stream.
  BOOST_TEST(eventually([&] { return seg->revision() >= static_cast<std::uint64_t>(first + 60); }));
  d->signal(SIGKILL);
  d->wait();
  const std::uint64_t at_kill = seg->revision();
  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  writer.join();
  BOOST_TEST(at_kill < static_cast<std::uint64_t>(last.load()));  // it was killed mid-stream
  seg = std::make_unique<SegmentReader>(env.seg);
  wait_applied(*seg, last);
  const PackageRecord p = read(*seg, "p");
  BOOST_TEST(p.root_generation == static_cast<std::uint64_t>(kChanges), "each change cancelled exactly once");
  BOOST_TEST(p.version == "v" + std::to_string(kChanges));
  BOOST_TEST(seg->view().read("q", false).has_value() == q_present);
  // It resumed where the segment said, without a full resync.
  const std::string log = d->stderr_text();
  BOOST_TEST(log.find("synchronised") == std::string::npos, log);
  BOOST_TEST(log.find("from revision") != std::string::npos, log);
}

BOOST_AUTO_TEST_CASE(a_compacted_revision_resyncs_cancelling_only_what_changed) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdc");
  const std::string prefix = unique_prefix("compact");
  const auto key = [&](const std::string& n) { return prefix + "/packages/" + n; };
  auto d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  put(*c, key("same"), R"({"version":"1","settings":{"k":"v"}})");
  put(*c, key("changed"), R"({"version":"1"})");
  wait_applied(*seg, put(*c, key("gone"), R"({"version":"1"})"));
  auto t_same = seg->view().token("same", kEventUpdate);
  auto t_changed = seg->view().token("changed", kEventUpdate);
  auto t_gone = seg->view().token("gone", kEventUpdate);
  BOOST_TEST_REQUIRE((t_same && t_changed && t_gone));

  d->signal(SIGTERM);
  d->wait();
  put(*c, key("changed"), R"({"version":"2"})");
  put(*c, key("changed"), R"({"version":"3"})");
  put(*c, key("same"), R"({"version":"1","settings":{"k":"v"}})");  // a put of the same value
  del(*c, key("gone"));
  const std::int64_t rev = put(*c, key("new"), R"({"version":"1"})");
  BOOST_TEST_REQUIRE(c->compact(rev).has_value());

  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  seg = std::make_unique<SegmentReader>(env.seg);
  wait_applied(*seg, rev);
  BOOST_TEST(!t_same->cancelled());
  BOOST_TEST(t_changed->cancelled());
  BOOST_TEST(t_gone->cancelled());
  BOOST_TEST(read(*seg, "changed").version == "3");
  BOOST_TEST(read(*seg, "changed").root_generation == 1u);  // the difference, applied once
  BOOST_TEST(read(*seg, "same").root_generation == 0u);
  BOOST_TEST(read(*seg, "new").version == "1");
  BOOST_TEST(seg->view().read("gone", false).error().code == Errc::no_such_package);
  BOOST_TEST(d->stderr_text().find("compacted") != std::string::npos, d->stderr_text());
  // And it follows on from there.
  wait_applied(*seg, put(*c, key("changed"), R"({"version":"4"})"));
  BOOST_TEST(read(*seg, "changed").root_generation == 2u);
}

BOOST_AUTO_TEST_CASE(etcd_down_at_start_serves_local_state_then_catches_up) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdd");
  const std::string prefix = unique_prefix("down");
  auto d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  wait_applied(*seg, put(*c, prefix + "/packages/p", R"({"version":"1"})"));
  d->signal(SIGTERM);
  d->wait();
  etcd.kill(0);

  // etcd is down: the daemon starts anyway and serves what the segment holds.
  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  Client ctl = connect(env.sock);
  auto answer = call(ctl, R"({"op":"settings","name":"p"})");
  BOOST_TEST(answer.at("ok") == true);
  BOOST_TEST(answer.at("version") == "1");
  BOOST_TEST(eventually([&] { return d->stderr_text().find("retrying") != std::string::npos; }));

  etcd.start(0);
  auto c2 = etcd.client();
  seg = std::make_unique<SegmentReader>(env.seg);
  const std::int64_t rev = put(*c2, prefix + "/packages/p", R"({"version":"2"})");
  wait_applied(*seg, rev);
  BOOST_TEST(read(*seg, "p").version == "2");
  BOOST_TEST(read(*seg, "p").root_generation == 1u);
}

BOOST_AUTO_TEST_CASE(a_delete_waits_for_the_tasks_listing_them_in_the_status_then_deletes) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdr");
  const std::string prefix = unique_prefix("drain");
  const std::string key = prefix + "/packages/p";
  DaemonProcess d(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d.ready(), d.start_failure());
  SegmentReader seg(env.seg);
  wait_applied(seg, put(*c, key, R"({"version":"1"})"));
  auto t = seg.view().token("p", kEventUpdate);
  BOOST_TEST_REQUIRE(t.has_value());
  test::Pipe to, from;
  const pid_t child = holder(env, "p", to, from);
  BOOST_TEST_REQUIRE(from.await(std::chrono::seconds(10)));

  const std::int64_t rev = del(*c, key);
  // The remove is applied at once (the contexts cancelled); the Delete waits on the task.
  boost::json::value st;
  BOOST_TEST_REQUIRE(eventually([&] { return holders_in(st = status_of(*c, prefix, "p")) == 1; }),
                     "no holder in the status: " << boost::json::serialize(st) << d.stderr_text());
  BOOST_TEST(t->cancelled());
  const auto& h = st.at("holders").as_array()[0];
  BOOST_TEST(h.at("pid").to_number<std::int64_t>() == child);
  BOOST_TEST(h.at("uid").to_number<std::int64_t>() == ::getuid());
  BOOST_TEST(h.at("key").to_number<std::int64_t>() == 0);
  BOOST_TEST(h.at("generation").to_number<std::int64_t>() == 0);
  BOOST_TEST(h.at("cause").as_string() == "removed");
  BOOST_TEST(h.at("comm").is_string());
  BOOST_TEST(h.at("age_ms").to_number<std::int64_t>() >= 0);
  BOOST_TEST(seg.revision() < static_cast<std::uint64_t>(rev));  // the delete is not applied yet
  BOOST_TEST(seg.view().read("p", false).has_value());           // the package is still there
  // pkgctl fleet shows the drain and its holder.
  const std::string fleet = run_capture(std::string(PKGCTX_BINARY_DIR) + "/tools/pkgctl fleet --etcd-endpoints " +
                                              etcd.endpoints() + " --prefix " + prefix);
  BOOST_TEST(fleet.find("draining, 1 holder") != std::string::npos, fleet);
  BOOST_TEST(fleet.find("holder pid " + std::to_string(child)) != std::string::npos, fleet);

  // The task ends: the drain ends, the package is deleted and its status goes.
  to.send('e');
  BOOST_TEST(from.await(std::chrono::seconds(10)));
  wait_applied(seg, rev);
  BOOST_TEST(seg.view().read("p", false).error().code == Errc::no_such_package);
  BOOST_TEST(eventually([&] { return status_of(*c, prefix, "p").is_null(); }));
  // pkgctl dump shows the applied revision.
  const auto dump = boost::json::parse(
      run_capture(std::string(PKGCTX_BINARY_DIR) + "/tools/pkgctl --segment " + env.seg.str() + " dump --json"));
  BOOST_TEST(dump.at("segment").at("follow_revision").to_number<std::uint64_t>() == seg.revision());
  to.send('x');
  BOOST_TEST(test::wait_exit(child) == 0);
}

BOOST_AUTO_TEST_CASE(a_drain_that_times_out_deletes_anyway_and_sigterm_ends_a_drain_at_once) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdt");
  const std::string prefix = unique_prefix("drainto");
  const auto key = [&](const std::string& n) { return prefix + "/packages/" + n; };
  auto d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1",
                                                                   {"--set", "etcd_drain_ms=300"}));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  put(*c, key("slow"), R"({"version":"1"})");
  wait_applied(*seg, put(*c, key("held"), R"({"version":"1"})"));
  test::Pipe to, from, to2, from2;
  const pid_t child = holder(env, "slow", to, from);
  const pid_t child2 = holder(env, "held", to2, from2);
  BOOST_TEST_REQUIRE(from.await(std::chrono::seconds(10)));
  BOOST_TEST_REQUIRE(from2.await(std::chrono::seconds(10)));

  // A task that does not end: deleted after etcd_drain_ms, naming it in the log.
  const auto t0 = std::chrono::steady_clock::now();
  wait_applied(*seg, del(*c, key("slow")));
  BOOST_TEST((std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(300)));
  BOOST_TEST(seg->view().read("slow", false).error().code == Errc::no_such_package);
  BOOST_TEST(d->stderr_text().find("still running after 300 ms") != std::string::npos, d->stderr_text());

  // SIGTERM while a drain waits (30 s now): the daemon stops at once, the delete unapplied.
  d->signal(SIGTERM);
  d->wait();
  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  seg = std::make_unique<SegmentReader>(env.seg);
  const std::int64_t rev = del(*c, key("held"));
  BOOST_TEST_REQUIRE(eventually([&] { return holders_in(status_of(*c, prefix, "held")) == 1; }), d->stderr_text());
  const auto t1 = std::chrono::steady_clock::now();
  d->signal(SIGTERM);
  BOOST_TEST_REQUIRE(d->wait_for(std::chrono::seconds(5)).has_value(), "pkgctxd did not stop during a drain");
  BOOST_TEST_MESSAGE("stopped " << std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t1).count()
                                << " ms after SIGTERM during a drain");
  BOOST_TEST(seg->revision() < static_cast<std::uint64_t>(rev));
  BOOST_TEST(seg->view().read("held", false).has_value());

  // Restarted: the delete is drained again (not removed twice), then applied once the task ends.
  const std::uint64_t gen = seg->view().read("held", false)->root_generation;
  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  BOOST_TEST_REQUIRE(eventually([&] { return holders_in(status_of(*c, prefix, "held")) == 1; }), d->stderr_text());
  BOOST_TEST(seg->view().read("held", false)->root_generation == gen);
  to2.send('e');
  BOOST_TEST(from2.await(std::chrono::seconds(10)));
  wait_applied(*seg, rev);
  BOOST_TEST(seg->view().read("held", false).error().code == Errc::no_such_package);
  to.send('x');
  to2.send('x');
  BOOST_TEST(test::wait_exit(child) == 0);
  BOOST_TEST(test::wait_exit(child2) == 0);
}

// The owned set persists beside the segment: restarted while etcd is down, the daemon still
// refuses local writes to etcd's packages; the full resync that follows (the revision it needs
// was compacted) deletes the package etcd deleted, never the one created through the socket.
BOOST_AUTO_TEST_CASE(the_owned_set_survives_a_restart_with_etcd_down_and_a_resync_spares_local_packages) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdp");
  const std::string prefix = unique_prefix("owned");
  const auto key = [&](const std::string& n) { return prefix + "/packages/" + n; };
  auto d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  put(*c, key("p"), R"({"version":"1"})");
  wait_applied(*seg, put(*c, key("gone"), R"({"version":"1"})"));
  {
    Client ctl = connect(env.sock);
    BOOST_TEST(call(ctl, R"({"op":"update","name":"mine","version":"1"})").at("ok") == true);
  }
  d->signal(SIGTERM);
  d->wait();
  del(*c, key("gone"));
  const std::int64_t rev = put(*c, key("q"), R"({"version":"1"})");
  BOOST_TEST_REQUIRE(c->compact(rev).has_value());
  etcd.kill(0);

  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->start_failure());
  {
    Client ctl = connect(env.sock);
    auto refused = call(ctl, R"({"op":"update","name":"p","version":"local"})");
    BOOST_TEST(refused.at("ok") == false);
    BOOST_TEST(refused.at("error").at("code") == "owned_by_etcd", boost::json::serialize(refused));
    BOOST_TEST(call(ctl, R"({"op":"update","name":"mine","version":"2"})").at("ok") == true);
  }
  BOOST_TEST(d->stderr_text().find("synchronised") == std::string::npos);  // etcd is still down

  etcd.start(0);
  seg = std::make_unique<SegmentReader>(env.seg);
  wait_applied(*seg, rev);
  BOOST_TEST(d->stderr_text().find("synchronised") != std::string::npos, d->stderr_text());
  BOOST_TEST(read(*seg, "q").version == "1");
  BOOST_TEST(read(*seg, "p").version == "1");
  BOOST_TEST(seg->view().read("gone", false).error().code == Errc::no_such_package);
  BOOST_TEST(read(*seg, "mine").version == "2");  // local: not etcd's to delete
}
