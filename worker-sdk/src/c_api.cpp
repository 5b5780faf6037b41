// pkgctx.h, implemented directly on the core's read side (segment mapping, View, core::Token,
// futex waits) and the watcher. This is all libpkgctx.so exports; pkgctx/worker.hpp is a
// header-only C++ layer over it. Every entry point catches everything: no exception crosses into
// C. Failures set the calling thread's last-error message.
//
// Re-attachment without a lock on the lookup path: the current mapping is an atomic pointer to
// an Attachment that is never freed before the worker handle (every Attachment ever made stays
// in `all`), so a lookup that loaded the old pointer just before a switch still reads mapped
// memory. A lookup checks the segment's state *after* taking its token or record: retirement
// stores the state before bumping any generation, so a snapshot that already saw a retirement
// bump also sees the state, and is thrown away rather than handed out as a live token of a dead
// segment.
#include "pkgctx.h"

#include "pkgctx/error.hpp"
#include "pkgctx/layout.hpp"
#include "pkgctx/settings.hpp"
#include "pkgctx/token.hpp"
#include "pkgctx/view.hpp"
#include "registration.hpp"
#include "watcher.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <exception>
#include <fcntl.h>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

namespace {

using pkgctx::Errc;
using pkgctx::Error;
using pkgctx::Result;
using pkgctx::View;
using CoreToken = pkgctx::core::Token;

static_assert(PKGCTX_MAINTENANCE_MAX == pkgctx::layout::kMaxMaintenance &&
              PKGCTX_CAUSE_NAME_MAX == pkgctx::layout::kMaxCauseName &&
              PKGCTX_CAUSE_NAMED == pkgctx::layout::kFirstNamedCause,
              "pkgctx.h's v2 limits are the layout's");
static_assert(PKGCTX_VERSION_MAJOR == PKGCTX_PROJECT_VERSION_MAJOR && PKGCTX_VERSION_MINOR == PKGCTX_PROJECT_VERSION_MINOR,
              "pkgctx.h's version macros must follow project() in CMakeLists.txt");

// Identity of the shared-memory object a name refers to right now.
struct ObjectId {
  dev_t dev = 0;
  ino_t ino = 0;
  bool ok = false;
  bool operator==(const ObjectId&) const = default;
};

// The table object "<runtime dir>/<name>" (never through a symlink).
ObjectId object_id(const std::string& name) noexcept {
  std::string path;
  try {
    path = pkgctx::object_path(name);
  } catch (...) {
    return {};
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
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

bool is_retired(const pkgctx::Segment& s) noexcept {
  return static_cast<pkgctx::layout::State>(s.header().prefix.state.load(std::memory_order_acquire)) ==
         pkgctx::layout::State::kRetired;
}

thread_local std::string last_error;

int fail(Errc code, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();
  }
  return static_cast<int>(code);
}

int fail(const Error& e) noexcept { return fail(e.code, e.message.c_str()); }

// Runs `body` (returning an int code); anything thrown becomes PKGCTX_IO_ERROR.
template <class F>
int guarded(const char* what, F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(Errc::io_error, (std::string(what) + ": out of memory").c_str());
  } catch (const std::exception& e) {
    return fail(Errc::io_error, (std::string(what) + ": " + e.what()).c_str());
  } catch (...) {
    return fail(Errc::io_error, what);
  }
}

// A (pointer, length) argument: NULL is allowed with length 0 (an empty string).
std::string_view arg(const char* p, size_t n) noexcept { return p ? std::string_view(p, n) : std::string_view(); }

char* dup_string(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

}  // namespace

namespace {

// A worker handle's registration, shared with every token the handle made (their waits and
// watches are counted through it). Started by the first task, pkgctx_register or wait; it ends
// with the handle, once no wait in progress still uses it: a token that outlives its worker
// waits unregistered (in slices).
struct RegLink {
  std::mutex mu;
  std::shared_ptr<pkgctx::detail::Registration> reg;   // under mu
  std::atomic<pkgctx::detail::Registration*> fast{nullptr};  // reg.get(), set once
  bool closed = false;                                 // under mu: the worker handle is gone
};

}  // namespace

struct pkgctx_worker_s {
  struct Attachment {
    View view;
    std::uint64_t epoch;
  };

  std::string name;
  std::int64_t recheck_ns = 1'000'000'000;        // negative: never
  std::atomic<const Attachment*> current{nullptr};
  std::atomic<std::uint64_t> next_check_ns{0};
  std::mutex mu;                                  // guards `all`, `current_id` and switching
  std::vector<std::unique_ptr<Attachment>> all;   // every mapping attached; never shrinks
  ObjectId current_id;                            // the object `current` was opened from
  std::shared_ptr<RegLink> link = std::make_shared<RegLink>();
  ~pkgctx_worker_s() {
    bool had = false;
    {
      std::lock_guard lk(link->mu);
      link->closed = true;
      had = link->reg != nullptr;
      link->reg.reset();  // the daemon sees EOF once no wait in progress holds it
    }
    if (had) pkgctx::detail::watch_kick();  // the watcher lets it go too
  }

  const Attachment* cur() const noexcept { return current.load(std::memory_order_acquire); }

  // Opens the segment by name, the first time (before the handle is shared). The object's
  // identity is taken before opening: if the name is replaced in between, the recorded id is
  // the older one and the next check re-opens (and finds the same epoch) instead of missing it.
  Result<void> open_first() {
    const ObjectId id = object_id(name);
    auto seg = pkgctx::Segment::open(name, pkgctx::Access::read_only);
    if (!seg) return seg.error();
    const std::uint64_t epoch = seg->header().prefix.epoch;
    all.push_back(std::make_unique<Attachment>(Attachment{View(std::move(*seg)), epoch}));
    current_id = id;
    current.store(all.back().get(), std::memory_order_release);
    if (recheck_ns >= 0) next_check_ns.store(coarse_now_ns() + static_cast<std::uint64_t>(recheck_ns), std::memory_order_relaxed);
    return {};
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
    auto seg = pkgctx::Segment::open(name, pkgctx::Access::read_only);
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

  // The time-based check for a segment replaced without retirement (pkgctx_options_t).
  void maybe_recheck(const Attachment*& a) {
    if (recheck_ns < 0) return;
    const std::uint64_t now = coarse_now_ns();
    std::uint64_t next = next_check_ns.load(std::memory_order_relaxed);
    if (now < next) return;
    const std::uint64_t then = now + static_cast<std::uint64_t>(recheck_ns);
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
        if (retired) return pkgctx::make_error(Errc::segment_retired, "segment " + name + " keeps being retired; try again");
        return r;
      }
      auto n = reattach(a);
      if (!n) return retired ? n.error() : r.error();
      if (*n == a) return r;  // a miss on the current segment: a real miss
      a = *n;
    }
  }

  // A printed token, checked against the mapping of its epoch: the current one, one attached
  // before a re-attachment (the token then reports segment_retired), or a replacement.
  Result<CoreToken> parse(std::string_view text) {
    const Attachment* a = cur();
    maybe_recheck(a);
    auto fields = pkgctx::parse_token_text(text);
    if (!fields) return fields.error();
    if (fields->epoch != a->epoch) {
      {
        std::lock_guard lk(mu);
        for (const auto& old : all)
          if (old->epoch == fields->epoch) return CoreToken::parse(text, old->view.segment());
      }
      if (auto n = reattach(a); n && *n != a && (*n)->epoch == fields->epoch) return CoreToken::parse(text, (*n)->view.segment());
    }
    return CoreToken::parse(text, a->view.segment());
  }
};

struct pkgctx_token_s {
  CoreToken token;
  std::shared_ptr<RegLink> link;  // its worker's (null: never registered through one)
};

namespace {

std::string default_socket() {
  const char* env = std::getenv("PKGCTX_SOCKET");
  return env && *env ? env : "/run/pkgctx/pkgctxd.sock";
}

// The worker's registration, started on first use with `path` (empty: the default).
Result<pkgctx::detail::Registration*> registration(pkgctx_worker_t* w, std::string path) {
  RegLink& link = *w->link;
  if (auto* r = link.fast.load(std::memory_order_acquire)) {
    if (!path.empty() && path != r->socket())
      return pkgctx::make_error(Errc::io_error, "pkgctx_register: already registered with " + r->socket());
    return r;
  }
  std::lock_guard lk(link.mu);
  if (link.reg) return link.reg.get();
  auto r = pkgctx::detail::Registration::start(path.empty() ? default_socket() : std::move(path));
  if (!r) return r.error();
  link.reg = std::move(*r);
  link.fast.store(link.reg.get(), std::memory_order_release);
  return link.reg.get();
}

// The registration a wait or watch of `token` is counted through: its worker's, started now
// (in the background: a wait never blocks on the daemon) if it has none. Null when the worker is
// gone, in a forked child (the registration is the parent's), or when none can be made: the
// wait then re-checks in slices.
std::shared_ptr<pkgctx::detail::Registration> wait_registration(const pkgctx_token_t& token) noexcept {
  if (!token.link || !token.token.valid()) return nullptr;
  try {
    RegLink& link = *token.link;
    std::lock_guard lk(link.mu);
    if (!link.reg && !link.closed) {
      auto r = pkgctx::detail::Registration::start(default_socket(), false);
      if (!r) return nullptr;
      link.reg = std::move(*r);
      link.fast.store(link.reg.get(), std::memory_order_release);
    }
    return link.reg && link.reg->owned_here() ? link.reg : nullptr;
  } catch (...) {
    return nullptr;
  }
}

int begin_lease(pkgctx::detail::Registration* reg, const pkgctx_token_t* token, pkgctx_task_t** out) {
  const CoreToken& t = token->token;
  if (!t.valid()) return fail(Errc::invalid_token, "pkgctx_task_begin: a default token belongs to no package");
  const int i = reg->claim();
  if (i < 0) return fail(Errc::busy, "pkgctx_task_begin: 1024 tasks already run on this worker handle");
  reg->begin(i, t.slot(), t.key(), t.epoch(), t.snapshot(), t.root_generation());
  pkgctx_task_s* task = &reg->task(i);
  task->reg = reg;
  task->lease = i;
  task->token = token;
  task->owned = nullptr;
  *out = task;
  return PKGCTX_OK;
}

}  // namespace

struct pkgctx_watch_s {
  std::uint64_t id = 0;  // 0: the callback already ran, or nothing to watch
  int fd = -1;           // pkgctx_watch_fd's eventfd, closed by pkgctx_unwatch
};

namespace {

// pkgctx_read and pkgctx_read2 fill the same snapshot; the v2 struct adds its fields.
template <class Package>
int read_package(const char* fn, pkgctx_worker_t* worker, const char* name, size_t name_len, Package* out) {
  if (out) std::memset(out, 0, sizeof *out);
  return guarded(fn, [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, (std::string(fn) + ": worker or out is NULL").c_str());
    if (!name && name_len) return fail(Errc::invalid_name, (std::string(fn) + ": name is NULL").c_str());
    auto r = worker->lookup([&](const View& v) { return v.read(arg(name, name_len), true); });
    if (!r) return fail(r.error());
    Package p{};
    try {
      p.version = dup_string(r->version);
      p.settings = dup_string(r->settings);
    } catch (...) {
      std::free(p.version);
      throw;
    }
    p.settings_len = r->settings.size();
    p.checksum = r->checksum;
    const std::string hex = pkgctx::Settings::format_checksum(r->checksum);
    std::memcpy(p.checksum_hex, hex.c_str(), sizeof p.checksum_hex);
    if constexpr (std::is_same_v<Package, pkgctx_package2_t>) {
      p.settings_version = r->settings_version;
      // View::read validated it: at most PKGCTX_MAINTENANCE_MAX bytes of [A-Za-z0-9._-].
      std::memcpy(p.maintenance, r->maintenance.data(), std::min<size_t>(r->maintenance.size(), PKGCTX_MAINTENANCE_MAX));
    }
    *out = p;
    return PKGCTX_OK;
  });
}

template <class Package>
void free_package(Package* package) {
  if (!package) return;
  std::free(package->version);
  std::free(package->settings);
  std::memset(package, 0, sizeof *package);
}

}  // namespace

extern "C" {

const char* pkgctx_version(void) { return PKGCTX_VERSION_STRING; }

const char* pkgctx_last_error(void) { return last_error.c_str(); }

int pkgctx_attach_with(const char* segment, size_t segment_len, const pkgctx_options_t* options, pkgctx_worker_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_attach", [&]() -> int {
    if (!out) return fail(Errc::io_error, "pkgctx_attach: out is NULL");
    if (!segment && segment_len) return fail(Errc::invalid_name, "pkgctx_attach: segment name is NULL");
    auto w = std::make_unique<pkgctx_worker_t>();
    w->name = arg(segment, segment_len);
    if (options && options->recheck_always) {
      w->recheck_ns = 0;
    } else if (options && options->recheck_interval_ms != 0) {
      // Clamped so the deadline arithmetic cannot overflow (about 292 years of nanoseconds).
      w->recheck_ns = options->recheck_interval_ms < 0 ? -1 : std::min<std::int64_t>(options->recheck_interval_ms, std::int64_t{1} << 40) * 1'000'000;
    }
    if (auto r = w->open_first(); !r) return fail(r.error());
    *out = w.release();
    return PKGCTX_OK;
  });
}

int pkgctx_attach(const char* segment, pkgctx_worker_t** out) {
  return pkgctx_attach_with(segment, segment ? std::strlen(segment) : 0, nullptr, out);
}

void pkgctx_detach(pkgctx_worker_t* worker) { delete worker; }

uint64_t pkgctx_epoch(const pkgctx_worker_t* worker) { return worker ? worker->cur()->epoch : 0; }

int pkgctx_refresh(pkgctx_worker_t* worker, int* reattached) {
  if (reattached) *reattached = 0;
  return guarded("pkgctx_refresh", [&]() -> int {
    if (!worker) return fail(Errc::io_error, "pkgctx_refresh: worker is NULL");
    const auto* a = worker->cur();
    auto n = worker->reattach(a);
    if (!n) return fail(n.error());
    if (reattached) *reattached = *n != a ? 1 : 0;
    return PKGCTX_OK;
  });
}

int pkgctx_token(pkgctx_worker_t* worker, const char* name, int event, pkgctx_token_t** out) {
  return pkgctx_token_n(worker, name, name ? std::strlen(name) : 0, event, out);
}

int pkgctx_token_n(pkgctx_worker_t* worker, const char* name, size_t name_len, int event, pkgctx_token_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_token", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_token: worker or out is NULL");
    if (!name && name_len) return fail(Errc::invalid_name, "pkgctx_token: name is NULL");
    auto t = worker->lookup([&](const View& v) { return v.token(arg(name, name_len), event); });
    if (!t) return fail(t.error());
    *out = new pkgctx_token_t{std::move(*t), worker->link};
    return PKGCTX_OK;
  });
}

int pkgctx_token_parse(pkgctx_worker_t* worker, const char* text, pkgctx_token_t** out) {
  return pkgctx_token_parse_n(worker, text, text ? std::strlen(text) : 0, out);
}

int pkgctx_token_parse_n(pkgctx_worker_t* worker, const char* text, size_t text_len, pkgctx_token_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_token_parse", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_token_parse: worker or out is NULL");
    if (!text && text_len) return fail(Errc::invalid_token, "pkgctx_token_parse: text is NULL");
    auto t = worker->parse(arg(text, text_len));
    if (!t) return fail(t.error());
    *out = new pkgctx_token_t{std::move(*t), worker->link};
    return PKGCTX_OK;
  });
}

pkgctx_token_t* pkgctx_token_dup(const pkgctx_token_t* token) {
  if (!token) return nullptr;
  return new (std::nothrow) pkgctx_token_t{token->token, token->link};
}

void pkgctx_token_free(pkgctx_token_t* token) { delete token; }

int pkgctx_cancelled(const pkgctx_token_t* token) { return token && token->token.cancelled() ? 1 : 0; }

// The C check loads the token's std::atomic<uint64_t> through a plain pointer with __atomic
// builtins: that needs the same size and alignment and no hidden lock.
static_assert(sizeof(std::atomic<std::uint64_t>) == sizeof(std::uint64_t) &&
              alignof(std::atomic<std::uint64_t>) == alignof(std::uint64_t) &&
              std::atomic<std::uint64_t>::is_always_lock_free);

int pkgctx_token_check(const pkgctx_token_t* token, pkgctx_check_t* out) {
  static const std::uint64_t kNeverMoves = 0;
  if (!out) return fail(Errc::io_error, "pkgctx_token_check: out is NULL");
  if (!token) {
    *out = pkgctx_check_t{&kNeverMoves, 0};
    return fail(Errc::invalid_token, "pkgctx_token_check: token is NULL");
  }
  *out = pkgctx_check_t{reinterpret_cast<const std::uint64_t*>(token->token.watched_word()), token->token.snapshot()};
  return PKGCTX_OK;
}

int pkgctx_token_info(const pkgctx_token_t* token, pkgctx_token_info_t* out) {
  if (!out) return fail(Errc::io_error, "pkgctx_token_info: out is NULL");
  *out = pkgctx_token_info_t{};
  if (!token) return fail(Errc::invalid_token, "pkgctx_token_info: token is NULL");
  const CoreToken& t = token->token;
  *out = pkgctx_token_info_t{t.slot(), t.key(), t.root_generation(), t.child_generation()};
  return PKGCTX_OK;
}

const char* pkgctx_cause(const pkgctx_token_t* token) {
  const pkgctx::Cause c = token ? token->token.cause() : pkgctx::Cause::kNone;
  if (pkgctx::layout::is_named_cause(c)) return "named";
  // cause_name() returns views of static, NUL-terminated literals.
  return pkgctx::cause_name(c).data();
}

int pkgctx_cause_code(const pkgctx_token_t* token) {
  const pkgctx::Cause c = token ? token->token.cause() : pkgctx::Cause::kNone;
  return pkgctx::layout::is_named_cause(c) ? PKGCTX_CAUSE_NAMED : static_cast<int>(c);
}

int pkgctx_cause_text(const pkgctx_token_t* token, char* buf, size_t size, size_t* len) {
  if (len) *len = 0;
  if (!buf && size) return fail(Errc::io_error, "pkgctx_cause_text: buf is NULL");
  if (size) buf[0] = '\0';
  return guarded("pkgctx_cause_text", [&]() -> int {
    auto text = token ? token->token.cause_text() : Result<std::string>(std::string("none"));
    if (!text) return fail(text.error());
    if (len) *len = text->size();
    if (size) {
      const size_t n = std::min(text->size(), size - 1);
      std::memcpy(buf, text->data(), n);
      buf[n] = '\0';
    }
    return PKGCTX_OK;
  });
}

int pkgctx_wait_ns(const pkgctx_token_t* token, int64_t timeout_ns) {
  if (!token) return fail(Errc::invalid_token, "pkgctx_wait: token is NULL");
  const CoreToken& t = token->token;
  // Clamp so the deadline arithmetic cannot overflow (about 36 years is "no limit" enough).
  timeout_ns = timeout_ns > int64_t{1} << 60 ? int64_t{1} << 60 : timeout_ns;
  const std::shared_ptr<pkgctx::detail::Registration> reg = t.cancelled() ? nullptr : wait_registration(*token);
  const auto wait = [&](std::chrono::nanoseconds d) { return reg ? reg->wait(t, d) : t.wait(d); };
  if (timeout_ns < 0) {
    while (!wait(std::chrono::hours(1))) {
    }
    return PKGCTX_OK;
  }
  return wait(std::chrono::nanoseconds(timeout_ns)) ? PKGCTX_OK : static_cast<int>(Errc::timed_out);
}

int pkgctx_wait(const pkgctx_token_t* token, int64_t timeout_ms) {
  // Clamp so the deadline arithmetic cannot overflow (about 292 years of nanoseconds).
  const int64_t ms = timeout_ms > int64_t{1} << 40 ? int64_t{1} << 40 : timeout_ms;
  return pkgctx_wait_ns(token, ms < 0 ? -1 : ms * 1'000'000);
}

size_t pkgctx_token_str(const pkgctx_token_t* token, char* buf, size_t size) {
  if (buf && size > 0) buf[0] = '\0';
  if (!token) return 0;
  try {
    const std::string s = token->token.str();
    if (buf && size > 0) {
      const size_t n = s.size() < size - 1 ? s.size() : size - 1;
      std::memcpy(buf, s.data(), n);
      buf[n] = '\0';
    }
    return s.size();
  } catch (...) {
    fail(Errc::io_error, "pkgctx_token_str: out of memory");
    return 0;
  }
}

int pkgctx_read(pkgctx_worker_t* worker, const char* name, pkgctx_package_t* out) {
  return read_package("pkgctx_read", worker, name, name ? std::strlen(name) : 0, out);
}

int pkgctx_read_n(pkgctx_worker_t* worker, const char* name, size_t name_len, pkgctx_package_t* out) {
  return read_package("pkgctx_read", worker, name, name_len, out);
}

void pkgctx_package_free(pkgctx_package_t* package) { free_package(package); }

int pkgctx_read2(pkgctx_worker_t* worker, const char* name, pkgctx_package2_t* out) {
  return read_package("pkgctx_read2", worker, name, name ? std::strlen(name) : 0, out);
}

int pkgctx_read2_n(pkgctx_worker_t* worker, const char* name, size_t name_len, pkgctx_package2_t* out) {
  return read_package("pkgctx_read2", worker, name, name_len, out);
}

void pkgctx_package2_free(pkgctx_package2_t* package) { free_package(package); }

int pkgctx_checksum(const char* json, size_t len, char hex[17], char** canonical) {
  if (hex) hex[0] = '\0';
  if (canonical) *canonical = nullptr;
  return guarded("pkgctx_checksum", [&]() -> int {
    if (!hex) return fail(Errc::io_error, "pkgctx_checksum: hex is NULL");
    if (!json && len) return fail(Errc::io_error, "pkgctx_checksum: json is NULL");
    auto s = pkgctx::Settings::parse(std::string_view(json ? json : "", len));
    if (!s) return fail(s.error());
    char* text = canonical ? dup_string(s->canonical()) : nullptr;
    std::memcpy(hex, s->checksum_hex().c_str(), 17);
    if (canonical) *canonical = text;
    return PKGCTX_OK;
  });
}

void pkgctx_string_free(char* s) { std::free(s); }

int pkgctx_need_update(pkgctx_worker_t* worker, const char* name, const char* version, const char* checksum_hex,
                       int* out) {
  if (!version) {
    if (out) *out = 0;
    return fail(Errc::io_error, "pkgctx_need_update: version is NULL");
  }
  return pkgctx_need_update_n(worker, name, name ? std::strlen(name) : 0, version, std::strlen(version), checksum_hex, out);
}

int pkgctx_need_update_n(pkgctx_worker_t* worker, const char* name, size_t name_len, const char* version,
                         size_t version_len, const char* checksum_hex, int* out) {
  if (out) *out = 0;
  return guarded("pkgctx_need_update", [&]() -> int {
    if (!worker || !out || (!version && version_len)) return fail(Errc::io_error, "pkgctx_need_update: worker, version or out is NULL");
    if (!name && name_len) return fail(Errc::invalid_name, "pkgctx_need_update: name is NULL");
    if (!checksum_hex) return fail(Errc::invalid_settings, "pkgctx_need_update: checksum is NULL");
    auto sum = pkgctx::parse_checksum(checksum_hex);
    if (!sum) return fail(sum.error());
    auto r = worker->lookup([&](const View& v) { return v.need_update(arg(name, name_len), arg(version, version_len), *sum); });
    if (!r) return fail(r.error());
    *out = *r ? 1 : 0;
    return PKGCTX_OK;
  });
}

int pkgctx_daemon(pkgctx_worker_t* worker, pkgctx_daemon_t* out) {
  if (out) std::memset(out, 0, sizeof *out);
  return guarded("pkgctx_daemon", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_daemon: worker or out is NULL");
    auto d = worker->lookup([&](const View& v) -> Result<pkgctx_daemon_t> {
      const pkgctx::SegmentInfo info = v.segment().info();
      pkgctx_daemon_t s{};
      s.liveness = static_cast<int>(pkgctx::liveness(info));
      s.pid = info.daemon_pid;
      s.start_realtime_ns = info.daemon_start_realtime_ns;
      const std::uint64_t now = pkgctx::mono_now_ns();
      s.heartbeat_age_ns = info.heartbeat_mono_ns && now > info.heartbeat_mono_ns ? now - info.heartbeat_mono_ns : 0;
      s.heartbeat_interval_ns = info.heartbeat_interval_ns;
      return s;
    });
    if (!d) return fail(d.error());
    *out = *d;
    return PKGCTX_OK;
  });
}

const char* pkgctx_liveness_name(int liveness) {
  if (liveness < PKGCTX_DAEMON_NONE || liveness > PKGCTX_DAEMON_STOPPED) return "unknown";
  return pkgctx::liveness_name(static_cast<pkgctx::Liveness>(liveness)).data();
}

int pkgctx_watch_ex(const pkgctx_token_t* token, void (*fn)(void* arg), void* arg, void (*release)(void* arg),
                    pkgctx_watch_t** out) {
  if (out) *out = nullptr;
  // Owns `arg` from here on: released when the last copy of the callback is destroyed, which the
  // watcher does only once the callback can no longer run.
  std::shared_ptr<void> owned;
  try {
    owned = std::shared_ptr<void>(arg, [release](void* a) {
      if (release) release(a);
    });
  } catch (...) {
    if (release) release(arg);
    return fail(Errc::io_error, "pkgctx_watch: out of memory");
  }
  return guarded("pkgctx_watch", [&]() -> int {
    if (!token) return fail(Errc::invalid_token, "pkgctx_watch: token is NULL");
    if (!fn || !out) return fail(Errc::io_error, "pkgctx_watch: fn or out is NULL");
    auto w = std::make_unique<pkgctx_watch_t>();
    auto id = pkgctx::detail::watch_register(token->token, wait_registration(*token), [fn, a = std::move(owned)] { fn(a.get()); });
    if (!id) return fail(id.error());
    w->id = *id;
    *out = w.release();
    return PKGCTX_OK;
  });
}

int pkgctx_watch(const pkgctx_token_t* token, void (*fn)(void* arg), void* arg, pkgctx_watch_t** out) {
  return pkgctx_watch_ex(token, fn, arg, nullptr, out);
}

int pkgctx_watch_fd(const pkgctx_token_t* token, int* fd_out, pkgctx_watch_t** out) {
  if (fd_out) *fd_out = -1;
  if (out) *out = nullptr;
  return guarded("pkgctx_watch_fd", [&]() -> int {
    if (!token) return fail(Errc::invalid_token, "pkgctx_watch_fd: token is NULL");
    if (!fd_out || !out) return fail(Errc::io_error, "pkgctx_watch_fd: fd_out or out is NULL");
    auto w = std::make_unique<pkgctx_watch_t>();
    w->fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (w->fd < 0) return fail(Errc::io_error, (std::string("pkgctx_watch_fd: eventfd: ") + std::strerror(errno)).c_str());
    // The fd outlives every run of the callback: pkgctx_unwatch unregisters before closing it.
    // A write to an eventfd only fails when its counter would overflow, which one write cannot.
    const int fd = w->fd;
    auto id = pkgctx::detail::watch_register(token->token, wait_registration(*token), [fd] {
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof one);
    });
    if (!id) {
      ::close(w->fd);
      return fail(id.error());
    }
    w->id = *id;
    *fd_out = w->fd;
    *out = w.release();
    return PKGCTX_OK;
  });
}

void pkgctx_unwatch(pkgctx_watch_t* watch) {
  if (!watch) return;
  pkgctx::detail::watch_unregister(watch->id);
  if (watch->fd >= 0) ::close(watch->fd);
  delete watch;
}

int pkgctx_register(pkgctx_worker_t* worker, const char* socket_path) {
  return guarded("pkgctx_register", [&]() -> int {
    if (!worker) return fail(Errc::io_error, "pkgctx_register: worker is NULL");
    auto r = registration(worker, socket_path ? socket_path : "");
    if (!r) return fail(r.error());
    if (!(*r)->registered())
      return fail(Errc::daemon_unreachable, ("pkgctx_register: pkgctxd does not answer at " + (*r)->socket() +
                                             " yet; registration is retried in the background").c_str());
    return PKGCTX_OK;
  });
}

int pkgctx_registered(const pkgctx_worker_t* worker) {
  const auto* r = worker ? worker->link->fast.load(std::memory_order_acquire) : nullptr;
  return r && r->registered() ? 1 : 0;
}

int pkgctx_task_begin(pkgctx_worker_t* worker, const char* name, size_t name_len, int event, pkgctx_task_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_task_begin", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_task_begin: worker or out is NULL");
    auto reg = registration(worker, "");
    if (!reg) return fail(reg.error());
    pkgctx_token_t* token = nullptr;
    if (int rc = pkgctx_token_n(worker, name, name_len, event, &token); rc != PKGCTX_OK) return rc;
    if (int rc = begin_lease(*reg, token, out); rc != PKGCTX_OK) {
      pkgctx_token_free(token);
      return rc;
    }
    (*out)->owned = token;
    return PKGCTX_OK;
  });
}

int pkgctx_task_begin_token(pkgctx_worker_t* worker, const pkgctx_token_t* token, pkgctx_task_t** out) {
  if (out) *out = nullptr;
  if (!worker || !token || !out) return fail(Errc::io_error, "pkgctx_task_begin_token: worker, token or out is NULL");
  auto* reg = worker->link->fast.load(std::memory_order_acquire);
  if (__builtin_expect(reg == nullptr, 0)) {
    return guarded("pkgctx_task_begin_token", [&]() -> int {
      auto r = registration(worker, "");
      if (!r) return fail(r.error());
      return begin_lease(*r, token, out);
    });
  }
  return begin_lease(reg, token, out);
}

const pkgctx_token_t* pkgctx_task_token(const pkgctx_task_t* task) { return task ? task->token : nullptr; }

void pkgctx_task_end(pkgctx_task_t* task) {
  if (!task || task->lease < 0) return;
  pkgctx_token_t* owned = std::exchange(task->owned, nullptr);
  const int lease = std::exchange(task->lease, -1);
  task->reg->end(lease);  // after this the slot may be handed out again
  delete owned;
}

}  // extern "C"
