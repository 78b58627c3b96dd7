"""Photo segmentation for the dataset builder (pluggable).

The default for photo collections is the ADE20K scene parser (landmark table) wherever its weights are present;
otherwise ESPNet on Cityscapes (street scenes: it may call a statue "car" — the dataset report warns when that
happens). ``choose_segmenter`` says which one runs and why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .base import RemappedSegmenter, SegmentationError, Segmenter
from .weights import CHECKPOINTS, DEFAULT_CHECKPOINT, cache_dir, resolve_weights

__all__ = ["Segmenter", "RemappedSegmenter", "SegmentationError", "EspnetSegmenter", "Ade20kSegmenter",
           "load_segmenter", "choose_segmenter", "SEGMENTERS", "CHECKPOINTS", "DEFAULT_CHECKPOINT", "cache_dir",
           "resolve_weights"]

log = logging.getLogger(__name__)

ADE20K = "ade20k"
SEGMENTERS = ("auto", ADE20K, *CHECKPOINTS)


def choose_segmenter(weights: str | Path | None = None, *, segmenter: str = "auto",
                     sha256: str | None = None) -> tuple[str, str]:
    """(segmenter key, why) for ``segmenter="auto"``: ADE20K where its weights are (or can be fetched), else ESPNet."""
    from .ade20k_segmenter import find_ade20k_weights

    if segmenter != "auto":
        if segmenter not in SEGMENTERS:
            raise SegmentationError(f"unknown segmenter {segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
        return segmenter, "chosen with --segmenter"
    if weights is not None:
        p = Path(weights).expanduser()
        if find_ade20k_weights(p) is not None:
            return ADE20K, f"ADE20K weights found in {p}"
        for key, ckpt in CHECKPOINTS.items():
            if p.name == ckpt.filename or (p.is_dir() and ((p / ckpt.filename).is_file()
                                                          or (p / "espnet" / ckpt.filename).is_file())):
                return key, f"ESPNet weights found at {p}"
        if p.is_file():
            return DEFAULT_CHECKPOINT, f"{p} is taken for an ESPNet checkpoint"
        raise SegmentationError(f"--segmenter-weights {p}: neither the ADE20K files (encoder_epoch_20.pth and "
                                f"decoder_epoch_20.pth) nor an ESPNet checkpoint are there")
    if find_ade20k_weights(None) is not None:
        return ADE20K, f"ADE20K weights found in {cache_dir()}"
    if sha256:
        return ADE20K, "ADE20K weights to download (checked against --segmenter-sha256)"
    return DEFAULT_CHECKPOINT, (f"no ADE20K weights in {cache_dir()}: falling back to ESPNet (Cityscapes street "
                                f"scenes; landmarks may be mislabelled; see docs/dataset.md to install ADE20K)")


def load_segmenter(weights: str | Path | None = None, *, checkpoint: str = "auto", max_side: int = 512,
                   device: str = "cpu", sha256: str | None = None) -> Segmenter:
    """The segmenter ``choose_segmenter`` picks (imports torch lazily so paths without segmentation stay light)."""
    key, why = choose_segmenter(weights, segmenter=checkpoint, sha256=sha256)
    if key != ADE20K and checkpoint == "auto" and weights is None:
        log.warning("segmenter: %s", why)
    else:
        log.debug("segmenter: %s (%s)", key, why)
    if key == ADE20K:
        from .ade20k_segmenter import Ade20kSegmenter

        return Ade20kSegmenter(weights, device=device, sha256=sha256)
    from .espnet_segmenter import EspnetSegmenter

    return EspnetSegmenter(weights, checkpoint=key, max_side=max_side, device=device)


def __getattr__(name: str):
    if name == "EspnetSegmenter":
        from .espnet_segmenter import EspnetSegmenter

        return EspnetSegmenter
    if name == "Ade20kSegmenter":
        from .ade20k_segmenter import Ade20kSegmenter

        return Ade20kSegmenter
    raise AttributeError(name)
