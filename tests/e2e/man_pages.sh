#!/usr/bin/env bash
# The man pages built from docs/man/*.scd: each renders without warnings, pkgctl(1) has a section
# for every subcommand `pkgctl --help` lists, pkgctxd(8) every option of `pkgctxd --help`, and
# pkgctx.h(3) every function pkgctx.h declares. Env: PKGCTX_BIN, PKGCTX_SRC.
set -euo pipefail
man_dir=${PKGCTX_BIN:?}/docs/man
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v scdoc >/dev/null || { echo "SKIPPED: scdoc is not installed (./build.sh deps installs it)"; exit 77; }
command -v man >/dev/null || { echo "SKIPPED: man is not installed"; exit 77; }

render() {  # render PAGE: the page as text; fails on a roff warning
  local err
  err=$(mktemp)
  MANWIDTH=200 man --warnings -l "$man_dir/$1" 2>"$err" | col -b
  [ ! -s "$err" ] || fail "$1 renders with warnings: $(cat "$err")"
  rm -f "$err"
}
for page in pkgctxd.8 pkgctl.1 pkgctx.h.3; do
  [ -s "$man_dir/$page" ] || fail "$page was not built"
  render "$page" >/dev/null
done

pkgctl=$(render pkgctl.1)
commands=$("$PKGCTX_BIN/tools/pkgctl" --help | sed -n '/^Subcommands:/,/^$/p' | awk 'NR > 1 && /^  [a-z]/ {print $1}')
[ -n "$commands" ] || fail "no subcommands in pkgctl --help"
for c in $commands; do
  grep -Eq "^   $c( |$)" <<<"$pkgctl" || fail "pkgctl(1) has no section for \"$c\""
done

# Every option a subcommand's --help lists is named somewhere in pkgctl(1); watch's (issue 16) in
# watch's own section.
for c in $commands; do
  for o in $("$PKGCTX_BIN/tools/pkgctl" "$c" --help | grep -oE -- '--[a-z][a-z-]+' | sort -u); do
    grep -q -- "$o" <<<"$pkgctl" || fail "pkgctl(1) does not describe $c $o"
  done
done
watch_section=$(awk '/^   [a-z]/ {on = ($1 == "watch")} on' <<<"$pkgctl")
for o in $("$PKGCTX_BIN/tools/pkgctl" watch --help | grep -oE -- '--[a-z][a-z-]+' | grep -vx -- --help | sort -u); do
  grep -q -- "$o" <<<"$watch_section" || fail "pkgctl(1)'s watch section does not describe $o"
done

pkgctxd=$(render pkgctxd.8)
for o in $("$PKGCTX_BIN/daemon/pkgctxd" --help | grep -oE -- '--[a-z-]+' | sort -u); do
  grep -q -- "$o" <<<"$pkgctxd" || fail "pkgctxd(8) does not describe $o"
done

api=$(render pkgctx.h.3)
for f in $(grep -oE '\bpkgctx_[a-z0-9_]+\(' "$PKGCTX_SRC/worker-sdk/include/pkgctx.h" | tr -d '(' | sort -u); do
  grep -q "$f(" <<<"$api" || fail "pkgctx.h(3) does not describe $f()"
done
echo "ok: man pages"
