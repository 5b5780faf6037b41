#!/usr/bin/env bash
# `pkgctl batch` (DESIGN §7): commands from stdin, the same words as pkgctl's command line, over
# one daemon connection; one JSON line per command, failures as {"ok":false,"error":{…}} lines;
# exit 0, 5 when a line was rejected, 4 when the daemon could not be reached.
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}"
PKGCTL=$PKGCTX_BIN/tools/pkgctl
PKGCTXD=$PKGCTX_BIN/daemon/pkgctxd

SEG=pkgctl-batch-$$
TMP=$(mktemp -d)
SOCK=$TMP/s.sock
export PKGCTX_SEGMENT=$SEG PKGCTX_SOCKET=$SOCK PKGCTX_RUNTIME_DIR=$TMP/run
DAEMON=
cleanup() {
  [ -n "$DAEMON" ] && { kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "pkgctl_batch: FAIL: $*" >&2; exit 1; }
eq() { [ "$1" = "$2" ] || fail "${3:-value}: got '$1', want '$2'"; }

# batch WANT_RC — runs pkgctl batch on stdin; OUT holds its answers.
batch() {
  local want=$1 rc=0
  "$PKGCTL" batch >"$TMP/out" 2>"$TMP/err" || rc=$?
  OUT=$(cat "$TMP/out")
  [ "$rc" -eq "$want" ] || fail "pkgctl batch exited $rc, want $want (stdout: $OUT; stderr: $(cat "$TMP/err"))"
  [ -s "$TMP/err" ] && fail "pkgctl batch wrote to stderr: $(cat "$TMP/err")"
  return 0
}
line() { sed -n "${1}p" <<<"$OUT"; }
# The daemon's count of accepted connections (its dump answer), over a connection of its own.
accepted() {
  python3 - "$SOCK" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'{"op":"dump"}\n')
buf = b""
while not buf.endswith(b"\n"):
    buf += s.recv(65536)
print(json.loads(buf)["daemon"]["accepted"])
EOF
}

# Daemon down: every write line says so; exit 4.
batch 4 <<<$'update web 1.0\nsettings web'
[[ $(line 1) == '{"ok":false,"error":{"code":"daemon_unreachable",'* ]] || fail "no daemon: $(line 1)"
[ "$(wc -l <<<"$OUT")" -eq 2 ] || fail "want 2 answers: $OUT"

. "$(dirname "$0")/../support/e2e_daemon.sh"
start_pkgctxd --config /dev/null --segment "$SEG" --socket "$SOCK" --capacity 16 --heartbeat-ms 100

# Six writes and two reads, quoting as a shell does; one connection for all of them.
before=$(accepted)
batch 0 <<'EOF'
update web 1.0 --settings '{"b":1, "a":"x y"}'
# a comment, and a blank line: no answer

update db "2.0" --settings-version 3
event schedule web --cause rollout_1
update-settings db --settings {\"k\":[1,2]}
settings db
need-update web 1.0 0000000000000000
event remove db
delete db
EOF
after=$(accepted)
eq "$((after - before))" 2 "connections accepted for the batch (and this probe)"
[ "$(wc -l <<<"$OUT")" -eq 8 ] || fail "want 8 answers: $OUT"
[[ $(line 1) =~ ^\{\"name\":\"web\",\"context\":\"pkgctx1:[A-Za-z0-9._:-]+\",\"change\":\"created\"\}$ ]] || fail "update: $(line 1)"
[[ $(line 2) == '{"name":"db","context":"pkgctx1:'*'","change":"created"}' ]] || fail "update db: $(line 2)"
[[ $(line 3) == '{"name":"web","context":"pkgctx1:'* ]] || fail "event: $(line 3)"
eq "$(line 4)" '{"name":"db","changed":true}' "update-settings"
[[ $(line 5) == '{"name":"db","version":"2.0","settings":{"k":[1,2]},"checksum":"'*'","settings_version":0,"maintenance":""}' ]] ||
  fail "settings: $(line 5)"
eq "$(line 6)" true "need-update"
[[ $(line 7) == '{"name":"db","context":"pkgctx1:'* ]] || fail "event remove: $(line 7)"
eq "$(line 8)" '{"name":"db","deleted":true,"in_flight":0}' "delete"
# The batch's answers are pkgctl's own: the same words on the command line print the same.
eq "$("$PKGCTL" settings web)" "$(printf 'settings web\n' | "$PKGCTL" batch)" "settings in and out of a batch"
eq "$("$PKGCTL" settings web | sed 's/.*"settings":\({[^}]*}\).*/\1/')" '{"a":"x y","b":1}' "quoted settings"

# Rejected lines get an error line each; the lines after them still run; exit 5.
batch 5 <<'EOF'
update bad/name 1.0
frobnicate web
update web
watch
batch
update web "2.0
update web 2.0
settings nosuch
update --help
EOF
[ "$(wc -l <<<"$OUT")" -eq 9 ] || fail "want 9 answers: $OUT"
[[ $(line 1) == '{"ok":false,"error":{"code":"invalid_name","message":"'*'","exit":5}}' ]] || fail "bad name: $(line 1)"
[[ $(line 2) == '{"ok":false,"error":{"code":"usage","message":"unknown command \"frobnicate\"'*'"exit":2}}' ]] ||
  fail "unknown command: $(line 2)"
[[ $(line 3) == '{"ok":false,"error":{"code":"usage",'*VERSION* ]] || fail "missing VERSION: $(line 3)"
[[ $(line 4) == *'"code":"usage","message":"watch cannot run in a batch'* ]] || fail "watch: $(line 4)"
[[ $(line 5) == *'"code":"usage","message":"batch cannot run in a batch'* ]] || fail "nested batch: $(line 5)"
[[ $(line 6) == *'"code":"usage","message":"unterminated quote'* ]] || fail "quote: $(line 6)"
[[ $(line 7) == '{"name":"web","context":"pkgctx1:'*'","change":"version"}' ]] || fail "update after errors: $(line 7)"
[[ $(line 8) == '{"ok":false,"error":{"code":"no_such_package",'*'"exit":3}}' ]] || fail "no such package: $(line 8)"
[[ $(line 9) == *'"code":"usage","message":"--help and --version cannot run in a batch"'* ]] || fail "help: $(line 9)"
eq "$("$PKGCTL" settings web | sed 's/.*"version":"\([^"]*\)".*/\1/')" 2.0 "the write after the rejected lines"

# The batch's --segment travels with every write: a daemon serving another segment refuses them.
printf 'update web 3.0\n' | "$PKGCTL" --segment "other-$$" batch >"$TMP/out" 2>/dev/null && fail "wrong segment accepted"
[[ $(cat "$TMP/out") == '{"ok":false,"error":{"code":"wrong_segment",'* ]] || fail "wrong segment: $(cat "$TMP/out")"

echo "pkgctl_batch: all passed"
