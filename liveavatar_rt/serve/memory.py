"""Hand memory freed by finished sessions back to the OS (glibc's malloc_trim).

Why: a session allocates and frees hundreds of MiB of tensors and buffers in its own threads.
glibc keeps freed memory in per-thread arenas, so a long-running server's RSS crept up with
every session although nothing leaked (Python object counts and tracemalloc flat over 60
sessions; see bench/RESULTS.md). malloc_trim(0) returns the free pages of every arena.

    trim_soon()   # after a session's teardown: at most one trim per MIN_INTERVAL_S, in a thread

A no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

MIN_INTERVAL_S = 1.0

_lock = threading.Lock()
_last = 0.0
_running = False


def _load_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_trim()


def _trim() -> None:
    global _running
    try:
        _malloc_trim(0)
    finally:
        with _lock:
            _running = False


def trim_soon() -> bool:
    """Start a trim in a short-lived thread unless one ran within MIN_INTERVAL_S or is running.
    Returns whether one was started."""
    global _last, _running
    if _malloc_trim is None:
        return False
    with _lock:
        now = time.monotonic()
        if _running or now - _last < MIN_INTERVAL_S:
            return False
        _running, _last = True, now
    threading.Thread(target=_trim, name="liveavatar-malloc-trim", daemon=True).start()
    return True
