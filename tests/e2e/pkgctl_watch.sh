#!/usr/bin/env bash
# `pkgctl watch` against a real pkgctxd (issue 16): --json lines for exactly the changes made
# (created, changed, deleted; filtered names absent; exit 0 when the reader goes away), natural
# sort, --sort and --filter on plain frames and their usage errors, NO_COLOR and TERM=dumb, the
# daemon's clients and leases (and "not reachable"), and the scrolling view on a pty (PgDn, End,
# a resize, q and SIGTERM restoring the terminal). Env: PKGCTX_BIN.
set -euo pipefail
D=${PKGCTX_BIN:?}/daemon/pkgctxd
C=$PKGCTX_BIN/tools/pkgctl
fail() { echo "pkgctl_watch: FAIL: $*" >&2; exit 1; }

work=$(mktemp -d)
export PKGCTX_RUNTIME_DIR=$work/run PKGCTX_SEGMENT="e2e-watch-$$" PKGCTX_SOCKET=$work/run/ctl.sock
pid=
BG=()
cleanup() {
  touch "$work/stop" 2>/dev/null || true  # ends the task of `pkgctl run` below, whatever failed
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BG[@]}"; do wait "$p" 2>/dev/null || true; done  # pkgctl run: once its command ended
  [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT

# until TRIES CMD…: runs CMD every 10 ms until it succeeds (a real condition, polled).
until_ok() {
  local tries=$1
  shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.01; done
  return 1
}
lines() { [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }
. "$(dirname "$0")/../support/e2e_daemon.sh"  # exited

"$D" --segment "$PKGCTX_SEGMENT" --socket "$PKGCTX_SOCKET" --capacity 64 2>"$work/daemon.log" &
pid=$!
until_ok 2000 test -S "$PKGCTX_SOCKET" || fail "pkgctxd did not start: $(cat "$work/daemon.log")"
"$C" update pkg0 1 >/dev/null
"$C" update other 1 >/dev/null

# --- --json: one line per change ------------------------------------------------------------------
J=$work/json.out
# watch | head -n 6 through a FIFO, so both pids are known (cleanup ends them if a check fails)
# and watch's own exit status is waited for. head line-buffered: each line shows in $J at once.
mkfifo "$work/json.fifo"
stdbuf -oL head -n 6 <"$work/json.fifo" >"$J" &
head_pid=$!
BG+=($head_pid)
"$C" watch --json --filter 'pkg*' --interval 0.02 >"$work/json.fifo" 2>"$work/json.err" &
watch_pid=$!
BG+=($watch_pid)
# Each change waits for the line of the one before, so none are coalesced into one read.
until_ok 1000 lines "$J" 1 || fail "no 'present' line: $(cat "$J")"
"$C" update pkg2 1 >/dev/null
until_ok 1000 lines "$J" 2 || fail "pkg2 created: $(cat "$J")"
"$C" update pkg10 1 >/dev/null
until_ok 1000 lines "$J" 3 || fail "pkg10 created: $(cat "$J")"
"$C" update other 2 >/dev/null  # filtered out: no line
"$C" update pkg2 2 >/dev/null
until_ok 1000 lines "$J" 4 || fail "pkg2 changed: $(cat "$J")"
"$C" event remove pkg10 >/dev/null
until_ok 1000 lines "$J" 5 || fail "pkg10 removed: $(cat "$J")"
"$C" delete pkg10 >/dev/null
# head exits after the sixth line; watch sees its reader gone (no further write needed).
until_ok 1000 exited "$watch_pid" || fail "watch --json did not end after head: $(cat "$J")"
watch_rc=0
wait "$watch_pid" || watch_rc=$?
[ "$watch_rc" -eq 0 ] || fail "watch | head: watch exited $watch_rc, want 0"
wait "$head_pid" || fail "head failed"
[ ! -s "$work/json.err" ] || fail "watch --json wrote to stderr: $(cat "$work/json.err")"
! grep -q $'\e' "$J" || fail "escape codes in --json output"
python3 - "$J" "${PKGCTX_SRC:-}" <<'PY' || fail "json lines: $(cat "$J")"
import json, os, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
got = [(l["event"], l["name"], l["version"]) for l in lines]
want = [("present", "pkg0", "1"), ("created", "pkg2", "1"), ("created", "pkg10", "1"),
        ("changed", "pkg2", "2"), ("changed", "pkg10", ""), ("deleted", "pkg10", "")]
assert got == want, got
assert list(lines[0])[:3] == ["event", "name", "version"], list(lines[0])
schema_file = os.path.join(sys.argv[2], "docs/dump.schema.json") if sys.argv[2] else ""
if schema_file and os.path.exists(schema_file):
    import jsonschema
    schema = json.load(open(schema_file))
    item = dict(schema["properties"]["packages"]["items"], **{"$defs": schema["$defs"]})
    for l in lines:
        l.pop("event")
        jsonschema.validate(l, item, cls=jsonschema.Draft202012Validator)
PY

# --json --count N stops by itself after N lines.
"$C" watch --json --count 2 >"$work/count.out" || fail "watch --json --count"
[ "$(wc -l <"$work/count.out")" -eq 2 ] || fail "--count 2 printed: $(cat "$work/count.out")"

# --- plain frames: natural order, --sort, --filter ------------------------------------------------
"$C" update pkg10 1 >/dev/null
"$C" update pkg1 1 >/dev/null
"$C" event update pkg0 >/dev/null  # root generation 2: pkg1 0, pkg2 1 (its version change)
"$C" event update pkg0 >/dev/null
row() { grep -n "^$1 " <<<"$OUT" | cut -d: -f1; }
OUT=$("$C" watch --count 1)
! grep -q $'\e' <<<"$OUT" || fail "escape codes in a plain frame"
[ "$(row pkg0)" -lt "$(row pkg1)" ] && [ "$(row pkg1)" -lt "$(row pkg2)" ] && [ "$(row pkg2)" -lt "$(row pkg10)" ] &&
  [ "$(row other)" -lt "$(row pkg0)" ] || fail "not in natural order: $OUT"
grep -q "WAITERS  HOLDERS$" <<<"$OUT" || fail "no WAITERS/HOLDERS columns: $OUT"
grep -q "^clients   0 attached, 0 task(s) running$" <<<"$OUT" || fail "clients line: $OUT"
OUT=$("$C" watch --count 1 --sort generation --filter 'pkg?')
[ -z "$(row other)" ] && [ -z "$(row pkg10)" ] || fail "--filter 'pkg?' let others through: $OUT"
[ "$(row pkg1)" -lt "$(row pkg2)" ] && [ "$(row pkg2)" -lt "$(row pkg0)" ] || fail "--sort generation: $OUT"
# Usage errors: exit 2, one line on stderr, nothing on stdout.
usage() {  # usage MESSAGE ARGS…
  local rc=0 msg=$1
  shift
  "$C" watch "$@" >"$work/u.out" 2>"$work/u.err" || rc=$?
  [ "$rc" -eq 2 ] || fail "watch $* exited $rc, want 2"
  [ ! -s "$work/u.out" ] && [ "$(wc -l <"$work/u.err")" -eq 1 ] || fail "watch $*: $(cat "$work/u.out" "$work/u.err")"
  grep -qF "$msg" "$work/u.err" || fail "watch $*: stderr does not say \"$msg\": $(cat "$work/u.err")"
}
usage "one of: name, version" --sort age
usage "empty pattern" --filter ''
usage "unclosed [" --filter 'pkg['
usage "backslash" --filter 'pkg\'

# --- NO_COLOR, TERM -------------------------------------------------------------------------------
NO_COLOR=1 "$C" watch --count 1 >"$work/nc.out"
! grep -q $'\e' "$work/nc.out" || fail "NO_COLOR output has an ESC byte"

# --- clients and leases ---------------------------------------------------------------------------
"$C" run pkg2 -- sh -c "while [ ! -e '$work/stop' ]; do sleep 0.05; done" 2>"$work/run.err" &
run_pid=$!
BG+=($run_pid)
holds() { "$C" clients --json | grep -q '"name":"pkg2"'; }
until_ok 1000 holds || fail "pkgctl run took no lease: $(cat "$work/run.err")"
"$C" wait "$("$C" token pkg1)" --timeout 120 >/dev/null &
BG+=($!)
waits() { OUT=$("$C" watch --count 1); grep -Eq '^pkg1 .* 1 +0$' <<<"$OUT"; }
until_ok 1000 waits || fail "pkg1 shows no waiter: $OUT"
# (pkgctl run also waits on its token: a waiter too)
grep -Eq '^pkg2 .* [0-9]+ +1$' <<<"$OUT" || fail "pkg2 shows no lease holder: $OUT"
grep -Eq '^pkg0 .* 0 +0$' <<<"$OUT" || fail "pkg0 row: $OUT"
# Attached: pkgctl run (its task) and pkgctl wait (registered, so the daemon counts its wait).
grep -q "^clients   2 attached, 1 task(s) running$" <<<"$OUT" || fail "clients line with a task: $OUT"
OUT=$("$C" watch --count 1 --sort holders)
[ "$(row pkg2)" -gt "$(row pkg0)" ] || fail "--sort holders: $OUT"
touch "$work/stop"
wait "$run_pid" || fail "pkgctl run: $(cat "$work/run.err")"
# Without the daemon's socket: the view still works and says so.
OUT=$("$C" --socket "$work/none.sock" watch --count 1)
grep -q "^clients   daemon: not reachable" <<<"$OUT" || fail "no 'not reachable': $OUT"
grep -Eq '^pkg2 .* -$' <<<"$OUT" || fail "holders not '-' without the daemon: $OUT"

# --- the terminal view on a pty -----------------------------------------------------------------------
for i in $(seq 12); do echo "update s$i 1"; done | "$C" batch >/dev/null
python3 - "$C" "$work/none.sock" <<'PY' || fail "pty"
import fcntl, os, pty, re, select, signal, struct, sys, termios, time
C, nosock = sys.argv[1], sys.argv[2]

def spawn(rows, cols, env_extra, args):
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(os.environ)
        env.pop("NO_COLOR", None)
        env.update(TERM="xterm", **env_extra)
        os.execve(C, [C] + args, env)
    return pid, fd

def read_until(fd, pattern, buf, timeout=10):
    deadline = time.monotonic() + timeout
    while not re.search(pattern, buf[0]):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {pattern!r}; got {buf[0][-600:]!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            assert data, f"eof waiting for {pattern!r}; got {buf[0][-600:]!r}"
            buf[0] += data
    return buf[0]

def finish(pid, fd, buf):
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        buf[0] += data
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert buf[0].endswith(b"\x1b[?1049l"), buf[0][-200:]
    lflag = termios.tcgetattr(fd)[3]  # the pty's settings, read on the master side
    assert lflag & termios.ECHO and lflag & termios.ICANON, "terminal left in raw mode"
    os.close(fd)

DASH = "\u2013".encode()
# 15 rows: 9 lines of header, the table's header row, 5 rows of 12, the status line.
pid, fd = spawn(15, 120, {}, ["watch", "--filter", "s*", "--interval", "0.05"])
buf = [b""]
read_until(fd, rb"rows 1" + DASH + rb"5 of 12 \| q quit", buf)
assert b"\x1b[?1049h" in buf[0]
assert not (termios.tcgetattr(fd)[3] & termios.ECHO), "raw mode: echo should be off"
os.write(fd, b"\x1b[6~")  # PgDn
read_until(fd, rb"rows 6" + DASH + rb"10 of 12", buf)
os.write(fd, b"\x1b[F")  # End
read_until(fd, rb"rows 8" + DASH + rb"12 of 12", buf)
os.write(fd, b"\x1b[H")  # Home
read_until(fd, rb"rows 1" + DASH + rb"5 of 12", buf)
mark = len(buf[0])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 18, 120, 0, 0))  # SIGWINCH
read_until(fd, rb"\x1b\[18;1H\x1b\[7m rows 1" + DASH + rb"8 of 12", buf)
assert b"s8 " in buf[0][mark:], buf[0][mark:]
os.write(fd, b"q")
finish(pid, fd, buf)

# SIGTERM: the terminal is restored too (echo and canonical mode back on).
pid, fd = spawn(15, 120, {}, ["watch", "--interval", "0.05"])
buf = [b""]
read_until(fd, rb"rows 1" + DASH, buf)
os.kill(pid, signal.SIGTERM)
finish(pid, fd, buf)

# NO_COLOR on a terminal: no colour (the unreachable daemon would be red), reverse video stays.
for env, red in (({}, True), ({"NO_COLOR": "1"}, False)):
    pid, fd = spawn(15, 120, env, ["--socket", nosock, "watch", "--count", "1"])
    buf = [b""]
    finish(pid, fd, buf)
    assert (b"\x1b[31m" in buf[0]) == red, (env, buf[0][:400])
    assert b"daemon: not reachable" in buf[0]

# TERM=dumb: plain frames, no cursor movement.
pid, fd = pty.fork()
if pid == 0:
    os.execve(C, [C, "watch", "--count", "1"], dict(os.environ, TERM="dumb"))
buf = [b""]
while True:
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    buf[0] += data
_, status = os.waitpid(pid, 0)
assert os.WEXITSTATUS(status) == 0 and b"\x1b" not in buf[0] and b"s12 " in buf[0], buf[0][:400]
PY
echo "ok: pkgctl watch"
