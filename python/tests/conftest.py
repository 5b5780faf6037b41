"""Fixtures: a real pkgctxd on a private segment and socket (under a fresh temporary directory),
and pkgctl to drive it. Env (set by python/CMakeLists.txt): PKGCTX_BIN, the build directory."""
import itertools
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

BIN = Path(os.environ["PKGCTX_BIN"])
_serial = itertools.count()


class Daemon:
    def __init__(self, tmp: Path) -> None:
        self.segment = f"py-{os.getpid()}-{next(_serial)}"
        self.socket = str(tmp / "ctl.sock")
        self.env = dict(os.environ, PKGCTX_SEGMENT=self.segment, PKGCTX_SOCKET=self.socket)
        self.log = open(tmp / "daemon.log", "wb")
        self.proc = subprocess.Popen([str(BIN / "daemon/pkgctxd"), "--segment", self.segment, "--socket", self.socket,
                                      "--heartbeat-ms", "100"], stderr=self.log)
        deadline = time.monotonic() + 30
        while True:  # ready when the socket accepts (the segment exists before it listens)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(self.socket)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pkgctxd did not start: {(tmp / 'daemon.log').read_text()}")
                time.sleep(0.02)
            finally:
                s.close()

    def ctl(self, *args: str, check: bool = True) -> str:
        """Runs pkgctl against this daemon; its stdout."""
        r = subprocess.run([str(BIN / "tools/pkgctl"), *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"pkgctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r.stdout.strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()
        for suffix in ("", ".lock"):
            try:
                os.unlink(f"/dev/shm/{self.segment}{suffix}")
            except FileNotFoundError:
                pass


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def worker(daemon):
    import pkgctx
    with pkgctx.attach(daemon.segment) as w:
        yield w
