/* pkgctx.h — the pkgctx worker SDK for C (and Rust, Go, Python via ctypes, …).
 *
 * A controller (the pkgctxd daemon) keeps a table of packages — name, version, pending
 * settings, settings checksum — in a shared-memory segment, with per-package generation
 * counters. A plugin process attaches read-only, takes a *token* when a task starts (a snapshot
 * of the counters), and asks it whether the task has been cancelled: one atomic load, no
 * syscall, no lock, no IPC. It can also sleep until cancellation, read the package's version and
 * settings consistently, hand tokens around in printable form, and see whether the daemon lives.
 *
 *     pkgctx_worker_t *w;
 *     pkgctx_token_t *t;
 *     if (pkgctx_attach("pkgctx", &w) != PKGCTX_OK) die(pkgctx_last_error());
 *     if (pkgctx_token(w, "my-plugin", PKGCTX_EVENT_UPDATE, &t) != PKGCTX_OK) die(…);
 *     while (!pkgctx_cancelled(t)) do_some_work();
 *     printf("cancelled: %s\n", pkgctx_cause(t));
 *     pkgctx_token_free(t);
 *     pkgctx_detach(w);
 *
 * Link with `pkg-config --cflags --libs pkgctx`, or in CMake `find_package(pkgctx)` and
 * `target_link_libraries(you PRIVATE pkgctx::worker)`. The library is libpkgctx.so.1 and exports
 * this C API only, with versioned symbols (PKGCTX_1); the C++ API (pkgctx/worker.hpp) is a
 * header-only layer over it. A segment is only shared between builds of the same layout version
 * (attach says so otherwise).
 *
 * Events: PKGCTX_EVENT_UPDATE (0) and PKGCTX_EVENT_REMOVE (1) take the package's *root* token,
 * cancelled by the next update/remove event, a version change or the package's deletion.
 * PKGCTX_EVENT_SCHEDULE (2) .. 7 take a *child* token of that key, also cancelled by the next
 * event of the same key ("rescheduled"). Cancellation is permanent.
 *
 * ---------------------------------------------------------------------------------------------
 * PROCESS AND THREAD RULES
 *
 *  - Read-only map. The table is mapped PROT_READ. A plugin cannot change it; a stray write
 *    into it kills the process with SIGSEGV. The process needs read access to
 *    <runtime dir>/<segment> (membership of the daemon's group). pkgctx_wait() is counted by the
 *    daemon (registered through its socket): without that it still works, re-checking every 50 ms
 *    (on a segment no daemon serves, an embedded store's, every cancellation wakes it at once).
 *  - Handles. A token stays valid after the worker that made it is detached, and after the
 *    segment is retired (it then reports "segment_retired"). Free each handle exactly once.
 *  - Threads. Every function may be called from any thread. A worker handle may be shared by
 *    threads without locking. A token handle may be shared for reading (cancelled, cause, wait,
 *    str) but must not be freed while another thread uses it.
 *  - Signals. pkgctx_cancelled() and pkgctx_check_cancelled() are async-signal-safe (one
 *    atomic load). Nothing else is. The SDK's watcher thread blocks every signal, so the
 *    process's signals reach your threads (a poll() on pkgctx_watch_fd gets its EINTR).
 *  - fork(). The child inherits the mapping: its worker and token handles keep working. A
 *    cancellation watch (pkgctx_watch) made before fork() never fires in the child; freeing the
 *    child's copy is harmless; watch again in the child.
 *  - Daemon restarts. A compatible restart changes nothing for you. An incompatible one retires
 *    the segment: every token of it is cancelled with cause "segment_retired" and waiters are
 *    woken; the worker handle re-attaches to the new segment by name on its next lookup.
 *
 * ERRORS
 *
 * Functions that can fail return an int: PKGCTX_OK (0) or one of the PKGCTX_* codes below,
 * which are the numbers of pkgctx::Errc in the C++ API and of the daemon protocol's error codes
 * (they are pkgctx codes, not errno values). pkgctx_strerror() describes a code;
 * pkgctx_last_error() returns the one-line message of the most recent failure on the calling
 * thread, naming what was wrong. No C++ exception ever crosses this API.
 * A NULL handle, string or out-pointer is reported with the code named for each function; it
 * never crashes.
 */
#ifndef PKGCTX_H
#define PKGCTX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PKGCTX_VERSION_MAJOR 0
#define PKGCTX_VERSION_MINOR 1
#define PKGCTX_VERSION_PATCH 0

/* Error codes (equal to pkgctx::Errc). */
enum pkgctx_errc {
  PKGCTX_OK = 0,
  /* Input rejected. */
  PKGCTX_INVALID_NAME = 1,        /* package or segment name empty, too long, or not [A-Za-z0-9._-] */
  PKGCTX_INVALID_VERSION = 2,     /* (writers only) */
  PKGCTX_INVALID_SETTINGS = 3,    /* a checksum that is not 16 hex digits; (writers) bad JSON */
  PKGCTX_SETTINGS_TOO_LARGE = 4,  /* (writers only) */
  PKGCTX_INVALID_EVENT = 5,       /* event key not 0..7 */
  PKGCTX_INVALID_TOKEN = 6,       /* garbled, forged, or from a segment this worker never attached; NULL */
  PKGCTX_INVALID_CAUSE = 7,       /* (writers only) a cause name not [a-z][a-z0-9_]{0,31} */
  PKGCTX_INVALID_MAINTENANCE = 8, /* a maintenance mode longer than 64 bytes or not [A-Za-z0-9._-] */
  /* State. */
  PKGCTX_NO_SUCH_PACKAGE = 10,    /* the table has no package of that name */
  PKGCTX_TABLE_FULL = 11,         /* (writers only) */
  PKGCTX_SETTINGS_FULL = 12,      /* (writers only) */
  PKGCTX_TOO_MANY_CAUSES = 13,    /* (writers only) the segment's table of caller-named causes is full */
  PKGCTX_OWNED_BY_ETCD = 14,      /* (control socket writers only) the package follows etcd (DESIGN §10) */
  /* Segment. */
  PKGCTX_SEGMENT_MISSING = 20,    /* no segment of that name: daemon not started, or wrong name */
  PKGCTX_SEGMENT_FOREIGN = 21,    /* not a pkgctx segment (bad magic, impossible sizes) */
  PKGCTX_SEGMENT_VERSION = 22,    /* a pkgctx segment of another layout version: upgrade the SDK */
  PKGCTX_SEGMENT_TRUNCATED = 23,  /* shorter than its header says: corrupt */
  PKGCTX_SEGMENT_NOT_READY = 24,  /* being created right now: try again in a few milliseconds */
  PKGCTX_SEGMENT_RETIRED = 25,    /* being replaced right now: try again */
  PKGCTX_SEGMENT_EXISTS = 26,     /* (writers only) */
  PKGCTX_PERMISSION_DENIED = 27,  /* this process may not read the segment: join the daemon's group */
  PKGCTX_UNTRUSTED_SEGMENT = 28,  /* the segment, a companion or the runtime directory could be written
                                     by someone other than the directory's owner, or is a symlink */
  PKGCTX_CORRUPT = 29,            /* the segment holds bytes that fail validation (sizes, names,
                                     settings against their checksum) */
  /* Other. */
  PKGCTX_TIMED_OUT = 30,          /* pkgctx_wait(): the timeout passed before cancellation */
  PKGCTX_IO_ERROR = 31,           /* the kernel refused something else; out of memory; NULL handle */
  PKGCTX_DAEMON_UNREACHABLE = 32, /* (control socket clients only) */
  PKGCTX_BUSY = 33                /* a writer died mid-write of this package; the daemon repairs it
                                     on its next heartbeat: try again */
};

/* Event keys. */
#define PKGCTX_EVENT_UPDATE 0
#define PKGCTX_EVENT_REMOVE 1
#define PKGCTX_EVENT_SCHEDULE 2

/* Cancellation causes (pkgctx_cause_code). */
enum pkgctx_cause {
  PKGCTX_CAUSE_NONE = 0,            /* not cancelled */
  PKGCTX_CAUSE_VERSION_CHANGED = 1, /* an update with a new version, or re-creation after remove */
  PKGCTX_CAUSE_UPDATE_EVENT = 2,    /* HandleEvent(update) */
  PKGCTX_CAUSE_REMOVED = 3,         /* HandleEvent(remove) */
  PKGCTX_CAUSE_RESCHEDULED = 4,     /* the next event of this child key replaced this context */
  PKGCTX_CAUSE_DELETED = 5,         /* the package was deleted */
  PKGCTX_CAUSE_SEGMENT_RETIRED = 6, /* the daemon replaced the whole segment */
  PKGCTX_CAUSE_NAMED = 7            /* a cause the caller named (DESIGN §2.1): pkgctx_cause_text */
};

/* A caller-named cause is at most this many bytes of [a-z][a-z0-9_] (plus a NUL). */
#define PKGCTX_CAUSE_NAME_MAX 32
/* A maintenance mode is at most this many bytes of [A-Za-z0-9._-] (plus a NUL). */
#define PKGCTX_MAINTENANCE_MAX 64

/* Daemon liveness (pkgctx_daemon_t.liveness). */
enum pkgctx_liveness {
  PKGCTX_DAEMON_NONE = 0,    /* no daemon ever attached (a controller embedding the store) */
  PKGCTX_DAEMON_ALIVE = 1,   /* running, heartbeat fresh */
  PKGCTX_DAEMON_STALE = 2,   /* running per the header, but no heartbeat for 3 intervals: hung or killed */
  PKGCTX_DAEMON_STOPPED = 3  /* stopped cleanly */
};

/* A printed token is at most this many characters of [A-Za-z0-9._:-] (plus a NUL). */
#define PKGCTX_TOKEN_STR_MAX 128

typedef struct pkgctx_worker_s pkgctx_worker_t;
typedef struct pkgctx_token_s pkgctx_token_t;
typedef struct pkgctx_watch_s pkgctx_watch_t;

/* One consistent snapshot of a package (pkgctx_read). Strings are malloc'd and NUL-terminated;
 * release them with pkgctx_package_free(). */
typedef struct pkgctx_package_s {
  char *version;          /* "" once the package was removed */
  char *settings;         /* RFC 8785 canonical JSON object; "{}" when empty */
  size_t settings_len;    /* strlen(settings) */
  uint64_t checksum;      /* XXH3-64 of settings */
  char checksum_hex[17];  /* the same, as 16 lowercase hex digits */
} pkgctx_package_t;

/* pkgctx_read2: the same snapshot plus the v2 fields (DESIGN §2.1). A struct of its own, so
 * pkgctx_package_t keeps its layout for programs built against an older pkgctx.h. */
typedef struct pkgctx_package2_s {
  char *version;          /* "" once the package was removed */
  char *settings;         /* RFC 8785 canonical JSON object; "{}" when empty */
  size_t settings_len;    /* strlen(settings) */
  uint64_t checksum;      /* XXH3-64 of settings */
  char checksum_hex[17];  /* the same, as 16 lowercase hex digits */
  uint64_t settings_version;                  /* schema version of the settings; 0 by default */
  char maintenance[PKGCTX_MAINTENANCE_MAX + 1]; /* pending maintenance mode; "" = managed normally */
} pkgctx_package2_t;

typedef struct pkgctx_daemon_s {
  int liveness;                    /* enum pkgctx_liveness */
  int32_t pid;                     /* 0 when no daemon ever attached */
  uint64_t start_realtime_ns;      /* CLOCK_REALTIME when it started */
  uint64_t heartbeat_age_ns;       /* CLOCK_MONOTONIC now minus its last heartbeat */
  uint64_t heartbeat_interval_ns;
} pkgctx_daemon_t;

/* ---- Library ------------------------------------------------------------------------------ */

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
const char *pkgctx_version(void);

/* A static, one-line description of a PKGCTX_* code ("no such package"); never NULL. */
const char *pkgctx_strerror(int code);

/* The stable snake_case name of a code ("no_such_package"), as in the daemon protocol. */
const char *pkgctx_errname(int code);

/* The message of the most recent failed call on this thread (e.g. "no such package \"x\""), or
 * "" if none failed yet. Valid until the next failing call on this thread. */
const char *pkgctx_last_error(void);

/* ---- Attach --------------------------------------------------------------------------------- */

/* Attaches read-only to segment `segment` (pkgctxd's default: "pkgctx"). On success *out is a
 * handle to release with pkgctx_detach(); on failure *out is NULL.
 * Errors: PKGCTX_SEGMENT_MISSING, _NOT_READY, _FOREIGN, _VERSION, _TRUNCATED, _RETIRED,
 *         PKGCTX_PERMISSION_DENIED, PKGCTX_INVALID_NAME (segment NULL, empty or containing '/'),
 *         PKGCTX_IO_ERROR (out NULL; anything else). */
int pkgctx_attach(const char *segment, pkgctx_worker_t **out);

/* Options of pkgctx_attach_with (zero-initialise, then set what you need). */
typedef struct pkgctx_options_s {
  /* How often a lookup also checks whether the segment name now refers to another shared-memory
   * object (a segment replaced without being retired): one shm_open + fstat at most once per
   * interval (and always after a miss). 0: the default, 1000 ms. Negative: never (only
   * retirement, misses and pkgctx_refresh re-attach). */
  int64_t recheck_interval_ms;
  /* Nonzero: check on every lookup (recheck_interval_ms is then ignored). */
  int recheck_always;
} pkgctx_options_t;

/* pkgctx_attach with options (NULL: the defaults), the name given by pointer and length (it need
 * not be NUL-terminated; a NUL byte in it is refused). Errors: as pkgctx_attach. */
int pkgctx_attach_with(const char *segment, size_t segment_len, const pkgctx_options_t *options,
                       pkgctx_worker_t **out);

/* The epoch of the segment the worker is attached to now (0 for NULL): it changes when the
 * worker re-attaches to a replacement. */
uint64_t pkgctx_epoch(const pkgctx_worker_t *worker);

/* Releases a worker handle (NULL is ignored). Its tokens stay valid. */
void pkgctx_detach(pkgctx_worker_t *worker);

/* Checks now whether the segment was retired or replaced, and re-attaches if so. *reattached
 * (may be NULL) is set to 1 if it did. Errors: those of pkgctx_attach (the old mapping is kept). */
int pkgctx_refresh(pkgctx_worker_t *worker, int *reattached);

/* ---- Tokens --------------------------------------------------------------------------------- */

/* The token of package `name`'s current context for `event` (0..7). Take it when the task
 * starts. On success *out is a handle to release with pkgctx_token_free().
 * Errors: PKGCTX_INVALID_EVENT, PKGCTX_INVALID_NAME (also NULL name), PKGCTX_NO_SUCH_PACKAGE,
 *         PKGCTX_BUSY, PKGCTX_IO_ERROR (NULL worker or out), and the attach errors when the
 *         segment was retired and re-attaching failed. */
int pkgctx_token(pkgctx_worker_t *worker, const char *name, int event, pkgctx_token_t **out);
/* The *_n functions take strings by pointer and length, for callers whose strings are not
 * NUL-terminated (Rust, Go); a NUL byte inside is refused like any other bad byte, and NULL is
 * allowed with length 0 (an empty string). */
int pkgctx_token_n(pkgctx_worker_t *worker, const char *name, size_t name_len, int event, pkgctx_token_t **out);

/* Parses a printed token (pkgctx_token_str), validated against the worker's segment: a garbled
 * or forged token is refused, never trusted. Errors: PKGCTX_INVALID_TOKEN (also NULL text),
 * PKGCTX_IO_ERROR (NULL worker or out). */
int pkgctx_token_parse(pkgctx_worker_t *worker, const char *text, pkgctx_token_t **out);
int pkgctx_token_parse_n(pkgctx_worker_t *worker, const char *text, size_t text_len, pkgctx_token_t **out);

/* Copies a token (for another thread to own). NULL on NULL or out of memory. */
pkgctx_token_t *pkgctx_token_dup(const pkgctx_token_t *token);

/* Releases a token handle (NULL is ignored). */
void pkgctx_token_free(pkgctx_token_t *token);

/* 1 if cancelled, 0 if not (and for NULL). No syscall, no lock, no allocation; signal-safe. */
int pkgctx_cancelled(const pkgctx_token_t *token);

/* For hot loops in C: the one word a token watches and its snapshot, so that the check below
 * inlines into the caller instead of calling into the library (a call costs 3-7 ns; the inline
 * check is one load). Valid while `token`, or the worker's mapping through another handle,
 * lives. */
typedef struct pkgctx_check_s {
  const uint64_t *word; /* in the read-only shared segment */
  uint64_t snapshot;
} pkgctx_check_t;

/* Fills *out for `token`. Errors: PKGCTX_INVALID_TOKEN (NULL token: *out is then a check that
 * never fires), PKGCTX_IO_ERROR (NULL out). */
int pkgctx_token_check(const pkgctx_token_t *token, pkgctx_check_t *out);

#if defined(__GNUC__) /* GCC, Clang and compatibles: the __atomic builtins */
/* 1 if the token behind `check` is cancelled, 0 if not: pkgctx_cancelled() without the call. */
/* __inline__: the GNU spelling that -std=c89 accepts too. */
static __inline__ int pkgctx_check_cancelled(const pkgctx_check_t *check) {
  return __atomic_load_n(check->word, __ATOMIC_ACQUIRE) != check->snapshot;
}
#endif

/* What a token refers to (the fields of its printed form). */
typedef struct pkgctx_token_info_s {
  uint32_t slot;             /* the package's slot in the table */
  uint32_t key;              /* event key: 0 update, 1 remove (root), 2..7 (child) */
  uint64_t root_generation;  /* the root generation it was taken at */
  uint64_t child_generation; /* a child token's snapshot of its key's generation; 0 for a root token */
} pkgctx_token_info_t;

/* Fills *out. Errors: PKGCTX_INVALID_TOKEN (NULL token), PKGCTX_IO_ERROR (NULL out). */
int pkgctx_token_info(const pkgctx_token_t *token, pkgctx_token_info_t *out);

/* Why it was cancelled: "none" while live (and for NULL), else "version_changed",
 * "update_event", "removed", "rescheduled", "deleted" or "segment_retired"; "named" for a cause
 * the caller named (its text: pkgctx_cause_text). Static string. */
const char *pkgctx_cause(const pkgctx_token_t *token);

/* The same as an enum pkgctx_cause (PKGCTX_CAUSE_NAMED for any caller-named cause). */
int pkgctx_cause_code(const pkgctx_token_t *token);

/* The cause as text, caller-named causes included: "none" while live (and for NULL), a built-in
 * name, or the name the cancelling call gave (DESIGN §2.1), read from the segment and validated.
 * Writes it NUL-terminated into buf (truncated to size-1 as snprintf does; PKGCTX_CAUSE_NAME_MAX
 * + 1 bytes always suffice) and sets *len (if not NULL) to its full length.
 * Errors: PKGCTX_CORRUPT (the stored name fails validation: nothing written but ""),
 * PKGCTX_IO_ERROR (NULL buf with size > 0). */
int pkgctx_cause_text(const pkgctx_token_t *token, char *buf, size_t size, size_t *len);

/* Sleeps until the token is cancelled or `timeout_ms` passes (negative: no limit). Returns
 * PKGCTX_OK once cancelled, PKGCTX_TIMED_OUT otherwise, PKGCTX_INVALID_TOKEN for NULL.
 * The first wait registers the worker with pkgctxd in the background ($PKGCTX_SOCKET): the daemon
 * counts the wait (acknowledged before the sleep), so the writer wakes it at once, and costs the
 * writer a futex wake only while someone waits. Unregistered, it re-checks every 50 ms (on a
 * segment no daemon ever served, every cancellation wakes it). */
int pkgctx_wait(const pkgctx_token_t *token, int64_t timeout_ms);

/* pkgctx_wait with a timeout in nanoseconds. */
int pkgctx_wait_ns(const pkgctx_token_t *token, int64_t timeout_ns);

/* Writes the printable form (at most PKGCTX_TOKEN_STR_MAX characters, NUL-terminated,
 * truncated to size-1 as snprintf does) into buf, and returns its full length; 0 for NULL. */
size_t pkgctx_token_str(const pkgctx_token_t *token, char *buf, size_t size);

/* ---- Reading the table ------------------------------------------------------------------------ */

/* One consistent snapshot of package `name` (version, settings and checksum from the same
 * write). On success release *out with pkgctx_package_free(); on failure *out is zeroed.
 * Errors: PKGCTX_INVALID_NAME, PKGCTX_NO_SUCH_PACKAGE, PKGCTX_BUSY, PKGCTX_IO_ERROR (NULL
 * worker or out; out of memory), attach errors after a retirement. */
int pkgctx_read(pkgctx_worker_t *worker, const char *name, pkgctx_package_t *out);
int pkgctx_read_n(pkgctx_worker_t *worker, const char *name, size_t name_len, pkgctx_package_t *out);

/* Frees the strings of *package and zeroes it (NULL is ignored). */
void pkgctx_package_free(pkgctx_package_t *package);

/* pkgctx_read with the v2 fields (settings_version, maintenance), from the same snapshot.
 * Release *out with pkgctx_package2_free(). Errors: those of pkgctx_read, and PKGCTX_CORRUPT
 * (a stored maintenance mode or cause name fails validation). */
int pkgctx_read2(pkgctx_worker_t *worker, const char *name, pkgctx_package2_t *out);
int pkgctx_read2_n(pkgctx_worker_t *worker, const char *name, size_t name_len, pkgctx_package2_t *out);
void pkgctx_package2_free(pkgctx_package2_t *package);

/* The settings checksum of `json` (`len` bytes; a JSON object): XXH3-64 of its RFC 8785
 * canonical form, as the store computes it (DESIGN §3). Writes 16 lowercase hex digits and a NUL
 * into hex (17 bytes); if canonical is not NULL, sets *canonical to the canonical form (malloc'd,
 * NUL-terminated; release it with pkgctx_string_free). Needs no worker or segment.
 * Errors: PKGCTX_INVALID_SETTINGS (not JSON, not an object, a duplicate key, a lone surrogate, a
 * number out of range, nesting over 64 levels), PKGCTX_SETTINGS_TOO_LARGE (over 1 MiB canonical),
 * PKGCTX_IO_ERROR (NULL json with len > 0, NULL hex, out of memory). On error hex is "" and
 * *canonical NULL. */
int pkgctx_checksum(const char *json, size_t len, char hex[17], char **canonical);

/* Frees a string this library allocated (pkgctx_checksum's canonical). NULL is ignored. */
void pkgctx_string_free(char *s);

/* NeedUpdate: *out = 1 when the package is absent or its version or checksum (16 hex digits)
 * differs, else 0. Errors: PKGCTX_INVALID_NAME, PKGCTX_INVALID_SETTINGS (bad checksum text),
 * PKGCTX_BUSY, PKGCTX_IO_ERROR (NULL arguments). */
int pkgctx_need_update(pkgctx_worker_t *worker, const char *name, const char *version,
                       const char *checksum_hex, int *out);
int pkgctx_need_update_n(pkgctx_worker_t *worker, const char *name, size_t name_len, const char *version,
                         size_t version_len, const char *checksum_hex, int *out);

/* The owning daemon's liveness. Errors: PKGCTX_IO_ERROR (NULL arguments), attach errors
 * after a retirement. */
int pkgctx_daemon(pkgctx_worker_t *worker, pkgctx_daemon_t *out);

/* "none", "alive", "stale" or "stopped". Static string. */
const char *pkgctx_liveness_name(int liveness);

/* ---- Callbacks on cancellation -------------------------------------------------------------- */

/* Calls fn(arg) once, on the SDK's watcher thread (one per process, serving every watch), when
 * `token` is cancelled; inline, before returning, if it already is. Keep fn short and
 * non-blocking: watches share the thread. Latency after the cancelling write is a few
 * microseconds. On success release *out with pkgctx_unwatch().
 * Errors: PKGCTX_INVALID_TOKEN (NULL token), PKGCTX_IO_ERROR (NULL fn or out; no thread). */
int pkgctx_watch(const pkgctx_token_t *token, void (*fn)(void *arg), void *arg, pkgctx_watch_t **out);

/* pkgctx_watch that also tells when `arg` may be freed: release(arg) (if not NULL) is called
 * exactly once, when fn can no longer be called: after fn ran, after pkgctx_unwatch (even one
 * called from inside fn, once fn has returned), or before an error is returned. */
int pkgctx_watch_ex(const pkgctx_token_t *token, void (*fn)(void *arg), void *arg,
                    void (*release)(void *arg), pkgctx_watch_t **out);

/* A pollable cancellation, for event loops (epoll, poll, select, asyncio's add_reader, …):
 * *fd_out is an eventfd (close-on-exec, non-blocking) that becomes readable (POLLIN) when
 * `token` is cancelled, or at once if it already is. It then stays readable; do not read it
 * unless you want to consume that readiness (pkgctx_cancelled() stays the truth either way).
 * The fd belongs to the watch: do not close it; pkgctx_unwatch() closes it. Served by the same
 * watcher thread as pkgctx_watch, with the same latency. After fork() the child's copy still
 * refers to the parent's eventfd, which only the parent's watcher signals: watch again in the
 * child. On failure *fd_out is -1 and *out NULL.
 * Errors: PKGCTX_INVALID_TOKEN (NULL token), PKGCTX_IO_ERROR (NULL fd_out or out; eventfd()
 *         failed, e.g. out of file descriptors; no thread). */
int pkgctx_watch_fd(const pkgctx_token_t *token, int *fd_out, pkgctx_watch_t **out);

/* Unregisters (NULL is ignored); closes the fd of a pkgctx_watch_fd watch. After it returns fn is not running and never will be: if fn is
 * running on the watcher thread, this waits for it — unless called from inside fn itself. */
void pkgctx_unwatch(pkgctx_watch_t *watch);

/* ---- Tasks (DESIGN §2.2) -------------------------------------------------------------------- */

/* A task: a token plus a lease that tells the daemon "still running on this context", so a
 * controller's drain (pkgctl drain, update --drain) waits until the task ends or its process
 * dies. Beginning and ending one touch only this process's own lease page: no syscall, no IPC
 * (ending sends one byte to the daemon only while a drain waits on this process). At most 1024
 * tasks per worker handle at once. End every task before pkgctx_detach(). */
typedef struct pkgctx_task_s pkgctx_task_t;

/* Registers the worker with pkgctxd at `socket_path` (NULL: $PKGCTX_SOCKET, else
 * /run/pkgctx/pkgctxd.sock): one round trip; the connection then stays open for the handle's
 * life and is re-established in the background when the daemon comes back (leases are then known
 * again). Called implicitly by the first task begin. PKGCTX_OK when the daemon knows the worker
 * now; PKGCTX_DAEMON_UNREACHABLE when it does not answer yet (tasks still work; registration
 * keeps being retried every 200 ms). A second call with another path is refused
 * (PKGCTX_IO_ERROR). Errors: PKGCTX_IO_ERROR (memfd, thread, worker NULL). */
int pkgctx_register(pkgctx_worker_t *worker, const char *socket_path);

/* 1 if the daemon knows this worker (registered and connected) now, else 0. */
int pkgctx_registered(const pkgctx_worker_t *worker);

/* Begins a task on package `name`'s current context for `event` (pkgctx_token_n's lookup, then
 * the lease). On success *out is the task; end it with pkgctx_task_end().
 * Errors: those of pkgctx_token_n; PKGCTX_BUSY when 1024 tasks already run on this handle. */
int pkgctx_task_begin(pkgctx_worker_t *worker, const char *name, size_t name_len, int event, pkgctx_task_t **out);

/* Begins a task on `token`'s context (no lookup, no allocation: the fast form). The token must
 * outlive the task. Errors: PKGCTX_BUSY (1024 tasks), PKGCTX_INVALID_TOKEN (a default token). */
int pkgctx_task_begin_token(pkgctx_worker_t *worker, const pkgctx_token_t *token, pkgctx_task_t **out);

/* The task's token (owned by the task, or the one given to pkgctx_task_begin_token). */
const pkgctx_token_t *pkgctx_task_token(const pkgctx_task_t *task);

/* Ends the task (NULL is ignored): the lease is gone; a drain waiting on it is told at once. */
void pkgctx_task_end(pkgctx_task_t *task);

#ifdef __cplusplus
}
#endif

#endif /* PKGCTX_H */
