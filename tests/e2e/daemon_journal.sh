#!/usr/bin/env bash
# pkgctxd under the journal: structured fields over journald's native protocol, the stderr
# fallback when journald does not take a line, plain stderr without a journal socket.
# This machine may have no journald (no systemd as PID 1), so a private mount namespace gets a
# scratch /run/systemd where tests/support/journal_check.py binds the journal's socket itself.
# Needs root (the mount namespace, and a client that drops to nobody): skipped (77, reported by
# ctest) otherwise; as root, a namespace that cannot be made fails the test.
# Env: PKGCTX_BIN (build dir), PKGCTX_SRC (source dir).
set -euo pipefail
BIN=${PKGCTX_BIN:?}
SRC=${PKGCTX_SRC:?}
fail() { echo "FAIL: $*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # a client running as nobody reaches the daemon's socket below it

if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: needs root (a private mount namespace, a client running as nobody)"
  exit 77
fi
ns=(unshare --mount --propagation private)
"${ns[@]}" true || fail "cannot make a private mount namespace (${ns[*]})"

# In the namespace only: a tmpfs over /run/systemd (or /run, when there is none) hides any real
# journald and holds the stand-in's socket.
"${ns[@]}" bash -euc '
  if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi
  mkdir -p /run/systemd/journal
  exec python3 "$1/tests/support/journal_check.py" "$2" "$3"
' _ "$SRC" "$BIN" "$work"
