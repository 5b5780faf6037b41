// The per-process cancellation watcher: one thread serves every CancelCallback and StopBridge.
//
// How it sleeps. A token is cancelled when its slot's generation moves, and every cancellation
// also bumps the slot's 32-bit wake word and, when the daemon counts a waiter on the slot, makes
// the futex-wake syscall. The watcher therefore:
//   1. "arms" every slot it watches — once per slot, not per registration and not per sleep:
//      through the token's worker registration it publishes a wait record and, once the daemon
//      acknowledged counting it, the slot is *counted* (registration.hpp);
//   2. reads each armed wake word, then checks every pending registration's cancelled();
//   3. sleeps in futex_waitv(2) on all armed wake words, the registrations' state words (a
//      lost daemon uncounts every slot at once) and its private control word.
// Step 2 reads the wake words before checking the tokens, and a writer bumps the wake word
// after the generation and before reading the count, so a cancellation after the check changes
// a word the watcher sleeps on: no lost wake-up (the same argument as Registration::wait).
// A slot whose acknowledgement is pending is polled every kPollSlice (the daemon answers in
// microseconds); a slot nobody counts (no registration, the daemon away) every kWaitSlice —
// unless no daemon ever served the segment, whose writers wake on every cancellation.
// futex_waitv takes at most 128 words: slots beyond kMaxWords and kernels without futex_waitv
// (before 5.16, or a seccomp filter) are polled every kPollSlice instead, unarmed.
//
// Registration takes the registry mutex; it costs no syscall when the token's slot is already
// armed (the watcher is already sleeping on that word), otherwise it bumps and wakes the control
// word so the watcher re-arms. Unregistration never wakes the watcher: a slot left armed with no
// registration costs writers a spurious wake on its next cancellation, after which the watcher
// disarms it (withdrawing its record).
//
// Callbacks run on the watcher thread with the mutex released. Unregistration waits for a
// running callback (on the done_seq_ futex) unless it is called from that callback.
//
// fork(): the atfork handlers keep the mutex consistent; in the child no watcher thread exists,
// registrations inherited from the parent (tagged with the parent's pid) are ignored and simply
// dropped when unregistered, and the first registration in the child starts a new thread.
#include "watcher.hpp"

#include "pkgctx/futex.hpp"
#include "waitv.hpp"

#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <linux/futex.h>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace pkgctx::detail {
namespace {

using AU32 = std::atomic<std::uint32_t>;

constexpr auto kPollSlice = std::chrono::milliseconds(1);
constexpr std::size_t kMaxWaitv = 128;  // FUTEX_WAITV_MAX
constexpr std::size_t kMaxWords = 120;  // armed slots; the rest: the control and state words

struct Entry {
  Token token;
  std::weak_ptr<Registration> reg;  // the token's worker registration (may be null)
  std::function<void()> fn;
  pid_t pid = 0;              // the process that registered it
  bool running = false;       // fn is being called (by `runner`)
  std::thread::id runner;
};

struct Armed {
  Token keep;                       // keeps the mapping, and so the words, alive while armed
  std::weak_ptr<Registration> reg;  // through which the slot is counted (gone with its worker)
  int record = -1;                    // its wait record on reg's page (-1: none)
  std::uint32_t seq = 0;              // the record's last publication
  std::uint32_t published = 0;        // reg's state word then
  std::chrono::steady_clock::time_point published_at{};
  bool ever = false;                  // published at all
  bool counted = false;               // the daemon acknowledged counting it (this round)
};

class Watcher {
 public:
  static Watcher& instance() {
    // Leaked on purpose: the detached thread may still run while static destructors do.
    static Watcher* const w = new Watcher;
    return *w;
  }

  Result<std::uint64_t> add(const Token& token, std::shared_ptr<Registration>& reg, std::function<void()>& fn);
  void remove(std::uint64_t id) noexcept;
  void kick() {
    std::lock_guard lk(mu_);
    if (thread_pid_ == pid_) wake_watcher();
  }
  WatchMode mode() {
    std::lock_guard lk(mu_);
    return thread_pid_ == pid_ ? mode_ : WatchMode::idle;
  }

 private:
  Watcher() : pid_(::getpid()) { ::pthread_atfork(&Watcher::prepare, &Watcher::parent, &Watcher::child); }
  static void prepare() { instance().mu_.lock(); }
  static void parent() { instance().mu_.unlock(); }
  static void child() {
    Watcher& w = instance();
    w.pid_ = ::getpid();
    w.mode_ = WatchMode::idle;
    w.removers_waiting_ = 0;
    w.armed_.clear();  // the parent's watcher owns those wait records: never withdraw them here
    w.mu_.unlock();
  }

  void run();
  // Rebuilds the armed set and the futex_waitv vector; collects cancelled registrations.
  // Returns how soon some watched slot must be polled (0: none). Under mu_.
  // `holding` keeps the registrations whose words are in `vec` alive during the sleep.
  std::chrono::nanoseconds prepare_sleep(std::vector<WaitV>& vec, std::vector<std::uint64_t>& fire,
                                         std::vector<std::shared_ptr<Registration>>& holding);
  void wake_watcher() noexcept {
    control_.fetch_add(1, std::memory_order_seq_cst);
    futex::wake(&control_, 1);
  }

  std::mutex mu_;
  pid_t pid_;                                                  // this process (reset in the child)
  std::unordered_map<std::uint64_t, std::unique_ptr<Entry>> entries_;  // under mu_
  std::unordered_map<const AU32*, Armed> armed_;               // under mu_; words the watcher sleeps on
  std::uint64_t next_id_ = 1;                                  // under mu_
  pid_t thread_pid_ = 0;                                       // under mu_; process whose thread runs
  WatchMode mode_ = WatchMode::idle;                           // under mu_
  std::uint32_t removers_waiting_ = 0;                         // under mu_
  AU32 control_{0};   // futex: bumped to make the watcher rebuild its sleep set
  AU32 done_seq_{0};  // futex: bumped when callbacks finished
  bool have_waitv_ = true;  // watcher thread only
};

Result<std::uint64_t> Watcher::add(const Token& token, std::shared_ptr<Registration>& reg, std::function<void()>& fn) {
  if (!token.valid()) return std::uint64_t{0};  // can never be cancelled
  std::unique_lock lk(mu_);
  if (token.cancelled()) {
    lk.unlock();
    fn();
    return std::uint64_t{0};
  }
  if (thread_pid_ != pid_) {
    // The thread is born with every signal blocked, so the process's signals (SIGINT, SIGTERM,
    // …) go to the application's threads: a Python main thread sleeping in poll() then gets its
    // EINTR and raises KeyboardInterrupt, instead of the watcher silently taking the signal.
    sigset_t all{}, old{};
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    try {
      std::thread(&Watcher::run, this).detach();
    } catch (const std::system_error& e) {
      ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
      return make_error(Errc::io_error, std::string("cannot start the pkgctx watcher thread: ") + e.what());
    }
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    thread_pid_ = pid_;
  }
  const std::uint64_t id = next_id_++;
  auto e = std::make_unique<Entry>();
  e->token = token;
  e->reg = std::move(reg);
  e->fn = std::move(fn);
  e->pid = pid_;
  entries_.emplace(id, std::move(e));
  // An armed slot's wake word is already in the watcher's sleep set: the cancellation of this
  // token will bump it. A polling watcher looks within a slice anyway.
  if (!armed_.contains(token.wake_word()) && mode_ != WatchMode::polling) wake_watcher();
  return id;
}

void Watcher::remove(std::uint64_t id) noexcept {
  if (id == 0) return;
  std::unique_lock lk(mu_);
  while (true) {
    auto it = entries_.find(id);
    if (it == entries_.end()) return;  // already ran (or registered in the parent before fork)
    Entry& e = *it->second;
    if (!e.running || e.pid != pid_) {
      std::unique_ptr<Entry> owned = std::move(it->second);
      entries_.erase(it);
      lk.unlock();  // the callback's captures are destroyed outside the lock
      return;
    }
    if (e.runner == std::this_thread::get_id()) return;  // from inside the callback itself
    const std::uint32_t seq = done_seq_.load(std::memory_order_seq_cst);
    ++removers_waiting_;
    lk.unlock();
    futex::wait(&done_seq_, seq, std::chrono::milliseconds(100));
    lk.lock();
    --removers_waiting_;
  }
}

std::chrono::nanoseconds Watcher::prepare_sleep(std::vector<WaitV>& vec, std::vector<std::uint64_t>& fire,
                                                std::vector<std::shared_ptr<Registration>>& holding) {
  using std::chrono::nanoseconds;
  holding.clear();  // a worker detached since lets its registration go here
  nanoseconds poll{0};
  const auto poll_within = [&](nanoseconds d) { poll = poll.count() == 0 ? d : std::min(poll, d); };
  // The slots pending registrations need, each once (with a registration to count it, if any).
  std::unordered_map<const AU32*, const Entry*> want;
  // Preferred for a slot: an entry with a registration to count it, then one with a live token
  // (the daemon may retire a record once its token is cancelled).
  const auto rank = [](const Entry& x) { return (x.reg.expired() ? 0 : 2) + (x.token.cancelled() ? 0 : 1); };
  for (auto& [id, e] : entries_) {
    if (e->pid != pid_ || e->running) continue;
    auto [it, fresh] = want.emplace(e->token.wake_word(), e.get());
    if (!fresh && rank(*e) > rank(*it->second)) it->second = e.get();
  }
  if (!have_waitv_) {  // nothing to sleep on but the control word: poll, and arm nothing
    if (!want.empty()) poll_within(kPollSlice);
    want.clear();
  }
  // Disarm slots nobody needs any more.
  for (auto it = armed_.begin(); it != armed_.end();) {
    if (want.contains(it->first)) {
      ++it;
    } else {
      if (auto reg = it->second.reg.lock(); reg && it->second.record >= 0)
        reg->wait_withdraw(it->second.record, it->second.seq, it->second.keep.cancelled());
      it = armed_.erase(it);
    }
  }
  // Arm the new ones while there is room.
  for (auto& [word, e] : want) {
    if (auto it = armed_.find(word); it != armed_.end()) {
      // Its record's token is cancelled, so the daemon may retire the wait at any time (it is
      // then uncounted, and nothing wakes us to notice): publish it again for a live token.
      if (it->second.keep.cancelled() && !e->token.cancelled()) {
        it->second.keep = e->token;
        it->second.ever = false;
      }
      // Armed uncounted, and now a registration can count it.
      auto reg = it->second.record < 0 ? e->reg.lock() : nullptr;
      if (reg && (it->second.record = reg->wait_claim()) >= 0) {
        it->second.reg = e->reg;
        it->second.ever = false;
      }
      continue;
    }
    if (armed_.size() >= kMaxWords) {
      poll_within(kPollSlice);
      continue;
    }
    Armed a{e->token, e->reg};
    if (auto reg = a.reg.lock()) a.record = reg->wait_claim();
    armed_.emplace(word, std::move(a));
  }
  // Count each armed slot through its registration, then read the wake words (see the top of
  // this file); the registrations' state words go into the sleep too.
  vec.resize(1);
  std::unordered_map<const Registration*, bool> states;  // → its state word is in the sleep
  for (auto& [word, a] : armed_) {
    bool counted = false;
    auto reg = a.record >= 0 ? a.reg.lock() : nullptr;
    if (!reg) a.record = -1;  // its worker is gone, and the daemon forgot the record with it
    if (reg) {
      const std::uint32_t st = reg->state_word().load(std::memory_order_seq_cst);
      if (reg->registered()) {
        if (!a.ever || a.published != st) {
          a.seq = reg->wait_publish(a.record, a.keep);
          a.published = st;
          a.published_at = std::chrono::steady_clock::now();
          a.ever = true;
        }
        // A healthy daemon acknowledges within microseconds; a stopped one is not polled hard.
        if (!reg->wait_acked(a.record, a.seq, counted) && std::chrono::steady_clock::now() - a.published_at < kWaitSlice)
          poll_within(kPollSlice);
      }
      auto [it, fresh] = states.emplace(reg.get(), vec.size() < kMaxWaitv - kMaxWords);
      if (fresh && it->second) {
        vec.push_back(waitv_entry(&reg->state_word(), st));
        holding.push_back(reg);
      }
      if (!it->second) counted = false;  // a lost daemon would not wake us: poll
    }
    a.counted = counted;
  }
  // Uncounted slots re-check in slices where writers wake only counted waits (a daemon's
  // segment); decided after the word's load, as Token::wait does.
  for (auto& [word, a] : armed_) {
    vec.push_back(waitv_entry(word, word->load(std::memory_order_seq_cst)));
    if (!a.counted && a.keep.writers_count_waits()) poll_within(kWaitSlice);
  }
  for (auto& [id, e] : entries_) {
    if (e->pid == pid_ && !e->running && e->token.cancelled()) {
      e->running = true;
      e->runner = std::this_thread::get_id();
      fire.push_back(id);
    }
  }
  mode_ = poll.count() != 0 ? WatchMode::polling : WatchMode::waitv;
  return poll;
}

void Watcher::run() {
  // Test knob: behave as on a kernel without futex_waitv (tests/unit/worker_stop_test.cpp).
  have_waitv_ = std::getenv("PKGCTX_WATCHER_NO_WAITV") == nullptr;
  std::vector<WaitV> vec;
  std::vector<std::uint64_t> fire;
  std::vector<std::shared_ptr<Registration>> holding;
  std::vector<std::unique_ptr<Entry>> done;
  while (true) {
    std::chrono::nanoseconds poll{0};
    {
      std::lock_guard lk(mu_);
      const std::uint32_t c = control_.load(std::memory_order_seq_cst);
      poll = prepare_sleep(vec, fire, holding);
      vec[0] = waitv_entry(&control_, c);
    }
    if (!fire.empty()) {
      for (std::uint64_t id : fire) {
        Entry* e = nullptr;
        {
          std::lock_guard lk(mu_);
          e = entries_.at(id).get();  // stays while running: remove() waits for us
        }
        [&]() noexcept { e->fn(); }();  // a throwing callback terminates, as std::stop_callback
      }
      {
        std::lock_guard lk(mu_);
        for (std::uint64_t id : fire) {
          auto it = entries_.find(id);
          done.push_back(std::move(it->second));
          entries_.erase(it);
        }
        done_seq_.fetch_add(1, std::memory_order_seq_cst);
        if (removers_waiting_ > 0) futex::wake(&done_seq_);
      }
      done.clear();  // captures destroyed outside the lock
      fire.clear();
      continue;  // re-check: more may have been cancelled meanwhile
    }
    if (have_waitv_) {
      const timespec deadline = mono_deadline(poll.count());
      const long rc = futex_waitv(vec.data(), static_cast<unsigned>(vec.size()), poll.count() != 0 ? &deadline : nullptr);
      // Anything but the expected outcomes means this sleeper cannot be trusted: poll rather
      // than spin.
      if (waitv_unusable(rc)) have_waitv_ = false;
    } else {
      // Without futex_waitv: sleep on the control word alone, polling the tokens when any exist.
      futex::wait(&control_, static_cast<std::uint32_t>(vec[0].val),
                  poll.count() != 0 ? poll : std::chrono::nanoseconds(std::chrono::hours(1)));
    }
  }
}

}  // namespace

Result<std::uint64_t> watch_register(const Token& token, std::shared_ptr<Registration> reg, std::function<void()> fn) noexcept {
  return Watcher::instance().add(token, reg, fn);
}

void watch_unregister(std::uint64_t id) noexcept { Watcher::instance().remove(id); }

void watch_kick() noexcept { Watcher::instance().kick(); }

WatchMode watch_mode() noexcept { return Watcher::instance().mode(); }

}  // namespace pkgctx::detail
