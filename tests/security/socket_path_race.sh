#!/usr/bin/env bash
# DESIGN §4.1 "No races on paths", attacked as issue 11 describes: pkgctxd used to chmod/chown
# the socket by path after bind(), so nobody, given a writable socket directory, swapped in a
# symlink and turned a root-owned 0600 file into 0666. Now the socket gets its mode from the
# umask and its group from the effective gid at bind(), and a directory others can write is
# refused. Each attacker step runs as nobody. Env: PKGCTX_BIN (build dir).
set -euo pipefail
D=${PKGCTX_BIN:?}/daemon/pkgctxd
fail() { echo "FAIL: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: needs root to play nobody"; exit 0; }
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; }

work=$(mktemp -d)
chmod 0755 "$work"
seg="sec-path-$$"
group="pkgctxsec$$"
pid= attacker=
cleanup() {
  [ -n "$attacker" ] && kill "$attacker" 2>/dev/null || true
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  getent group "$group" >/dev/null && groupdel "$group"
  rm -rf "$work"
  rm -f "/dev/shm/$seg" "/dev/shm/$seg.lock"
}
trap cleanup EXIT

# The prize: a root-owned 0600 file.
target=$work/secret
echo secret >"$target"
chmod 0600 "$target"
mode_of() { stat -c %a "$1"; }

# Starts pkgctxd on socket $1 (extra args after); sets pid. Returns once the socket answers or
# the daemon has exited.
start() {
  local sock=$1; shift
  "$D" --segment "$seg" --socket "$sock" --heartbeat-ms 50 "$@" 2>"$work/err" &
  pid=$!
  for _ in $(seq 400); do
    kill -0 "$pid" 2>/dev/null || return 0
    [ -S "$sock" ] && return 0
    sleep 0.05
  done
  fail "pkgctxd neither served $sock nor exited"
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }

# 1. A directory nobody can write: nobody's swap attempts fail, the daemon starts, the socket
#    has exactly the mode asked for, and the target is untouched.
safe=$work/safe
mkdir -m 0755 "$safe"
# setpriv execs sh: $! is the looping attacker itself.
setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
  sh -c "while :; do ln -sf '$target' '$safe/ctl.sock' 2>/dev/null; done" &
attacker=$!
start "$safe/ctl.sock" --socket-mode 0660
kill "$attacker"; wait "$attacker" 2>/dev/null || true; attacker=
kill -0 "$pid" 2>/dev/null || fail "daemon did not start in $safe: $(cat "$work/err")"
[ "$(stat -c '%F %a %U' "$safe/ctl.sock")" = "socket 660 root" ] ||
  fail "socket is $(stat -c '%F %a %U' "$safe/ctl.sock"), not a 0660 root socket"
[ "$(mode_of "$target")" = 600 ] || fail "target mode changed to $(mode_of "$target")"
stop
echo "ok: a directory nobody can write: socket 0660, target 0600"

# 2. No chmod or chown by path at all (when strace is there to watch): the daemon runs 2 s
#    under strace, bind() must show and no chmod/chown of any path.
if command -v strace >/dev/null; then
  strace -f -qq -e trace=bind,chmod,fchmodat,chown,lchown,fchownat -o "$work/trace" \
    timeout -s TERM 2 "$D" --segment "$seg" --socket "$safe/ctl.sock" --heartbeat-ms 50 2>"$work/err" || true
  grep -q "bind(.*ctl\.sock" "$work/trace" || fail "strace saw no bind: $(cat "$work/trace") $(cat "$work/err")"
  if grep -E '(chmod|chown)' "$work/trace"; then fail "pkgctxd changed a file by path"; fi
  echo "ok: no chmod/chown by path"
fi

# 3. A directory anyone can write into (0777, no sticky bit): the daemon refuses to start and
#    says which directory, its owner and mode; nobody's symlink there changes nothing.
open=$work/open
mkdir "$open"
chmod 0777 "$open"
as_nobody ln -s "$target" "$open/ctl.sock"
start "$open/ctl.sock"
if wait "$pid"; then fail "daemon started in a world-writable directory"; fi
pid=
grep -q "socket directory $open (owner uid 0, gid 0, mode 0777) is writable by others" "$work/err" ||
  fail "refusal does not name directory, owner and mode: $(cat "$work/err")"
[ "$(mode_of "$target")" = 600 ] || fail "target mode changed to $(mode_of "$target")"
echo "ok: a world-writable directory is refused, target 0600"

# 4. A directory owned by nobody: refused too (its owner can change its mode at any time).
owned=$work/owned
mkdir -m 0755 "$owned"
chown nobody "$owned"
start "$owned/ctl.sock"
if wait "$pid"; then fail "daemon started in a directory owned by nobody"; fi
pid=
grep -q "socket directory $owned (owner uid $(id -u nobody)" "$work/err" || fail "refusal: $(cat "$work/err")"
echo "ok: a directory owned by another user is refused"

# 5. A sticky directory (like /tmp): nobody plants a symlink at the name first; the daemon
#    refuses to replace it and the target is untouched.
sticky=$work/sticky
mkdir "$sticky"
chmod 1777 "$sticky"
as_nobody ln -s "$target" "$sticky/ctl.sock"
start "$sticky/ctl.sock"
if wait "$pid"; then fail "daemon started over nobody's symlink"; fi
pid=
grep -q "exists and is not a socket" "$work/err" || fail "refusal: $(cat "$work/err")"
[ "$(mode_of "$target")" = 600 ] || fail "target mode changed to $(mode_of "$target")"
echo "ok: a symlink planted in a sticky directory is refused, target 0600"

# 6. socket_group: the file is born with that group (set-gid at bind), nothing chowned after.
groupadd "$group"
start "$safe/ctl.sock" --set "socket_group=$group" --socket-mode 0660
kill -0 "$pid" 2>/dev/null || fail "daemon did not start with socket_group: $(cat "$work/err")"
[ "$(stat -c '%a %G' "$safe/ctl.sock")" = "660 $group" ] ||
  fail "socket is $(stat -c '%a %G' "$safe/ctl.sock"), not 660 $group"
stop
echo "ok: socket_group applied at creation"
