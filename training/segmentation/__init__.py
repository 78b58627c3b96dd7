"""Photo segmentation for the dataset builder (pluggable; ESPNet on Cityscapes by default)."""

from __future__ import annotations

from pathlib import Path

from .base import RemappedSegmenter, SegmentationError, Segmenter
from .weights import CHECKPOINTS, DEFAULT_CHECKPOINT, cache_dir, resolve_weights

__all__ = ["Segmenter", "RemappedSegmenter", "SegmentationError", "EspnetSegmenter", "load_segmenter",
           "CHECKPOINTS", "DEFAULT_CHECKPOINT", "cache_dir", "resolve_weights"]


def load_segmenter(weights: str | Path | None = None, *, checkpoint: str = DEFAULT_CHECKPOINT,
                   max_side: int = 512, device: str = "cpu") -> Segmenter:
    """The default segmenter (imports torch lazily so that code paths without segmentation stay light)."""
    from .espnet_segmenter import EspnetSegmenter

    return EspnetSegmenter(weights, checkpoint=checkpoint, max_side=max_side, device=device)


def __getattr__(name: str):
    if name == "EspnetSegmenter":
        from .espnet_segmenter import EspnetSegmenter

        return EspnetSegmenter
    raise AttributeError(name)
