"""Where the segmenter's pretrained weights come from: a path the user gives, the user cache, or a download.

The ESPNet checkpoints are the authors' own files from their public repositories (MIT); they are never shipped with
the project (the ADE20K model's two files are resolved in ``ade20k_segmenter``, through the same helpers). On first use they are downloaded once into ``~/.cache/rerender/segmentation/`` (``$RERENDER_CACHE``
overrides the root), checked against a pinned SHA-256 so a changed or truncated file is never used silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..downloads import DownloadError
from ..downloads import download_checked as _download_checked
from .base import SegmentationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    key: str
    filename: str
    url: str
    sha256: str
    architecture: str  # "espnet" (full, full-resolution output) or "espnet_c" (encoder, 1/8 resolution)


_ESPNET_RAW = "https://github.com/sacmehta/ESPNet/raw/afe71c38/pretrained"

CHECKPOINTS: dict[str, Checkpoint] = {
    "espnet_p2_q8": Checkpoint("espnet_p2_q8", "espnet_p2_q8_cityscapes.pth",
                               f"{_ESPNET_RAW}/decoder/espnet_p_2_q_8.pth",
                               "343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e", "espnet"),
    "espnetc_p2_q8": Checkpoint("espnetc_p2_q8", "espnetc_p2_q8_cityscapes.pth",
                                f"{_ESPNET_RAW}/encoder/espnet_p_2_q_8.pth",
                                "836f28a2a31bd4fc8997001ab6b620d1f9b7b274a03b32d9f3a95c17a011b438", "espnet_c"),
}
DEFAULT_CHECKPOINT = "espnet_p2_q8"


def cache_dir() -> Path:
    root = Path(os.environ.get("RERENDER_CACHE", Path.home() / ".cache" / "rerender"))
    return root / "segmentation"


def resolve_weights(path: str | Path | None = None, *, checkpoint: str = DEFAULT_CHECKPOINT,
                    download: bool = True) -> Path:
    """The local file of a checkpoint: ``path`` if given (a file, or a folder holding the checkpoint's file name),
    else the cache, else a fresh download into the cache (when ``download``)."""
    ckpt = CHECKPOINTS[checkpoint]
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = next((c for c in (p / ckpt.filename, p / "espnet" / ckpt.filename) if c.is_file()), p / ckpt.filename)
        if not p.is_file():
            raise SegmentationError(f"segmenter weights not found at {p}; pass the .pth file of {ckpt.url} "
                                    f"(or a folder holding {ckpt.filename}) with --segmenter-weights")
        return p
    cached = cache_dir() / ckpt.filename
    if cached.is_file():
        return cached
    if not download:
        raise SegmentationError(f"segmenter weights are not cached at {cached}; download {ckpt.url} there "
                                f"or pass --segmenter-weights PATH")
    return _download(ckpt, cached)


def _download(ckpt: Checkpoint, dest: Path) -> Path:
    return download_checked(ckpt.url, dest, ckpt.sha256)


def download_checked(url: str, dest: Path, sha256: str) -> Path:
    """Download ``url`` to ``dest`` (atomically) and keep it only if its SHA-256 is ``sha256``."""
    try:
        return _download_checked(url, dest, sha256, what="segmenter weights")
    except DownloadError as exc:
        raise SegmentationError(f"{exc}; download it by hand and pass --segmenter-weights PATH, or put it at "
                                f"{dest}") from exc
