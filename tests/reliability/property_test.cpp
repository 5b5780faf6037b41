// Property test: random sequences of §2 operations (update with versions and settings from small
// pools, events 0..7, delete, need_update, pending settings, current-context tokens, and now and
// then invalid input) from several writer threads in each of several processes, all on one
// segment, checked against the reference model (model.hpp).
//
// Linearisation: each writer holds a test-side process-shared mutex around each store call and
// appends the call and its answer (the token in printed form) to a shared log, so the log order
// is the order the store saw. Afterwards the log is replayed into the model: every answer must be
// the model's, and at the end the table and every token ever returned (parsed back with
// Token::parse on a read-only View) must have the model's cancelled() and cause().
//
// The writer threads of a process share one Store; the processes each map the segment.
// Meanwhile a reader thread per process reads without any lock and checks what must hold in any
// state: a record's settings and version come from the pools, its checksum matches, a removed
// package has `{}`, and a token once cancelled stays cancelled.
//
// The seed is printed and taken from PKGCTX_SEED when set; PKGCTX_PROPERTY_OPS sets the number of
// operations per writer.
#define BOOST_TEST_MODULE property
#include <boost/test/unit_test.hpp>

#include "harness.hpp"
#include "test_support.hpp"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <pthread.h>
#include <random>
#include <set>
#include <sstream>
#include <sys/mman.h>
#include <thread>
#include <vector>

using namespace pkgctx;
using namespace pkgctx::model;

namespace {

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kDefaultOps = 600;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
constexpr int kDefaultOps = 600;
#else
constexpr int kDefaultOps = 2500;
#endif
#else
constexpr int kDefaultOps = 2500;
#endif

constexpr int kProcesses = 3;
constexpr int kThreads = 2;  // writer threads per process
constexpr int kMaxOps = 20000;

const std::vector<std::string> kNames = {"a", "b", "c.1", "d_2", "e-3"};

template <std::size_t N>
void put(char (&dst)[N], const std::string& s) {
  std::memset(dst, 0, N);
  std::memcpy(dst, s.data(), std::min(s.size(), N - 1));
}

// One linearised call. Plain bytes: written by one process under the mutex, read after all exit.
struct Entry {
  std::uint8_t kind, settings, flag, has_token, born_cancelled;
  std::uint8_t settings_version, has_maintenance, force;  // §2.1
  char maintenance[16], cause[16];
  std::int8_t event;
  std::uint16_t worker;
  char name[16], version[16], error[24], change[12];
  char returned_settings[384];
  char token[136];
  // A probe, right after the call: an earlier token of this writer (log index) and what it said.
  std::int32_t probe = -1;
  std::uint8_t probe_cancelled;
  char probe_cause[40];
};

struct SharedLog {
  pthread_mutex_t mu;
  std::atomic<std::uint32_t> size;
  std::atomic<std::uint32_t> failures;  // reader-side invariant violations
  char failure[512];
  Entry entries[kMaxOps];
};

std::uint64_t seed_from_env() {
  if (const char* s = std::getenv("PKGCTX_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}() ^ (std::uint64_t{std::random_device{}()} << 32);
}

int ops_from_env() {
  if (const char* s = std::getenv("PKGCTX_PROPERTY_OPS")) return std::max(1, std::atoi(s));
  return kDefaultOps;
}

class Lock {
 public:
  explicit Lock(pthread_mutex_t* m) : m_(m) {
    if (pthread_mutex_lock(m_) == EOWNERDEAD) pthread_mutex_consistent(m_);  // a worker crashed: reported by its exit code
  }
  ~Lock() { pthread_mutex_unlock(m_); }

 private:
  pthread_mutex_t* m_;
};

void writer(SharedLog* log, Store& store, std::uint64_t seed, int worker, int ops) {
  std::mt19937_64 rng(seed * 1000003 + static_cast<std::uint64_t>(worker));
  std::vector<std::pair<std::int32_t, core::Token>> mine;  // tokens this writer got, by log index
  for (int i = 0; i < ops; ++i) {
    const Op op = random_op(rng, kNames);
    const std::size_t pick = mine.empty() ? 0 : static_cast<std::size_t>(rng() % mine.size());
    if (rng() % 2 == 0) std::this_thread::yield();  // the mutex is not fair: let the others in
    Lock lock(&log->mu);
    const Observed o = store_apply(store, op);
    const std::uint32_t n = log->size.load(std::memory_order_relaxed);
    if (n >= kMaxOps) return;
    Entry& e = log->entries[n];
    e.kind = static_cast<std::uint8_t>(op.kind);
    e.settings = static_cast<std::uint8_t>(op.settings);
    e.event = static_cast<std::int8_t>(op.event);
    e.worker = static_cast<std::uint16_t>(worker);
    put(e.name, op.name);
    put(e.version, op.version);
    e.settings_version = static_cast<std::uint8_t>(op.settings_version);
    e.has_maintenance = op.has_maintenance;
    e.force = op.force;
    put(e.maintenance, op.maintenance);
    put(e.cause, op.cause);
    put(e.error, o.answer.error);
    put(e.change, o.answer.change);
    put(e.returned_settings, o.answer.settings);
    e.flag = o.answer.flag;
    e.has_token = o.token.has_value();
    e.born_cancelled = o.token && o.token->cancelled();
    put(e.token, o.token ? o.token->str() : std::string());
    e.probe = -1;
    if (!mine.empty()) {
      e.probe = mine[pick].first;
      e.probe_cancelled = mine[pick].second.cancelled();
      const auto text = mine[pick].second.cause_text();
      put(e.probe_cause, text ? *text : "error: " + std::string(errc_name(text.error().code)));
    }
    log->size.store(n + 1, std::memory_order_relaxed);
    if (o.token) {
      if (mine.size() < 64) {
        mine.emplace_back(static_cast<std::int32_t>(n), *o.token);
      } else {
        mine[rng() % mine.size()] = {static_cast<std::int32_t>(n), *o.token};
      }
    }
  }
}

void fail(SharedLog* log, const std::string& what) {
  if (log->failures.fetch_add(1) == 0) put(log->failure, what);
}

// Lock-free reads while the writers run: what must hold in every state.
void reader(SharedLog* log, const View& view, std::uint64_t seed, const std::atomic<bool>& stop) {
  std::set<std::string> canon;
  for (const auto& c : settings_pool()) canon.insert(c.canonical);
  const std::set<std::string> versions = {"", "1", "2", "3.0-rc1"};
  std::mt19937_64 rng(seed);
  std::vector<core::Token> cancelled_once;
  while (!stop.load(std::memory_order_relaxed)) {
    const std::string& name = kNames[rng() % kNames.size()];
    if (auto r = view.read(name, true)) {
      if (!canon.count(r->settings)) fail(log, "reader: settings of " + name + " not from the pool: " + r->settings);
      if (!versions.count(r->version)) fail(log, "reader: version of " + name + " not from the pool: " + r->version);
      if (checksum_bytes(r->settings) != r->checksum) fail(log, "reader: checksum of " + name + " does not match");
      if (r->version.empty() && r->settings != "{}") fail(log, "reader: removed " + name + " has settings");
    } else if (r.error().code != Errc::no_such_package) {
      fail(log, "reader: read " + name + ": " + r.error().message);
    }
    if (auto t = view.token(name, static_cast<int>(rng() % 8))) {
      if (t->cancelled() && cancelled_once.size() < 256) cancelled_once.push_back(*t);
    }
    for (const core::Token& t : cancelled_once) {
      if (!t.cancelled()) fail(log, "reader: a cancelled token came back to life");
    }
  }
}

// One worker process: writer threads sharing one Store and a lock-free reader thread on the same
// mapping, so that TSan sees every access the threads make to the table (through one address).
int worker_process(SharedLog* log, const std::string& seg, std::uint64_t seed, int p, int ops) {
  Store store = Store::open(seg).value();
  const View view(store.segment());
  std::atomic<bool> stop{false};
  std::thread r([&] { reader(log, view, seed + 77 + static_cast<std::uint64_t>(p), stop); });
  std::vector<std::thread> ws;
  for (int t = 0; t < kThreads; ++t) ws.emplace_back([&, t] { writer(log, store, seed, p * kThreads + t, ops); });
  for (auto& w : ws) w.join();
  stop = true;
  r.join();
  return 0;
}

Op decode(const Entry& e) {
  Op op;
  op.kind = static_cast<OpKind>(e.kind);
  op.settings = e.settings;
  op.event = e.event;
  op.name = e.name;
  op.version = e.version;
  op.settings_version = e.settings_version;
  op.has_maintenance = e.has_maintenance;
  op.force = e.force;
  op.maintenance = e.maintenance;
  op.cause = e.cause;
  return op;
}

}  // namespace

BOOST_AUTO_TEST_CASE(random_operations_from_threads_and_processes_match_the_model) {
  const std::uint64_t seed = seed_from_env();
  const int ops = std::min(ops_from_env(), kMaxOps / (kProcesses * kThreads));
  BOOST_TEST_MESSAGE("seed " << seed << " (PKGCTX_SEED=" << seed << " to repeat the per-writer sequences), " << ops
                             << " operations per writer, " << kProcesses << " processes x " << kThreads << " writers");

  void* mem = ::mmap(nullptr, sizeof(SharedLog), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(mem != MAP_FAILED);
  auto* log = new (mem) SharedLog{};
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&log->mu, &a);
  pthread_mutexattr_destroy(&a);

  test::SegmentName seg{"prop"};
  SegmentOptions o;
  o.capacity = 8;
  o.settings_bytes = 16384;
  Store owner = Store::create(seg.str(), o).value();

  std::vector<pid_t> pids;
  for (int p = 0; p < kProcesses; ++p) {
    pids.push_back(test::spawn([&, p] { return worker_process(log, seg.str(), seed, p, ops); }));
  }
  for (pid_t pid : pids) BOOST_TEST(test::wait_exit(pid) == 0, "seed " << seed);
  BOOST_TEST(log->failures.load() == 0u, "seed " << seed << ": " << log->failure);

  // Replay the linearisation into the model.
  View view = View::open(seg.str()).value();
  Model m;
  std::vector<Tracked> tracked;
  const std::uint32_t n = log->size.load();
  BOOST_TEST(n == static_cast<std::uint32_t>(ops * kProcesses * kThreads));
  std::size_t mismatches = 0, tokens = 0, probes = 0, switches = 0;
  std::map<std::int32_t, std::size_t> tracked_at;  // log index → tracked
  for (std::uint32_t i = 0; i < n; ++i) {
    const Entry& e = log->entries[i];
    if (i > 0 && e.worker != log->entries[i - 1].worker) ++switches;
    const Op op = decode(e);
    const Answer want = model_apply(m, op);
    Observed got;
    got.answer.error = e.error;
    got.answer.change = e.change;
    got.answer.flag = e.flag;
    got.answer.settings = e.returned_settings;
    if (e.has_token) got.answer.token = Tok{};
    std::string d = answer_diff(op, want, got);
    if (e.born_cancelled) d += " (the token it returned was already cancelled)";
    if (e.has_token && want.token) {
      auto t = core::Token::parse(e.token, view.segment());
      if (!t) {
        d += " token " + std::string(e.token) + " does not parse: " + t.error().message;
      } else {
        tracked_at[static_cast<std::int32_t>(i)] = tracked.size();
        tracked.push_back({*t, *want.token, "#" + std::to_string(i) + " " + op.str()});
        ++tokens;
      }
    }
    if (e.probe >= 0) {  // the token's state as the writer saw it right after this call
      auto it = tracked_at.find(e.probe);
      if (it == tracked_at.end()) {
        d += " probe of #" + std::to_string(e.probe) + ": no such token";
      } else {
        const Tok& tok = tracked[it->second].tok;
        const std::string cause(e.probe_cause);
        if (m.cancelled(tok) != static_cast<bool>(e.probe_cancelled) || !m.acceptable_causes(tok).count(cause)) {
          d += " probe of the token from " + tracked[it->second].what + ": store cancelled=" +
               std::to_string(e.probe_cancelled) + " cause=" + cause + ", model cancelled=" +
               std::to_string(m.cancelled(tok)) + " cause=" + *m.acceptable_causes(tok).begin();
        }
        ++probes;
      }
    }
    if (!d.empty() && ++mismatches <= 5) {
      std::ostringstream ctx;
      for (std::uint32_t j = i >= 8 ? i - 8 : 0; j < i; ++j) ctx << "\n  #" << j << " w" << log->entries[j].worker << " " << decode(log->entries[j]).str();
      BOOST_ERROR("seed " << seed << ": log #" << i << " (writer " << e.worker << "): " << d << "\n preceded by:" << ctx.str());
    }
  }
  BOOST_TEST(mismatches == 0u);
  const std::string td = table_diff(view, m);
  BOOST_TEST(td.empty(), "seed " << seed << ": " << td);
  std::size_t bad_tokens = 0;
  for (const Tracked& t : tracked) {
    const std::string d = token_diff(t, m);
    if (!d.empty() && ++bad_tokens <= 5) BOOST_ERROR("seed " << seed << ": " << d);
  }
  BOOST_TEST(bad_tokens == 0u);
  BOOST_TEST_MESSAGE(n << " operations linearised, " << tokens << " tokens checked at the end, " << probes
                       << " token probes checked in between, " << switches
                       << " changes of writer in the log, final table of " << m.size()
                       << " packages, " << m.cause_names() << " cause names");
  pthread_mutex_destroy(&log->mu);
  ::munmap(mem, sizeof(SharedLog));
}
