#!/usr/bin/env bash
# Every pkgctl command of DESIGN.md §7 and every exit code, against a real pkgctxd on a private
# segment and socket: output shapes (exact JSON), 0/1/2/3/4/5/124, env and flag selection of
# the segment and socket, dump and watch with the daemon up and down; bad file arguments, bad
# timeouts and the fix each error message suggests.
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir, PKGCTX_SRC source dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}"
PKGCTL=$PKGCTX_BIN/tools/pkgctl
PKGCTXD=$PKGCTX_BIN/daemon/pkgctxd

SEG=pkgctl-e2e-$$
TMP=$(mktemp -d)
SOCK=$TMP/s.sock
export PKGCTX_SEGMENT=$SEG PKGCTX_SOCKET=$SOCK PKGCTX_RUNTIME_DIR=$TMP/run  # made by pkgctxd
DAEMON=
BG=()
cleanup() {
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$DAEMON" ] && { kill -TERM "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() { echo "pkgctl_commands: FAIL: $*" >&2; [ -f "$TMP/daemon.log" ] && tail -5 "$TMP/daemon.log" >&2; exit 1; }
n=0

# t WANT_RC ARGS… — runs pkgctl; sets OUT, ERR; checks the exit code and, for errors, that stderr
# is exactly one line "pkgctl: …" and stdout is empty.
t() {
  local want=$1 rc=0
  shift
  n=$((n + 1))
  "$PKGCTL" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null || rc=$?
  OUT=$(cat "$TMP/out")
  ERR=$(cat "$TMP/err")
  [ "$rc" -eq "$want" ] || fail "pkgctl $* exited $rc, want $want (stdout: $OUT; stderr: $ERR)"
  if [ "$want" -ge 2 ] && [ "$want" -ne 124 ]; then
    [ -z "$OUT" ] || fail "pkgctl $*: stdout not empty on error: $OUT"
    [ "$(wc -l <"$TMP/err")" -eq 1 ] || fail "pkgctl $*: want one line on stderr, got: $ERR"
    [[ $ERR == "pkgctl: "* ]] || fail "pkgctl $*: stderr does not start with 'pkgctl: ': $ERR"
  fi
  return 0
}
eq() { [ "$1" = "$2" ] || fail "${3:-value}: got '$1', want '$2'"; }
has() { [[ $1 == *"$2"* ]] || fail "${3:-output} lacks '$2': $1"; }
tok() { sed -n 's/.*"context":"\([^"]*\)".*/\1/p' <<<"$1"; }

# --- before the daemon: unreachable segment and socket -> 4 ---------------------------------
t 4 dump;                             has "$ERR" "$SEG"; has "$ERR" "is pkgctxd running with --segment $SEG?"
t 4 settings web
t 4 token web
t 4 update web 1.0;                   has "$ERR" "$SOCK"; has "$ERR" "(is pkgctxd running? try --socket)"
t 4 event schedule web
t 4 delete web

# --- start the daemon; ready when the socket accepts (a real condition, no fixed sleep) -------
. "$(dirname "$0")/../support/e2e_daemon.sh"
start_pkgctxd --config /dev/null --segment "$SEG" --socket "$SOCK" --capacity 4 --settings-bytes 64K \
  --set max_settings=1024 --heartbeat-ms 100
t 0 delete probe; eq "$OUT" '{"name":"probe","deleted":false,"in_flight":0,"reason":"no such package"}' "delete absent"

# --- usage -> 2 -------------------------------------------------------------------------------
t 2;                                  has "$ERR" "subcommand"
t 2 frobnicate;                       has "$ERR" "frobnicate"
t 2 update web;                       has "$ERR" "VERSION"
t 2 need-update web 1.0
t 2 wait x --timeout -3
# Timeouts: finite seconds from 0 to a year, or a usage error that repeats what was given (never
# a 309-digit bound).
for bad in nan inf -inf -1 1e400 abc 1s ""; do
  t 2 wait pkgctx1:none --timeout "$bad"; has "$ERR" "\"$bad\" is not a number of seconds"
  [[ $ERR =~ [0-9]{20} ]] && fail "absurd number in: $ERR"
done
t 2 update web 1.0 --timeout 0;       has "$ERR" "--timeout"
t 2 event update web --timeout nan
t 2 delete web --timeout -1
t 2 dump --bogus
t 0 --help;                           has "$OUT" "need-update"

# --- update -----------------------------------------------------------------------------------
t 0 update web 1.0 --settings '{"b":1,"a":"x"}'
[[ $OUT =~ ^\{\"name\":\"web\",\"context\":\"pkgctx1:[A-Za-z0-9._:-]+\",\"change\":\"created\"\}$ ]] || fail "update created: $OUT"
T1=$(tok "$OUT"); [ ${#T1} -le 128 ] || fail "token longer than 128: $T1"
t 0 update web 1.0 --settings '{"a":"x","b":1}'; eq "$OUT" '{"name":"web","context":null,"change":"none"}' "update same"
t 0 update web 1.0 --settings '{"a":"y"}';       eq "$OUT" '{"name":"web","context":null,"change":"settings"}' "update settings"
t 0 check "$T1";  eq "$OUT" '{"cancelled":false,"cause":null}' "settings-only keeps the token"
echo '{"a":"z"}' >"$TMP/s.json"
t 0 update web 1.1 --settings-file "$TMP/s.json"
has "$OUT" '"change":"version"'; T2=$(tok "$OUT")
t 1 check "$T1";  eq "$OUT" '{"cancelled":true,"cause":"version_changed"}' "check after version change"
"$PKGCTL" update web 1.1 --settings-file - <<<'{"a":"w"}' | grep -q '"change":"settings"' || fail "settings from stdin"
t 5 update "a b" 1.0;                 has "$ERR" "name"
t 5 update web "";                    has "$ERR" "version"
t 5 update web 1.2 --settings '{"a":';  has "$ERR" "settings"
t 5 update web 1.2 --settings '[1]'
t 5 update web 1.2 --settings "{\"big\":\"$(head -c 2000 /dev/zero | tr '\0' x)\"}"; has "$ERR" "1024"
t 5 update web 1.2 --settings-file "$TMP/missing.json"; has "$ERR" "missing.json"
# Bad files are input too: refused at once (no endless read, no wait on a FIFO), exit 5, nothing sent.
mkfifo "$TMP/fifo"
head -c $((5 * 1024 * 1024)) /dev/zero | tr '\0' ' ' >"$TMP/huge.json"   # over 4 x the 1 MiB bound
for bad in "/tmp:a directory, not a regular file" "/dev/zero:a character device, not a regular file" \
           "/proc/self/mem:Input/output error" "$TMP/fifo:a FIFO, not a regular file" \
           "$TMP/huge.json:larger than 4194304 bytes"; do
  t 5 update web 9.9 --settings-file "${bad%%:*}"; eq "$ERR" "pkgctl: cannot read settings file ${bad%%:*}: ${bad#*:}"
done
rc=0; "$PKGCTL" update web 9.9 --settings-file - <"$TMP/huge.json" >/dev/null 2>"$TMP/err" || rc=$?
eq "$rc" 5 "huge settings on stdin"; has "$(cat "$TMP/err")" "larger than 4194304 bytes"
rc=0; "$PKGCTL" checksum <"$TMP/huge.json" >/dev/null 2>"$TMP/err" || rc=$?
eq "$rc" 5 "huge JSON for checksum on stdin"
t 0 settings web; has "$OUT" '"version":"1.1"' "refused updates changed nothing"

# --- settings, checksum, need-update ----------------------------------------------------------
t 0 settings web
SUM=$("$PKGCTL" checksum '{"a":"w"}')
eq "$OUT" "{\"name\":\"web\",\"version\":\"1.1\",\"settings\":{\"a\":\"w\"},\"checksum\":\"$SUM\",\"settings_version\":0,\"maintenance\":\"\"}" "settings"
[[ $SUM =~ ^[0-9a-f]{16}$ ]] || fail "checksum format: $SUM"
eq "$(echo '{ "a" : "w" }' | "$PKGCTL" checksum)" "$SUM" "checksum from stdin"
t 5 checksum '{"a":1,"a":2}'
t 5 checksum 'nope'
t 3 settings nosuch;                  has "$ERR" "nosuch"
t 5 settings 'bad/name'
t 0 need-update web 1.1 "$SUM";       eq "$OUT" false "need-update same"
t 0 need-update web 1.2 "$SUM";       eq "$OUT" true "need-update version"
t 0 need-update web 1.1 0123456789abcdef; eq "$OUT" true "need-update checksum"
t 0 need-update nosuch 1 "$SUM";      eq "$OUT" true "need-update absent"
t 5 need-update web 1.1 xyz

# --- event ------------------------------------------------------------------------------------
t 0 token web --event schedule;       C0=$OUT
t 0 event schedule web
[[ $OUT =~ ^\{\"name\":\"web\",\"context\":\"pkgctx1:[A-Za-z0-9._:-]+\"\}$ ]] || fail "event schedule: $OUT"
C1=$(tok "$OUT")
t 1 check "$C0";                      eq "$OUT" '{"cancelled":true,"cause":"rescheduled"}'
t 0 token web --event 2;              eq "$OUT" "$C1" "token = the context event returned"
t 0 event 3 web;                      C3=$(tok "$OUT")
t 0 check "$C1";                      # another key leaves key 2 alone
t 0 event update web;                 has "$OUT" '"context":"pkgctx1:'
t 1 check "$T2";                      eq "$OUT" '{"cancelled":true,"cause":"update_event"}'
t 1 check "$C3";                      eq "$OUT" '{"cancelled":true,"cause":"update_event"}' "child through root"
t 0 event schedule nosuch;            eq "$OUT" '{"name":"nosuch","context":null}' "event on absent"
t 5 event explode web;                has "$ERR" "explode"
t 5 event 8 web;                      has "$ERR" "child key 2..7"
"$PKGCTL" event --help | grep -q "child key 2..7" || fail "event --help and its error disagree"
"$PKGCTL" delete --help | grep -q "event remove" || fail "delete --help does not say: event remove first"
t 5 event schedule "bad name"

# --- token, check, wait -----------------------------------------------------------------------
t 0 token web;                        R=$OUT
t 3 token nosuch
t 5 token web --event 12
t 5 check garbage;                    has "$ERR" "token"
# The printed form of a default token: a token that never cancels.
t 0 check pkgctx1:none;               eq "$OUT" '{"cancelled":false,"cause":null}' "check of the none token"
t 124 wait pkgctx1:none --timeout 0.1; eq "$OUT" '{"cancelled":false,"cause":null}' "wait on the none token"
t 5 check "${R%:*}:00000000";         # forged check digits
t 124 wait "$R" --timeout 0.2;        eq "$OUT" '{"cancelled":false,"cause":null}' "wait timed out"
"$PKGCTL" wait "$R" --timeout 20 >"$TMP/wait.out" 2>&1 &
W=$!; BG+=("$W")
for _ in $(seq 100); do grep -q . "$TMP/wait.out" 2>/dev/null && break; sleep 0.01; done   # still waiting?
[ -s "$TMP/wait.out" ] && fail "wait returned early: $(cat "$TMP/wait.out")"
t 0 event remove web
rc=0; wait "$W" || rc=$?
eq "$rc" 0 "wait exit"
eq "$(cat "$TMP/wait.out")" '{"cancelled":true,"cause":"removed"}' "wait output"
t 0 wait "$R";                        # already cancelled: at once

# --- delete -----------------------------------------------------------------------------------
t 0 update db 14.2;                   D=$(tok "$OUT")
t 0 delete db;                        eq "$OUT" '{"name":"db","deleted":false,"in_flight":0,"reason":"the package is live: send event remove first"}' "delete a live package"
t 0 settings web;                     eq "$OUT" "{\"name\":\"web\",\"version\":\"\",\"settings\":{},\"checksum\":\"$("$PKGCTL" checksum '{}')\",\"settings_version\":0,\"maintenance\":\"\"}" "removed package"
t 0 token web;                        RW=$OUT
t 0 delete web;                       eq "$OUT" '{"name":"web","deleted":true,"in_flight":0}' "delete removed"
t 1 check "$RW";                      eq "$OUT" '{"cancelled":true,"cause":"deleted"}'
t 3 settings web
t 5 delete "x y"

# --- DESIGN §2.1 (v2): settings_version, maintenance, force, caller-named causes, update-settings
t 0 update v2 1 --settings '{"a":1}' --settings-version 3 --maintenance paused
has "$OUT" '"change":"created"'; V1=$(tok "$OUT")
t 0 settings v2;  eq "$OUT" "{\"name\":\"v2\",\"version\":\"1\",\"settings\":{\"a\":1},\"checksum\":\"$("$PKGCTL" checksum '{"a":1}')\",\"settings_version\":3,\"maintenance\":\"paused\"}" "settings v2"
t 0 update v2 1 --settings '{"a":1}' --settings-version 4 --maintenance paused; eq "$OUT" '{"name":"v2","context":null,"change":"settings"}' "settings_version alone"
t 0 update v2 1 --settings '{"a":1}' --settings-version 4;  eq "$OUT" '{"name":"v2","context":null,"change":"settings"}' "maintenance alone"
t 0 check "$V1"
SUMV=$("$PKGCTL" checksum '{"a":1}')
t 0 need-update v2 1 "$SUMV";                    eq "$OUT" false
t 0 need-update v2 1 "$SUMV" --maintenance "";   eq "$OUT" false
t 0 need-update v2 1 "$SUMV" --maintenance paused; eq "$OUT" true "need-update maintenance differs"
t 5 need-update v2 1 "$SUMV" --maintenance 'a b'; has "$ERR" "maintenance"
t 0 update-settings v2 --settings '{"a":2}' --settings-version 5; eq "$OUT" '{"name":"v2","changed":true}' "update-settings"
t 0 update-settings v2 --settings '{"a":2}' --settings-version 5; eq "$OUT" '{"name":"v2","changed":false}' "update-settings same"
t 0 update-settings ghost --settings '{}';      eq "$OUT" '{"name":"ghost","changed":false}' "update-settings absent"
t 2 update-settings v2;                         has "$ERR" "settings"
t 0 check "$V1";                                # update-settings touches no token
t 0 settings v2;  has "$OUT" '"version":"1","settings":{"a":2}'; has "$OUT" '"settings_version":5'
t 0 update v2 1 --settings '{"a":2}' --settings-version 5 --force --cause rollout_7
has "$OUT" '"change":"version"'; V2=$(tok "$OUT")
t 1 check "$V1";  eq "$OUT" '{"cancelled":true,"cause":"rollout_7"}' "forced update with a named cause"
t 0 token v2 --event schedule;  VC=$OUT
t 0 event schedule v2 --cause operator_disable
t 1 check "$VC";  eq "$OUT" '{"cancelled":true,"cause":"operator_disable"}' "named child event"
t 5 event update v2 --cause 'Bad-Cause';  has "$ERR" "cause"
t 5 update v2 1 --cause 9x;               has "$ERR" "cause"
t 5 update v2 1 --maintenance "$(head -c 65 /dev/zero | tr '\0' m)"; has "$ERR" "maintenance"
t 0 check "$V2";                          # refused calls changed nothing
t 0 dump --json
python3 - "$OUT" <<'PY' || fail "dump --json v2 fields: $OUT"
import json, sys
p = {p["name"]: p for p in json.loads(sys.argv[1])["packages"]}["v2"]
assert p["settings_version"] == 5 and p["maintenance"] == "" and p["last_cause"] == "rollout_7", p
PY
t 0 event remove v2
t 0 settings v2;  has "$OUT" '"settings_version":0,"maintenance":""'
t 0 delete v2;    eq "$OUT" '{"name":"v2","deleted":true,"in_flight":0}'

# --- a new package shows its own history, not the slot's previous tenant's ----------------------
t 0 update ha 1; t 0 event schedule ha; t 0 event remove ha; t 0 delete ha
t 0 update hb 1
t 0 dump
grep -Eq '^hb +1 +[0-9a-f]{16} +0  +- +- ' <<<"$OUT" || fail "dump row of a new package in a reused slot: $OUT"
t 0 dump --json
python3 - "$OUT" <<'PY' || fail "dump --json of a new package: $OUT"
import json, sys
p = {p["name"]: p for p in json.loads(sys.argv[1])["packages"]}["hb"]
assert p["root_generation"] == 0 and set(p["child_generations"].values()) == {0} and p["last_cause"] is None, p
PY
t 0 event remove hb; t 0 delete hb

# --- table_full -> 5 (capacity 4) ---------------------------------------------------------------
t 0 update p1 1; t 0 update p2 1; t 0 update p3 1
t 5 update p4 1;                      has "$ERR" "full"
t 0 check "$D"

# --- dump, watch --------------------------------------------------------------------------------
t 0 dump
has "$OUT" "segment   $SEG  layout v4  live"
has "$OUT" "packages  4 of 4 slots"
has "$OUT" "daemon    alive  pid $DAEMON"
has "$OUT" "NAME  VERSION  CHECKSUM"
grep -q "^db    14.2     [0-9a-f]\{16\}     0  -" <<<"$OUT" || fail "dump row: $OUT"
t 0 dump --json
python3 - "$OUT" "$SEG" "$DAEMON" <<'PY' || fail "dump --json: $OUT"
import json, sys
d = json.loads(sys.argv[1])
assert set(d) == {"segment", "daemon", "packages"}, d.keys()
s = d["segment"]
assert s["name"] == sys.argv[2] and s["capacity"] == 4 and s["used"] == 4 and s["layout_version"] == 4, s
assert d["daemon"]["liveness"] == "alive" and d["daemon"]["pid"] == int(sys.argv[3]), d["daemon"]
names = [p["name"] for p in d["packages"]]
assert names == ["db", "p1", "p2", "p3"], names
for p in d["packages"]:
    assert list(p)[:3] == ["name", "version", "checksum"], list(p)
    assert len(p["checksum"]) == 16 and set(p["child_generations"]) == {"2", "3", "4", "5", "6", "7"}
PY
t 0 watch --count 1;                  has "$OUT" "db    14.2"
# Without a terminal: one snapshot per change, until SIGINT.
"$PKGCTL" watch --interval 0.02 >"$TMP/watch.out" 2>&1 &
WA=$!; BG+=("$WA")
for _ in $(seq 200); do grep -q '^p3 ' "$TMP/watch.out" 2>/dev/null && break; sleep 0.01; done
"$PKGCTL" event schedule p1 >/dev/null
for _ in $(seq 200); do [ "$(grep -c '^--- ' "$TMP/watch.out")" -ge 2 ] && break; sleep 0.01; done
kill -INT "$WA"; rc=0; wait "$WA" || rc=$?
eq "$rc" 0 "watch exit on SIGINT"
[ "$(grep -c '^--- ' "$TMP/watch.out")" -ge 2 ] || fail "watch printed no second snapshot: $(cat "$TMP/watch.out")"
grep -Eq '^p1 .* 2:[0-9]+ ' "$TMP/watch.out" || fail "watch missed the change: $(cat "$TMP/watch.out")"
# On a terminal (script(1) gives it a pty): alternate screen in and out, exits on q.
if command -v script >/dev/null; then
  (sleep 0.5; printf q) | TERM=xterm timeout 10 script -qec "$PKGCTL watch --interval 0.05" /dev/null >"$TMP/tty.out" || fail "watch on a tty"
  grep -q $'\e\[?1049h' "$TMP/tty.out" || fail "watch did not enter the alternate screen"
  grep -q $'\e\[?1049l' "$TMP/tty.out" || fail "watch did not restore the screen"
  grep -q 'p3 ' "$TMP/tty.out" || fail "watch on a tty showed no table"
fi

# --- flags override the environment --------------------------------------------------------------
PKGCTX_SEGMENT=other-$$ PKGCTX_SOCKET=/nonexistent.sock "$PKGCTL" --segment "$SEG" settings db >/dev/null ||
  fail "--segment does not override PKGCTX_SEGMENT"
PKGCTX_SOCKET=/nonexistent.sock "$PKGCTL" update db 14.2 --socket "$SOCK" >/dev/null ||
  fail "--socket does not override PKGCTX_SOCKET"

# --- the daemon down: reads work and dump says so; writes -> 4 ----------------------------------
kill -TERM "$DAEMON"; wait "$DAEMON" || fail "pkgctxd exit status on SIGTERM"
DAEMON=
t 0 dump;                             has "$OUT" "daemon    stopped"
t 0 dump --json;                      has "$OUT" '"liveness":"stopped"'
t 0 settings db
t 1 check "$RW"
t 4 update db 15;                     has "$ERR" "$SOCK"
t 4 delete db

echo "pkgctl_commands: $n commands checked, all passed"
