# Sourced by the shell tests that drive a real pkgctxd (tests/e2e, tests/security).
# start_pkgctxd needs PKGCTXD, PKGCTL, TMP, a fail() of the caller's, and PKGCTX_SEGMENT /
# PKGCTX_SOCKET exported.
#
# start_pkgctxd ARGS…: runs "$PKGCTXD" ARGS… in the background (stdout and stderr to
# $TMP/daemon.log), sets DAEMON to its pid, and returns once its socket answers (`pkgctl clients`,
# a read: no write is counted or changed). Fails if the daemon exits or has not answered in 10 s.
start_pkgctxd() {
  "$PKGCTXD" "$@" >"$TMP/daemon.log" 2>&1 &
  DAEMON=$!
  local _
  for _ in $(seq 1000); do
    kill -0 "$DAEMON" 2>/dev/null || fail "pkgctxd exited: $(cat "$TMP/daemon.log")"
    "$PKGCTL" clients >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  fail "pkgctxd did not answer within 10 s: $(cat "$TMP/daemon.log")"
}

# exited PID: the process has ended (gone, or a zombie its parent has yet to reap).
exited() {
  local st
  st=$(ps -o stat= -p "$1") || return 0
  [[ $st == Z* ]]
}
