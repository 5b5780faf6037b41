// The worker SDK's attachment: read-only lookups on the current mapping, re-attachment when the
// segment is retired or replaced, and the CancelCallback / StopBridge front ends of the watcher.
//
// Re-attachment without a lock on the lookup path: the current mapping is an atomic pointer to
// an Attachment that is never freed before the Worker (every Attachment ever made stays in
// `all`), so a lookup that loaded the old pointer just before a switch still reads mapped memory.
// A lookup checks the segment's state *after* taking its token or record: retirement stores the
// state before bumping any generation, so a snapshot that already saw a retirement bump also
// sees the state, and is thrown away rather than handed out as a live token of a dead segment.
#include "pkgctx/worker.hpp"

#include "watcher.hpp"

#include <charconv>
#include <ctime>
#include <exception>
#include <fcntl.h>
#include <mutex>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace pkgctx {

namespace {

// Identity of the shared-memory object a name refers to right now.
struct ObjectId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool ok = false;
  bool operator==(const ObjectId&) const = default;
};

// Boost.Interprocess names the table object "/<name>" (lib/src/mapping.hpp).
ObjectId object_id(const std::string& name) noexcept {
  const std::string obj = "/" + name;
  const int fd = ::shm_open(obj.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return {};
  struct stat st {};
  ObjectId id;
  if (::fstat(fd, &st) == 0) id = ObjectId{st.st_dev, st.st_ino, true};
  ::close(fd);
  return id;
}

std::uint64_t coarse_now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

bool is_retired(const Segment& s) noexcept {
  return static_cast<layout::State>(s.header().prefix.state.load(std::memory_order_acquire)) ==
         layout::State::kRetired;
}

Error internal(const char* what, const std::exception& e) {
  return make_error(Errc::io_error, std::string(what) + ": " + e.what());
}

// The epoch field of a printed token ("pkgctx1:<epoch>:…"), if there is one.
bool token_epoch(std::string_view text, std::uint64_t& epoch) noexcept {
  const auto a = text.find(':');
  if (a == std::string_view::npos) return false;
  const auto b = text.find(':', a + 1);
  if (b == std::string_view::npos || b - a - 1 != 16) return false;
  auto [p, ec] = std::from_chars(text.data() + a + 1, text.data() + b, epoch, 16);
  return ec == std::errc() && p == text.data() + b;
}

}  // namespace

struct Worker::Impl {
  struct Attachment {
    View view;
    std::uint64_t epoch;
  };

  std::string name;
  WorkerOptions options;
  std::atomic<const Attachment*> current{nullptr};
  std::atomic<std::uint64_t> next_check_ns{0};
  std::mutex mu;                                  // guards `all`, `current_id` and switching
  std::vector<std::unique_ptr<Attachment>> all;   // every mapping attached; never shrinks
  ObjectId current_id;                            // the object `current` was opened from

  const Attachment* cur() const noexcept { return current.load(std::memory_order_acquire); }

  // Opens the segment by name. Under `mu` (or before the Worker is shared). The object's
  // identity is taken before opening: if the name is replaced in between, the recorded id is
  // the older one and the next check re-opens (and finds the same epoch) instead of missing it.
  Result<const Attachment*> open_locked(const ObjectId& id) {
    auto seg = Segment::open(name, Access::read_only);
    if (!seg) return seg.error();
    const std::uint64_t epoch = seg->header().prefix.epoch;
    all.push_back(std::make_unique<Attachment>(Attachment{View(std::move(*seg)), epoch}));
    current_id = id;
    current.store(all.back().get(), std::memory_order_release);
    return all.back().get();
  }

  // Re-attaches if `seen` (the attachment a caller just used) is retired, or if the name now
  // refers to another object with another epoch. Returns the attachment to use from now on.
  Result<const Attachment*> reattach(const Attachment* seen) {
    std::lock_guard lk(mu);
    const Attachment* now = cur();
    if (now != seen) return now;  // another thread already moved on
    const bool retired = is_retired(seen->view.segment());
    const ObjectId id = object_id(name);
    if (!retired && (!id.ok || id == current_id)) return seen;
    auto seg = Segment::open(name, Access::read_only);
    if (!seg) {
      Error e = seg.error();
      e.message = "segment " + name + (retired ? " was retired" : " was replaced") + "; re-attaching failed: " + e.message;
      return e;
    }
    const std::uint64_t epoch = seg->header().prefix.epoch;
    if (epoch == seen->epoch) {  // the same segment after all (opened under another id record)
      current_id = id;
      return seen;
    }
    all.push_back(std::make_unique<Attachment>(Attachment{View(std::move(*seg)), epoch}));
    current_id = id;
    current.store(all.back().get(), std::memory_order_release);
    return all.back().get();
  }

  // The time-based check for a segment replaced without retirement (WorkerOptions).
  void maybe_recheck(const Attachment*& a) {
    const auto interval = options.recheck_interval;
    if (interval.count() < 0) return;
    const std::uint64_t now = coarse_now_ns();
    std::uint64_t next = next_check_ns.load(std::memory_order_relaxed);
    if (now < next) return;
    const std::uint64_t then = now + static_cast<std::uint64_t>(std::chrono::nanoseconds(interval).count());
    if (!next_check_ns.compare_exchange_strong(next, then, std::memory_order_relaxed)) return;  // another thread checks
    if (auto n = reattach(a)) a = *n;
  }

  // Runs a lookup `f(const View&) -> Result<T>` on the current mapping, re-attaching and
  // retrying when the mapping turns out to be retired, or when a miss may mean "replaced".
  template <class F>
  auto lookup(F&& f) -> decltype(f(std::declval<const View&>())) {
    const Attachment* a = cur();
    maybe_recheck(a);
    for (int attempt = 0;; ++attempt) {
      auto r = f(a->view);
      const bool retired = is_retired(a->view.segment());
      const bool miss = !retired && !r && r.error().code == Errc::no_such_package;
      if ((!retired && !miss) || attempt == 3) {
        if (retired) return make_error(Errc::segment_retired, "segment " + name + " keeps being retired; try again");
        return r;
      }
      auto n = reattach(a);
      if (!n) return retired ? n.error() : r.error();
      if (*n == a) return r;  // a miss on the current segment: a real miss
      a = *n;
    }
  }
};

// --- Worker ------------------------------------------------------------------------------------

Worker::Worker(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Worker::Worker(Worker&&) noexcept = default;
Worker& Worker::operator=(Worker&&) noexcept = default;
Worker::~Worker() = default;

Result<Worker> Worker::attach(std::string segment, WorkerOptions options) noexcept {
  if (segment.empty() || segment.size() > 200 || segment.find('/') != std::string::npos || segment.find('\0') != std::string::npos)
    return make_error(Errc::invalid_name, "segment name \"" + segment.substr(0, 64) +
                                              "\" is not valid (1..200 bytes, no '/')");
  try {
    auto impl = std::make_unique<Impl>();
    impl->name = std::move(segment);
    impl->options = options;
    const ObjectId id = object_id(impl->name);
    auto a = impl->open_locked(id);
    if (!a) return a.error();
    if (options.recheck_interval.count() >= 0)
      impl->next_check_ns.store(coarse_now_ns() + static_cast<std::uint64_t>(std::chrono::nanoseconds(options.recheck_interval).count()),
                                std::memory_order_relaxed);
    return Worker(std::move(impl));
  } catch (const std::exception& e) {
    return internal("attaching", e);
  }
}

Result<Token> Worker::token(std::string_view name, int event) const noexcept {
  try {
    return impl_->lookup([&](const View& v) { return v.token(name, event); });
  } catch (const std::exception& e) {
    return internal("taking a token", e);
  }
}

Result<PackageRecord> Worker::read(std::string_view name) const noexcept {
  try {
    return impl_->lookup([&](const View& v) { return v.read(name, true); });
  } catch (const std::exception& e) {
    return internal("reading a package", e);
  }
}

Result<bool> Worker::need_update(std::string_view name, std::string_view version, std::uint64_t checksum) const noexcept {
  try {
    return impl_->lookup([&](const View& v) { return v.need_update(name, version, checksum); });
  } catch (const std::exception& e) {
    return internal("need_update", e);
  }
}

Result<Token> Worker::parse_token(std::string_view text) const noexcept {
  try {
    const Impl::Attachment* a = impl_->cur();
    impl_->maybe_recheck(a);
    auto r = Token::parse(text, a->view.segment());
    if (r) return r;
    std::uint64_t epoch = 0;
    if (!token_epoch(text, epoch) || epoch == a->epoch) return r;
    {
      // A token of a mapping attached earlier (before a re-attachment): it reports retirement.
      std::lock_guard lk(impl_->mu);
      for (const auto& old : impl_->all) {
        if (old->epoch == epoch) return Token::parse(text, old->view.segment());
      }
    }
    // Perhaps the segment was replaced and this token is of the new one.
    if (auto n = impl_->reattach(a); n && *n != a && (*n)->epoch == epoch) return Token::parse(text, (*n)->view.segment());
    return r;
  } catch (const std::exception& e) {
    return internal("parsing a token", e);
  }
}

Result<DaemonStatus> Worker::daemon() const noexcept {
  try {
    return impl_->lookup([&](const View& v) -> Result<DaemonStatus> {
      const SegmentInfo info = v.segment().info();
      DaemonStatus d;
      d.liveness = liveness(info);
      d.pid = info.daemon_pid;
      d.start_realtime_ns = info.daemon_start_realtime_ns;
      const std::uint64_t now = mono_now_ns();
      d.heartbeat_age_ns = info.heartbeat_mono_ns && now > info.heartbeat_mono_ns ? now - info.heartbeat_mono_ns : 0;
      d.heartbeat_interval_ns = info.heartbeat_interval_ns;
      return d;
    });
  } catch (const std::exception& e) {
    return internal("reading daemon liveness", e);
  }
}

Result<bool> Worker::refresh() const noexcept {
  try {
    const Impl::Attachment* a = impl_->cur();
    auto n = impl_->reattach(a);
    if (!n) return n.error();
    return *n != a;
  } catch (const std::exception& e) {
    return internal("refreshing", e);
  }
}

const std::string& Worker::name() const noexcept { return impl_->name; }
Segment Worker::segment() const noexcept { return impl_->cur()->view.segment(); }
std::uint64_t Worker::epoch() const noexcept { return impl_->cur()->epoch; }

// --- CancelCallback, StopBridge ----------------------------------------------------------------

Result<CancelCallback> CancelCallback::create(const Token& token, std::function<void()> fn) noexcept {
  auto id = detail::watch_register(token, std::move(fn));
  if (!id) return id.error();
  return CancelCallback(*id);
}

CancelCallback::CancelCallback(CancelCallback&& other) noexcept : id_(std::exchange(other.id_, 0)) {}

CancelCallback& CancelCallback::operator=(CancelCallback&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

CancelCallback::~CancelCallback() { reset(); }

void CancelCallback::reset() noexcept { detail::watch_unregister(std::exchange(id_, 0)); }

Result<StopBridge> StopBridge::create(const Token& token, std::stop_source source) noexcept {
  if (!source.stop_possible() && !source.stop_requested()) source = std::stop_source();
  auto cb = CancelCallback::create(token, [s = source]() mutable { s.request_stop(); });
  if (!cb) return cb.error();
  return StopBridge(std::move(source), std::move(*cb));
}

}  // namespace pkgctx
