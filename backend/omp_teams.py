"""One OpenMP thread for torch ops run on the row-band threads, so that bands side by side do not oversubscribe.

Why: torch's CPU ops split their elements over an OpenMP team (``at::parallel_for``), and OpenMP sizes a team from
the *calling thread's* setting, which a new Python thread inherits from the process default: every core. Two
row-band threads (``bridge.buffers.row_bands``) on two cores therefore each start a team of two, four busy threads
on two cores, and the bands gained nothing over one thread (1080p encode 8-10 ms either way on the reference
machine). With the band threads' own setting at one thread for the length of a band, the bands run truly side by
side: the 1080p wire encode went from 7.8-10.1 ms to 6.1-6.8 ms, and the output quantisation, which lost on the
band threads before, from 4.1-4.6 ms to 2.8-2.9 ms (docs/benchmarks.md).

``omp_set_num_threads`` changes only the calling thread's setting (OpenMP's ``nthreads-var`` is per thread), so
the caller's own thread, which runs bands too, gets its setting back after each band, and torch's global thread
count (``torch.get_num_threads``, MKL's, oneDNN's) is never touched: the network's forward keeps every core.

Where torch does not use OpenMP, or its runtime cannot be found, :func:`single_omp_thread` does nothing and
:data:`AVAILABLE` is False (callers then keep work that loses on oversubscribed threads in the caller's thread).
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from typing import Iterator

import torch


def _find_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch runs on: the one bundled beside its libraries, else one already loaded by name."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    candidates = [p for pattern in ("libgomp*.so*", "libiomp5*", "libomp*") for p in
                  sorted(glob.glob(os.path.join(lib_dir, pattern)))]
    candidates += ["libgomp.so.1", "libiomp5.so", "libomp.so"]
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
            lib.omp_set_num_threads.argtypes = [ctypes.c_int]
            lib.omp_get_max_threads.restype = ctypes.c_int
            return lib
        except (OSError, AttributeError):
            continue
    return None


_RUNTIME = _find_runtime()
AVAILABLE = _RUNTIME is not None


@contextmanager
def single_omp_thread() -> Iterator[None]:
    """Within the block, torch ops started from this thread use one OpenMP thread; the setting is restored after."""
    if _RUNTIME is None:
        yield
        return
    previous = _RUNTIME.omp_get_max_threads()
    _RUNTIME.omp_set_num_threads(1)
    try:
        yield
    finally:
        _RUNTIME.omp_set_num_threads(previous)


__all__ = ["AVAILABLE", "single_omp_thread"]
