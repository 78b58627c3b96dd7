"""The gallery entry both sides share: a named look (appearance latent) with a thumbnail to recognise it.

One type for the bundle's gallery (backend), the ``appearances`` reply (client) and the add-on's looks list, so
the validation of what an entry may hold is written once. numpy only: the bridge is vendored into the add-on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Appearance:
    """A named appearance: a latent the artist can key on the timeline, with a thumbnail to recognise it."""

    name: str
    latent: np.ndarray  # float32, length = latent_size
    thumbnail: np.ndarray  # uint8 h x w x 3 sRGB

    def __post_init__(self) -> None:
        self.latent = np.asarray(self.latent, dtype=np.float32).reshape(-1)
        self.thumbnail = np.asarray(self.thumbnail)
        if self.thumbnail.dtype != np.uint8 or self.thumbnail.ndim != 3 or self.thumbnail.shape[2] != 3:
            raise ValueError(f"appearance {self.name!r}: thumbnail must be uint8 h x w x 3, got "
                             f"{self.thumbnail.dtype} {self.thumbnail.shape}")
        if not np.all(np.isfinite(self.latent)):
            raise ValueError(f"appearance {self.name!r}: latent has non-finite values")


__all__ = ["Appearance"]
