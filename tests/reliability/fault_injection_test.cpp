// DESIGN.md §9: a writer SIGKILLed at every step of every write path, in every table state the
// §2 table distinguishes, checked against the reference model (model.hpp).
//
// For each (write, state, step): a child process opens the store, arms the crash point and
// writes; it dies there holding the robust mutex. The next writer gets EOWNERDEAD and repairs.
// Then the whole table and every token handed out so far must equal the model either before or
// after the write — "after" exactly when the journal had reached COMMITTED (read from the header
// before the repair) or the step lies at or past the commit point (fault_first_committed_step) — other
// packages untouched, the derived structures (index, free list, settings bitmap, counters)
// consistent, and a further sequence of operations must keep agreeing with the model.
//
// The second case kills the repairer too (crash points "repair:1..N"), then a third writer
// repairs what the second left. Every write passes through one publish step, so one numbering
// ("write:1..N") covers every write path; a step a path skips lets the write complete.
// Registered only in builds with PKGCTX_FAULT_INJECTION=ON (tests/CMakeLists.txt).
#define BOOST_TEST_MODULE fault_injection
#include <boost/test/unit_test.hpp>

#include "harness.hpp"
#include "test_support.hpp"

#include <csignal>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace pkgctx;
using namespace pkgctx::model;

namespace {

Op update(std::string name, std::string version, std::size_t s) {
  Op op;
  op.kind = OpKind::update;
  op.name = std::move(name);
  op.version = std::move(version);
  op.settings = s;
  return op;
}
Op event(int e, std::string name) {
  Op op;
  op.kind = OpKind::event;
  op.event = e;
  op.name = std::move(name);
  return op;
}
// §2.1: an update carrying every optional field, a settings-only call, and named events.
Op update_v2(std::string name, std::string version, std::size_t s, std::string maintenance, bool force,
             std::string cause) {
  Op op = update(std::move(name), std::move(version), s);
  op.settings_version = 5;
  op.maintenance = std::move(maintenance);
  op.force = force;
  op.cause = std::move(cause);
  return op;
}
Op update_settings(std::string name, std::size_t s, std::uint64_t settings_version) {
  Op op;
  op.kind = OpKind::update_settings;
  op.name = std::move(name);
  op.settings = s;
  op.settings_version = settings_version;
  return op;
}
Op named_event(int e, std::string name, std::string cause) {
  Op op = event(e, std::move(name));
  op.cause = std::move(cause);
  return op;
}
Op erase(std::string name) {
  Op op;
  op.kind = OpKind::erase;
  op.name = std::move(name);
  return op;
}

const char* op_family(const Op& op) {
  switch (op.kind) {
    case OpKind::update: return "update";
    case OpKind::event: return "event";
    case OpKind::erase: return "erase";
    case OpKind::update_settings: return "update_settings";
    default: return "";
  }
}

// A segment, the store on it, the model, and every token handed out so far.
struct World {
  test::SegmentName seg{"fault"};
  Store store;
  Model model;
  std::vector<Tracked> tracked;

  static SegmentOptions options() {
    SegmentOptions o;
    o.capacity = 8;
    o.settings_bytes = 4096;  // 64 chunks: the 5-chunk settings fragment it
    return o;
  }
  World() : store(Store::create(seg.str(), options()).value()) {
    // Bystanders: a live package with root and child tokens, a removed one, and a deleted one
    // whose slot the victim may reuse (its tokens must stay cancelled with cause "deleted").
    run(update("gone", "1", 1));
    run(event(2, "gone"));
    run(update("by-a", "1", 2));
    run(event(2, "by-a"));
    run(event(5, "by-a"));
    run(update("by-b", "7", 3));
    run(event(1, "by-b"));
    run(event(3, "by-b"));
    run(event(1, "gone"));
    run(erase("gone"));
  }

  void run(const Op& op) {
    const std::string d = step(store, model, op, tracked);
    BOOST_REQUIRE_MESSAGE(d.empty(), d);
  }

  // "" when the store (table, derived structures, every token) equals model `m`.
  std::string diff(const Model& m) const {
    std::string d = table_diff(store.view(), m);
    d += tokens_diff(tracked, m);
    const SegmentInfo info = store.segment().info();
    std::uint64_t used = 0;
    for (const auto& r : store.view().list(false).value()) used += r.settings_size <= 2 ? 0 : (r.settings_size + 63) / 64 * 64;
    if (info.used != m.size()) d += "used_slots " + std::to_string(info.used) + " != " + std::to_string(m.size()) + "; ";
    if (info.settings_used != used)
      d += "settings_used " + std::to_string(info.settings_used) + " != " + std::to_string(used) + "; ";
    return d;
  }
};

struct VictimState {
  const char* name;
  std::vector<Op> setup;
};

const std::vector<VictimState>& victim_states() {
  static const std::vector<VictimState> states = {
      {"absent", {}},
      {"deleted", {update("victim", "1", 1), event(2, "victim"), event(1, "victim"), erase("victim")}},
      {"removed", {update("victim", "1", 1), event(2, "victim"), event(1, "victim")}},
      {"other-version", {update("victim", "1", 1), event(2, "victim"), event(7, "victim")}},
      {"same-version-new-settings", {update("victim", "2", 1), event(2, "victim")}},
      {"same-everything", {update("victim", "2", 3), event(2, "victim")}},
  };
  return states;
}

// The writes under test. The update stores a 5-chunk settings block (allocation and release).
const std::vector<Op>& writes() {
  static const std::vector<Op> w = {update("victim", "2", 3), event(0, "victim"), event(1, "victim"),
                                    event(2, "victim"), event(7, "victim"), erase("victim"),
                                    // §2.1: new fields in the record, a cause name registered by the commit
                                    update_v2("victim", "2", 3, "paused", true, "rollout"),
                                    update_v2("victim", "2", 1, "frozen-1", false, ""),
                                    update_settings("victim", 3, 7), named_event(0, "victim", "push_7"),
                                    named_event(2, "victim", "operator_x")};
  return w;
}

// Operations after recovery: every package, every kind of write, settings moving in the arena.
std::vector<Op> afterwards() {
  return {update("victim", "3.0-rc1", 2), event(2, "victim"), event(0, "by-a"), update("by-a", "1", 3),
          update("newcomer", "1", 3), event(1, "victim"), erase("victim"), update("victim", "9", 1),
          event(5, "by-a"), event(1, "by-b"), erase("by-b"), update("by-b", "8", 2)};
}

// Child process body: open the store, arm the crash point, write.
int write_and_maybe_die(const std::string& seg, std::string_view crash_op, int crash_step, const Op& op) {
  auto store = Store::open(seg);
  if (!store) return 3;
  set_crash_point(crash_op, crash_step);
  const Observed o = store_apply(*store, op);
  return o.answer.error.empty() ? 0 : 4;
}

std::string journal_name(std::uint32_t js) {
  switch (static_cast<layout::JournalState>(js)) {
    case layout::JournalState::kIdle: return "idle";
    case layout::JournalState::kPrepared: return "prepared";
    case layout::JournalState::kCommitted: return "committed";
  }
  return "?";
}

}  // namespace

BOOST_AUTO_TEST_CASE(writer_killed_at_every_step_in_every_state) {
  std::map<std::string, int> kills;           // write family → writers killed
  std::map<std::string, int> outcomes;        // "before"/"after" counts
  std::map<int, int> kills_at;                // write step → writers killed there
  for (const Op& write : writes()) {
    for (const VictimState& vs : victim_states()) {
      const std::string family = op_family(write);
      for (int k = 1; k <= fault_steps("write"); ++k) {
        BOOST_TEST_CONTEXT(write.str() << " on a " << vs.name << " victim, killed at write:" << k) {
          World w;
          for (const Op& op : vs.setup) w.run(op);
          const Model before = w.model;
          Model after = w.model;
          model_apply(after, write);

          const pid_t writer = test::spawn([&] { return write_and_maybe_die(w.seg.str(), "write", k, write); });
          const int code = test::wait_exit(writer);
          BOOST_REQUIRE_MESSAGE(code == 0 || code == 128 + SIGKILL, "writer exited with " << code);
          const bool killed = code == 128 + SIGKILL;
          const std::uint32_t journal = w.store.segment().header().journal.state.load();
          const std::uint64_t repairs = w.store.segment().info().repairs;

          // The next writer (a no-op update here) finds the owner dead and repairs.
          const Op noop = update("by-a", "1", 2);
          BOOST_REQUIRE(store_apply(w.store, noop).answer.error.empty());
          BOOST_TEST(w.store.segment().info().repairs == repairs + (killed ? 1 : 0));

          const std::string d_before = w.diff(before), d_after = w.diff(after);
          const bool is_before = d_before.empty(), is_after = d_after.empty();
          BOOST_REQUIRE_MESSAGE(is_before || is_after,
                                "state is neither before nor after the write (journal " << journal_name(journal)
                                                                                      << "):\n before: " << d_before
                                                                                      << "\n after: " << d_after);
          if (!is_before || !is_after) {  // the write changes something: which one it is matters
            const bool want_after = !killed || k >= fault_first_committed_step();
            BOOST_TEST(is_after == want_after);
            if (journal == static_cast<std::uint32_t>(layout::JournalState::kCommitted)) BOOST_TEST(is_after);
            if (journal == static_cast<std::uint32_t>(layout::JournalState::kPrepared)) BOOST_TEST(is_before);
          }
          if (killed) {
            ++kills[family];
            ++kills_at[k];
            ++outcomes[is_after ? "after" : "before"];
          }

          // Life goes on, in agreement with the model.
          w.model = is_after ? after : before;
          for (const Op& op : afterwards()) w.run(op);
          const std::string d = w.diff(w.model);
          BOOST_CHECK_MESSAGE(d.empty(), d);
        }
      }
    }
  }
  std::ostringstream os;
  for (const auto& [f, n] : kills) os << f << "=" << n << " ";
  BOOST_TEST_MESSAGE("writers killed: " << os.str() << "(recovered to the state before the write "
                                        << outcomes["before"] << ", after " << outcomes["after"] << ")");
  BOOST_TEST(kills["update"] >= 30);
  BOOST_TEST(kills["event"] >= 30);
  BOOST_TEST(kills["erase"] >= 10);
  BOOST_TEST(kills["update_settings"] >= 10);
  for (int k = 1; k <= fault_steps("write"); ++k) BOOST_TEST(kills_at[k] > 0, "no writer was killed at write:" << k);
}

// A writer dies inside a write, then the writer repairing after it dies at each step of the
// repair; a third writer repairs and the table is still exactly before or after the first write.
BOOST_AUTO_TEST_CASE(repairer_killed_while_repairing) {
  struct Case {
    Op write;
    const char* state;
  };
  const std::vector<Case> cases = {
      {update("victim", "2", 3), "other-version"}, {update("victim", "2", 3), "absent"},
      {event(1, "victim"), "other-version"},       {event(2, "victim"), "other-version"},
      {erase("victim"), "removed"},
  };
  int double_kills = 0;
  std::map<int, int> kills_at;  // repair step → repairers killed there
  for (const Case& c : cases) {
    const VictimState* vs = nullptr;
    for (const auto& s : victim_states()) {
      if (std::string(s.name) == c.state) vs = &s;
    }
    BOOST_REQUIRE(vs);
    for (int k = 1; k <= fault_steps("write"); ++k) {
      for (int r = 1; r <= fault_steps("repair"); ++r) {
        BOOST_TEST_CONTEXT(c.write.str() << " on a " << c.state << " victim, killed at write:" << k
                                         << ", its repairer at repair:" << r) {
          World w;
          for (const Op& op : vs->setup) w.run(op);
          const Model before = w.model;
          Model after = w.model;
          model_apply(after, c.write);
          const pid_t writer = test::spawn([&] { return write_and_maybe_die(w.seg.str(), "write", k, c.write); });
          if (test::wait_exit(writer) != 128 + SIGKILL) continue;  // step not on this path
          const std::uint32_t journal = w.store.segment().header().journal.state.load();

          const Op noop = update("by-a", "1", 2);
          const pid_t repairer = test::spawn([&] { return write_and_maybe_die(w.seg.str(), "repair", r, noop); });
          const int code = test::wait_exit(repairer);
          BOOST_REQUIRE(code == 0 || code == 128 + SIGKILL);
          if (code == 128 + SIGKILL) {
            ++double_kills;
            ++kills_at[r];
          }

          BOOST_REQUIRE(store_apply(w.store, noop).answer.error.empty());
          const std::string d_before = w.diff(before), d_after = w.diff(after);
          BOOST_REQUIRE_MESSAGE(d_before.empty() || d_after.empty(),
                                "state is neither before nor after the write (journal " << journal_name(journal)
                                                                                      << "):\n before: " << d_before
                                                                                      << "\n after: " << d_after);
          const bool is_after = d_after.empty();
          if (d_before.empty() != d_after.empty()) BOOST_TEST(is_after == (k >= fault_first_committed_step()));
          w.model = is_after ? after : before;
          for (const Op& op : afterwards()) w.run(op);
          const std::string d = w.diff(w.model);
          BOOST_CHECK_MESSAGE(d.empty(), d);
        }
      }
    }
  }
  BOOST_TEST_MESSAGE("repairers killed while repairing: " << double_kills);
  BOOST_TEST(double_kills >= 40);
  for (int r = 1; r <= fault_steps("repair"); ++r) BOOST_TEST(kills_at[r] > 0, "no repairer was killed at repair:" << r);
}
