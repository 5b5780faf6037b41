#!/usr/bin/env bash
# `pkgctl completion bash` sourced into bash: completes subcommands (every one `pkgctl --help`
# lists), a subcommand's options, skipping a global option's value. `completion zsh` is checked
# with `zsh -n` when zsh is installed. Env: PKGCTX_BIN.
set -euo pipefail
C=${PKGCTX_BIN:?}/tools/pkgctl
fail() { echo "FAIL: $*" >&2; exit 1; }

script=$("$C" completion bash)
# shellcheck disable=SC1090
source <(printf '%s\n' "$script")
complete -p pkgctl | grep -q -- '-F _pkgctl' || fail "no completion registered for pkgctl"

# Prints the completions of the command line "$@" (the last word is the one being completed).
complete_line() {
  COMP_WORDS=(pkgctl "$@")
  COMP_CWORD=$#
  COMPREPLY=()
  _pkgctl
  printf '%s\n' "${COMPREPLY[@]}"
}

[ "$(complete_line up | sort | tr '\n' ' ')" = "update update-settings " ] || fail "up: $(complete_line up)"
[ "$(complete_line dump --j)" = "--json" ] || fail "dump --j: $(complete_line dump --j)"
[ "$(complete_line --segment dump dump --j)" = "--json" ] || fail "--segment's value taken for the command"
watch=$(complete_line watch --)
for o in --interval --count --json --sort --filter; do
  grep -qx -- "$o" <<<"$watch" || fail "watch -- lacks $o: $watch"
done
[ -z "$(complete_line dump --interv)" ] || fail "dump offers watch's options"

# Every subcommand of --help is completed at the top level.
listed=$("$C" --help | sed -n '/^Subcommands:/,/^$/p' | awk 'NR > 1 && /^  [a-z]/ {print $1}' | sort)
[ -n "$listed" ] || fail "no subcommands in pkgctl --help"
offered=$(complete_line "" | grep -v '^-' | sort)
[ "$listed" = "$offered" ] || fail "help lists [$listed], completion offers [$offered]"

"$C" completion zsh | grep -q '^#compdef pkgctl$' || fail "zsh script: no #compdef line"
"$C" completion zsh | grep -q 'compdef _pkgctl pkgctl; fi$' || fail "zsh script: not registered when sourced"
if command -v zsh >/dev/null; then
  "$C" completion zsh | zsh -n || fail "zsh script does not parse"
else
  echo "note: zsh not installed, the zsh script's syntax is not checked"
fi
set +e
"$C" completion fish 2>/dev/null; rc=$?
set -e
[ $rc -eq 2 ] || fail "completion fish exits $rc, not 2"
echo "ok: completion"
