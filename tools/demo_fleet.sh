#!/usr/bin/env bash
# tools/demo_fleet.sh BUILD_DIR — two hosts following one etcd, narrated (`./build.sh demo fleet`).
#
# Starts a real single-member etcd on free 127.0.0.1 ports (data in a temp directory) and two
# pkgctxd --follow etcd (hosts "host-a" and "host-b", each its own private segment and socket).
# Shows an etcd put becoming a new version on both hosts and cancelling a blocked worker,
# `pkgctl fleet`, then an etcd delete that waits for a registered task to end (the drain, with the
# holder listed in the host's status) before the package is deleted.
#
# Ends by itself in a few seconds and leaves no etcd, daemon, worker, segment or file behind
# (checked on exit). Environment: PKGCTX_DEMO_SEGMENT prefixes the segment names (tests use it).
set -euo pipefail

BUILD=${1:?usage: tools/demo_fleet.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PKGCTXD=$BUILD/daemon/pkgctxd
PKGCTL=$BUILD/tools/pkgctl
WORKER=$BUILD/tools/pkgctx-demo-worker
for bin in "$PKGCTXD" "$PKGCTL" "$WORKER"; do
  [ -x "$bin" ] || { echo "demo fleet: $bin is missing: build first (./build.sh)" >&2; exit 1; }
done
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
  { echo "demo fleet: etcd and etcdctl are needed (Debian: etcd-server etcd-client; ./build.sh demo fleet installs them)" >&2; exit 1; }

SEG=${PKGCTX_DEMO_SEGMENT:-pkgctx-fleet-$$}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/pkgctx-fleet.XXXXXX")
PREFIX=/demo
export ETCDCTL_API=3

if [ -t 1 ]; then B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' Y=$'\e[33m' R=$'\e[0m'; else B='' D='' G='' Y='' R=''; fi

ETCD_PID=
declare -A DPID=() WPID=()

# --- cleanup: every exit path stops what we started and removes what we created -------------
cleanup() {
  local rc=$? p left=()
  trap - EXIT INT TERM
  for p in "${WPID[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${WPID[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${DPID[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${DPID[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$ETCD_PID" ]; then
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  # The segments live in private runtime directories under $DIR, etcd's data too.
  rm -rf "$DIR"
  for p in "$ETCD_PID" "${DPID[@]}" "${WPID[@]}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && left+=("process $p"); done
  [ -e "$DIR" ] && left+=("$DIR")
  if [ ${#left[@]} -gt 0 ]; then
    echo "demo fleet: left behind: ${left[*]}" >&2
    [ "$rc" -eq 0 ] && rc=1
  elif [ "$rc" -eq 0 ]; then
    echo
    echo "${G}Cleaned up: etcd, both daemons and the workers stopped; segments, sockets and etcd's data removed.${R}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() { echo "demo fleet: $*" >&2; exit 1; }
scene() { echo; echo "${B}== $*${R}"; }
say() { echo "$*"; }

# wait_for SECONDS COMMAND… — a real condition, bounded.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.02
  done
}

# A port nobody listens on now (the kernel's pick).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# on HOST pkgctl ARGS… — pkgctl against HOST's daemon, shown with its output.
on() {
  local host=$1
  shift
  echo "  ${D}[$host]\$${R} pkgctl $*"
  PKGCTX_SEGMENT=$SEG-$host PKGCTX_SOCKET=$DIR/$host.sock PKGCTX_RUNTIME_DIR=$DIR/run-$host "$PKGCTL" "$@" | sed 's/^/    /'
}
quiet() {  # quiet HOST pkgctl ARGS… — the same, output not shown
  local host=$1
  shift
  PKGCTX_SEGMENT=$SEG-$host PKGCTX_SOCKET=$DIR/$host.sock PKGCTX_RUNTIME_DIR=$DIR/run-$host "$PKGCTL" "$@"
}
etcdctl_() {
  echo "  ${D}\$${R} etcdctl $*"
  etcdctl --endpoints "$ETCD" "$@" | sed 's/^/    /'
}
fleet() { "$PKGCTL" fleet --etcd-endpoints "$ETCD" --prefix "$PREFIX"; }
# has_version HOST NAME VERSION
has_version() { quiet "$1" settings "$2" | grep -q "\"version\":\"$3\""; }
gone() { ! quiet "$1" settings "$2"; }

# --- the demo ---------------------------------------------------------------------------------
scene "Start a single-member etcd on 127.0.0.1"
CP=$(free_port) PP=$(free_port)
ETCD=http://127.0.0.1:$CP
etcd --name demo --data-dir "$DIR/etcd" --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$PP" --initial-advertise-peer-urls "http://127.0.0.1:$PP" \
  --initial-cluster "demo=http://127.0.0.1:$PP" --log-level warn >"$DIR/etcd.log" 2>&1 &
ETCD_PID=$!
wait_for 20 etcdctl --endpoints "$ETCD" endpoint health || die "etcd did not come up: $(cat "$DIR/etcd.log")"
say "etcd $(etcd --version | sed -n 's/^etcd Version: //p') at $ETCD (pid $ETCD_PID), data in a temp directory."

scene "Two hosts: pkgctxd --follow etcd, each on its own segment"
: >"$DIR/pkgctxd.conf"   # an empty config: only defaults and flags, whatever /etc holds
for host in host-a host-b; do
  "$PKGCTXD" --config "$DIR/pkgctxd.conf" --segment "$SEG-$host" --socket "$DIR/$host.sock" --heartbeat-ms 250 \
    --runtime-dir "$DIR/run-$host" --follow etcd --etcd-endpoints "$ETCD" --prefix "$PREFIX" \
    --set "etcd_host=$host" --set etcd_drain_ms=10000>"$DIR/$host.log" 2>&1 &
  DPID[$host]=$!
  say "  ${D}\$${R} pkgctxd --segment $SEG-$host --follow etcd --etcd-endpoints $ETCD --prefix $PREFIX --set etcd_host=$host"
done
for host in host-a host-b; do
  wait_for 10 grep -q "following $PREFIX/packages/" "$DIR/$host.log" ||
    die "$host does not follow etcd: $(cat "$DIR/$host.log")"
done
say "Both follow $PREFIX/packages/ and report under $PREFIX/status/HOST/."

scene "1. An etcd put is an Update on every host"
etcdctl_ put "$PREFIX/packages/web" '{"version":"1.0","settings":{"image":"web:1.0","replicas":2}}'
wait_for 10 has_version host-a web 1.0 && wait_for 10 has_version host-b web 1.0 || die "web 1.0 did not arrive"
on host-a settings web
on host-b settings web

scene "2. A newer version in etcd cancels the deploy blocked on host-b"
PKGCTX_RUNTIME_DIR=$DIR/run-host-b "$WORKER" --segment "$SEG-host-b" --label "deploy web 1.0" --name web --token "$(quiet host-b token web)" --work 30 \
  >"$DIR/deploy.log" 2>&1 &
WPID[deploy]=$!
wait_for 5 grep -q '\] working' "$DIR/deploy.log" || die "the worker did not start: $(cat "$DIR/deploy.log")"
sed 's/^/    /' "$DIR/deploy.log"
SHOWN=$(wc -l <"$DIR/deploy.log")
SENT=$(date +%s%N)
etcdctl_ put "$PREFIX/packages/web" '{"version":"1.1","settings":{"image":"web:1.1","replicas":2}}'
wait_for 10 grep -q '^RESULT' "$DIR/deploy.log" || die "the worker was not cancelled: $(cat "$DIR/deploy.log")"
wait "${WPID[deploy]}" 2>/dev/null || true
unset "WPID[deploy]"
tail -n +$((SHOWN + 1)) "$DIR/deploy.log" | grep -v '^RESULT' | sed "s/^/    ${Y}/; s/\$/${R}/"
read -r _ _ cause woke <<<"$(grep '^RESULT' "$DIR/deploy.log")"
[ "$cause" = version_changed ] || die "cancelled with cause $cause"
echo "    ${G}-> stopped: cause ${B}$cause${R}${G}, woke $(( (woke - SENT) / 1000000 )) ms after etcdctl started (etcdctl's own start-up included)${R}"
wait_for 10 has_version host-a web 1.1 || die "host-a did not apply web 1.1"

scene "3. pkgctl fleet: every host's status, from etcd"
etcdctl_ put "$PREFIX/packages/db" '{"version":"14.2","settings":{"pool":10}}'
wait_for 10 has_version host-a db 14.2 && wait_for 10 has_version host-b db 14.2 || die "db did not arrive"
wait_for 10 sh -c "'$PKGCTL' fleet --etcd-endpoints '$ETCD' --prefix '$PREFIX' | grep -c '^host-' | grep -qx 4" ||
  die "the fleet's status is incomplete: $(fleet)"
echo "  ${D}\$${R} pkgctl fleet --etcd-endpoints $ETCD --prefix $PREFIX"
fleet | sed 's/^/    /'

scene "4. An etcd delete: event remove, drain, Delete"
say "On host-a, db's migration runs under \`pkgctl run\` (a registered worker: its task holds a"
say "lease). Cancelled, it gets SIGTERM and needs a moment to finish the step:"
PKGCTX_SEGMENT=$SEG-host-a PKGCTX_SOCKET=$DIR/host-a.sock PKGCTX_RUNTIME_DIR=$DIR/run-host-a \
  "$PKGCTL" run db --grace 10 -- sh -c 'trap "echo \"[migrate db] SIGTERM: finishing the step\"; sleep 1.5; echo \"[migrate db] done\"; exit 0" TERM
  echo "[migrate db] working"; while :; do sleep 0.05; done' >"$DIR/run.log" 2>&1 &
WPID[run]=$!
wait_for 5 grep -q 'working' "$DIR/run.log" || die "pkgctl run did not start: $(cat "$DIR/run.log")"
sed "s/^/    ${Y}/; s/\$/${R}/" "$DIR/run.log"
T0=$(date +%s%N)
etcdctl_ del "$PREFIX/packages/db"
say "host-b had no task on db: deleted at once. host-a waits for its task, and says so:"
wait_for 10 gone host-b db || die "host-b did not delete db"
wait_for 5 sh -c "'$PKGCTL' fleet --etcd-endpoints '$ETCD' --prefix '$PREFIX' | grep -q draining" ||
  die "host-a's status shows no drain: $(fleet)"
echo "  ${D}\$${R} pkgctl fleet --etcd-endpoints $ETCD --prefix $PREFIX"
fleet | sed 's/^/    /'
wait_for 15 gone host-a db || die "host-a did not delete db: $(cat "$DIR/host-a.log")"
say "    ${G}-> host-a deleted db $(( ($(date +%s%N) - T0) / 1000000 )) ms after the etcd delete, once the task let go:${R}"
wait "${WPID[run]}" 2>/dev/null || true
unset "WPID[run]"
tail -n +2 "$DIR/run.log" | sed "s/^/    ${Y}/; s/\$/${R}/"
grep -h "etcd: deleted db" "$DIR/host-a.log" | sed 's/^/    /'
wait_for 5 sh -c "! '$PKGCTL' fleet --etcd-endpoints '$ETCD' --prefix '$PREFIX' | grep -q ' db '" ||
  die "db is still in the fleet's status: $(fleet)"
echo "  ${D}\$${R} pkgctl fleet --etcd-endpoints $ETCD --prefix $PREFIX"
fleet | sed 's/^/    /'

scene "5. The segment keeps the applied etcd revision (a restart resumes the watch there)"
on host-a dump
