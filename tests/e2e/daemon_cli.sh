#!/usr/bin/env bash
# pkgctxd from a shell: usage, configuration precedence, a foreground session over the socket,
# clean stop on SIGTERM. Env: PKGCTX_BIN (build dir), PKGCTX_SRC (source dir).
set -euo pipefail
D=${PKGCTX_BIN:?}/daemon/pkgctxd
fail() { echo "FAIL: $*" >&2; exit 1; }

work=$(mktemp -d)
export PKGCTX_RUNTIME_DIR=$work/run  # the segment's directory (DESIGN §4.1), made by pkgctxd
seg="e2e-daemon-$$"
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Usage.
"$D" --help | grep -q -- '--segment' || fail "--help"
[ "$("$D" --version)" = "pkgctxd $("${PKGCTX_BIN}/tools/pkgctl" --version | cut -d' ' -f2)" ] || fail "--version: $("$D" --version)"
set +e
"$D" --no-such-flag 2>"$work/err"; rc=$?
set -e
[ $rc -eq 2 ] || fail "bad flag exits $rc, not 2"
grep -q "no-such-flag" "$work/err" || fail "bad flag message: $(cat "$work/err")"

# Precedence: defaults < file < env < flags.
cat >"$work/c.conf" <<CONF
segment = from-file
socket = /run/from-file.sock
capacity = 10
CONF
out=$(PKGCTX_SOCKET=/run/from-env.sock "$D" --config "$work/c.conf" --capacity 20 --print-config)
grep -qx 'segment = from-file' <<<"$out" || fail "file value lost: $out"
grep -qx 'socket = /run/from-env.sock' <<<"$out" || fail "env did not override the file"
grep -qx 'capacity = 20' <<<"$out" || fail "flag did not override the file"
grep -qx 'max_clients = 256' <<<"$out" || fail "default missing"
echo "ok: usage and precedence"

# A foreground session.
sock=$work/run/ctl.sock   # the directory does not exist yet: the daemon creates it
"$D" --segment "$seg" --socket "$sock" --heartbeat-ms 100 2>"$work/log" &
pid=$!
python3 - "$sock" <<'PY' || fail "session (log: $(cat "$work/log"))"
import json, socket, sys, time
path = sys.argv[1]
deadline = time.time() + 20
while True:  # wait until the socket accepts
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.02)
f = s.makefile("rwb")
def ask(req):
    f.write((json.dumps(req) + "\n").encode()); f.flush()
    return json.loads(f.readline())
a = ask({"op": "update", "name": "demo", "version": "1", "settings": {"port": 80}})
assert a["ok"] and a["change"] == "created" and a["context"].startswith("pkgctx1:"), a
a = ask({"op": "settings", "name": "demo"})
assert a["settings"] == {"port": 80} and len(a["checksum"]) == 16, a
a = ask({"op": "event", "event": "schedule", "name": "demo", "id": "e1"})
assert a["ok"] and a["id"] == "e1", a
a = ask({"op": "dump"})
assert [p["name"] for p in a["packages"]] == ["demo"], a
f.write(b"this is not json\n"); f.flush()
a = json.loads(f.readline())
assert a == {"ok": False, "error": a["error"]} and a["error"]["code"] == "bad_request", a
PY
[ "$(stat -c '%a' "$sock")" = 660 ] || fail "socket mode $(stat -c '%a' "$sock")"
[ "$(stat -c '%a' "$PKGCTX_RUNTIME_DIR/$seg")" = 640 ] || fail "segment mode $(stat -c '%a' "$PKGCTX_RUNTIME_DIR/$seg")"
kill -TERM "$pid"
set +e
wait "$pid"; rc=$?
set -e
pid=
[ $rc -eq 0 ] || fail "SIGTERM exit $rc"
[ ! -e "$sock" ] || fail "socket left behind"
grep -q '^<6>pkgctxd: Ready' "$work/log" || fail "no Ready line: $(cat "$work/log")"
grep -q '^<6>pkgctxd: Stopping on SIGTERM' "$work/log" || fail "no Stopping line"
[ -e "$PKGCTX_RUNTIME_DIR/$seg" ] || fail "the segment must outlive the daemon"
echo "ok: foreground session and clean stop"
echo "PASS"
