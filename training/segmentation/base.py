"""The photo segmenter interface: anything that turns an sRGB photo into class ids of a ``ClassTable``.

Why an interface: the default segmenter (ESPNet, Cityscapes) is small and free, but the paper used an ADE20K
model, and a user may have a better one. A segmenter declares its own class table; the dataset stores that table in
the manifest, so the rest of the pipeline never assumes Cityscapes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rerender.bridge.classes import UNKNOWN, ClassTable

from ..numerics import subnormals_flushed


class SegmentationError(RuntimeError):
    """The segmenter cannot run (missing or wrong weights, bad input)."""


class Segmenter(ABC):
    """Labels photos. Subclasses set ``classes`` and implement ``_predict``; ``segment`` checks input and output."""

    #: the class table the returned ids refer to
    classes: ClassTable
    #: a short identifier stored in dataset manifests (which segmenter labelled the photos)
    name: str = "segmenter"

    def segment(self, photo: np.ndarray) -> np.ndarray:
        """Class ids (uint8 H x W, ``UNKNOWN`` = 255 where the model abstains) for an sRGB uint8 H x W x 3 photo."""
        photo = np.asarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise SegmentationError(f"segment() needs an sRGB uint8 H x W x 3 photo, got {photo.dtype} {photo.shape}")
        if min(photo.shape[:2]) < 8:
            raise SegmentationError(f"photo of {photo.shape[1]}x{photo.shape[0]} px is too small to segment")
        with subnormals_flushed():  # trained CNNs' subnormal activations: x86 microcode, several times slower
            labels = self._predict(photo)
        if labels.shape != photo.shape[:2] or labels.dtype != np.uint8:
            raise SegmentationError(f"{type(self).__name__} returned {labels.dtype} {labels.shape}, "
                                    f"expected uint8 {photo.shape[:2]}")
        bad = (labels >= len(self.classes)) & (labels != UNKNOWN)
        if bad.any():
            raise SegmentationError(f"{type(self).__name__} returned ids outside its class table")
        return labels

    @abstractmethod
    def _predict(self, photo: np.ndarray) -> np.ndarray:
        """uint8 H x W ids for a validated photo."""


class RemappedSegmenter(Segmenter):
    """Wraps a segmenter with another label space (an ADE20K model, say) and maps its ids onto a table.

    ``mapping[i]`` is the target id of the wrapped model's class i (``UNKNOWN`` for classes with no counterpart),
    e.g. ADE20K "sky" → Cityscapes "sky", "tree" → "vegetation", "person" → "person", "wall"/"house" → "building".
    """

    def __init__(self, inner: Segmenter, mapping: dict[int, int] | np.ndarray, classes: ClassTable):
        self.inner = inner
        self.classes = classes
        self.name = f"{inner.name}->remapped"
        lut = np.full(256, UNKNOWN, np.uint8)
        items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
        for src, dst in items:
            if not (0 <= int(src) < 256) or not (0 <= int(dst) < len(classes) or int(dst) == UNKNOWN):
                raise SegmentationError(f"label mapping {src} -> {dst} is outside 0..255 or the target table")
            lut[int(src)] = int(dst)
        self._lut = lut

    def _predict(self, photo: np.ndarray) -> np.ndarray:
        return self._lut[self.inner.segment(photo)]
