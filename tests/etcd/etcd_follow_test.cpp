// pkgctxd --follow etcd against one real etcd member (DESIGN §10): puts and deletes applied in
// order with one cancellation per change, local writes refused while etcd owns the package, a
// kill -9 mid-stream resumed exactly at the segment's revision, a compacted revision resynced
// cancelling only what changed, and etcd down at start (local state served, then caught up).
#define BOOST_TEST_MODULE etcd_follow
#include "etcd_harness.hpp"

#include "pkgctx/settings.hpp"

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

}  // namespace

BOOST_AUTO_TEST_CASE(puts_and_deletes_apply_in_order_cancelling_each_change_once) {
  EtcdCluster etcd(1);
  etcd.start_all();
  auto c = etcd.client();
  DaemonEnv env("etcdf");
  const std::string prefix = unique_prefix("order");
  DaemonProcess d(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d.ready(), d.stderr_text());
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
  BOOST_TEST_REQUIRE(d.ready(), d.stderr_text());
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
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
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
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
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
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
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
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
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
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
  auto seg = std::make_unique<SegmentReader>(env.seg);
  wait_applied(*seg, put(*c, prefix + "/packages/p", R"({"version":"1"})"));
  d->signal(SIGTERM);
  d->wait();
  etcd.kill(0);

  // etcd is down: the daemon starts anyway and serves what the segment holds.
  d = std::make_unique<DaemonProcess>(env.dir, follow_options(env, etcd.endpoints(), prefix, "h1"));
  BOOST_TEST_REQUIRE(d->ready(), d->stderr_text());
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
