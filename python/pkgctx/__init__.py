"""pkgctx for Python: a plugin's view of the pkgctx package table (DESIGN §5).

Attach to the daemon's shared-memory segment, take a token when a task starts, and ask it
whether the task was cancelled (an update, a remove, a reschedule, a deletion), wait for that
(Ctrl-C interrupts; ``await token.wait_async()`` in asyncio), read a package's version and
settings consistently, hand tokens around as text. Over the C API of libpkgctx.so.1.

    import pkgctx
    with pkgctx.attach("pkgctx") as worker:
        token = worker.token("my-plugin")
        while not token.cancelled:
            do_some_work()
        print("cancelled:", token.cause)

A task also tells the daemon that it is still running (DESIGN §2.2), so a controller's drain
waits for it to end:

    with worker.task("my-plugin") as task:    # a lease the daemon sees (pkgctl clients)
        while not task.token.cancelled:
            do_some_work()
    # the lease is gone: a drain waiting on it answers drained
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import json
import select
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from . import _capi
from ._capi import lib as _lib

__all__ = [
    "EVENT_UPDATE", "EVENT_REMOVE", "EVENT_SCHEDULE", "Cause", "Liveness", "PkgctxError",
    "Worker", "Token", "Task", "CancelWatch", "Package", "DaemonStatus", "TokenInfo", "attach",
    "library_version", "error_class", "checksum",
]

EVENT_UPDATE = 0
EVENT_REMOVE = 1
EVENT_SCHEDULE = 2


class Cause(enum.IntEnum):
    """Why a token was cancelled (pkgctx_cause_code); ``str()`` of a member is its C name."""
    NONE = 0
    VERSION_CHANGED = 1
    UPDATE_EVENT = 2
    REMOVED = 3
    RESCHEDULED = 4
    DELETED = 5
    SEGMENT_RETIRED = 6
    NAMED = 7  # a caller-named cause (DESIGN §2.1): Token.cause_text is its name

    def __str__(self) -> str:
        return self.name.lower()


class Liveness(enum.IntEnum):
    """The daemon's liveness (pkgctx_daemon)."""
    NONE = 0
    ALIVE = 1
    STALE = 2
    STOPPED = 3

    def __str__(self) -> str:
        return self.name.lower()


def library_version() -> str:
    """The version of the libpkgctx actually loaded ("MAJOR.MINOR.PATCH")."""
    return _lib.pkgctx_version().decode()


# ---- Errors ---------------------------------------------------------------------------------

class PkgctxError(Exception):
    """A failed pkgctx call: ``code`` (a PKGCTX_* number), ``name`` ("no_such_package"),
    ``message`` (the library's one line, naming what was wrong). Each code has a subclass named
    after it in CamelCase (NoSuchPackage, SegmentMissing, InvalidToken, …)."""

    code: int = -1
    name: str = "unknown"

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
            self.name = _lib.pkgctx_errname(code).decode()


# Python's own exception classes that a code also is, so `except ValueError` etc. work.
_ALSO = {"invalid_": ValueError, "timed_out": TimeoutError, "permission_denied": PermissionError,
         "no_such_package": LookupError}
_CLASSES: dict[int, type[PkgctxError]] = {}


def _make_classes() -> None:
    # The codes are small numbers (pkgctx.h); the library names each one it knows.
    for code in range(1, 128):
        name = _lib.pkgctx_errname(code).decode()
        if name == "unknown":
            continue
        bases: tuple[type, ...] = (PkgctxError,)
        for prefix, extra in _ALSO.items():
            if name.startswith(prefix):
                bases += (extra,)
        cls_name = "".join(part.capitalize() for part in name.split("_"))
        doc = _lib.pkgctx_strerror(code).decode()
        cls = type(cls_name, bases, {"code": code, "name": name, "__doc__": doc, "__module__": __name__})
        _CLASSES[code] = cls
        globals()[cls_name] = cls
        __all__.append(cls_name)


_make_classes()

if TYPE_CHECKING:  # what _make_classes() generates, spelled out for type checkers (a test compares)
    class InvalidName(PkgctxError, ValueError): ...
    class InvalidVersion(PkgctxError, ValueError): ...
    class InvalidSettings(PkgctxError, ValueError): ...
    class SettingsTooLarge(PkgctxError): ...
    class InvalidEvent(PkgctxError, ValueError): ...
    class InvalidToken(PkgctxError, ValueError): ...
    class InvalidCause(PkgctxError, ValueError): ...
    class InvalidMaintenance(PkgctxError, ValueError): ...
    class TooManyCauses(PkgctxError): ...
    class OwnedByEtcd(PkgctxError): ...
    class NoSuchPackage(PkgctxError, LookupError): ...
    class TableFull(PkgctxError): ...
    class SettingsFull(PkgctxError): ...
    class SegmentMissing(PkgctxError): ...
    class SegmentForeign(PkgctxError): ...
    class SegmentVersion(PkgctxError): ...
    class SegmentTruncated(PkgctxError): ...
    class SegmentNotReady(PkgctxError): ...
    class SegmentRetired(PkgctxError): ...
    class SegmentExists(PkgctxError): ...
    class PermissionDenied(PkgctxError, PermissionError): ...
    class TimedOut(PkgctxError, TimeoutError): ...
    class IoError(PkgctxError): ...
    class DaemonUnreachable(PkgctxError): ...
    class Busy(PkgctxError): ...
    class UntrustedSegment(PkgctxError): ...
    class Corrupt(PkgctxError): ...


def checksum(settings: Union[str, dict[str, Any]]) -> tuple[str, str]:
    """(checksum, canonical) of a settings object, given as JSON text or a dict: XXH3-64 of its
    RFC 8785 form, as the store computes it (DESIGN §3). InvalidSettings if it is not an object.
    A dict goes through json.dumps; pass the text to keep numbers exactly as written."""
    text = settings if isinstance(settings, str) else json.dumps(settings)
    raw = text.encode()
    hexbuf = ctypes.create_string_buffer(17)
    canonical = ctypes.c_void_p()
    _check(_lib.pkgctx_checksum(raw, len(raw), hexbuf, ctypes.byref(canonical)))
    try:
        return hexbuf.value.decode(), ctypes.string_at(canonical.value).decode()
    finally:
        _lib.pkgctx_string_free(canonical)


def error_class(code: int) -> type[PkgctxError]:
    """The exception class of a PKGCTX_* code (PkgctxError for a code this library lacks)."""
    return _CLASSES.get(code, PkgctxError)


def _check(rc: int) -> None:
    if rc != 0:
        message = _lib.pkgctx_last_error().decode(errors="replace") or _lib.pkgctx_strerror(rc).decode()
        raise error_class(rc)(message, rc)


def _bytes(s: str) -> bytes:
    return s.encode()


# ---- Values ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Package:
    """One consistent snapshot of a package (version, settings and checksum of the same write)."""
    name: str
    version: str            # "" once the package was removed
    settings: dict[str, Any]
    settings_json: str      # RFC 8785 canonical JSON, as stored
    checksum: int           # XXH3-64 of settings_json
    checksum_hex: str       # the same, 16 lowercase hex digits
    settings_version: int = 0   # the settings' schema version (DESIGN §2.1)
    maintenance: str = ""       # pending maintenance mode; "" = managed normally


@dataclass(frozen=True)
class DaemonStatus:
    liveness: Liveness
    pid: int                       # 0 when no daemon ever attached
    start_realtime_ns: int
    heartbeat_age_ns: int
    heartbeat_interval_ns: int

    @property
    def alive(self) -> bool:
        return self.liveness == Liveness.ALIVE


@dataclass(frozen=True)
class TokenInfo:
    slot: int
    key: int                 # the event key it was taken for (0, 1: root; 2..7: child)
    root_generation: int
    child_generation: int    # 0 for a root token


# ---- Tokens ---------------------------------------------------------------------------------

class CancelWatch:
    """A file descriptor that becomes readable when a token is cancelled (pkgctx_watch_fd), for
    select/poll/epoll and event loops. It belongs to the watch: close the watch, not the fd."""

    def __init__(self, token: "Token") -> None:
        fd = ctypes.c_int(-1)
        handle = _capi.watch_p()
        _check(_lib.pkgctx_watch_fd(token._handle, ctypes.byref(fd), ctypes.byref(handle)))
        self._fd = fd.value
        self._close = weakref.finalize(self, _lib.pkgctx_unwatch, handle)

    def fileno(self) -> int:
        if not self._close.alive:
            raise ValueError("pkgctx: the watch is closed")
        return self._fd

    def close(self) -> None:
        """Unregisters and closes the fd (again: nothing)."""
        self._close()

    def __enter__(self) -> "CancelWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Token:
    """The token of one task: a snapshot of a package's context for one event key. Cancellation
    is permanent. ``str(token)`` is its printable form (Worker.parse_token reads it back)."""

    def __init__(self, handle: int) -> None:
        self._handle = ctypes.c_void_p(handle)
        self._free = weakref.finalize(self, _lib.pkgctx_token_free, self._handle)
        info = _capi.TokenInfo()
        _check(_lib.pkgctx_token_info(self._handle, ctypes.byref(info)))
        self.info = TokenInfo(info.slot, info.key, info.root_generation, info.child_generation)

    @property
    def cancelled(self) -> bool:
        """True once cancelled: one atomic load in the library, no syscall."""
        return _lib.pkgctx_cancelled(self._live()) == 1

    @property
    def cause(self) -> Cause:
        """Cause.NONE while live; str(cause) is the C name ("update_event", "rescheduled", …)."""
        return Cause(_lib.pkgctx_cause_code(self._live()))

    @property
    def cause_text(self) -> str:
        """The cause as text, caller-named causes included ("none" while live)."""
        buf = ctypes.create_string_buffer(64)
        n = ctypes.c_size_t(0)
        _check(_lib.pkgctx_cause_text(self._live(), buf, len(buf), ctypes.byref(n)))
        return buf.value.decode()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Sleeps until cancelled or `timeout` seconds pass (None: no limit). True if cancelled.
        Signals are handled while it sleeps: Ctrl-C raises KeyboardInterrupt at once."""
        if self.cancelled:
            return True
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with CancelWatch(self) as watch:
            poller = select.poll()
            poller.register(watch.fileno(), select.POLLIN)
            while not self.cancelled:
                left_ms = None
                if deadline is not None:
                    left_ms = (deadline - time.monotonic()) * 1000.0
                    if left_ms <= 0:
                        break
                poller.poll(left_ms)  # EINTR: Python runs the handlers (PEP 475), may raise
        return self.cancelled

    async def wait_async(self, timeout: Optional[float] = None) -> bool:
        """``await`` until cancelled or `timeout` seconds pass; True if cancelled. The loop
        watches the token's pollable fd (loop.add_reader): no thread, no polling."""
        if self.cancelled:
            return True
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with CancelWatch(self) as watch:
            fd = watch.fileno()
            loop.add_reader(fd, lambda: done.done() or done.set_result(None))
            try:
                await asyncio.wait_for(done, timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                loop.remove_reader(fd)
        return self.cancelled

    def watch(self) -> CancelWatch:
        """A CancelWatch: a pollable fd for your own event loop."""
        return CancelWatch(self)

    def copy(self) -> "Token":
        """An independent handle to the same token (e.g. for another thread to own)."""
        dup = _lib.pkgctx_token_dup(self._live())
        if not dup:
            raise MemoryError("pkgctx_token_dup")
        return Token(dup)

    def __str__(self) -> str:
        buf = ctypes.create_string_buffer(_capi.TOKEN_STR_MAX + 1)
        n = _lib.pkgctx_token_str(self._live(), buf, len(buf))
        return buf.raw[:n].decode()

    def __repr__(self) -> str:
        state = f"cancelled: {self.cause}" if self._free.alive and self.cancelled else "live"
        return f"<pkgctx.Token {self if self._free.alive else 'closed'} {state}>"

    def close(self) -> None:
        """Frees the handle now (it is also freed when collected). Not while another thread
        uses this token."""
        self._free()

    def __enter__(self) -> "Token":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> ctypes.c_void_p:
        if not self._free.alive:
            raise ValueError("pkgctx: the token is closed")
        return self._handle


# ---- Tasks ----------------------------------------------------------------------------------

class Task:
    """A running task (DESIGN §2.2): a token plus a lease the daemon sees (``pkgctl clients``),
    so that a drain of the package waits until the task ends. Beginning and ending one touch only
    this process's memory. A context manager: the task ends when the ``with`` block exits,
    however it exits. Ending twice does nothing; a task not ended is ended when collected."""

    def __init__(self, worker: "Worker", handle: int, source: Optional["Token"] = None) -> None:
        self._worker = worker    # the lease page belongs to the worker: it must outlive the task
        self._source = source    # pkgctx_task_begin_token: the token must outlive the task
        self._handle = ctypes.c_void_p(handle)
        self._end = weakref.finalize(self, _lib.pkgctx_task_end, self._handle)
        # A copy the caller owns: it stays readable after the task ended.
        dup = _lib.pkgctx_token_dup(_lib.pkgctx_task_token(self._handle))
        if not dup:
            self._end()
            raise MemoryError("pkgctx_token_dup")
        self.token = Token(dup)
        worker._tasks.add(self)

    @property
    def ended(self) -> bool:
        return not self._end.alive

    def end(self) -> None:
        """Ends the task: the lease is gone, and a drain waiting on it is told at once."""
        self._end()

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def __repr__(self) -> str:
        return f"<pkgctx.Task {self.token!r}{' ended' if self.ended else ''}>"


# ---- Worker ---------------------------------------------------------------------------------

class Worker:
    """A read-only attachment to a segment. Safe to share between threads. Tokens outlive it."""

    def __init__(self, segment: str = "pkgctx", *, recheck_interval_ms: int = 0,
                 recheck_always: bool = False) -> None:
        """Attaches to `segment` (pkgctxd's default "pkgctx"). recheck_interval_ms: how often a
        lookup checks whether the name now refers to a replaced segment (0: the default, 1000;
        negative: never); recheck_always: on every lookup."""
        options = _capi.Options(recheck_interval_ms, 1 if recheck_always else 0)
        handle = _capi.worker_p()
        raw = _bytes(segment)
        _check(_lib.pkgctx_attach_with(raw, len(raw), ctypes.byref(options), ctypes.byref(handle)))
        self.segment = segment
        self._handle = handle
        self._detach = weakref.finalize(self, _lib.pkgctx_detach, handle)
        self._tasks: "weakref.WeakSet[Task]" = weakref.WeakSet()

    def token(self, name: str, event: int = EVENT_UPDATE) -> Token:
        """The token of package `name`'s current context for `event` (EVENT_UPDATE/REMOVE: the
        root token; EVENT_SCHEDULE..7: a child key). Take it when the task starts."""
        raw = _bytes(name)
        out = _capi.token_p()
        _check(_lib.pkgctx_token_n(self._live(), raw, len(raw), event, ctypes.byref(out)))
        return Token(out.value)

    def parse_token(self, text: str) -> Token:
        """A token from its printed form, validated against this segment (InvalidToken if
        garbled, forged or foreign)."""
        raw = _bytes(text)
        out = _capi.token_p()
        _check(_lib.pkgctx_token_parse_n(self._live(), raw, len(raw), ctypes.byref(out)))
        return Token(out.value)

    def register(self, socket: Optional[str] = None) -> bool:
        """Makes the daemon at `socket` (None: $PKGCTX_SOCKET, else /run/pkgctx/pkgctxd.sock) know
        this worker, so that its tasks' leases count in drains and ``pkgctl clients`` lists it. One
        round trip; the first task registers implicitly. True when the daemon knows the worker now;
        False when it does not answer yet (tasks still work; registration is retried in the
        background every 200 ms). IoError for another socket than the first call's."""
        rc = _lib.pkgctx_register(self._live(), None if socket is None else _bytes(socket))
        if rc == DaemonUnreachable.code:
            return False
        _check(rc)
        return True

    @property
    def registered(self) -> bool:
        """True while the daemon knows this worker (registered and connected)."""
        return _lib.pkgctx_registered(self._live()) == 1

    def task(self, name: Union[str, Token], event: int = EVENT_UPDATE) -> Task:
        """Begins a task on package `name`'s current context for `event` (as ``token()``), or on
        a Token's context: ``with worker.task("web") as task: … task.token.cancelled …``.
        NoSuchPackage etc. as token(); Busy when 1024 tasks already run on this worker."""
        out = _capi.task_p()
        if isinstance(name, Token):
            _check(_lib.pkgctx_task_begin_token(self._live(), name._live(), ctypes.byref(out)))
            return Task(self, out.value, name)
        raw = _bytes(name)
        _check(_lib.pkgctx_task_begin(self._live(), raw, len(raw), event, ctypes.byref(out)))
        return Task(self, out.value)

    def read(self, name: str) -> Package:
        """A consistent snapshot of package `name` (NoSuchPackage if absent)."""
        raw = _bytes(name)
        p = _capi.Package2()
        _check(_lib.pkgctx_read2_n(self._live(), raw, len(raw), ctypes.byref(p)))
        try:
            version = ctypes.string_at(p.version).decode()
            text = ctypes.string_at(p.settings, p.settings_len).decode()
            return Package(name, version, json.loads(text), text, p.checksum, p.checksum_hex.decode(),
                           p.settings_version, p.maintenance.decode())
        finally:
            _lib.pkgctx_package2_free(ctypes.byref(p))

    def need_update(self, name: str, version: str, checksum: Union[str, int]) -> bool:
        """NeedUpdate: True when the package is absent or its version or checksum differs.
        `checksum` is 16 hex digits or the number."""
        if isinstance(checksum, int):
            checksum = format(checksum, "016x")
        n, v = _bytes(name), _bytes(version)
        out = ctypes.c_int(0)
        _check(_lib.pkgctx_need_update_n(self._live(), n, len(n), v, len(v), _bytes(checksum), ctypes.byref(out)))
        return out.value == 1

    def daemon(self) -> DaemonStatus:
        """The owning daemon's liveness."""
        d = _capi.Daemon()
        _check(_lib.pkgctx_daemon(self._live(), ctypes.byref(d)))
        return DaemonStatus(Liveness(d.liveness), d.pid, d.start_realtime_ns, d.heartbeat_age_ns,
                            d.heartbeat_interval_ns)

    def refresh(self) -> bool:
        """Re-attaches now if the segment was retired or replaced; True if it did."""
        moved = ctypes.c_int(0)
        _check(_lib.pkgctx_refresh(self._live(), ctypes.byref(moved)))
        return moved.value == 1

    @property
    def epoch(self) -> int:
        """The epoch of the segment attached now; it changes on re-attachment."""
        return _lib.pkgctx_epoch(self._live())

    def close(self) -> None:
        """Ends its tasks still running, then detaches now (also done when collected). Tokens
        taken from it stay valid."""
        for task in list(self._tasks):
            task.end()
        self._detach()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pkgctx.Worker segment={self.segment!r}{'' if self._detach.alive else ' closed'}>"

    def _live(self) -> ctypes.c_void_p:
        if not self._detach.alive:
            raise ValueError("pkgctx: the worker is detached")
        return self._handle


def attach(segment: str = "pkgctx", *, recheck_interval_ms: int = 0, recheck_always: bool = False) -> Worker:
    """Attaches read-only to `segment`: ``with pkgctx.attach() as w: …``."""
    return Worker(segment, recheck_interval_ms=recheck_interval_ms, recheck_always=recheck_always)
