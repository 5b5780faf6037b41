"""Tasks from Python (DESIGN §2.2) against a real pkgctxd: the lease is listed by `pkgctl clients`,
holds a drain after a version change, and ends with the `with` block — on an exception too."""
import json
import os
import subprocess
import time

import pytest

import pkgctx
from conftest import BIN


def my_tasks(daemon) -> list:
    clients = json.loads(daemon.ctl("clients", "--json"))["clients"]
    mine = [c for c in clients if c["pid"] == os.getpid()]
    assert len(mine) == 1, clients
    return mine[0]["tasks"]


def drains_pending(daemon) -> int:
    for line in daemon.ctl("metrics").splitlines():
        if line.startswith("pkgctx_drains_pending "):
            return int(line.split()[1])
    raise AssertionError("no pkgctx_drains_pending in pkgctl metrics")


def test_task_is_listed_holds_a_drain_and_ends_with_the_block(daemon, worker):
    daemon.ctl("update", "web", "1")
    assert worker.register(daemon.socket) is True
    assert worker.registered
    with worker.task("web") as task:
        assert not task.token.cancelled and not task.ended
        tasks = my_tasks(daemon)
        assert [(t["name"], t["key"], t["cancelled"]) for t in tasks] == [("web", 0, False)]

        daemon.ctl("update", "web", "2")
        assert task.token.cancelled and str(task.token.cause) == "version_changed"
        assert my_tasks(daemon)[0]["cancelled"] is True
        r = subprocess.run([str(BIN / "tools/pkgctl"), "drain", "web", "--timeout", "0.1"], env=daemon.env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 124, r.stderr
        answer = json.loads(r.stdout)
        assert answer["drained"] is False
        assert [(h["pid"], h["cause"]) for h in answer["holders"]] == [(os.getpid(), "version_changed")]

        # A drain waiting while the block still runs: it answers drained once the block exits.
        drain = subprocess.Popen([str(BIN / "tools/pkgctl"), "drain", "web", "--timeout", "60"], env=daemon.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while drains_pending(daemon) != 1:
            assert drain.poll() is None, drain.communicate()
            assert time.monotonic() < deadline, "the drain never started waiting"
            time.sleep(0.01)
    assert task.ended
    out, err = drain.communicate(timeout=30)
    assert drain.returncode == 0, err
    assert json.loads(out) == {"name": "web", "drained": True, "holders": []}
    assert my_tasks(daemon) == []
    assert task.token.cancelled  # the token stays readable after the task ended


def test_an_exception_ends_the_task(daemon, worker):
    daemon.ctl("update", "web", "1")
    worker.register(daemon.socket)
    with pytest.raises(RuntimeError, match="boom"):
        with worker.task("web", event=pkgctx.EVENT_SCHEDULE) as task:
            assert [(t["name"], t["key"]) for t in my_tasks(daemon)] == [("web", pkgctx.EVENT_SCHEDULE)]
            raise RuntimeError("boom")
    assert task.ended
    assert my_tasks(daemon) == []
    task.end()  # again: nothing


def test_task_on_a_token_and_errors(daemon, worker):
    daemon.ctl("update", "web", "1")
    worker.register(daemon.socket)
    token = worker.token("web")
    with worker.task(token) as task:
        assert str(task.token) == str(token)
        assert len(my_tasks(daemon)) == 1
    assert my_tasks(daemon) == []
    with pytest.raises(pkgctx.NoSuchPackage):
        worker.task("absent")
    with pytest.raises(pkgctx.InvalidEvent):
        worker.task("web", event=9)


def test_register_without_a_daemon_is_retried_not_raised(daemon, tmp_path):
    with pkgctx.attach(daemon.segment) as w:
        assert w.register(str(tmp_path / "nobody-listens.sock")) is False
        assert not w.registered
        daemon.ctl("update", "web", "1")
        with w.task("web") as task:  # tasks work without the daemon knowing them
            assert not task.token.cancelled
        with pytest.raises(pkgctx.IoError):
            w.register(daemon.socket)  # another socket than the first call's


def test_close_ends_running_tasks(daemon):
    daemon.ctl("update", "web", "1")
    w = pkgctx.attach(daemon.segment)
    w.register(daemon.socket)
    task = w.task("web")
    assert len(my_tasks(daemon)) == 1
    w.close()
    assert task.ended
