"""The deep buffer of one view: the contract between Blender, the wire, the dataset and the networks
(docs/design.md §3).

Arrays are H x W, row 0 = top:
  color  float16 H x W x 3, scene-linear unlit point albedo, 0 where no point
  depth  float32 H x W, planar camera-space z in scene units, +inf where no point
  label  uint8   H x W, semantic class id, 255 = unknown
  mask   bool    H x W, a point was drawn here
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .classes import UNKNOWN


class BufferError(ValueError):
    """A deep buffer whose arrays break the contract of docs/design.md §3."""


@dataclass(eq=False)
class DeepBuffer:
    color: np.ndarray
    depth: np.ndarray
    label: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        self.color = _check(self.color, "color", np.float16, 3)
        h, w = self.color.shape[:2]
        self.depth = _check(self.depth, "depth", np.float32, 2, (h, w))
        self.label = _check(self.label, "label", np.uint8, 2, (h, w))
        self.mask = _check(self.mask, "mask", np.bool_, 2, (h, w))

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return self.color.shape[0], self.color.shape[1]

    @classmethod
    def empty(cls, height: int, width: int) -> "DeepBuffer":
        return cls(
            color=np.zeros((height, width, 3), np.float16),
            depth=np.full((height, width), np.inf, np.float32),
            label=np.full((height, width), UNKNOWN, np.uint8),
            mask=np.zeros((height, width), bool),
        )

    def coverage(self) -> float:
        """Fraction of pixels a point was drawn on (the paper drops views at <= 15 %)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def save_npz(self, path: str | Path) -> None:
        """Write to a compressed .npz (atomically: a crash never leaves half a file under the final name)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, color=self.color, depth=self.depth, label=self.label, mask=self.mask)
        tmp.replace(path)

    @classmethod
    def load_npz(cls, path: str | Path) -> "DeepBuffer":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(color=z["color"], depth=z["depth"], label=z["label"], mask=z["mask"])
        except (OSError, KeyError, ValueError) as exc:
            raise BufferError(f"{path}: not a readable deep buffer ({exc}); rebuild it with `rerender dataset`") from exc


def _check(a: np.ndarray, name: str, dtype: type, ndim: int, hw: tuple[int, int] | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        raise BufferError(f"DeepBuffer.{name} must be {np.dtype(dtype).name}, got {a.dtype}")
    if a.ndim != ndim or (ndim == 3 and a.shape[2] != 3):
        want = "H x W x 3" if ndim == 3 else "H x W"
        raise BufferError(f"DeepBuffer.{name} must be {want}, got shape {a.shape}")
    if hw is not None and a.shape[:2] != hw:
        raise BufferError(f"DeepBuffer.{name} is {a.shape[:2]} but color is {hw}: all passes must have one size")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise BufferError(f"DeepBuffer.{name} is empty ({a.shape})")
    return a


# ---- row bands: a frame's numpy work on a small thread pool ------------------------------------------------------
# Why: a 1080p frame is 2 M pixels, and the per-frame conversions around the wire (float16 <-> float32, sRGB tables,
# the add-on's passes) are gathers and casts that numpy runs on one core with the GIL released. Cut into bands of
# rows, they run on every core, and each band's temporaries stay in cache (np.take on a whole frame is 3x slower
# than on its bands, one thread alike).

BAND_ROWS = 64  # rows of a band: at 1920 px its index and value arrays stay in a core's L2 cache
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def band_threads() -> int:
    """Threads for row bands: the cores (at most 4), or ``RERENDER_BAND_THREADS`` when set."""
    forced = os.environ.get("RERENDER_BAND_THREADS", "")
    if forced.isdigit() and int(forced) > 0:
        return int(forced)
    return max(1, min(os.cpu_count() or 1, 4))


def row_bands(rows: int, work: Callable[[int, int], None], *, band_rows: int = BAND_ROWS) -> None:
    """``work(r0, r1)`` for bands of ``band_rows`` rows covering ``range(rows)``, spread over :func:`band_threads`
    threads (the caller's thread is one of them; bands interleaved for an even share). Exceptions are raised here.
    ``work`` must only write its own rows."""
    bands = [(r, min(r + band_rows, rows)) for r in range(0, rows, band_rows)]
    threads = min(band_threads(), len(bands))

    def run(share: list[tuple[int, int]]) -> None:
        for r0, r1 in share:
            work(r0, r1)

    if threads <= 1:
        run(bands)
        return
    futures = [_pool(threads - 1).submit(run, bands[k::threads]) for k in range(1, threads)]
    try:
        run(bands[0::threads])
    finally:
        for f in futures:
            f.result()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:  # grow only when asked for more
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rerender-rows")
        return _POOL

