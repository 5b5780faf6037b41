"""The pkgctx Python module against a real pkgctxd (conftest.py): cancellation and causes, waits
(timeout, Ctrl-C, asyncio), reads, errors, tokens as text, the installed layout, the example."""
import ast
import asyncio
import json
import os
import queue
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

import pkgctx
from conftest import BIN

HERE = Path(__file__).resolve().parent


class Child(subprocess.Popen):
    """A process whose stdout lines are read by a thread, so that waiting for the next line can
    time out (select() on a buffered pipe would miss lines already read ahead)."""

    def __init__(self, argv: list[str], env: Optional[dict[str, str]] = None) -> None:
        super().__init__(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # end of output

    def expect_line(self, timeout: float = 30) -> str:
        """The next line of output, waiting at most `timeout` seconds."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the child within {timeout}s") from None
        assert line, f"child ended: rc={self.wait()} stderr={self.stderr.read()}"
        return line


def child(code: str, *args: str) -> Child:
    """A Python child process running `code` (the module found as this process finds it)."""
    return Child([sys.executable, "-c", textwrap.dedent(code), *args])


def wait_until_sleeping_in_poll(pid: int, timeout: float = 30) -> None:
    """Until the kernel shows process `pid`'s main thread asleep in poll() (where /proc hides
    kernel symbols, wchan reads "0": then asleep at all, after the child said it waits)."""
    deadline = time.monotonic() + timeout
    while True:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        if wchan.startswith("poll_schedule"):
            return
        if wchan == "0" and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "S":
            return
        assert time.monotonic() < deadline, f"process {pid} never slept in poll() (wchan {wchan})"
        time.sleep(0.01)


def test_token_cancels_on_update(daemon, worker):
    daemon.ctl("update", "app", "1")
    token = worker.token("app")
    assert not token.cancelled and token.cause == pkgctx.Cause.NONE
    daemon.ctl("update", "app", "1")  # same version, same settings: nothing to cancel
    assert not token.cancelled
    daemon.ctl("update", "app", "2")
    assert token.cancelled
    assert token.cause == pkgctx.Cause.VERSION_CHANGED and str(token.cause) == "version_changed"
    assert not worker.token("app").cancelled  # the new context's token is live


@pytest.mark.parametrize("action, event, cause", [
    (("event", "update", "app"), pkgctx.EVENT_UPDATE, "update_event"),
    (("event", "remove", "app"), pkgctx.EVENT_REMOVE, "removed"),
    (("event", "schedule", "app"), pkgctx.EVENT_SCHEDULE, "rescheduled"),
    (("event", "5", "app"), 5, "rescheduled"),
])
def test_cause_names(daemon, worker, action, event, cause):
    daemon.ctl("update", "app", "1")
    token = worker.token("app", event=event)
    assert token.info.key == event
    daemon.ctl(*action)
    assert token.cancelled and str(token.cause) == cause


def test_deleted_and_child_keys_independent(daemon, worker):
    daemon.ctl("update", "app", "1")
    root, three, four = worker.token("app"), worker.token("app", 3), worker.token("app", 4)
    daemon.ctl("event", "3", "app")
    assert three.cancelled and not four.cancelled and not root.cancelled
    daemon.ctl("event", "remove", "app")
    daemon.ctl("delete", "app")
    assert str(root.cause) == "removed" and str(four.cause) == "removed"
    with pytest.raises(pkgctx.NoSuchPackage):
        worker.token("app")


def test_wait_with_timeout(daemon, worker):
    daemon.ctl("update", "app", "1")
    token = worker.token("app")
    start = time.monotonic()
    assert token.wait(0.2) is False
    assert time.monotonic() - start >= 0.2
    assert token.wait(0) is False
    daemon.ctl("event", "update", "app")
    assert token.wait(0) is True and token.wait() is True


def test_wait_wakes_on_a_cancel_from_another_process(daemon, worker):
    daemon.ctl("update", "app", "1")
    token = worker.token("app")
    waiter = child("""
        import sys, time, pkgctx
        t = pkgctx.attach(sys.argv[1]).parse_token(sys.argv[2])
        print("waiting", flush=True)
        start = time.monotonic()
        print(t.wait(60), t.cause, round(time.monotonic() - start), flush=True)
    """, daemon.segment, str(token))
    assert waiter.expect_line() == "waiting"
    daemon.ctl("event", "update", "app")
    assert waiter.expect_line() == "True update_event 0"
    assert waiter.wait(30) == 0


def test_ctrl_c_interrupts_a_wait(daemon, worker):
    daemon.ctl("update", "app", "1")
    waiter = child("""
        import sys, time, pkgctx
        t = pkgctx.attach(sys.argv[1]).token("app")
        try:
            print("waiting", flush=True)
            t.wait()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", t.cancelled, flush=True)
            sys.exit(42)
    """, daemon.segment)
    assert waiter.expect_line() == "waiting"
    wait_until_sleeping_in_poll(waiter.pid)  # the signal must interrupt a real sleep
    start = time.monotonic()
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(10) == 42
    assert time.monotonic() - start < 5
    assert waiter.expect_line() == "KeyboardInterrupt False"
    assert not worker.token("app").cancelled


def test_asyncio_wait_wakes_on_a_cancel_from_another_process(daemon, worker):
    daemon.ctl("update", "app", "1")
    daemon.ctl("update", "other", "1")
    token, bystander = worker.token("app"), worker.token("other")

    async def scenario():
        assert await token.wait_async(0.05) is False  # live: times out
        waits = [asyncio.create_task(token.wait_async(60)), asyncio.create_task(token.copy().wait_async(60))]
        other = asyncio.create_task(bystander.wait_async(60))
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waits)
        ctl = await asyncio.create_subprocess_exec(str(BIN / "tools/pkgctl"), "event", "update", "app", env=daemon.env,
                                                   stdout=asyncio.subprocess.DEVNULL)
        assert await ctl.wait() == 0
        assert await asyncio.wait_for(asyncio.gather(*waits), 30) == [True, True]
        assert not other.done()
        other.cancel()  # a cancelled wait_async removes its reader and closes its watch
        with pytest.raises(asyncio.CancelledError):
            await other

    asyncio.run(scenario())
    assert str(token.cause) == "update_event" and not bystander.cancelled


def test_watch_fd_for_your_own_loop(daemon, worker):
    daemon.ctl("update", "app", "1")
    token = worker.token("app")
    with token.watch() as w:
        assert select.select([w], [], [], 0)[0] == []
        daemon.ctl("event", "update", "app")
        assert select.select([w], [], [], 30)[0] == [w]
        fd = w.fileno()
    with pytest.raises(ValueError):
        w.fileno()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the watch


def test_read_returns_settings(daemon, worker):
    settings = {"port": 8080, "hosts": ["a", "b"], "name": "é"}
    daemon.ctl("update", "app", "3.1", "--settings", json.dumps(settings))
    pkg = worker.read("app")
    assert pkg.name == "app" and pkg.version == "3.1" and pkg.settings == settings
    expected_sum = daemon.ctl("checksum", json.dumps(settings))
    assert pkg.checksum_hex == expected_sum and pkg.checksum == int(expected_sum, 16)
    shown = json.loads(daemon.ctl("settings", "app"))
    assert shown["settings"] == settings and shown["checksum"] == pkg.checksum_hex and shown["version"] == "3.1"
    assert pkg.settings_json == '{"hosts":["a","b"],"name":"é","port":8080}'  # canonical: sorted, no spaces
    assert worker.need_update("app", "3.1", pkg.checksum_hex) is False
    assert worker.need_update("app", "3.1", pkg.checksum) is False
    assert worker.need_update("app", "3.2", pkg.checksum_hex) is True
    assert worker.need_update("absent", "3.1", pkg.checksum_hex) is True
    daemon.ctl("update", "empty", "1")
    assert worker.read("empty").settings == {} and worker.read("empty").settings_json == "{}"


def test_v2_fields_named_causes_and_checksums(daemon, worker):
    daemon.ctl("update", "app", "1", "--settings", '{"a":1}', "--settings-version", "4", "--maintenance", "frozen")
    pkg = worker.read("app")
    assert pkg.settings_version == 4 and pkg.maintenance == "frozen"
    token = worker.token("app")
    assert token.cause_text == "none"
    daemon.ctl("update", "app", "2", "--cause", "rollout_42")
    assert token.cancelled and token.cause == pkgctx.Cause.NAMED and token.cause_text == "rollout_42"
    assert worker.read("app").maintenance == ""  # not given: back to managed normally
    # The checksum any controller computes, as the store does (DESIGN §3).
    text = '{"b":[1,2.50,"x"],"a":{}}'
    hexsum, canonical = pkgctx.checksum(text)
    assert canonical == '{"a":{},"b":[1,2.5,"x"]}' and hexsum == daemon.ctl("checksum", text)
    assert pkgctx.checksum({"a": {}, "b": [1, 2.5, "x"]}) == (hexsum, canonical)
    with pytest.raises(pkgctx.InvalidSettings):
        pkgctx.checksum("[1]")


def test_errors_map_to_exceptions(daemon, worker):
    with pytest.raises(pkgctx.SegmentMissing) as e:
        pkgctx.attach(daemon.segment + "-absent")
    assert e.value.name == "segment_missing" and e.value.code == 20 and daemon.segment + "-absent" in str(e.value)
    with pytest.raises(pkgctx.NoSuchPackage) as e:
        worker.token("absent")
    assert isinstance(e.value, LookupError) and '"absent"' in str(e.value)
    with pytest.raises(pkgctx.NoSuchPackage):
        worker.read("absent")
    with pytest.raises(pkgctx.InvalidName) as e:
        worker.token("bad/name")
    assert isinstance(e.value, ValueError) and isinstance(e.value, pkgctx.PkgctxError)
    daemon.ctl("update", "app", "1")
    with pytest.raises(pkgctx.InvalidEvent):
        worker.token("app", event=8)
    with pytest.raises(pkgctx.InvalidToken):
        worker.parse_token("pkgctx1:garbage")
    with pytest.raises(pkgctx.InvalidSettings):
        worker.need_update("app", "1", "not-hex")
    closed = worker.token("app")
    closed.close()
    with pytest.raises(ValueError):
        closed.cancelled
    # One class per code the library names, generated from pkgctx_errname.
    lib = pkgctx._capi.lib
    for code in range(1, 64):
        name = lib.pkgctx_errname(code).decode()
        cls = pkgctx.error_class(code)
        if name == "unknown":
            assert cls is pkgctx.PkgctxError
        else:
            assert cls.name == name and cls.code == code and issubclass(cls, pkgctx.PkgctxError)
            assert getattr(pkgctx, cls.__name__) is cls and cls.__name__ in pkgctx.__all__
    assert issubclass(pkgctx.TimedOut, TimeoutError) and issubclass(pkgctx.PermissionDenied, PermissionError)


def test_type_checking_stubs_match_the_generated_classes():
    tree = ast.parse(Path(pkgctx.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
    stubs = {c.name: [b.id for b in c.bases] for c in block.body if isinstance(c, ast.ClassDef)}
    generated = {cls.__name__: [b.__name__ for b in cls.__bases__]
                 for cls in map(pkgctx.error_class, range(1, 64)) if cls is not pkgctx.PkgctxError}
    assert stubs == generated


def test_token_text_round_trips_with_pkgctl(daemon, worker):
    daemon.ctl("update", "app", "1")
    token = worker.token("app", pkgctx.EVENT_SCHEDULE)
    text = str(token)
    assert text.startswith("pkgctx1:") and len(text) <= 128
    assert str(worker.parse_token(text)) == text
    from_ctl = worker.parse_token(daemon.ctl("token", "app"))
    assert from_ctl.info.key == 0 and not from_ctl.cancelled
    live = subprocess.run([str(BIN / "tools/pkgctl"), "check", text], env=daemon.env, capture_output=True)
    assert live.returncode == 0
    daemon.ctl("event", "schedule", "app")
    assert worker.parse_token(text).cancelled and str(worker.parse_token(text).cause) == "rescheduled"


def test_daemon_liveness_and_epoch(daemon, worker):
    status = worker.daemon()
    assert status.liveness == pkgctx.Liveness.ALIVE and status.alive and status.pid == daemon.proc.pid
    assert status.heartbeat_interval_ns == 100_000_000
    assert worker.epoch != 0 and worker.refresh() is False
    assert pkgctx.library_version().count(".") == 2


def test_example_plugin_session(daemon):
    daemon.ctl("update", "web", "1.0", "--settings", '{"port":80}')
    plugin = Child([sys.executable, str(HERE.parent / "examples/plugin.py"), "--segment", daemon.segment, "web"])
    assert plugin.expect_line() == 'applying web 1.0 {"port":80} (checksum %s)' % daemon.ctl("checksum", '{"port":80}')
    daemon.ctl("update", "web", "1.1", "--settings", '{"port":81}')
    assert plugin.expect_line() == "cancelled: version_changed"
    assert plugin.expect_line().startswith('applying web 1.1 {"port":81}')
    daemon.ctl("event", "remove", "web")
    assert plugin.expect_line() == "cancelled: removed"
    assert plugin.wait(30) == 0
    missing = subprocess.run([sys.executable, str(HERE.parent / "examples/plugin.py"), "--segment", daemon.segment, "absent"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.startswith("plugin: no_such_package: ")


@pytest.mark.parametrize("block", [0, 1, 2], ids=["plugin", "task", "asyncio"])
def test_readme_examples_run_as_written(daemon, block):
    """python/README.md's Python blocks, run as they are against the daemon."""
    text = (HERE.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 3
    daemon.ctl("update", "web", "1", "--settings", '{"port":80}')
    env = dict(os.environ, PKGCTX_SEGMENT=daemon.segment, PKGCTX_SOCKET=daemon.socket)
    example = Child([sys.executable, "-c", blocks[block]], env=env)
    assert example.expect_line() == "deploying 1 {'port': 80}"
    daemon.ctl("update", "web", "2")
    assert example.expect_line() == "stopping: version_changed"
    assert example.wait(30) == 0


def test_installed_module_finds_its_library(tmp_path):
    """cmake --install of the worker and python components: the module loads the library next
    to it, with no PKGCTX_LIBRARY and no loader path."""
    for component in ("worker", "python"):
        subprocess.run(["cmake", "--install", str(BIN), "--prefix", str(tmp_path), "--component", component],
                       check=True, capture_output=True, timeout=120)
    site = tmp_path / os.environ["PKGCTX_PYTHON_INSTALL_DIR"]
    assert (site / "pkgctx/py.typed").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("PKGCTX_LIBRARY", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", "import pkgctx; print(pkgctx.__file__); print(pkgctx._capi.lib._name)"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    module, library = r.stdout.split()
    assert Path(module).is_relative_to(site)
    assert Path(library).resolve().is_relative_to(tmp_path.resolve()) and library.endswith("libpkgctx.so.1")
