"""The default photo segmenter: pretrained ESPNet on Cityscapes' 19 classes (docs/design.md §4).

Preprocessing follows the authors' inference script exactly, because the weights only work with it: BGR channel
order, subtract the per-channel mean and divide by the std on the 0–255 scale, then divide by 255. The network was
trained at 1024x512; we run at the photo's aspect ratio with the long side capped (``max_side``), sides rounded to
multiples of 8 (the decoder's three 2x up-convolutions need it), and upsample the logits bilinearly to the photo.
Output 19 is the checkpoint's "ignore" class and becomes ``UNKNOWN``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerender.bridge.classes import DEFAULT_CLASSES, UNKNOWN, ClassTable

from ..downloads import WeightsFileError, read_state_dict
from .base import SegmentationError, Segmenter
from .espnet import ESPNet, ESPNetC
from .weights import CHECKPOINTS, DEFAULT_CHECKPOINT, resolve_weights

# the authors' dataset statistics, BGR order, 0-255 scale
_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
_STD_BGR = (45.3192215, 46.15289307, 44.91483307)
_OUTPUTS = 20  # 19 Cityscapes classes + ignore


def build_network(architecture: str, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The ESPNet variant for ``architecture`` with ``state_dict`` loaded strictly (a mismatch is an error)."""
    net = ESPNet(_OUTPUTS, 2, 8) if architecture == "espnet" else ESPNetC(_OUTPUTS, 2, 8)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise SegmentationError(f"these weights do not fit {architecture} (p=2, q=8): {exc}") from exc
    return net.eval()


class EspnetSegmenter(Segmenter):
    """Cityscapes labels from the authors' pretrained ESPNet (full, p=2 q=8, by default)."""

    classes: ClassTable = DEFAULT_CLASSES

    def __init__(self, weights: str | Path | None = None, *, checkpoint: str = DEFAULT_CHECKPOINT,
                 max_side: int = 512, device: str = "cpu", download: bool = True):
        if checkpoint not in CHECKPOINTS:
            raise SegmentationError(f"unknown ESPNet checkpoint {checkpoint!r}; choose one of {sorted(CHECKPOINTS)}")
        if max_side < 64:
            raise SegmentationError(f"max_side={max_side} is too small; ESPNet needs at least 64 px")
        self.weights_path = resolve_weights(weights, checkpoint=checkpoint, download=download)
        try:
            state = read_state_dict(self.weights_path)
        except WeightsFileError as exc:
            raise SegmentationError(str(exc)) from exc
        self.architecture = CHECKPOINTS[checkpoint].architecture
        self.net = build_network(self.architecture, state).to(device)
        self.device = device
        self.max_side = max_side
        self.name = f"espnet:{checkpoint}"

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the network runs at: aspect kept, long side <= max_side, multiples of 8."""
        scale = min(1.0, self.max_side / max(height, width))
        return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)

    @torch.inference_mode()
    def logits(self, photo: np.ndarray) -> torch.Tensor:
        """Per-class scores (1 x 20 x H x W) at the photo's size."""
        h, w = photo.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(photo[:, :, ::-1])).to(self.device, torch.float32)
        x = x.permute(2, 0, 1)[None]
        mean = torch.tensor(_MEAN_BGR, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(_STD_BGR, device=self.device).view(1, 3, 1, 1)
        x = (x - mean) / std / 255.0
        wh, ww = self.working_size(h, w)
        if (wh, ww) != (h, w):
            x = F.interpolate(x, size=(wh, ww), mode="bilinear", align_corners=False, antialias=True)
        out = self.net(x)
        return F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)

    def _predict(self, photo: np.ndarray) -> np.ndarray:
        ids = self.logits(photo)[0].argmax(0).to(torch.uint8).cpu().numpy()
        ids[ids == _OUTPUTS - 1] = UNKNOWN
        return ids
