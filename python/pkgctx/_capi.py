"""The C API of libpkgctx.so.1 (pkgctx.h) through ctypes: finding the library, its structures,
and one table of prototypes. Internal: use the `pkgctx` module."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char, c_char_p, c_int, c_int32, c_int64, c_size_t,
                    c_uint32, c_uint64, c_void_p)
from pathlib import Path

SONAME = "libpkgctx.so.1"


class Options(Structure):
    _fields_ = [("recheck_interval_ms", c_int64), ("recheck_always", c_int)]


class Package(Structure):
    # The strings are malloc'd by the library and freed by pkgctx_package_free: kept as raw
    # pointers (c_char_p would hide them behind copies).
    _fields_ = [("version", c_void_p), ("settings", c_void_p), ("settings_len", c_size_t),
                ("checksum", c_uint64), ("checksum_hex", c_char * 17)]


class Package2(Structure):
    # pkgctx_read2: Package plus the v2 fields (DESIGN §2.1); freed by pkgctx_package2_free.
    _fields_ = [("version", c_void_p), ("settings", c_void_p), ("settings_len", c_size_t),
                ("checksum", c_uint64), ("checksum_hex", c_char * 17), ("settings_version", c_uint64),
                ("maintenance", c_char * 65)]


class Daemon(Structure):
    _fields_ = [("liveness", c_int), ("pid", c_int32), ("start_realtime_ns", c_uint64),
                ("heartbeat_age_ns", c_uint64), ("heartbeat_interval_ns", c_uint64)]


class TokenInfo(Structure):
    _fields_ = [("slot", c_uint32), ("key", c_uint32), ("root_generation", c_uint64),
                ("child_generation", c_uint64)]


worker_p = c_void_p  # pkgctx_worker_t *
token_p = c_void_p   # pkgctx_token_t *
watch_p = c_void_p   # pkgctx_watch_t *
task_p = c_void_p    # pkgctx_task_t *

# name: (restype, argtypes) — every pkgctx.h function this module calls, in header order.
PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "pkgctx_version": (c_char_p, []),
    "pkgctx_strerror": (c_char_p, [c_int]),
    "pkgctx_errname": (c_char_p, [c_int]),
    "pkgctx_last_error": (c_char_p, []),
    "pkgctx_attach_with": (c_int, [c_char_p, c_size_t, POINTER(Options), POINTER(worker_p)]),
    "pkgctx_epoch": (c_uint64, [worker_p]),
    "pkgctx_detach": (None, [worker_p]),
    "pkgctx_refresh": (c_int, [worker_p, POINTER(c_int)]),
    "pkgctx_token_n": (c_int, [worker_p, c_char_p, c_size_t, c_int, POINTER(token_p)]),
    "pkgctx_token_parse_n": (c_int, [worker_p, c_char_p, c_size_t, POINTER(token_p)]),
    "pkgctx_token_dup": (token_p, [token_p]),
    "pkgctx_token_free": (None, [token_p]),
    "pkgctx_cancelled": (c_int, [token_p]),
    "pkgctx_token_info": (c_int, [token_p, POINTER(TokenInfo)]),
    "pkgctx_cause": (c_char_p, [token_p]),
    "pkgctx_cause_code": (c_int, [token_p]),
    "pkgctx_cause_text": (c_int, [token_p, c_char_p, c_size_t, POINTER(c_size_t)]),
    "pkgctx_token_str": (c_size_t, [token_p, c_char_p, c_size_t]),
    "pkgctx_read_n": (c_int, [worker_p, c_char_p, c_size_t, POINTER(Package)]),
    "pkgctx_package_free": (None, [POINTER(Package)]),
    "pkgctx_read2_n": (c_int, [worker_p, c_char_p, c_size_t, POINTER(Package2)]),
    "pkgctx_package2_free": (None, [POINTER(Package2)]),
    "pkgctx_checksum": (c_int, [c_char_p, c_size_t, c_char_p, POINTER(c_void_p)]),
    "pkgctx_string_free": (None, [c_void_p]),
    "pkgctx_need_update_n": (c_int, [worker_p, c_char_p, c_size_t, c_char_p, c_size_t, c_char_p, POINTER(c_int)]),
    "pkgctx_daemon": (c_int, [worker_p, POINTER(Daemon)]),
    "pkgctx_liveness_name": (c_char_p, [c_int]),
    "pkgctx_watch_fd": (c_int, [token_p, POINTER(c_int), POINTER(watch_p)]),
    "pkgctx_unwatch": (None, [watch_p]),
    "pkgctx_register": (c_int, [worker_p, c_char_p]),
    "pkgctx_registered": (c_int, [worker_p]),
    "pkgctx_task_begin": (c_int, [worker_p, c_char_p, c_size_t, c_int, POINTER(task_p)]),
    "pkgctx_task_begin_token": (c_int, [worker_p, token_p, POINTER(task_p)]),
    "pkgctx_task_token": (token_p, [task_p]),
    "pkgctx_task_end": (None, [task_p]),
}

TOKEN_STR_MAX = 128  # PKGCTX_TOKEN_STR_MAX


def _candidates() -> list[str]:
    """Where to look, in order: $PKGCTX_LIBRARY; the library installed with this package (the
    relative path the build recorded); the dynamic loader's search (ld.so.cache, LD_LIBRARY_PATH)."""
    found = []
    env = os.environ.get("PKGCTX_LIBRARY")
    if env:
        return [env]  # an explicit choice is not second-guessed
    try:
        from . import _install  # written by CMake at install time
        found.append(os.path.normpath(Path(__file__).resolve().parent / _install.LIBRARY))
    except ImportError:
        pass
    found.append(ctypes.util.find_library("pkgctx") or SONAME)
    if SONAME not in found:
        found.append(SONAME)
    return found


def load() -> ctypes.CDLL:
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        for name, (restype, argtypes) in PROTOTYPES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                errors.append(f"{path}: no {name} (a libpkgctx older than this module)")
                break
            fn.restype = restype
            fn.argtypes = argtypes
        else:
            return lib
    raise ImportError("pkgctx: cannot load " + SONAME + " (set PKGCTX_LIBRARY to its path): " + "; ".join(errors))


lib = load()
