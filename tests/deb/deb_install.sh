#!/usr/bin/env bash
# The Debian packages as a user gets them: `./build.sh deb` (dpkg-buildpackage on debian/),
# lintian, `apt-get install ./*.deb` on this machine, then from the installed files only: their
# contents (dpkg -L), the maintainer scripts' pkgctx user and runtime directory, the unit
# (systemd-analyze verify, man:pkgctxd(8) included), /usr/sbin/pkgctxd started by hand (systemd
# is not PID 1 here), /usr/bin/pkgctl against it, a C plugin and a C++ plugin built with
# `pkg-config --cflags --libs pkgctx` and a C++ one with find_package(pkgctx), each cancelled
# while it waits, and `import pkgctx` from /usr/bin/python3. Finally purges the packages and
# checks that nothing is left; a trap purges them on any failure too and puts back what the
# maintainer scripts changed outside the packages (the pkgctx user and group, /run/pkgctx's
# owner), so a machine that runs the suite is left as it was.
#
# Needs root (dpkg) and a machine where the packages are not installed already (it would purge
# them); skips (77) otherwise. Env: PKGCTX_BIN (build dir: the .debs go to $PKGCTX_BIN-deb),
# PKGCTX_SRC (source dir), JOBS.
set -euo pipefail
: "${PKGCTX_BIN:?}" "${PKGCTX_SRC:?}"
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIPPED: $*"; exit 77; }
PACKAGES=(pkgctxd libpkgctx1 libpkgctx-dev python3-pkgctx)
ALL_PACKAGES=("${PACKAGES[@]}" pkgctxd-dbgsym libpkgctx1-dbgsym)

[ "$(id -u)" -eq 0 ] || skip "installing packages needs root"
command -v dh >/dev/null && command -v dpkg-buildpackage >/dev/null ||
  skip "debhelper or dpkg-dev is not installed (./build.sh deps installs them)"
installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }
for p in "${ALL_PACKAGES[@]}"; do
  installed "$p" && skip "$p is installed on this machine; this test would purge it"
done

work=$(mktemp -d)
chmod 0755 "$work"
out=$PKGCTX_BIN-deb  # where ./build.sh deb puts them for BUILD_DIR=$PKGCTX_BIN (build → build-deb)
segment=deb-$$
socket=$work/pkgctxd.sock
export PKGCTX_RUNTIME_DIR=$work/run
mkdir -m 0755 "$PKGCTX_RUNTIME_DIR"
# What the maintainer scripts may change outside the packages' files, to put back.
had_user=$(getent passwd pkgctx >/dev/null && echo yes || echo no)
had_group=$(getent group pkgctx >/dev/null && echo yes || echo no)
run_state=$(stat -c '%u:%g %a' /run/pkgctx 2>/dev/null || echo absent)
daemon=
in_out() { local f=("$out"/$1); [ -e "${f[0]}" ] && echo "${f[0]}"; }  # in_out GLOB: the file in $out

purge() {
  local present=()
  for p in "${ALL_PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^[a-z][^n]' && present+=("$p")
  done
  [ ${#present[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 "${present[@]}" >"$work/purge.log" 2>&1
}
cleanup() {
  local rc=$?
  [ -z "$daemon" ] || { kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null || true; }
  purge || { cat "$work/purge.log" >&2; rc=1; }
  [ "$had_user" = yes ] || ! getent passwd pkgctx >/dev/null || userdel pkgctx
  [ "$had_group" = yes ] || ! getent group pkgctx >/dev/null || groupdel pkgctx
  if [ "$run_state" = absent ]; then
    rmdir /run/pkgctx 2>/dev/null || true
  elif [ -d /run/pkgctx ]; then
    chown "${run_state% *}" /run/pkgctx && chmod "${run_state#* }" /run/pkgctx
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# --- build and install: README.md's "Install from packages" commands, as written -----------------
block=$(awk '/^## Install from packages/{f=1} f&&/^```sh$/{g=1;next} g&&/^```$/{exit} g' "$PKGCTX_SRC/README.md")
grep -q '^\./build\.sh deb' <<<"$block" && grep -q '^dpkg -i build-deb/\*\.deb' <<<"$block" ||
  fail "README.md's \"Install from packages\" block is not ./build.sh deb + dpkg -i: $block"
# In the source tree, with this build directory: ./build.sh deb writes $BUILD_DIR-deb.
script=$(sed -e "s|build-deb|$out|g" <<<"$block")
start=$SECONDS
(set -e; cd "$PKGCTX_SRC"; export BUILD_DIR=$PKGCTX_BIN; eval "$script") >"$work/readme.out" 2>&1 || { cat "$work/readme.out" >&2; fail "README.md's commands: $script"; }
echo "ok: README.md's ./build.sh deb and dpkg -i in $((SECONDS - start)) s"
version=$(grep -oP 'project\(pkgctx VERSION \K[0-9.]+' "$PKGCTX_SRC/CMakeLists.txt")
for p in "${PACKAGES[@]}"; do
  deb=$(in_out "${p}_*.deb")
  [ -n "$deb" ] || fail "no $p package in $out: $(ls "$out")"
  [ "$(dpkg-deb -f "$deb" Version)" = "$version" ] ||
    fail "$p is version $(dpkg-deb -f "$deb" Version), the project $version (debian/changelog)"
  installed "$p" || fail "$p is not installed"
done

# Lintian, when installed: errors fail the test; warnings are printed.
if command -v lintian >/dev/null; then
  changes=$(in_out 'pkgctx_*.changes')
  lintian --fail-on error "$changes" >"$work/lintian.log" 2>&1 ||
    { cat "$work/lintian.log" >&2; fail "lintian reports errors"; }
  echo "ok: lintian (errors none; other tags: $(grep -c '^[WIP]:' "$work/lintian.log" || true))"
  sed -n 's/^\([EW]: .*\)/  \1/p' "$work/lintian.log"
else
  echo "note: lintian is not installed: not run"
fi

files() { dpkg -L "$1" | while read -r f; do [ -d "$f" ] || echo "$f"; done | grep -v '^/usr/share/doc/' | sort; }
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=/usr/lib/$multiarch
expect() {  # expect PACKAGE FILE… : exactly these files (besides /usr/share/doc)
  local p=$1 got want
  shift
  got=$(files "$p")
  want=$(printf '%s\n' "$@" | sort)
  [ "$got" = "$want" ] || fail "$p ships
$got
instead of
$want"
}
sover=$(readlink "$libdir/libpkgctx.so.1") || fail "$libdir/libpkgctx.so.1 is not a symlink"
expect pkgctxd /usr/sbin/pkgctxd /usr/bin/pkgctl /lib/systemd/system/pkgctxd.service \
  /usr/lib/sysusers.d/pkgctx.conf /usr/lib/tmpfiles.d/pkgctx.conf \
  /usr/share/bash-completion/completions/pkgctl /usr/share/zsh/vendor-completions/_pkgctl \
  /usr/share/man/man8/pkgctxd.8.gz /usr/share/man/man1/pkgctl.1.gz
expect libpkgctx1 "$libdir/libpkgctx.so.1" "$libdir/$sover"
expect libpkgctx-dev /usr/include/pkgctx.h /usr/include/pkgctx/worker.hpp /usr/include/pkgctx/error.hpp \
  /usr/include/pkgctx/types.hpp "$libdir/libpkgctx.so" "$libdir/pkgconfig/pkgctx.pc" \
  "$libdir/cmake/pkgctx/pkgctxConfig.cmake" "$libdir/cmake/pkgctx/pkgctxConfigVersion.cmake" \
  "$libdir/cmake/pkgctx/pkgctxTargets.cmake" "$libdir/cmake/pkgctx/pkgctxTargets-none.cmake" \
  /usr/share/man/man3/pkgctx.h.3.gz
expect python3-pkgctx /usr/lib/python3/dist-packages/pkgctx/__init__.py \
  /usr/lib/python3/dist-packages/pkgctx/_capi.py /usr/lib/python3/dist-packages/pkgctx/py.typed
for f in pkgctxd.conf.example pkgctxd.md copyright; do  # dh_compress gzips the larger ones
  [ -s "/usr/share/doc/pkgctxd/$f" ] || [ -s "/usr/share/doc/pkgctxd/$f.gz" ] || fail "pkgctxd lacks /usr/share/doc/pkgctxd/$f"
done
[ "$(readlink -f "$libdir/libpkgctx.so")" = "$libdir/$sover" ] || fail "libpkgctx.so does not lead to $sover"
[ -d /etc/pkgctx ] || fail "pkgctxd did not make /etc/pkgctx"
grep -q "libpkgctx1 (>= $version)" <(dpkg-deb -f "$(in_out 'python3-pkgctx_*.deb')" Depends) ||
  fail "python3-pkgctx does not depend on libpkgctx1 (>= $version)"
echo "ok: package contents"

# The maintainer scripts applied sysusers.d and tmpfiles.d: user and group pkgctx own /run/pkgctx.
getent passwd pkgctx >/dev/null || fail "installing pkgctxd made no pkgctx user"
[ "$(stat -c '%U:%G %a' /run/pkgctx)" = "pkgctx:pkgctx 755" ] ||
  fail "/run/pkgctx is $(stat -c '%U:%G %a' /run/pkgctx), not pkgctx:pkgctx 755"
# Enabled (deb-systemd-helper; started only when systemd runs).
wants=/etc/systemd/system/multi-user.target.wants/pkgctxd.service
[ "$(readlink "$wants")" = /lib/systemd/system/pkgctxd.service ] || fail "pkgctxd.service is not enabled ($wants)"
echo "ok: sysusers.d and tmpfiles.d applied, unit enabled"

# The installed unit names the installed daemon and its man page (verify runs man(1)).
unit=/lib/systemd/system/pkgctxd.service
grep -qx 'ExecStart=/usr/sbin/pkgctxd --foreground' "$unit" || fail "the unit's ExecStart: $(grep ExecStart= "$unit")"
grep -qx 'Documentation=man:pkgctxd(8)' "$unit" || fail "the unit's Documentation=: $(grep Documentation= "$unit")"
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify "$unit" >"$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; fail "systemd-analyze verify $unit"; }
  [ ! -s "$work/verify.log" ] || { cat "$work/verify.log" >&2; fail "systemd-analyze verify printed warnings"; }
  echo "ok: systemd-analyze verify $unit"
fi
man -w pkgctl >/dev/null && man -w 3 pkgctx.h >/dev/null || fail "man cannot find pkgctl(1) or pkgctx.h(3)"

# --- run the installed programs -----------------------------------------------------------------
/usr/sbin/pkgctxd --version | grep -qF "$version" || fail "/usr/sbin/pkgctxd --version: $(/usr/sbin/pkgctxd --version)"
/usr/bin/pkgctl --version | grep -qF "$version" || fail "/usr/bin/pkgctl --version: $(/usr/bin/pkgctl --version)"
/usr/sbin/pkgctxd --segment "$segment" --socket "$socket" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 1000); do
  [ -S "$socket" ] && break
  kill -0 "$daemon" 2>/dev/null || fail "/usr/sbin/pkgctxd exited: $(cat "$work/daemon.log")"
  sleep 0.01
done
[ -S "$socket" ] || fail "/usr/sbin/pkgctxd did not open $socket: $(cat "$work/daemon.log")"
export PKGCTX_SEGMENT=$segment PKGCTX_SOCKET=$socket
/usr/bin/pkgctl update web 1.0 --settings '{"replicas":2}' >"$work/update.json" || fail "pkgctl update"
grep -q '"change":"created"' "$work/update.json" || fail "pkgctl update: $(cat "$work/update.json")"
echo "ok: /usr/sbin/pkgctxd serves /usr/bin/pkgctl"

# Plugins built against the installed development package only (no PKG_CONFIG_PATH, no prefix).
unset PKG_CONFIG_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH
[ "$(pkg-config --variable=libdir pkgctx)" = "$libdir" ] || fail "pkg-config finds pkgctx at $(pkg-config --variable=libdir pkgctx)"
cc -std=c11 -Wall -Wextra -Werror "$PKGCTX_SRC/worker-sdk/examples/example_plugin.c" \
  $(pkg-config --cflags --libs pkgctx) -o "$work/c_plugin" || fail "building the C plugin with pkg-config"
c++ -std=c++20 -Wall -Wextra -Werror "$PKGCTX_SRC/worker-sdk/examples/cxx_consumer/main.cpp" \
  $(pkg-config --cflags --libs pkgctx) -o "$work/cxx_plugin" || fail "building the C++ plugin with pkg-config"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$PKGCTX_SRC/worker-sdk/examples/cxx_consumer" -B "$work/consumer" "${generator[@]}" >"$work/consumer.log" 2>&1 &&
  cmake --build "$work/consumer" >>"$work/consumer.log" 2>&1 || { cat "$work/consumer.log" >&2; fail "building the C++ plugin with find_package(pkgctx)"; }
grep -qx "pkgctx_DIR:PATH=$libdir/cmake/pkgctx" "$work/consumer/CMakeCache.txt" ||
  fail "find_package(pkgctx) found $(grep '^pkgctx_DIR' "$work/consumer/CMakeCache.txt")"

# Each plugin waits on web's context; the next version cancels it while it waits.
v=1
for plugin in "$work/c_plugin" "$work/cxx_plugin" "$work/consumer/cxx_consumer"; do
  loaded=$(ldd "$plugin" | awk '$1 == "libpkgctx.so.1" {print $3}')
  [ -n "$loaded" ] && [ "$(readlink -f "$loaded")" = "$libdir/$sover" ] ||
    fail "$plugin does not load the installed libpkgctx.so.1: $(ldd "$plugin")"
  v=$((v + 1))
  log=$work/plugin-$v.out  # one per plugin: the shell truncates a reused file only once the child runs
  "$plugin" "$segment" web 0 20000 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 2000); do
    grep -qx waiting "$log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  grep -qx waiting "$log" || fail "$plugin does not wait: $(cat "$log")"
  /usr/bin/pkgctl update web "$v.0" >/dev/null || fail "pkgctl update web $v.0"
  wait "$pid" || fail "$plugin exited $?: $(cat "$log")"
  grep -qx 'cancelled while waiting: cause=version_changed' "$log" || fail "$plugin: $(cat "$log")"
done
echo "ok: C and C++ plugins (pkg-config, find_package) built against libpkgctx-dev, cancelled by /usr/bin/pkgctl"

# The Python module as Debian's python3 sees it: no PYTHONPATH, no PKGCTX_LIBRARY.
env -u PYTHONPATH -u PKGCTX_LIBRARY -u PYTHONHOME PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 - "$segment" "$v.0" <<'PY' || fail "python3-pkgctx"
import subprocess, sys
import pkgctx

assert pkgctx.__file__.startswith("/usr/lib/python3/dist-packages/pkgctx/"), pkgctx.__file__
with pkgctx.attach(sys.argv[1]) as worker:
    token = worker.token("web")
    pkg = worker.read("web")
    assert pkg.version == sys.argv[2], (pkg.version, sys.argv[2])
    assert not token.cancelled
    subprocess.run(["/usr/bin/pkgctl", "update", "web", "py.1"], check=True, stdout=subprocess.DEVNULL)
    assert token.wait(20), "not cancelled"
    assert str(token.cause) == "version_changed", token.cause
    print("python3-pkgctx: cancelled,", token.cause, "from", pkgctx.__file__)
PY
echo "ok: python3-pkgctx"

kill "$daemon"
wait "$daemon" || fail "pkgctxd exited $? on SIGTERM: $(cat "$work/daemon.log")"
daemon=

# --- purge: nothing of the packages is left -----------------------------------------------------
purge || { cat "$work/purge.log" >&2; fail "apt-get purge"; }
for p in "${ALL_PACKAGES[@]}"; do
  installed "$p" && fail "$p is still installed after the purge"
done
for f in /usr/sbin/pkgctxd /usr/bin/pkgctl "$unit" "$wants" /usr/include/pkgctx.h /usr/include/pkgctx "$libdir/libpkgctx.so.1" \
         "$libdir/cmake/pkgctx" /usr/lib/python3/dist-packages/pkgctx /etc/pkgctx /usr/share/doc/pkgctxd; do
  [ ! -e "$f" ] || fail "$f is left after the purge"
done
echo "ok: purged, nothing left"
echo PASS
