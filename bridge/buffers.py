"""The deep buffer of one view: the contract between Blender, the wire, the dataset and the networks
(docs/design.md §3).

Arrays are H x W, row 0 = top:
  color  float16 H x W x 3, scene-linear unlit point albedo, 0 where no point
  depth  float32 H x W, planar camera-space z in scene units, +inf where no point
  label  uint8   H x W, semantic class id, 255 = unknown
  mask   bool    H x W, a point was drawn here
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
