#!/usr/bin/env bash
# The worker SDK as a plugin author gets it: `cmake --install` into a temporary prefix, then,
# against that tree only, build the C example with pkg-config and a C++ consumer with
# find_package(pkgctx), the C example once more by worker-sdk/README.md's commands (prefix
# /opt/pkgctx, rpath), and drive them through the worker_example suite (real processes, a real
# segment, cancellations). Checks that the installed headers are the contract and nothing else,
# that libpkgctx.so.1 exports nothing but versioned pkgctx_* symbols and pulls in neither
# Boost.JSON nor libsystemd, and that find_package refuses another major version. Then installs
# the "core" component and builds and runs a controller that embeds the store (pkgctx::core).
# Env (set by tests/CMakeLists.txt): PKGCTX_BIN build dir, PKGCTX_SRC source dir.
set -euo pipefail
: "${PKGCTX_BIN:?set PKGCTX_BIN to the build directory}" "${PKGCTX_SRC:?set PKGCTX_SRC to the source directory}"

fail() { echo "worker_install: $*" >&2; exit 1; }
tmp=$(mktemp -d)
segment=t-$$-install-controller
trap 'rm -rf "$tmp"' EXIT
export PKGCTX_RUNTIME_DIR=$tmp/run  # the segment's directory (DESIGN §4.1)
mkdir -m 0755 "$PKGCTX_RUNTIME_DIR"
prefix=$tmp/prefix

cmake --install "$PKGCTX_BIN" --prefix "$prefix" --component worker >/dev/null
# The installed headers are the contract: the C API and the header-only C++ layer, nothing of
# the core (layout, segment, view, settings, token, raw mappings).
headers=$(cd "$prefix/include" && find . -type f | sort | tr '\n' ' ')
[ "$headers" = "./pkgctx.h ./pkgctx/error.hpp ./pkgctx/types.hpp ./pkgctx/worker.hpp " ] ||
  fail "the worker component installs other headers than the contract: $headers"

pc=$(find "$prefix" -name pkgctx.pc | head -n1)
[ -n "$pc" ] || fail "pkgctx.pc was not installed"
export PKG_CONFIG_PATH=$(dirname "$pc")
[ "$(pkg-config --modversion pkgctx)" = "$(grep -oP 'project\(pkgctx VERSION \K[0-9.]+' "$PKGCTX_SRC/CMakeLists.txt")" ] ||
  fail "pkg-config version differs from the project's"
libdir=$(cd "$(pkg-config --variable=libdir pkgctx)" && pwd)
[ "${libdir#"$prefix"}" != "$libdir" ] || fail "pkgctx.pc points outside the install prefix: $libdir"

lib=$libdir/libpkgctx.so
[ -L "$lib" ] || fail "$lib (the development symlink) is missing"
# (Outputs are captured first: `cmd | grep -q` would fail under pipefail when grep exits early.)
dynamic=$(readelf -d "$lib")
grep -q 'SONAME.*\[libpkgctx\.so\.1\]' <<<"$dynamic" || fail "SONAME is not libpkgctx.so.1"
if grep NEEDED <<<"$dynamic" | grep -Ei 'boost_json|systemd'; then fail "libpkgctx.so pulls in Boost.JSON or libsystemd"; fi

# Only the C API is exported, every symbol in the PKGCTX_1 version node (nm prints the node
# itself as an absolute symbol).
exported=$(nm -D --defined-only "$lib")
others=$(grep -vE '^[0-9a-f]+ A PKGCTX_1$' <<<"$exported" | grep -vE '^[0-9a-f]+ [TDBRV] pkgctx_[a-z0-9_]+@@PKGCTX_1$' || true)
[ -z "$others" ] || fail "libpkgctx.so exports more than versioned pkgctx_* symbols:
$others"
for sym in pkgctx_attach pkgctx_token pkgctx_token_check pkgctx_watch pkgctx_errname; do
  grep -q " $sym@@PKGCTX_1\$" <<<"$exported" || fail "$sym is not exported"
done

# A sanitizer build's library needs its runtime in the programs that load it.
san=$(sed -n 's/^PKGCTX_SANITIZE:STRING=//p' "$PKGCTX_BIN/CMakeCache.txt")
sanflags=()
[ -n "$san" ] && sanflags=("-fsanitize=$san")

# C: the example plugin, compiled from its source with nothing but pkg-config's flags.
cc -std=c11 -Wall -Wextra -Werror "${sanflags[@]}" "$PKGCTX_SRC/worker-sdk/examples/example_plugin.c" \
  $(pkg-config --cflags --libs pkgctx) -Wl,-rpath,"$libdir" -o "$tmp/example_plugin"
grep -qF "$libdir/libpkgctx.so.1" <<<"$(ldd "$tmp/example_plugin")" || fail "the C example does not load the installed library"

# worker-sdk/README.md's "Use it" commands as written (the prefix a temporary one, plugin.c the
# example): the plugin finds libpkgctx.so.1 in /opt/pkgctx/lib through its rpath alone.
readme=$(awk '/^## Use it/{f=1} f&&/^```sh$/{g=1;next} g&&/^```$/{exit} g' "$PKGCTX_SRC/worker-sdk/README.md")
grep -q -- '--prefix /opt/pkgctx' <<<"$readme" && grep -q -- '-Wl,-rpath,' <<<"$readme" ||
  fail "worker-sdk/README.md's Use it block lost its /opt/pkgctx prefix or its rpath: $readme"
readme=$(sed -e "s|^cmake --install build |cmake --install \"$PKGCTX_BIN\" |" -e "s|/opt/pkgctx|$tmp/opt|g" \
  -e "s|^cc plugin\.c|cc ${sanflags[*]} \"$PKGCTX_SRC/worker-sdk/examples/example_plugin.c\"|" <<<"$readme")
mkdir "$tmp/readme"
(cd "$tmp/readme" && unset PKG_CONFIG_PATH LD_LIBRARY_PATH && eval "$readme") >"$tmp/readme.log" 2>&1 ||
  { cat "$tmp/readme.log"; fail "worker-sdk/README.md's commands failed: $readme"; }
loaded=$(env -u LD_LIBRARY_PATH ldd "$tmp/readme/a.out" | awk '$1 == "libpkgctx.so.1" {print $3}')
[ "$(readlink -f "$loaded")" = "$(readlink -f "$tmp/opt/lib/libpkgctx.so.1")" ] ||
  fail "the README's plugin does not load $tmp/opt/lib/libpkgctx.so.1: $(ldd "$tmp/readme/a.out")"

# C++: a consumer project with find_package(pkgctx).
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$PKGCTX_SRC/worker-sdk/examples/cxx_consumer" -B "$tmp/consumer" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_FLAGS="${sanflags[*]}" >"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "configuring the C++ consumer"; }
cmake --build "$tmp/consumer" >>"$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; fail "building the C++ consumer"; }
grep -qF "$libdir/libpkgctx.so.1" <<<"$(ldd "$tmp/consumer/cxx_consumer")" || fail "the C++ consumer does not load the installed library"

# Another major version is refused (a shared-memory ABI is not "any newer").
if cmake -S "$PKGCTX_SRC/worker-sdk/examples/cxx_consumer" -B "$tmp/consumer-v1" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DPKGCTX_WANT_VERSION=1.0 >"$tmp/v1.log" 2>&1; then
  fail "find_package(pkgctx 1.0) accepted version 0.x"
fi
grep -q "considered but not accepted" "$tmp/v1.log" || { cat "$tmp/v1.log"; fail "find_package(pkgctx 1.0) failed for another reason"; }

# Both programs, end to end.
for bin in "$tmp/example_plugin" "$tmp/consumer/cxx_consumer" "$tmp/readme/a.out"; do
  PKGCTX_EXAMPLE_BIN=$bin "$PKGCTX_BIN/tests/worker_example_test" --report_level=short ||
    fail "worker_example_test failed against $bin"
done
# A controller embedding the store: the "core" component, find_package(pkgctx COMPONENTS core).
cmake --install "$PKGCTX_BIN" --prefix "$prefix" --component core >/dev/null
[ -f "$prefix/include/pkgctx/store.hpp" ] || fail "the core component did not install store.hpp"
cmake -S "$PKGCTX_SRC/lib/examples/controller" -B "$tmp/controller" "${generator[@]}" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_FLAGS="${sanflags[*]}" >"$tmp/controller.log" 2>&1 || { cat "$tmp/controller.log"; fail "configuring the controller"; }
cmake --build "$tmp/controller" >>"$tmp/controller.log" 2>&1 || { cat "$tmp/controller.log"; fail "building the controller"; }
out=$("$tmp/controller/controller" "$segment") || fail "the controller failed: $out"
grep -q '^controller: ok$' <<<"$out" || fail "the controller did not finish: $out"
echo "worker_install: ok"
