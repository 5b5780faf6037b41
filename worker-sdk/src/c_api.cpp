// pkgctx.h on top of the C++ worker SDK. Every entry point catches everything: no exception
// crosses into C. Failures set the calling thread's last-error message.
#include "pkgctx.h"

#include "pkgctx/settings.hpp"
#include "pkgctx/worker.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>

struct pkgctx_worker_s {
  pkgctx::Worker worker;
};

struct pkgctx_token_s {
  pkgctx::Token token;
};

struct pkgctx_watch_s {
  pkgctx::CancelCallback callback;
};

namespace {

using pkgctx::Errc;

static_assert(PKGCTX_VERSION_MAJOR == PKGCTX_PROJECT_VERSION_MAJOR && PKGCTX_VERSION_MINOR == PKGCTX_PROJECT_VERSION_MINOR,
              "pkgctx.h's version macros must follow project() in CMakeLists.txt");

// The C enums are the C++ codes: pin every value.
static_assert(PKGCTX_OK == static_cast<int>(Errc::ok));
static_assert(PKGCTX_INVALID_NAME == static_cast<int>(Errc::invalid_name));
static_assert(PKGCTX_INVALID_VERSION == static_cast<int>(Errc::invalid_version));
static_assert(PKGCTX_INVALID_SETTINGS == static_cast<int>(Errc::invalid_settings));
static_assert(PKGCTX_SETTINGS_TOO_LARGE == static_cast<int>(Errc::settings_too_large));
static_assert(PKGCTX_INVALID_EVENT == static_cast<int>(Errc::invalid_event));
static_assert(PKGCTX_INVALID_TOKEN == static_cast<int>(Errc::invalid_token));
static_assert(PKGCTX_NO_SUCH_PACKAGE == static_cast<int>(Errc::no_such_package));
static_assert(PKGCTX_TABLE_FULL == static_cast<int>(Errc::table_full));
static_assert(PKGCTX_SETTINGS_FULL == static_cast<int>(Errc::settings_full));
static_assert(PKGCTX_SEGMENT_MISSING == static_cast<int>(Errc::segment_missing));
static_assert(PKGCTX_SEGMENT_FOREIGN == static_cast<int>(Errc::segment_foreign));
static_assert(PKGCTX_SEGMENT_VERSION == static_cast<int>(Errc::segment_version));
static_assert(PKGCTX_SEGMENT_TRUNCATED == static_cast<int>(Errc::segment_truncated));
static_assert(PKGCTX_SEGMENT_NOT_READY == static_cast<int>(Errc::segment_not_ready));
static_assert(PKGCTX_SEGMENT_RETIRED == static_cast<int>(Errc::segment_retired));
static_assert(PKGCTX_SEGMENT_EXISTS == static_cast<int>(Errc::segment_exists));
static_assert(PKGCTX_PERMISSION_DENIED == static_cast<int>(Errc::permission_denied));
static_assert(PKGCTX_TIMED_OUT == static_cast<int>(Errc::timed_out));
static_assert(PKGCTX_IO_ERROR == static_cast<int>(Errc::io_error));
static_assert(PKGCTX_DAEMON_UNREACHABLE == static_cast<int>(Errc::daemon_unreachable));
static_assert(PKGCTX_BUSY == static_cast<int>(Errc::busy));
static_assert(PKGCTX_CAUSE_SEGMENT_RETIRED == static_cast<int>(pkgctx::Cause::kSegmentRetired));
static_assert(PKGCTX_CAUSE_DELETED == static_cast<int>(pkgctx::Cause::kDeleted));
static_assert(PKGCTX_CAUSE_RESCHEDULED == static_cast<int>(pkgctx::Cause::kRescheduled));
static_assert(PKGCTX_CAUSE_REMOVED == static_cast<int>(pkgctx::Cause::kRemoved));
static_assert(PKGCTX_CAUSE_UPDATE_EVENT == static_cast<int>(pkgctx::Cause::kUpdateEvent));
static_assert(PKGCTX_CAUSE_VERSION_CHANGED == static_cast<int>(pkgctx::Cause::kVersionChanged));
static_assert(PKGCTX_DAEMON_NONE == static_cast<int>(pkgctx::Liveness::none));
static_assert(PKGCTX_DAEMON_ALIVE == static_cast<int>(pkgctx::Liveness::alive));
static_assert(PKGCTX_DAEMON_STALE == static_cast<int>(pkgctx::Liveness::stale));
static_assert(PKGCTX_DAEMON_STOPPED == static_cast<int>(pkgctx::Liveness::stopped));

thread_local std::string last_error;

int fail(Errc code, const char* message) noexcept {
  try {
    last_error = message;
  } catch (...) {
    last_error.clear();
  }
  return static_cast<int>(code);
}

int fail(const pkgctx::Error& e) noexcept { return fail(e.code, e.message.c_str()); }

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

char* dup_string(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

}  // namespace

extern "C" {

const char* pkgctx_version(void) { return PKGCTX_VERSION_STRING; }

const char* pkgctx_errname(int code) {
  const std::string_view n = pkgctx::errc_name(static_cast<Errc>(code));
  return n.data();  // static, NUL-terminated literals
}

const char* pkgctx_strerror(int code) {
  switch (static_cast<Errc>(code)) {
    case Errc::ok: return "success";
    case Errc::invalid_name: return "invalid name (1..128 bytes of [A-Za-z0-9._-])";
    case Errc::invalid_version: return "invalid version (1..128 printable ASCII bytes)";
    case Errc::invalid_settings: return "invalid settings or checksum";
    case Errc::settings_too_large: return "settings too large";
    case Errc::invalid_event: return "invalid event (not 0..7)";
    case Errc::invalid_token: return "invalid token (garbled, forged, or from another segment)";
    case Errc::no_such_package: return "no such package";
    case Errc::table_full: return "package table full";
    case Errc::settings_full: return "settings area full";
    case Errc::segment_missing: return "segment missing (is the daemon running?)";
    case Errc::segment_foreign: return "not a pkgctx segment";
    case Errc::segment_version: return "segment of another layout version (upgrade the SDK)";
    case Errc::segment_truncated: return "segment truncated";
    case Errc::segment_not_ready: return "segment being created (try again)";
    case Errc::segment_retired: return "segment retired (try again)";
    case Errc::segment_exists: return "segment exists";
    case Errc::permission_denied: return "permission denied";
    case Errc::timed_out: return "timed out";
    case Errc::io_error: return "I/O or internal error";
    case Errc::daemon_unreachable: return "daemon unreachable";
    case Errc::busy: return "busy (a writer died mid-write; try again)";
  }
  return "unknown pkgctx error code";
}

const char* pkgctx_last_error(void) { return last_error.c_str(); }

int pkgctx_attach(const char* segment, pkgctx_worker_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_attach", [&]() -> int {
    if (!out) return fail(Errc::io_error, "pkgctx_attach: out is NULL");
    if (!segment) return fail(Errc::invalid_name, "pkgctx_attach: segment name is NULL");
    auto w = pkgctx::Worker::attach(segment);
    if (!w) return fail(w.error());
    *out = new pkgctx_worker_t{std::move(*w)};
    return PKGCTX_OK;
  });
}

void pkgctx_detach(pkgctx_worker_t* worker) { delete worker; }

int pkgctx_refresh(pkgctx_worker_t* worker, int* reattached) {
  if (reattached) *reattached = 0;
  return guarded("pkgctx_refresh", [&]() -> int {
    if (!worker) return fail(Errc::io_error, "pkgctx_refresh: worker is NULL");
    auto r = worker->worker.refresh();
    if (!r) return fail(r.error());
    if (reattached) *reattached = *r ? 1 : 0;
    return PKGCTX_OK;
  });
}

int pkgctx_token(pkgctx_worker_t* worker, const char* name, int event, pkgctx_token_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_token", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_token: worker or out is NULL");
    if (!name) return fail(Errc::invalid_name, "pkgctx_token: name is NULL");
    auto t = worker->worker.token(name, event);
    if (!t) return fail(t.error());
    *out = new pkgctx_token_t{std::move(*t)};
    return PKGCTX_OK;
  });
}

int pkgctx_token_parse(pkgctx_worker_t* worker, const char* text, pkgctx_token_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_token_parse", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_token_parse: worker or out is NULL");
    if (!text) return fail(Errc::invalid_token, "pkgctx_token_parse: text is NULL");
    auto t = worker->worker.parse_token(text);
    if (!t) return fail(t.error());
    *out = new pkgctx_token_t{std::move(*t)};
    return PKGCTX_OK;
  });
}

pkgctx_token_t* pkgctx_token_dup(const pkgctx_token_t* token) {
  if (!token) return nullptr;
  return new (std::nothrow) pkgctx_token_t{token->token};
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

const char* pkgctx_cause(const pkgctx_token_t* token) {
  // cause_name() returns views of static, NUL-terminated literals.
  return pkgctx::cause_name(token ? token->token.cause() : pkgctx::Cause::kNone).data();
}

int pkgctx_cause_code(const pkgctx_token_t* token) {
  return token ? static_cast<int>(token->token.cause()) : PKGCTX_CAUSE_NONE;
}

int pkgctx_wait(const pkgctx_token_t* token, int64_t timeout_ms) {
  if (!token) return fail(Errc::invalid_token, "pkgctx_wait: token is NULL");
  const pkgctx::Token& t = token->token;
  if (timeout_ms < 0) {
    while (!t.wait(std::chrono::hours(1))) {
    }
    return PKGCTX_OK;
  }
  // Clamp so the deadline arithmetic cannot overflow (about 292 years of nanoseconds).
  const int64_t ms = timeout_ms > int64_t{1} << 40 ? int64_t{1} << 40 : timeout_ms;
  return t.wait(std::chrono::milliseconds(ms)) ? PKGCTX_OK : static_cast<int>(Errc::timed_out);
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
  if (out) std::memset(out, 0, sizeof *out);
  return guarded("pkgctx_read", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_read: worker or out is NULL");
    if (!name) return fail(Errc::invalid_name, "pkgctx_read: name is NULL");
    auto r = worker->worker.read(name);
    if (!r) return fail(r.error());
    pkgctx_package_t p{};
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
    *out = p;
    return PKGCTX_OK;
  });
}

void pkgctx_package_free(pkgctx_package_t* package) {
  if (!package) return;
  std::free(package->version);
  std::free(package->settings);
  std::memset(package, 0, sizeof *package);
}

int pkgctx_need_update(pkgctx_worker_t* worker, const char* name, const char* version, const char* checksum_hex,
                       int* out) {
  if (out) *out = 0;
  return guarded("pkgctx_need_update", [&]() -> int {
    if (!worker || !out || !version) return fail(Errc::io_error, "pkgctx_need_update: worker, version or out is NULL");
    if (!name) return fail(Errc::invalid_name, "pkgctx_need_update: name is NULL");
    if (!checksum_hex) return fail(Errc::invalid_settings, "pkgctx_need_update: checksum is NULL");
    auto sum = pkgctx::parse_checksum(checksum_hex);
    if (!sum) return fail(sum.error());
    auto r = worker->worker.need_update(name, version, *sum);
    if (!r) return fail(r.error());
    *out = *r ? 1 : 0;
    return PKGCTX_OK;
  });
}

int pkgctx_daemon(pkgctx_worker_t* worker, pkgctx_daemon_t* out) {
  if (out) std::memset(out, 0, sizeof *out);
  return guarded("pkgctx_daemon", [&]() -> int {
    if (!worker || !out) return fail(Errc::io_error, "pkgctx_daemon: worker or out is NULL");
    auto d = worker->worker.daemon();
    if (!d) return fail(d.error());
    out->liveness = static_cast<int>(d->liveness);
    out->pid = d->pid;
    out->start_realtime_ns = d->start_realtime_ns;
    out->heartbeat_age_ns = d->heartbeat_age_ns;
    out->heartbeat_interval_ns = d->heartbeat_interval_ns;
    return PKGCTX_OK;
  });
}

const char* pkgctx_liveness_name(int liveness) {
  if (liveness < PKGCTX_DAEMON_NONE || liveness > PKGCTX_DAEMON_STOPPED) return "unknown";
  return pkgctx::liveness_name(static_cast<pkgctx::Liveness>(liveness)).data();
}

int pkgctx_watch(const pkgctx_token_t* token, void (*fn)(void* arg), void* arg, pkgctx_watch_t** out) {
  if (out) *out = nullptr;
  return guarded("pkgctx_watch", [&]() -> int {
    if (!token) return fail(Errc::invalid_token, "pkgctx_watch: token is NULL");
    if (!fn || !out) return fail(Errc::io_error, "pkgctx_watch: fn or out is NULL");
    auto* w = new pkgctx_watch_t{};
    auto cb = pkgctx::CancelCallback::create(token->token, [fn, arg] { fn(arg); });
    if (!cb) {
      delete w;
      return fail(cb.error());
    }
    w->callback = std::move(*cb);
    *out = w;
    return PKGCTX_OK;
  });
}

void pkgctx_unwatch(pkgctx_watch_t* watch) { delete watch; }

}  // extern "C"
