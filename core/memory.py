"""The process's heap: keep freed memory for reuse where a model runs on the CPU.

A CPU forward pass allocates and frees the same activation buffers, tens to hundreds of
megabytes each, for every batch. glibc's ``malloc`` serves an allocation above its mmap
threshold (128 KiB, raised dynamically to at most 32 MiB) with fresh pages from the kernel
and gives them back on ``free``, so every batch page-faults its whole working set in again.
On a 2-core virtual machine ``efficientnet-lite1`` spent as much CPU time in the kernel as
in the model that way (4.9 million page faults per 256 images; ``docs/benchmarks.md``).

:func:`keep_freed_memory` raises the mmap threshold to 1 GiB and the trim threshold to
2 GiB (``mallopt``), so freed buffers stay in the heap and the next batch reuses them. The
process then keeps its peak heap until it exits, which is what a process that embeds
batch after batch needs anyway. It changes no result, only where memory comes from.

``FACEBANK_MALLOC=system`` leaves the allocator as it is. Other C libraries (macOS, musl)
are left as they are too. Either way the choice is returned, to be recorded beside the run.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["MALLOC_ENV", "keep_freed_memory"]

MALLOC_ENV = "FACEBANK_MALLOC"
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # allocations below 1 GiB come from the heap
_TRIM_THRESHOLD = 2**31 - 1  # the heap's top is given back only above ~2 GiB free

_lock = threading.Lock()
_done: str | None = None


def keep_freed_memory() -> str:
    """Tune glibc's malloc to keep freed memory (once per process); what the heap does.

    Returns:
        ``"kept"`` when the thresholds were raised (now or before in this process),
        ``"system"`` when ``FACEBANK_MALLOC=system`` asks to leave them, or
        ``"system (not glibc)"`` where the C library is not glibc.
    """
    global _done
    with _lock:
        if _done is None:
            _done = _tune()
        return _done


def _tune() -> str:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "system":
        return "system"
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system (not glibc)"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    return "kept" if ok else "system (mallopt refused)"
