"""Feature networks for the perceptual loss and stage 1's style distance: ImageNet VGG19, else the segmenter's encoder.

Why a second network: the paper's losses are defined on ImageNet VGG features, but those weights cannot be had
everywhere (offline render nodes, firewalled farms), and the CPU presets cannot afford the full VGG19. A VGG with
random weights is what remained, and its features mean nothing: measured, its perceptual loss is ~1e-5 and its
Gram distances rank photos by noise, so stage 1 learned latents that do not cluster by light. The pipeline already
ships a network with real trained weights: the photo segmenter, ESPNet (trained on Cityscapes). Its encoder
(ESPNet-C) sees colour and texture at 1/2, 1/4 and 1/8 of the resolution, which is what a Gram (style) distance
and a perceptual loss need. It is the fallback, and every place that records which features were used
(run.json, the bundle's notes, metrics.json, the log) names it: :data:`SEGMENTER_FEATURES`.

Choice (``TrainConfig.features``):
  auto       full-width VGG19 with ImageNet weights if they load (explicit path, hub cache, download), else the
             segmenter's encoder, else a random VGG19 with a loud warning. A shrunk VGG (``vgg_width_divisor`` > 1,
             the CPU presets) can never hold ImageNet weights, so there auto starts at the segmenter.
  vgg19      VGG19 as configured (ImageNet weights if found, else random, loudly): the paper's setting.
  segmenter  the segmenter's encoder; an error if its weights cannot be had.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .config import FEATURE_CHOICES
from .downloads import WeightsFileError, read_state_dict
from .vgg import IMAGENET, VGG19Features, load_vgg19

log = logging.getLogger(__name__)

SEGMENTER_FEATURES = "segmenter-encoder espnet_p2_q8 (Cityscapes weights; NOT ImageNet VGG19: perceptual numbers " \
                     "are not comparable to the paper)"
# weights of the three ESPNet-C taps (1/2, 1/4, 1/8 resolution), coarse features weighted most as the paper's
# VGG weights do; the scale brings the loss to the size of an L1 term on [-1, 1] images (measured on the demo's
# photos: ~0.5 for unrelated images, ~0.005 for a 5 % noise perturbation)
SEGMENTER_LAYER_WEIGHTS = (0.25, 0.5, 1.0)
SEGMENTER_FEATURE_SCALE = 5.0

# the segmenter's input statistics (BGR, 0-255), as its inference code uses them
_MEAN_BGR = (72.3923111, 82.90893555, 73.15840149)
_STD_BGR = (45.3192215, 46.15289307, 44.91483307)


class FeatureError(RuntimeError):
    """A feature network that was asked for and cannot be built (says why and what to do)."""


class SegmenterFeatures(nn.Module):
    """ESPNet-C (the segmenter's encoder) as a fixed feature extractor: inputs sRGB in [-1, 1], three feature maps.

    Same interface as :class:`~rerender.training.vgg.VGG19Features` (call -> list of activations, ``weights_name``),
    plus ``layer_weights`` and ``feature_scale`` that replace the paper's VGG weights in the perceptual loss.
    """

    layer_weights: tuple[float, ...] = SEGMENTER_LAYER_WEIGHTS
    feature_scale: float = SEGMENTER_FEATURE_SCALE

    def __init__(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        super().__init__()
        from .segmentation.espnet import ESPNetC

        encoder = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")} or state_dict
        self.net = ESPNetC(20, 2, 8)
        try:
            self.net.load_state_dict(encoder, strict=True)
        except RuntimeError as exc:
            raise FeatureError(f"{source}: not an ESPNet (p=2, q=8) checkpoint ({exc})") from exc
        self.source = source
        self.weights_name = SEGMENTER_FEATURES
        self.layers = ("level1", "level2", "level3")
        # RGB order of the statistics (the network was trained on BGR; we flip the input below)
        self.register_buffer("mean", torch.tensor(_MEAN_BGR[::-1]).view(1, 3, 1, 1) / 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(_STD_BGR[::-1]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # the segmenter's preprocessing: (v255 - mean) / std / 255 in BGR order
        rgb01 = (x + 1) * 0.5
        z = (rgb01 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return list(self.net.features(z.flip(1)))

    def train(self, mode: bool = True) -> "SegmenterFeatures":
        return super().train(False)  # batch norm in inference mode, always


def load_segmenter_features(weights: str | Path | None = None, *, download: bool = True) -> SegmenterFeatures:
    """The segmenter's encoder with the ESPNet weights from ``weights`` (file or folder), the cache or a download
    (SHA-256 checked by training/segmentation/weights.py)."""
    from .segmentation.base import SegmentationError
    from .segmentation.weights import resolve_weights

    try:
        path = resolve_weights(weights, download=download)
    except SegmentationError as exc:
        raise FeatureError(f"segmenter-encoder features: {exc}") from exc
    try:
        state = read_state_dict(path)
    except WeightsFileError as exc:
        raise FeatureError(f"segmenter-encoder features: {exc}") from exc
    return SegmenterFeatures(state, source=str(path))


def load_features(choice: str = "auto", *, vgg_weights: str | Path | None = None, width_divisor: int = 1,
                  segmenter_weights: str | Path | None = None, download: bool | None = None) -> nn.Module:
    """The feature network for ``choice`` (see the module docstring); the choice is logged loudly."""
    if choice not in FEATURE_CHOICES:
        raise FeatureError(f"unknown features {choice!r}; choose one of {', '.join(FEATURE_CHOICES)}")
    if choice == "vgg19":
        return _announce(load_vgg19(vgg_weights, width_divisor=width_divisor, download=download))
    if choice == "segmenter":
        return _announce(load_segmenter_features(segmenter_weights, download=download is not False))
    if width_divisor == 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the random fallback is decided below, not there
            vgg = load_vgg19(vgg_weights, width_divisor=1, download=download)
        if vgg.weights_name == IMAGENET:
            return _announce(vgg)
    try:
        return _announce(load_segmenter_features(segmenter_weights, download=download is not False))
    except FeatureError as exc:
        vgg = VGG19Features(width_divisor=width_divisor)
        message = (f"no ImageNet VGG19 and no segmenter weights ({exc}); the perceptual loss and style distance use "
                   f"{vgg.weights_name}")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        log.warning(message)
        return vgg


def layer_weights_for(features: nn.Module, vgg_weights: Sequence[float]) -> tuple[float, ...]:
    """Per-layer weights of the perceptual loss: the paper's for VGG19, the extractor's own otherwise."""
    return tuple(getattr(features, "layer_weights", None) or vgg_weights)


def feature_scale_for(features: nn.Module, vgg_scale: float) -> float:
    """Activation scale of the perceptual loss: the paper's 0.1 for VGG19, the extractor's own otherwise."""
    return float(getattr(features, "feature_scale", None) or vgg_scale)


def _announce(features: nn.Module) -> nn.Module:
    log.warning("feature network for the perceptual loss and style distance: %s", features.weights_name)
    return features


__all__ = ["FEATURE_CHOICES", "FeatureError", "SEGMENTER_FEATURES", "SegmenterFeatures", "feature_scale_for",
           "layer_weights_for", "load_features", "load_segmenter_features"]
