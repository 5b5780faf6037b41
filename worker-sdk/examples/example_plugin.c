/* example_plugin.c — a pkgctx plugin in C: attach, take a token, work while it is live, sleep
 * until it is cancelled, say why.
 *
 *   example_plugin SEGMENT PACKAGE [EVENT [TIMEOUT_MS]]
 *
 * EVENT is the context to follow (0 update, 1 remove, 2 schedule, .. 7; default 0). If the
 * environment variable PKGCTX_TOKEN holds a printed token (a controller handing the task its
 * context), that token is used instead of taking the current one.
 *
 * Prints one line per step on stdout (flushed, so a supervisor can follow it):
 *   attached segment=S daemon=LIVENESS
 *   token TOKEN
 *   package version=V checksum=HEX settings=JSON
 *   working
 *   cancelled during work after N units: cause=CAUSE      (exit 0)
 * or, when the work ends first:
 *   waiting
 *   cancelled while waiting: cause=CAUSE                 (exit 0)
 *   timed out after TIMEOUT_MS ms                         (exit 124)
 * Errors go to stderr as "example_plugin: WHAT: CODE_NAME: MESSAGE" (exit 1); bad usage exits 2.
 */
#define _POSIX_C_SOURCE 200809L

#include <pkgctx.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { WORK_UNITS = 20 };

static int fail(const char *what, int code) {
  fprintf(stderr, "example_plugin: %s: %s: %s\n", what, pkgctx_errname(code), pkgctx_last_error());
  return 1;
}

/* One unit of "work": a millisecond of something slow. */
static void work_unit(void) {
  struct timespec ms = {0, 1000000};
  nanosleep(&ms, NULL);
}

int main(int argc, char **argv) {
  if (argc < 3 || argc > 5) {
    fprintf(stderr, "usage: example_plugin SEGMENT PACKAGE [EVENT [TIMEOUT_MS]]\n");
    return 2;
  }
  const char *segment = argv[1];
  const char *package = argv[2];
  const int event = argc > 3 ? atoi(argv[3]) : PKGCTX_EVENT_UPDATE;
  const long long timeout_ms = argc > 4 ? atoll(argv[4]) : 10000;

  pkgctx_worker_t *worker = NULL;
  int rc = pkgctx_attach(segment, &worker);
  if (rc != PKGCTX_OK) return fail("attach", rc);

  pkgctx_daemon_t daemon;
  rc = pkgctx_daemon(worker, &daemon);
  if (rc != PKGCTX_OK) return fail("daemon liveness", rc);
  printf("attached segment=%s daemon=%s\n", segment, pkgctx_liveness_name(daemon.liveness));

  /* The context of this task: handed over, or the package's current one. */
  pkgctx_token_t *token = NULL;
  const char *handed = getenv("PKGCTX_TOKEN");
  rc = handed && *handed ? pkgctx_token_parse(worker, handed, &token) : pkgctx_token(worker, package, event, &token);
  if (rc != PKGCTX_OK) return fail("token", rc);
  char text[PKGCTX_TOKEN_STR_MAX + 1];
  pkgctx_token_str(token, text, sizeof text);
  printf("token %s\n", text);

  /* What to deploy: version and settings from one consistent snapshot. */
  pkgctx_package_t pkg;
  rc = pkgctx_read(worker, package, &pkg);
  if (rc != PKGCTX_OK) return fail("read", rc);
  printf("package version=%s checksum=%s settings=%s\n", pkg.version, pkg.checksum_hex, pkg.settings);
  pkgctx_package_free(&pkg);

  /* Work while the context is live: the check is one load, inlined here; call it as often as
   * you like (pkgctx_cancelled(token) answers the same through a library call). */
  pkgctx_check_t live;
  pkgctx_token_check(token, &live);
  printf("working\n");
  fflush(stdout);
  int units = 0;
  while (units < WORK_UNITS && !pkgctx_check_cancelled(&live)) {
    work_unit();
    ++units;
  }
  int status = 0;
  if (pkgctx_cancelled(token)) {
    printf("cancelled during work after %d units: cause=%s\n", units, pkgctx_cause(token));
  } else {
    /* Done: stay until the next change tells us to redo it (a futex sleep, no polling). */
    printf("waiting\n");
    fflush(stdout);
    rc = pkgctx_wait(token, timeout_ms);
    if (rc == PKGCTX_OK) {
      printf("cancelled while waiting: cause=%s\n", pkgctx_cause(token));
    } else {
      printf("timed out after %lld ms\n", timeout_ms);
      status = 124;
    }
  }
  fflush(stdout);
  pkgctx_token_free(token);
  pkgctx_detach(worker);
  return status;
}
