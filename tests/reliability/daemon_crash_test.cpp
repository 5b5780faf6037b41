// DESIGN.md §9 "Kill -9 the daemon: restart re-attaches, every token keeps its state."
//
// A stream of requests (updates with versions and settings from the model's pools, events 0..7,
// deletes, settings reads) goes to a real pkgctxd over its socket. At a random request the test
// SIGKILLs the daemon — some time after sending it, before or after its answer — and starts a
// new one, 50 times. Acknowledged answers are replayed into the reference model (model.hpp) and
// must agree with it; the one request in flight at the kill may or may not have happened, and
// the state after the restart must be exactly the model with or without it. After every restart:
// the segment is the same one (same epoch: re-attached, not replaced), the table equals the
// model, and every token the daemon ever handed out, parsed back with Token::parse on a
// read-only View, is live or cancelled (with the cause) as the model says. A worker process
// holding a token of an untouched package waits through all of it and is never woken.
#define BOOST_TEST_MODULE daemon_crash
#include <boost/test/unit_test.hpp>

#include "harness.hpp"
#include "pkgctx/client.hpp"
#include "pkgctx/daemon/test_harness.hpp"
#include "test_support.hpp"

#include <boost/json.hpp>

#include <chrono>
#include <csignal>
#include <fstream>
#include <random>
#include <thread>

using namespace pkgctx;
using namespace pkgctx::model;
using namespace std::chrono_literals;
namespace json = boost::json;
namespace dt = pkgctx::daemon::testing;

namespace {

constexpr int kRestarts = 50;

json::object request(const Op& op) {
  json::object r;
  switch (op.kind) {
    case OpKind::update:
      r["op"] = "update";
      r["version"] = op.version;
      r["settings"] = json::parse(settings_pool().at(op.settings).json);
      r["settings_version"] = op.settings_version;  // §2.1 fields, as the store call passes them
      r["maintenance"] = op.maintenance;
      r["force"] = op.force;
      if (!op.cause.empty()) r["cause"] = op.cause;
      break;
    case OpKind::update_settings:
      r["op"] = "update_settings";
      r["settings"] = json::parse(settings_pool().at(op.settings).json);
      r["settings_version"] = op.settings_version;
      break;
    case OpKind::event:
      r["op"] = "event";
      r["event"] = op.event;
      if (!op.cause.empty()) r["cause"] = op.cause;
      break;
    case OpKind::erase: r["op"] = "delete"; break;
    default: r["op"] = "settings"; break;
  }
  r["name"] = op.name;
  return r;
}

// The daemon's answer in the model's vocabulary; the token text, if any, in `token`.
Answer answer_of(const Op& op, const json::object& a, std::string& token) {
  Answer out;
  if (!a.at("ok").as_bool()) {
    out.error = std::string(a.at("error").at("code").as_string());
    return out;
  }
  if (const auto* c = a.if_contains("context"); c && c->is_string()) {
    token = std::string(c->as_string());
    out.token = Tok{};
  }
  if (const auto* c = a.if_contains("change")) out.change = std::string(c->as_string());
  if (const auto* d = a.if_contains("deleted")) out.flag = d->as_bool();
  if (const auto* c = a.if_contains("changed")) out.flag = c->as_bool();
  if (op.kind == OpKind::settings) out.settings = canonicalize_json(json::serialize(a.at("settings"))).value();
  return out;
}

Op random_write(std::mt19937_64& rng, const std::vector<std::string>& names) {
  Op op = random_op(rng, names);
  if (op.kind == OpKind::need_update || op.kind == OpKind::token) op.kind = OpKind::update;
  if (op.name == "bad name") op.name = names[0];
  return op;
}

// "" when the segment (through `view`) and the tokens are exactly model `m`.
std::string state_diff(const View& view, const Model& m, const std::vector<Tracked>& tracked) {
  return table_diff(view, m) + tokens_diff(tracked, m);
}

}  // namespace

BOOST_AUTO_TEST_CASE(daemon_killed_and_restarted_fifty_times) {
  const std::uint64_t seed = std::random_device{}();
  BOOST_TEST_MESSAGE("seed " << seed);
  std::mt19937_64 rng(seed);
  dt::TempDir dir;
  test::SegmentName seg{"dcrash"};
  const std::string sock = dir / "pkgctxd.sock";
  std::ofstream(dir / "empty.conf").flush();  // no host configuration leaks in
  dt::DaemonOptions opts;
  opts.args = {"--segment", seg.str(), "--socket", sock, "--capacity", "32", "--settings-bytes", "2M",
               "--heartbeat-ms", "50", "--config", dir / "empty.conf"};

  const std::vector<std::string> names = {"a", "b", "c", "d"};
  Model model;
  std::vector<Tracked> tracked;
  std::optional<View> view;
  std::uint64_t epoch = 0;
  std::vector<Op> pending;
  int acknowledged = 0, in_flight_applied = 0, in_flight_lost = 0, killed_before_answer = 0;

  // The untouched package and a worker waiting on it through every crash.
  pid_t worker = -1;
  for (int restart = 0; restart <= kRestarts; ++restart) {
    BOOST_TEST_CONTEXT("seed " << seed << ", daemon start " << restart) {
      dt::DaemonProcess daemon(dir, opts);
      BOOST_REQUIRE_MESSAGE(daemon.ready(), "pkgctxd did not start: " << daemon.stderr_text());
      auto client = Client::connect(sock);
      BOOST_REQUIRE_MESSAGE(client, client.error().message);

      if (restart == 0) {
        view.emplace(View::open(seg.str()).value());
        epoch = view->segment().info().epoch;
        auto a = client->call({{"op", "update"}, {"name", "still"}, {"version", "1"}});
        BOOST_REQUIRE(a && a->at("ok").as_bool());
        model.update("still", "1", "{}");
        worker = test::spawn([&] {
          View v = View::open(seg.str()).value();
          core::Token t = v.token("still", kEventSchedule).value();
          return t.wait(10min) ? 1 : 0;  // woken only if cancelled: a failure
        });
      } else {
        // Re-attached, not replaced; the first write repairs a table left mid-write.
        BOOST_TEST(View::open(seg.str()).value().segment().info().epoch == epoch);
        auto a = client->call({{"op", "update"}, {"name", "still"}, {"version", "1"}});
        BOOST_REQUIRE_MESSAGE(a, a.error().message);
        BOOST_TEST(a->at("change").as_string() == "none");
        if (!pending.empty()) {
          // Requests sent but not answered before the kill: the daemon handles them in order, so
          // some prefix of them happened, each entirely or not at all. Take the longest prefix
          // that matches (several match only when the extra ones change nothing observable).
          std::vector<Model> candidates{model};
          for (const Op& op : pending) {
            candidates.push_back(candidates.back());
            model_apply(candidates.back(), op);
          }
          std::string diffs;
          int match = -1;
          for (int j = static_cast<int>(candidates.size()) - 1; j >= 0 && match < 0; --j) {
            const std::string d = state_diff(*view, candidates[static_cast<std::size_t>(j)], tracked);
            if (d.empty()) match = j;
            diffs += "\n with " + std::to_string(j) + ": " + d;
          }
          BOOST_REQUIRE_MESSAGE(match >= 0, "unanswered requests left a state no prefix explains:" << diffs);
          in_flight_applied += match;
          in_flight_lost += static_cast<int>(pending.size()) - match;
          model = candidates[static_cast<std::size_t>(match)];
          pending.clear();
        }
        const std::string d = state_diff(*view, model, tracked);
        BOOST_REQUIRE_MESSAGE(d.empty(), d);
      }
      if (restart == kRestarts) break;

      // Stream requests; at request `kill_at`, SIGKILL the daemon a little after sending it.
      const int kill_at = static_cast<int>(rng() % 40);
      for (int i = 0;; ++i) {
        const Op op = random_write(rng, names);
        if (i < kill_at) {
          auto a = client->call(request(op));
          BOOST_REQUIRE_MESSAGE(a, op.str() << ": " << a.error().message);
          std::string token;
          const Answer got = answer_of(op, *a, token);
          const Answer want = model_apply(model, op);
          Observed o;
          o.answer = got;
          const std::string d = answer_diff(op, want, o);
          BOOST_REQUIRE_MESSAGE(d.empty(), d);
          if (!token.empty()) {
            auto t = core::Token::parse(token, view->segment());
            BOOST_REQUIRE_MESSAGE(t, token << ": " << t.error().message);
            tracked.push_back({*t, *want.token, op.str()});
          }
          ++acknowledged;
          continue;
        }
        // A pipelined burst, then the kill at a random moment inside it.
        std::vector<Op> burst{op};
        for (std::size_t n = rng() % 8; n > 0; --n) burst.push_back(random_write(rng, names));
        for (const Op& b : burst) BOOST_REQUIRE(client->send(request(b)));
        if (rng() % 4 != 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 150));
        daemon.signal(SIGKILL);
        BOOST_TEST(daemon.wait() == 128 + SIGKILL);
        client->set_timeout(2s);
        std::size_t answered = 0;
        for (; answered < burst.size(); ++answered) {
          auto a = client->receive();
          if (!a) break;
          const Op& b = burst[answered];
          std::string token;
          Observed o;
          o.answer = answer_of(b, *a, token);
          const Answer want = model_apply(model, b);
          const std::string d = answer_diff(b, want, o);
          BOOST_REQUIRE_MESSAGE(d.empty(), d);
          if (!token.empty()) tracked.push_back({core::Token::parse(token, view->segment()).value(), *want.token, b.str()});
          ++acknowledged;
        }
        // The rest is decided after the restart (a write killed mid-way is repaired first).
        pending.assign(burst.begin() + static_cast<std::ptrdiff_t>(answered), burst.end());
        killed_before_answer += static_cast<int>(pending.size());
        break;
      }
    }
  }
  BOOST_TEST_MESSAGE(kRestarts << " daemon kills: " << acknowledged << " requests acknowledged, "
                               << killed_before_answer << " sent but not answered before the kill (" << in_flight_applied
                               << " of those had happened, " << in_flight_lost << " had not); "
                               << view->segment().info().repairs << " repairs of a write cut short");
  BOOST_TEST(::kill(worker, 0) == 0, "the waiting worker died");
  ::kill(worker, SIGKILL);
  BOOST_TEST(test::wait_exit(worker) == 128 + SIGKILL, "the waiting worker was woken");
}
