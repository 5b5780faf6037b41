#!/usr/bin/env python3
"""pkgctxd's journal sink, checked against a stand-in journald (run by tests/e2e/daemon_journal.sh).

Runs as root inside a private mount namespace whose /run/systemd/journal is a scratch tmpfs, so
this script can bind the native-protocol socket /run/systemd/journal/socket itself. The daemon's
stderr is a file and JOURNAL_STREAM names that file's dev:ino, which is how systemd tells a
service that stderr is the journal (systemd.exec(5)).

Three daemons:
  1. a reading receiver: audit entries (and a drain's timeout) carry the structured fields,
     newlines in client values stay inside their field, and nothing of them reaches stderr;
  2. a receiver that never reads: the daemon keeps answering (the send never blocks) and each
     line it could not send is on stderr instead — none lost;
  3. no journal socket at all: every line on stderr.
Usage: journal_check.py BUILD_DIR WORKDIR
"""
import atexit
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

BIN, WORK = sys.argv[1], sys.argv[2]
PKGCTXD = os.path.join(BIN, "daemon", "pkgctxd")
PKGCTL = os.path.join(BIN, "tools", "pkgctl")
JOURNAL = "/run/systemd/journal/socket"
SEG = f"e2e-journal-{os.getpid()}"
TIMEOUT = 20
# The client that runs as nobody needs an interpreter nobody may execute (not one under /root).
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
running = []  # daemons a failure leaves behind are killed at exit
atexit.register(lambda: [p.kill() for p in running if p.poll() is None])


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def parse_entry(data):
    """One datagram of journald's native protocol → {field: [values]}."""
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:  # KEY\n, 64-bit little-endian length, value, \n
            key = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + n]
            if data[nl + 9 + n:nl + 10 + n] != b"\n":
                fail(f"binary field {key!r} not closed by a newline: {data!r}")
            i = nl + 10 + n
        fields.setdefault(key.decode(), []).append(value.decode())
    return fields


def one(entry, key):
    values = entry.get(key, [])
    if len(values) != 1:
        fail(f"{key}: want one value, got {values} in {entry}")
    return values[0]


class Daemon:
    """pkgctxd with stderr in a file that JOURNAL_STREAM names; ready when it says READY=1."""

    def __init__(self, tag):
        self.dir = os.path.join(WORK, tag)
        os.makedirs(self.dir)
        os.chmod(self.dir, 0o755)  # the nobody client must reach the socket
        self.sock = os.path.join(self.dir, "ctl.sock")
        self.err_path = os.path.join(self.dir, "stderr")
        notify_path = os.path.join(self.dir, "notify")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(TIMEOUT)
        err = open(self.err_path, "wb")
        st = os.fstat(err.fileno())
        env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", NOTIFY_SOCKET=notify_path,
                   PKGCTX_RUNTIME_DIR=os.path.join(self.dir, "run"))
        self.proc = subprocess.Popen([PKGCTXD, "--segment", SEG + "-" + tag, "--socket", self.sock, "--socket-mode", "0666"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
        running.append(self.proc)
        err.close()
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
        except socket.timeout:
            self.proc.kill()
            fail(f"{tag}: pkgctxd did not become ready; stderr: {self.stderr()}")
        finally:
            notify.close()
        self.conn = socket.socket(socket.AF_UNIX)
        self.conn.settimeout(TIMEOUT)  # an answer that never comes fails the test, not hangs it
        self.conn.connect(self.sock)
        self.f = self.conn.makefile("rwb")

    def ask(self, req):
        self.f.write((json.dumps(req) + "\n").encode())
        self.f.flush()
        try:
            line = self.f.readline()
        except socket.timeout:
            fail(f"no answer within {TIMEOUT} s to {req}: the daemon is blocked; stderr: {self.stderr()}")
        if not line:
            fail(f"no answer to {req}; stderr: {self.stderr()}")
        return json.loads(line)

    def stderr(self):
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(TIMEOUT) != 0:
            fail(f"pkgctxd exited {self.proc.returncode}; stderr: {self.stderr()}")


def receiver():
    if os.path.exists(JOURNAL):
        os.unlink(JOURNAL)
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(JOURNAL)
    return r


def drain(r):
    """The entries queued on a receiver that did not read."""
    entries = []
    r.setblocking(False)
    while True:
        try:
            entries.append(parse_entry(r.recv(1 << 20)))
        except BlockingIOError:
            return entries


class Reader:
    """A receiver that reads as journald does, on a thread, until stop() sends it a sentinel."""
    STOP = b"PKGCTX_TEST_STOP=1\n"

    def __init__(self):
        self.r = receiver()
        self.entries = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while (data := self.r.recv(1 << 20)) != self.STOP:
            self.entries.append(parse_entry(data))

    def stop(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(self.STOP, JOURNAL)
        s.close()
        self.thread.join(TIMEOUT)
        self.r.close()
        return self.entries


def audits(entries):
    return [e for e in entries if "PKGCTX_OP" in e]


# --- 1. structured fields -----------------------------------------------------------------------
reader = Reader()
d = Daemon("fields")
me = str(os.getpid())
a = d.ask({"op": "update", "name": "journaled", "version": "1", "settings": {}})
if not a["ok"]:
    fail(f"update: {a}")
hostile = "evil\nPKGCTX_PEER_UID=4242\nPKGCTX_RESULT=ok"
a = d.ask({"op": "update", "name": hostile, "version": "1", "settings": {}})
if a["ok"] or a["error"]["code"] != "invalid_name":
    fail(f"hostile name: {a}")
# A write by a peer not on the allow-list (nobody), refused as forbidden.
nobody = subprocess.run(
    [PYTHON, "-c",
     "import json,os,socket,sys\n"
     "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f=s.makefile('rwb')\n"
     "f.write(b'{\"op\":\"delete\",\"name\":\"journaled\"}\\n'); f.flush()\n"
     "print(os.getpid(), json.loads(f.readline())['error']['code'])\n", d.sock],
    user=65534, capture_output=True, text=True, timeout=TIMEOUT)
if nobody.returncode != 0:
    fail(f"nobody client: {nobody.stderr}")
nobody_pid, nobody_code = nobody.stdout.split()
if nobody_code != "forbidden":
    fail(f"nobody's delete answered {nobody_code}")
# A drain that times out: a task (pkgctl run, its command ignoring SIGTERM) holds the context an
# update replaced. It says "up" on a FIFO once running.
fifo = os.path.join(d.dir, "up")
os.mkfifo(fifo)
holder = subprocess.Popen(
    [PKGCTL, "run", "journaled", "--grace", "60", "--", "sh", "-c",
     f'trap "" TERM; echo up > {fifo}; while :; do sleep 0.05; done'],
    env=dict(os.environ, PKGCTX_SEGMENT=SEG + "-fields", PKGCTX_SOCKET=d.sock,
             PKGCTX_RUNTIME_DIR=os.path.join(d.dir, "run")),
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
atexit.register(lambda: holder.poll() is None and os.killpg(holder.pid, signal.SIGKILL))
with open(fifo) as f:
    f.readline()
a = d.ask({"op": "update", "name": "journaled", "version": "2", "settings": {}})
if not a["ok"]:
    fail(f"update to 2: {a}")
a = d.ask({"op": "drain", "name": "journaled", "timeout_ms": 100})
if not a["ok"] or a["drained"] or len(a["holders"]) != 1:
    fail(f"drain of a held context: {a}")
os.killpg(holder.pid, signal.SIGKILL)
holder.wait()
d.stop()
entries = reader.stop()

got = audits(entries)
if len(got) != 6:
    fail(f"want 6 entries with PKGCTX_OP, got {len(got)}: {got}")
ok, bad, refused, _, drain_audit, timed_out = got
want = {"PKGCTX_OP": "drain", "PKGCTX_PACKAGE": "journaled", "PKGCTX_RESULT": "ok", "PKGCTX_PEER_PID": me}
for k, v in want.items():
    if one(drain_audit, k) != v:
        fail(f"drain: {k}={one(drain_audit, k)!r}, want {v!r}: {drain_audit}")
want = {"PKGCTX_OP": "drain", "PKGCTX_PACKAGE": "journaled", "PKGCTX_RESULT": "timed_out", "PKGCTX_HOLDERS": "1",
        "PKGCTX_PEER_UID": "0", "PKGCTX_PEER_PID": me, "PRIORITY": "5"}
for k, v in want.items():
    if one(timed_out, k) != v:
        fail(f"drain timeout: {k}={one(timed_out, k)!r}, want {v!r}: {timed_out}")
for e in entries:  # every entry names the daemon and its segment
    if one(e, "SYSLOG_IDENTIFIER") != "pkgctxd" or one(e, "PKGCTX_SEGMENT") != SEG + "-fields":
        fail(f"entry without identifier or segment: {e}")
want = {"PKGCTX_OP": "update", "PKGCTX_PACKAGE": "journaled", "PKGCTX_RESULT": "ok", "PKGCTX_CHANGE": "created",
        "PKGCTX_PEER_UID": "0", "PKGCTX_PEER_PID": me, "PRIORITY": "6"}
for k, v in want.items():
    if one(ok, k) != v:
        fail(f"accepted update: {k}={one(ok, k)!r}, want {v!r}: {ok}")
if not one(ok, "MESSAGE").startswith("Write op=update name=\"journaled\" peer_uid=0 peer_pid=" + me):
    fail(f"accepted update: MESSAGE {one(ok, 'MESSAGE')!r}")
# The hostile name is one field value, newlines and all; it forged nothing.
want = {"PKGCTX_OP": "update", "PKGCTX_PACKAGE": hostile, "PKGCTX_RESULT": "invalid_name", "PKGCTX_PEER_UID": "0",
        "PKGCTX_PEER_PID": me, "PRIORITY": "6"}
for k, v in want.items():
    if one(bad, k) != v:
        fail(f"hostile name: {k}={one(bad, k)!r}, want {v!r}: {bad}")
if "\n" in one(bad, "MESSAGE"):
    fail(f"hostile name: MESSAGE spans lines: {one(bad, 'MESSAGE')!r}")
want = {"PKGCTX_OP": "delete", "PKGCTX_PACKAGE": "journaled", "PKGCTX_RESULT": "forbidden",
        "PKGCTX_PEER_UID": "65534", "PKGCTX_PEER_PID": nobody_pid, "PRIORITY": "5"}
for k, v in want.items():
    if one(refused, k) != v:
        fail(f"forbidden delete: {k}={one(refused, k)!r}, want {v!r}: {refused}")
if "PKGCTX_CHANGE" in refused:
    fail(f"forbidden delete has a change: {refused}")
if not any(one(e, "MESSAGE").startswith("Ready:") for e in entries):
    fail(f"no Ready entry in the journal: {entries}")
if "Write op=" in d.stderr() or "Ready:" in d.stderr():
    fail(f"lines sent to the journal also went to stderr: {d.stderr()}")
print(f"ok: structured fields ({len(entries)} entries; accepted, invalid and forbidden writes, a drain timeout)")

# --- 2. a journald that does not read: no wait, no loss ----------------------------------------
r = receiver()  # bound, never read until the end
with open("/proc/sys/net/unix/max_dgram_qlen") as f:
    writes = int(f.read()) + 30  # more than its queue holds
d = Daemon("stalled")
for i in range(writes):
    a = d.ask({"op": "update", "name": f"p{i}", "version": "1", "settings": {}})
    if not a["ok"]:
        fail(f"update p{i}: {a}")
d.stop()
in_journal = len(audits(drain(r)))
r.close()
on_stderr = d.stderr().count("<6>pkgctxd: Write op=update")
if in_journal + on_stderr != writes or on_stderr == 0:
    fail(f"{writes} writes: {in_journal} audit entries in the journal + {on_stderr} on stderr")
print(f"ok: a stalled journal: {in_journal} entries sent, {on_stderr} lines on stderr, none lost, never blocked")

# --- 3. no journal socket -----------------------------------------------------------------------
os.unlink(JOURNAL)
d = Daemon("nosocket")
a = d.ask({"op": "update", "name": "plain", "version": "1", "settings": {}})
d.stop()
err = d.stderr()
if f'<6>pkgctxd: Write op=update name="plain" peer_uid=0 peer_pid={me} result=ok change=created\n' not in err:
    fail(f"no journal socket: the audit line is not on stderr: {err}")
print("ok: no journal socket: lines on stderr")
