#!/usr/bin/env bash
# The systemd integration files: the unit verifies, its runtime directory (the segment's home)
# survives restarts, sysusers.d and tmpfiles.d entries apply to a scratch root.
# Env: PKGCTX_BIN (build dir), PKGCTX_SRC (source dir).
set -euo pipefail
SRC=${PKGCTX_SRC:?}
BIN=${PKGCTX_BIN:?}
UNIT=$SRC/systemd/pkgctxd.service
fail() { echo "FAIL: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze is not installed (apt-get install systemd)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# systemd-analyze verify needs ExecStart= to exist: the build tree's copy of the unit names the
# built binary.
cp "$BIN/daemon/pkgctxd.service" "$work/pkgctxd.service"
grep -q "^ExecStart=$BIN/daemon/pkgctxd --foreground" "$work/pkgctxd.service" || fail "build copy of the unit: wrong ExecStart"
# Documentation=man:pkgctxd(8) must resolve: verify runs man(1), here on the built page (the
# installed one: tests/deb/deb_install.sh).
man_check=()
if [ -s "$BIN/docs/man/pkgctxd.8" ]; then
  mkdir -p "$work/man/man8"
  cp "$BIN/docs/man/pkgctxd.8" "$work/man/man8/"
  export MANPATH=$work/man
else
  echo "note: pkgctxd.8 was not built (scdoc missing): Documentation= not checked"
  man_check=(--man=no)
fi
systemd-analyze verify "${man_check[@]}" "$work/pkgctxd.service" 2>"$work/verify.log" || {
  cat "$work/verify.log" >&2
  fail "systemd-analyze verify"
}
if [ -s "$work/verify.log" ]; then
  cat "$work/verify.log" >&2
  fail "systemd-analyze verify printed warnings"
fi
echo "ok: systemd-analyze verify"

# The settings the contract relies on.
for want in Type=notify User=pkgctx Group=pkgctx RuntimeDirectory=pkgctx RuntimeDirectoryMode=0755 \
            RuntimeDirectoryPreserve=yes NoNewPrivileges=yes ProtectSystem=strict \
            ProtectHome=yes PrivateTmp=yes WatchdogSec= ExecReload= RemoveIPC=no; do
  grep -q "^$want" "$UNIT" || fail "unit lacks $want"
done
# Nothing that would hide the runtime directory from workers or delete the segment on stop.
for bad in DynamicUser=yes PrivateIPC=yes RemoveIPC=yes 'TemporaryFileSystem=/run' 'InaccessiblePaths=.*/run'; do
  if grep -Eq "^$bad" "$UNIT"; then fail "unit sets $bad"; fi
done
echo "ok: hardening keeps the runtime directory shared and preserved"

# Exposure score (lower is better; 10 = no hardening).
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
  systemd-analyze security --offline=yes --threshold=20 "$work/pkgctxd.service" >"$work/security.log" 2>&1 || {
    cat "$work/security.log" >&2
    fail "systemd-analyze security: exposure above 2.0"
  }
  grep -o 'Overall exposure level.*' "$work/security.log" || true
fi

# Install rules: binary (sbin), unit (naming the installed binary), sysusers.d, tmpfiles.d,
# example; pkgctl and its completions are component "pkgctl".
inst=$work/inst
cmake --install "$BIN" --prefix "$inst" --component pkgctxd >/dev/null || fail "cmake --install --component pkgctxd"
cmake --install "$BIN" --prefix "$inst" --component pkgctl >/dev/null || fail "cmake --install --component pkgctl"
for f in sbin/pkgctxd bin/pkgctl share/bash-completion/completions/pkgctl share/zsh/vendor-completions/_pkgctl lib/systemd/system/pkgctxd.service lib/sysusers.d/pkgctx.conf lib/tmpfiles.d/pkgctx.conf \
         share/doc/pkgctx/pkgctxd.conf.example; do
  [ -e "$inst/$f" ] || fail "not installed: $f"
done
grep -q "^ExecStart=$inst/sbin/pkgctxd --foreground" "$inst/lib/systemd/system/pkgctxd.service" || fail "installed unit: wrong ExecStart"
# Documentation= names the man page, valid wherever the unit was installed from.
grep -qx 'Documentation=man:pkgctxd(8)' "$inst/lib/systemd/system/pkgctxd.service" || fail "installed unit: Documentation= is not man:pkgctxd(8)"
echo "ok: install rules"

# sysusers.d and tmpfiles.d entries applied to a scratch root.
if command -v systemd-sysusers >/dev/null && command -v systemd-tmpfiles >/dev/null; then
  root=$work/root
  mkdir -p "$root/etc"
  : >"$root/etc/passwd"
  : >"$root/etc/group"
  systemd-sysusers --root="$root" "$SRC/systemd/pkgctx.sysusers" >/dev/null 2>&1 || fail "systemd-sysusers"
  grep -q '^pkgctx:x:[0-9]*:[0-9]*:' "$root/etc/passwd" || fail "sysusers created no pkgctx user"
  grep -q '^pkgctx:x:' "$root/etc/group" || fail "sysusers created no pkgctx group"
  systemd-tmpfiles --root="$root" --create "$SRC/systemd/pkgctx.tmpfiles" || fail "systemd-tmpfiles"
  uid=$(awk -F: '$1=="pkgctx"{print $3}' "$root/etc/passwd")
  [ "$(stat -c '%u %a' "$root/run/pkgctx")" = "$uid 755" ] || fail "tmpfiles: /run/pkgctx has $(stat -c '%u %a' "$root/run/pkgctx")"
  echo "ok: sysusers.d and tmpfiles.d"
fi
echo "PASS"
