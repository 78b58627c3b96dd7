"""Malloc settings for processes that move frame-sized messages: no page-fault churn on every frame.

Why: glibc serves large allocations (above a threshold that it moves at run time) with fresh ``mmap`` pages and
returns them to the OS on ``free``, and trims the heap whenever its free top exceeds twice that threshold. A
process that receives a 1080p deep buffer (four frames of 2-6 MB) and builds its reply then faults every page of
those buffers back in, frame after frame: ~7,000 minor page faults per message, which was all of the bridge's
extra time over a raw ZeroMQ echo (6-10 ms at 1080p). Fixing both thresholds keeps freed frame buffers in the
process for the next frame; the cost is that the process keeps its peak heap (a few frames' worth).

Only glibc has ``mallopt``; elsewhere (macOS, Windows, musl) :func:`keep_frame_buffers` does nothing and says so.
Environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set by the user win (nothing is
changed then), and ``RERENDER_KEEP_FRAME_BUFFERS=0`` turns the settings off (benchmarks compare both). This module
uses only the standard library (it is vendored into the Blender extension).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2); a 1080p frame's arrays are well below.
MMAP_THRESHOLD = 32 * 1024 * 1024
# Never hand the heap's free top back to the OS below this: several frames of buffers stay mapped.
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: dict[str, object] | None = None


def keep_frame_buffers(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> dict:
    """Fix glibc's mmap and trim thresholds for this process (once; later calls return the first result).

    Returns what happened, for a log line: ``{"applied": bool, "reason": str, ...}``. Never raises.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = _apply(mmap_threshold, trim_threshold)
    return _applied


def _apply(mmap_threshold: int, trim_threshold: int) -> dict:
    if not sys.platform.startswith("linux"):
        return {"applied": False, "reason": f"no glibc mallopt on {sys.platform}"}
    if os.environ.get("RERENDER_KEEP_FRAME_BUFFERS") == "0":
        return {"applied": False, "reason": "RERENDER_KEEP_FRAME_BUFFERS=0"}
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
        return {"applied": False, "reason": "MALLOC_*_THRESHOLD_ set in the environment; left as set"}
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return {"applied": False, "reason": "the C library is not glibc (no mallopt)"}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    version.restype = ctypes.c_char_p
    trim_ok = mallopt(M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))) == 1
    mmap_ok = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    return {"applied": trim_ok and mmap_ok, "reason": "mallopt" if trim_ok and mmap_ok else "mallopt refused",
            "glibc": version().decode(), "mmap_threshold": mmap_threshold if mmap_ok else None,
            "trim_threshold": trim_threshold if trim_ok else None}


__all__ = ["keep_frame_buffers", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]
