"""Keep freed image buffers in the process: a stage allocates and frees tens of full-size
images a frame, and glibc's defaults hand each back to the kernel and fault it in again
(1536x814 embedded pipeline: ~2 of its ~20 CPU seconds per 40 frames were page faults).

``keep_freed_memory`` serves every allocation from the heap (glibc's mmap threshold tops out
at 32 MiB, below a window of five full-size float frames or a network's activations, and
each mmap'd block is faulted in page by page on every call: the network at 1536x813 spent
most of its time in the kernel), from one arena (a thread's own arena is mmap'd in 64 MiB
heaps, too small for those blocks), never trims the heap (the network frees more than a
GiB at a time, and a 1 GiB threshold handed that back to be faulted in again) and grows it
in 256 MiB steps. Resident memory then stays at its high-water mark, which is what a
streaming service wants. A no-op (False) where the C library is not glibc, and where the
environment sets ``HDRSTREAM_KEEP_MEMORY=0`` (a process that shares its machine and should
hand memory back, at the cost of the faults above).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -3, -4, -8  # <malloc.h>
_SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_MMAP_MAX, 0), (_M_ARENA_MAX, 1),
             (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, 256 << 20))  # -1: never trim
_done: bool | None = None
ENV = "HDRSTREAM_KEEP_MEMORY"


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process (before the stage threads start); True if it took."""
    global _done
    if _done is None:
        _done = _tune()
    return _done


def _tune() -> bool:
    if os.environ.get(ENV, "1").strip() == "0":
        log.info("%s=0: glibc's allocator keeps its defaults", ENV)
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults")
    return ok
