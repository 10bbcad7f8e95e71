"""Process memory tuning for loops over full-size mammograms.

A full-size film is a 30-50 MB array, and one image through the preprocessing steps makes a dozen
such temporaries. glibc's malloc serves blocks that large with a fresh ``mmap`` and hands them back
to the kernel on ``free``, so every temporary of every image is new memory that the kernel must
fault in and zero first: measured as 25-35 ms of system time per film in ``benchmarks/preprocess.py``
(a fifth of the whole per-image cost). Raising malloc's mmap and trim thresholds keeps freed blocks
in the process for the next image to reuse, which removes that cost; the price is that the process
keeps its peak memory (a few hundred MB per worker) until it exits.

:func:`retain_freed_memory` is called once per worker process by the image loops (preprocess,
organize). It is a no-op where malloc is not glibc's (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# mallopt() parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap (larger than any mammogram's temporaries); freed memory is
# returned to the kernel only when 2 GiB sit unused at the top of the heap.
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = (1 << 31) - 1

_done: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc keep freed large blocks for reuse in this process; True when it took effect.

    Idempotent and cheap to call per item: the first call decides, later calls return its result.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _done
