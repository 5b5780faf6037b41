#!/usr/bin/env bash
# One dump schema (docs/dump.schema.json): `pkgctl dump --json` and pkgctxd's {"op":"dump"} both
# validate against it, and both carry the same members (the daemon adds only the schema's
# "socket answers only" ones). Packages with events, a caller-named cause, a removed package and
# a stopped daemon. Env: PKGCTX_BIN, PKGCTX_SRC.
set -euo pipefail
D=${PKGCTX_BIN:?}/daemon/pkgctxd
C=$PKGCTX_BIN/tools/pkgctl
SCHEMA=${PKGCTX_SRC:?}/docs/dump.schema.json
fail() { echo "FAIL: $*" >&2; exit 1; }

work=$(mktemp -d)
export PKGCTX_RUNTIME_DIR=$work/run PKGCTX_SEGMENT="e2e-schema-$$" PKGCTX_SOCKET=$work/run/ctl.sock
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$D" --segment "$PKGCTX_SEGMENT" --socket "$PKGCTX_SOCKET" --capacity 8 2>"$work/log" &
pid=$!
for _ in $(seq 2000); do [ -S "$PKGCTX_SOCKET" ] && break; sleep 0.01; done
"$C" update web 1.0 --settings '{"replicas":2}' >/dev/null
"$C" update db 2.0 --cause rollout_7 >/dev/null
"$C" update db 2.1 --cause rollout_7 >/dev/null
"$C" event 3 web >/dev/null
"$C" update gone 1 >/dev/null
"$C" event remove gone >/dev/null
"$C" dump --json >"$work/pkgctl.json"

python3 - "$SCHEMA" "$PKGCTX_SOCKET" "$work/pkgctl.json" <<'PY' || fail "schema (log: $(cat "$work/log"))"
import json, socket, sys
import jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[2])
f = s.makefile("rwb")
f.write(b'{"op":"dump","id":"d1"}\n'); f.flush()
daemon = json.loads(f.readline())
cli = json.load(open(sys.argv[3]))
for label, doc in (("daemon", daemon), ("pkgctl", cli)):
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, f"{label}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
# The same members and shapes from both producers.
daemon_only = {"version", "socket", "clients", "accepted", "dropped", "requests", "errors", "drains"}
assert set(daemon) - {"ok", "id", "clients"} == set(cli), (daemon.keys(), cli.keys())
assert daemon["segment"] == cli["segment"], (daemon["segment"], cli["segment"])  # no write in between
assert set(daemon["daemon"]) - daemon_only == set(cli["daemon"]), (daemon["daemon"], cli["daemon"])
by_name = {p["name"]: p for p in daemon["packages"]}
assert sorted(by_name) == [p["name"] for p in cli["packages"]] == ["db", "gone", "web"], cli["packages"]
for p in cli["packages"]:
    assert by_name[p["name"]] == p, (by_name[p["name"]], p)
web, db, gone = by_name["web"], by_name["db"], by_name["gone"]
assert web["last_cause"] is None and web["child_generations"]["3"] == 1, web
assert db["last_cause"] == "rollout_7" and db["root_generation"] == 1, db
assert gone["version"] == "", gone
PY

# The daemon stopped: pkgctl still dumps, in the same schema.
kill -TERM "$pid"; wait "$pid" || true; pid=
python3 - "$SCHEMA" <<'PY' || fail "stopped daemon"
import json, subprocess, os, sys
import jsonschema
d = json.loads(subprocess.check_output([os.environ["PKGCTX_BIN"] + "/tools/pkgctl", "dump", "--json"]))
jsonschema.validate(d, json.load(open(sys.argv[1])), cls=jsonschema.Draft202012Validator)
assert d["daemon"]["liveness"] == "stopped", d["daemon"]
PY
echo "ok: both dumps follow docs/dump.schema.json"
