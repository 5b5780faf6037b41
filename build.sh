#!/usr/bin/env bash
# pkgctx build driver. Usage: ./build.sh [build|test|demo [fleet]|bench|fuzz [SECONDS]|sanitize|install [PREFIX]|deb [DIR]|deps|clean]
#
#   build     configure and compile (default)
#   test      build, then run every test suite (ctest)
#   demo      build, then run the end-to-end demo (daemon, workers, pkgctl)
#   demo fleet  … the second demo: two daemons following a real etcd (tools/demo_fleet.sh)
#   bench     build optimised, run the benchmarks, write build/bench/report.json
#   fuzz      build the libFuzzer targets with clang and run each for SECONDS (default 60)
#   sanitize  the whole suite under ASan+UBSan, the concurrency suites under TSan
#   install   cmake --install into PREFIX (default /usr/local)
#   deb       build the Debian packages (debian/, dpkg-buildpackage) into DIR (default build-deb)
#   deps      install the Debian packages this needs (done automatically by the others)
#
# Environment: BUILD_DIR (default build), JOBS (default nproc), CI=true adds -Werror.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

log() { printf '==> %s\n' "$*" >&2; }

BASE_PACKAGES=(cmake ninja-build g++ pkg-config libboost1.81-dev libboost-test1.81-dev libboost-json1.81-dev
  libxxhash-dev libbenchmark-dev libsystemd-dev libcli11-dev systemd python3 python3-pytest python3-jsonschema python3-prometheus-client scdoc)
CLANG_PACKAGES=(clang-14 libclang-rt-14-dev)
# The etcd follower's tests and bench start real etcd processes (tests/etcd, bench/etcd_bench).
ETCD_PACKAGES=(etcd-server etcd-client)
DEB_PACKAGES=(debhelper dh-python dpkg-dev)
# The .deb install test (tests/deb) also runs lintian on them.
TEST_PACKAGES=("${DEB_PACKAGES[@]}" lintian)

# Installs whichever of the named Debian packages are missing (apt-get update once).
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  if [ -z "${PKGCTX_APT_UPDATED:-}" ]; then
    "${sudo[@]}" apt-get update -q
    export PKGCTX_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Node.js and the npm modules of the JavaScript checksum interop test (tests/interop/node).
ensure_node_modules() {
  command -v npm >/dev/null || ensure_packages nodejs npm
  [ -d "$ROOT/tests/interop/node/node_modules/canonicalize" ] ||
    npm ci --prefix "$ROOT/tests/interop/node" --no-audit --no-fund --loglevel=error
}

configure() {  # configure DIR [extra cmake args…]
  local dir=$1; shift
  local werror=OFF
  [ "${CI:-}" = true ] && werror=ON
  cmake -S "$ROOT" -B "$dir" -G Ninja -DPKGCTX_WERROR=$werror "$@" >/dev/null
}

build() {  # build DIR [targets…]
  local dir=$1; shift
  cmake --build "$dir" -j "$JOBS" ${1:+--target "$@"}
}

# Builds the Debian packages into DIR: dpkg-buildpackage writes them beside the source tree, so it
# runs on a copy in DIR/src (without build trees, .git or node_modules); the .debs land in DIR.
build_debs() {  # build_debs DIR
  local out version werror=OFF
  mkdir -p "$1"
  out=$(cd "$1" && pwd)
  version=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
  [ "${CI:-}" = true ] && werror=ON
  rm -rf "$out/src" "$out"/pkgctxd_* "$out"/libpkgctx* "$out"/python3-pkgctx_* "$out"/pkgctx_*
  mkdir "$out/src"
  tar -C "$ROOT" --exclude-vcs --exclude=./build --exclude='./build-*' --exclude=./out \
      --exclude='./cmake-build*' --exclude=node_modules --exclude=./debian/.debhelper -cf - . | tar -C "$out/src" -xf -
  log "dpkg-buildpackage pkgctx $version → $out"
  (cd "$out/src" && PKGCTX_DEB_CMAKE_ARGS="-DPKGCTX_WERROR=$werror" DEB_BUILD_OPTIONS="parallel=$JOBS ${DEB_BUILD_OPTIONS:-}" \
     dpkg-buildpackage -b -uc -us >"$out/build.log" 2>&1) || { tail -n 60 "$out/build.log" >&2; log "dpkg-buildpackage failed: $out/build.log"; return 1; }
  ls "$out"/*.deb
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
  deps)
    ensure_packages "${BASE_PACKAGES[@]}" "${ETCD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    ensure_node_modules ;;
  build)
    ensure_packages "${BASE_PACKAGES[@]}"
    configure "$BUILD_DIR" -DPKGCTX_FAULT_INJECTION=OFF
    build "$BUILD_DIR" ;;
  test)
    ensure_packages "${BASE_PACKAGES[@]}" "${ETCD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    ensure_node_modules
    configure "$BUILD_DIR" -DPKGCTX_FAULT_INJECTION=ON
    build "$BUILD_DIR"
    log "running the test suites"
    ctest --test-dir "$BUILD_DIR" -j "$JOBS" --output-on-failure "$@" ;;
  demo)
    # `demo fleet`: the second scene, two hosts following a real etcd (tools/demo_fleet.sh).
    case "${1:-}" in
      "") ensure_packages "${BASE_PACKAGES[@]}" ;;
      fleet) ensure_packages "${BASE_PACKAGES[@]}" "${ETCD_PACKAGES[@]}" ;;
      *) log "unknown demo '$1' (demo, or demo fleet)"; exit 2 ;;
    esac
    configure "$BUILD_DIR" -DPKGCTX_FAULT_INJECTION=OFF
    build "$BUILD_DIR"
    if [ "${1:-}" = fleet ]; then exec bash "$ROOT/tools/demo_fleet.sh" "$BUILD_DIR"; fi
    exec bash "$ROOT/tools/demo.sh" "$BUILD_DIR" ;;
  bench)
    ensure_packages "${BASE_PACKAGES[@]}" "${ETCD_PACKAGES[@]}" dbus  # dbus-daemon: the D-Bus row of the comparison
    configure "$BUILD_DIR-bench" -DCMAKE_BUILD_TYPE=Release -DPKGCTX_BUILD_TESTS=OFF -DPKGCTX_FAULT_INJECTION=OFF
    build "$BUILD_DIR-bench"
    exec bash "$ROOT/bench/run.sh" "$BUILD_DIR-bench" "$BUILD_DIR/bench" ;;
  fuzz)
    ensure_packages "${BASE_PACKAGES[@]}" "${CLANG_PACKAGES[@]}"
    CC=clang-14 CXX=clang++-14 configure "$BUILD_DIR-fuzz" -DPKGCTX_FUZZ=ON -DPKGCTX_FAULT_INJECTION=ON -DPKGCTX_BUILD_BENCH=OFF -DPKGCTX_BUILD_TESTS=OFF
    build "$BUILD_DIR-fuzz" pkgctx_fuzz_all
    exec bash "$ROOT/tests/fuzz/run.sh" "$BUILD_DIR-fuzz" "${1:-60}" ;;
  sanitize)
    ensure_packages "${BASE_PACKAGES[@]}" "${ETCD_PACKAGES[@]}"
    ensure_node_modules
    # -O1 -g1 and assertions on: a third of the -O2 -g compile time under the sanitizers, still
    # fast enough to run, with file:line in every report.
    san_flags=(-DPKGCTX_BUILD_BENCH=OFF -DPKGCTX_FAULT_INJECTION=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1")
    failed=()
    log "ASan+UBSan: the whole suite"
    configure "$BUILD_DIR-asan" -DPKGCTX_SANITIZE=address,undefined "${san_flags[@]}"
    build "$BUILD_DIR-asan"
    ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}" UBSAN_OPTIONS="print_stacktrace=1 ${UBSAN_OPTIONS:-}" \
      ctest --test-dir "$BUILD_DIR-asan" -j "$JOBS" --output-on-failure || failed+=("ASan+UBSan")
    log "TSan: the concurrency suites"
    configure "$BUILD_DIR-tsan" -DPKGCTX_SANITIZE=thread "${san_flags[@]}"
    build "$BUILD_DIR-tsan"  # everything: the suites also run the daemon and the example programs
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
      ctest --test-dir "$BUILD_DIR-tsan" -j "$JOBS" --output-on-failure -L concurrency || failed+=("TSan")
    if [ ${#failed[@]} -gt 0 ]; then
      log "sanitizer suites failed: ${failed[*]}"
      exit 1
    fi ;;
  install)
    ensure_packages "${BASE_PACKAGES[@]}"
    configure "$BUILD_DIR" -DPKGCTX_FAULT_INJECTION=OFF  # release binaries carry no crash points
    build "$BUILD_DIR"
    cmake --install "$BUILD_DIR" --prefix "${1:-/usr/local}" ;;
  deb)
    ensure_packages "${BASE_PACKAGES[@]}" "${DEB_PACKAGES[@]}"
    build_debs "${1:-$BUILD_DIR-deb}" ;;
  clean)
    rm -rf "$BUILD_DIR" "$BUILD_DIR"-* ;;
  *)
    sed -n '2,15p' "$0" >&2
    exit 2 ;;
esac
