"""The default photo segmenter where its weights are present: MIT CSAIL's ADE20K model, folded onto the landmark table.

Weights: the authors' two files (``encoder_epoch_20.pth``, ``decoder_epoch_20.pth``, BSD-3-Clause) from
http://sceneparsing.csail.mit.edu/model/pytorch/ade20k-mobilenetv2dilated-c1_deepsup/, in a folder given with
``--segmenter-weights`` or in ``~/.cache/rerender/segmentation/ade20k-mobilenetv2dilated-c1_deepsup/``. The authors
publish no checksums, so the project pins none: an automatic download happens only when the user supplies the two
SHA-256 values (``--segmenter-sha256 ENC,DEC``) to check it against; otherwise the user downloads the files once.

Preprocessing follows the authors' test code: RGB in 0–1 normalised with ImageNet's mean and std, the shorter side
resized to one of the training scales (450 px by default; the long side capped) and both sides rounded to
multiples of 8; the logits (1/8 resolution) are upsampled bilinearly to the photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerender.bridge.classes import LANDMARK_CLASSES, ClassTable

from .ade20k_labels import ADE20K_NAMES, landmark_mapping
from .ade20k_net import NUM_CLASSES, SceneParser
from .base import SegmentationError, Segmenter
from ..downloads import WeightsFileError, read_state_dict, sha256_of
from .weights import cache_dir, download_checked

MODEL = "ade20k-mobilenetv2dilated-c1_deepsup"
FILES = ("encoder_epoch_20.pth", "decoder_epoch_20.pth")
URL = f"http://sceneparsing.csail.mit.edu/model/pytorch/{MODEL}/"
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _folder_with_files(path: Path) -> Path | None:
    for d in (path, path / MODEL):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def find_ade20k_weights(path: str | Path | None = None) -> Path | None:
    """The folder holding both files: ``path`` (or its ``MODEL`` subfolder), else the cache; None if absent."""
    return _folder_with_files(Path(path).expanduser() if path is not None else cache_dir())


def resolve_ade20k_weights(path: str | Path | None = None, *, sha256: str | None = None) -> Path:
    """The weights folder; downloads into the cache only with user-supplied checksums ("ENC_SHA256,DEC_SHA256")."""
    found = find_ade20k_weights(path)
    if found is not None:
        return found
    where = Path(path).expanduser() if path is not None else cache_dir() / MODEL
    if path is None and sha256:
        hashes = [h.strip() for h in sha256.split(",")]
        if len(hashes) != 2 or not all(len(h) == 64 for h in hashes):
            raise SegmentationError("--segmenter-sha256 needs two SHA-256 hex digests, ENCODER,DECODER")
        for name, digest in zip(FILES, hashes):
            if not (where / name).is_file():
                download_checked(URL + name, where / name, digest)
        return where
    raise SegmentationError(
        f"ADE20K segmenter weights not found in {where}: download {URL}{FILES[0]} and {URL}{FILES[1]} into that "
        f"folder (or any folder, then pass it with --segmenter-weights). The authors publish no checksums; to let "
        f"`rerender dataset` download them, pass the SHA-256 values you trust with --segmenter-sha256 ENC,DEC")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = read_state_dict(path)
    except WeightsFileError as exc:
        raise SegmentationError(str(exc)) from exc
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Every key must match; only BatchNorm's ``num_batches_tracked`` (unused at inference) may be absent."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise SegmentationError(f"these weights do not fit the {what} of {MODEL}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise SegmentationError(f"these weights do not fit the {what} of {MODEL}: missing {missing[:5]}, "
                                f"unexpected {result.unexpected_keys[:5]}")


def build_scene_parser(encoder_state: dict, decoder_state: dict) -> SceneParser:
    """The network with both state dicts loaded strictly (a mismatch is a SegmentationError)."""
    net = SceneParser()
    _load_strict(net.encoder, encoder_state, "encoder")
    _load_strict(net.decoder, decoder_state, "decoder")
    return net.eval()


class Ade20kSegmenter(Segmenter):
    """Landmark-table labels from the ADE20K scene parser (``ade20k_ids`` gives its raw 150 classes)."""

    classes: ClassTable = LANDMARK_CLASSES
    name = f"ade20k:{MODEL}"

    def __init__(self, weights: str | Path | None = None, *, short_side: int = 450, max_side: int = 1000,
                 device: str = "cpu", sha256: str | None = None):
        if short_side < 64 or max_side < short_side:
            raise SegmentationError(f"short_side={short_side}, max_side={max_side}: need 64 <= short <= max")
        self.weights_path = resolve_ade20k_weights(weights, sha256=sha256)
        enc, dec = (_load_state(self.weights_path / f) for f in FILES)
        self.net = build_scene_parser(enc, dec).to(device)
        self.device, self.short_side, self.max_side = device, short_side, max_side
        self._lut = np.asarray(landmark_mapping(self.classes), np.uint8)

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the network runs at: shorter side ``short_side``, long side <= ``max_side``, multiples of 8."""
        scale = min(self.short_side / min(height, width), self.max_side / max(height, width))
        return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)

    @torch.inference_mode()
    def logits(self, photo: np.ndarray) -> torch.Tensor:
        """Scores of the 150 ADE20K classes (1 x 150 x H x W) at the photo's size."""
        h, w = photo.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(photo)).to(self.device, torch.float32).permute(2, 0, 1)[None] / 255
        x = (x - torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)) / \
            torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)
        wh, ww = self.working_size(h, w)
        if (wh, ww) != (h, w):
            x = F.interpolate(x, size=(wh, ww), mode="bilinear", align_corners=False, antialias=wh < h)
        out = self.net(x)
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    def ade20k_ids(self, photo: np.ndarray) -> np.ndarray:
        """uint8 H x W ids into ``ADE20K_NAMES`` (the model's own classes, before the fold)."""
        return self.logits(photo)[0].argmax(0).to(torch.uint8).cpu().numpy()

    def _predict(self, photo: np.ndarray) -> np.ndarray:
        return self._lut[self.ade20k_ids(photo)]


if len(ADE20K_NAMES) != NUM_CLASSES:  # the fold indexes output channels by position
    raise ImportError(f"ADE20K_NAMES has {len(ADE20K_NAMES)} names, the model {NUM_CLASSES} outputs")
__all__ = ["Ade20kSegmenter", "FILES", "MODEL", "URL", "build_scene_parser", "find_ade20k_weights",
           "resolve_ade20k_weights", "sha256_of"]
