"""Weights files: downloads that trust no byte before the whole file's SHA-256 matches, and one safe reader.

Why one module: the VGG19 checkpoint and the segmenters' checkpoints are fetched the same way — through a ``.part``
file next to the destination, the full digest checked, the file moved into place only then — and a fix to that
(a timeout, a partial file left behind) must reach every network the pipeline downloads. Checkpoints are read
the same way too, with ``weights_only=True`` (no code from the file runs). Callers turn :class:`DownloadError`
and :class:`WeightsFileError` into their own error type with the advice that fits them (which flag takes a path).
"""

from __future__ import annotations

import hashlib
import logging
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The file could not be fetched, or its SHA-256 is not the expected one (nothing was kept)."""


class WeightsFileError(ValueError):
    """A weights file is not a torch checkpoint holding a state dict."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_checked(url: str, dest: Path, sha256: str, *, what: str = "weights", timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically and keep it only if its SHA-256 is ``sha256``; returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.warning("downloading %s %s -> %s", what, url, dest)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
                while block := resp.read(1 << 20):
                    f.write(block)
        except OSError as exc:
            raise DownloadError(f"could not download {url} ({exc})") from exc
        digest = sha256_of(part)
        if digest != sha256.lower():
            raise DownloadError(f"downloaded {url} has SHA-256 {digest}, expected {sha256}; not using it")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    part.replace(dest)
    return dest


def read_state_dict(path: Path) -> dict:
    """The state dict in a torch checkpoint, read with ``weights_only=True``; a ``{"state_dict": ...}`` wrapper (as
    training scripts save them) is unwrapped."""
    import torch  # only the readers need torch; the download half stays importable without it

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise WeightsFileError(f"{path} is not a readable torch checkpoint ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path} holds no state dict (got {type(state).__name__})")
    return state


__all__ = ["DownloadError", "WeightsFileError", "download_checked", "read_state_dict", "sha256_of"]
