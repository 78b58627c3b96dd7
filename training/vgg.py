"""VGG19 feature extractor for the perceptual loss, the style (Gram) distance and the VGG metric.

Why our own definition: torchvision is not a dependency, but its ImageNet checkpoint (``vgg19-dcbb9e9d.pth``,
keys ``features.N.weight/bias`` and ``classifier.*``) is THE standard set of weights everyone's perceptual numbers
are computed with. So the layer indices here match torchvision's exactly and that file loads unchanged.

Where weights come from, in order: an explicit path; the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
a download where the network allows. Without any of them the extractor is built with random weights, under the
name :data:`RANDOM_FALLBACK`, and a loud warning says that losses and metrics are then NOT comparable to the paper.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .downloads import DownloadError, WeightsFileError, download_checked, read_state_dict, sha256_of

log = logging.getLogger(__name__)

VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
# torchvision's file (574,673,361 bytes); its name carries the first 8 hex digits of this digest
VGG19_SHA256 = "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44"
IMAGENET = "imagenet-vgg19"
RANDOM_FALLBACK = "random-init-vgg19 (NO IMAGENET WEIGHTS: losses and metrics are not comparable to the paper)"

# torchvision's configuration "E" (VGG19): channel counts, "M" = 2x2 max pool.
_CFG_E: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _layer_names() -> dict[str, int]:
    """Map 'conv1_2' etc. to the index of that conv in ``features`` (torchvision numbering)."""
    names, block, conv, idx = {}, 1, 0, 0
    for v in _CFG_E:
        if v == "M":
            block, conv = block + 1, 0
            idx += 1
        else:
            conv += 1
            names[f"conv{block}_{conv}"] = idx
            idx += 2  # conv, relu
    return names


LAYER_INDEX = _layer_names()


class VGGWeightsError(RuntimeError):
    """A VGG checkpoint that cannot be used (says which file and what is wrong)."""


class VGG19Features(nn.Module):
    """``features`` of torchvision's VGG19; returns post-ReLU activations at the requested conv layers.

    ``width_divisor`` > 1 shrinks every layer (tests on a CPU); only divisor 1 can load ImageNet weights.
    Inputs are sRGB in [-1, 1] (the networks' convention); ImageNet normalisation happens inside.
    """

    def __init__(self, layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2"),
                 width_divisor: int = 1):
        super().__init__()
        unknown = [n for n in layers if n not in LAYER_INDEX]
        if unknown:
            raise ValueError(f"unknown VGG19 layers {unknown}; known: {sorted(LAYER_INDEX)}")
        self.layers = tuple(layers)
        self.width_divisor = width_divisor
        self.weights_name = RANDOM_FALLBACK
        last = max(LAYER_INDEX[n] for n in self.layers) + 2  # keep the ReLU after the last requested conv
        modules: list[nn.Module] = []
        c_in = 3
        for v in _CFG_E:
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                c_out = max(1, int(v) // width_divisor)
                modules += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=False)]
                c_in = c_out
        self.features = nn.Sequential(*modules[:last])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self._taps = {LAYER_INDEX[n] + 1: n for n in self.layers}  # after the ReLU
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = ((x + 1) * 0.5 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out: dict[str, torch.Tensor] = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._taps:
                out[self._taps[i]] = x
        return [out[n] for n in self.layers]

    def train(self, mode: bool = True) -> "VGG19Features":
        return super().train(False)  # a fixed feature extractor: never in training mode

    def load_torchvision(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load ``features.N.*`` from a torchvision VGG19 state dict (classifier keys are ignored)."""
        own = self.features.state_dict()
        wanted = {f"features.{k}": v for k, v in own.items()}
        missing = [k for k in wanted if k not in state]
        if missing:
            raise VGGWeightsError(f"{source}: not a torchvision VGG19 checkpoint, missing {missing[:3]}... "
                                  f"(expected keys like features.0.weight); use {VGG19_FILENAME}")
        for key, value in wanted.items():
            if tuple(state[key].shape) != tuple(value.shape):
                raise VGGWeightsError(f"{source}: {key} has shape {tuple(state[key].shape)}, this VGG19 needs "
                                      f"{tuple(value.shape)} (width_divisor={self.width_divisor}; ImageNet "
                                      f"weights only fit the full-width network)")
        self.features.load_state_dict({k[len("features."):]: state[k] for k in wanted})
        self.weights_name = IMAGENET


def hub_checkpoint_path() -> Path:
    """Where torch hub keeps downloaded checkpoints ($TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILENAME


def load_vgg19(weights: str | Path | None = None, *, layers: Sequence[str] | None = None, width_divisor: int = 1,
               download: bool | None = None) -> VGG19Features:
    """Build the extractor and load ImageNet weights from ``weights``, the hub cache, or a download.

    An explicit ``weights`` path that is missing or broken is an error (the user asked for it). Otherwise the
    fallback is random weights with a loud warning. ``download`` defaults to ``$RERENDER_VGG_DOWNLOAD != "0"``.
    """
    kwargs = {"layers": tuple(layers)} if layers else {}
    vgg = VGG19Features(width_divisor=width_divisor, **kwargs)
    if width_divisor != 1:
        if weights is not None:
            raise VGGWeightsError(f"cannot load {weights} into a VGG19 shrunk by width_divisor={width_divisor}")
        log.info("VGG19 shrunk by %d for tests: random weights", width_divisor)
        return vgg
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise VGGWeightsError(f"VGG19 weights {path} not found; download {VGG19_URL} there or omit the path")
        vgg.load_torchvision(_read_state(path), source=str(path))
        return vgg
    cached = hub_checkpoint_path()
    if cached.is_file():
        _check_sha256(cached)
        vgg.load_torchvision(_read_state(cached), source=str(cached))
        return vgg
    if download is None:
        download = os.environ.get("RERENDER_VGG_DOWNLOAD", "1") != "0"
    if download:
        try:
            vgg.load_torchvision(_read_state(download_checkpoint(cached)), source=VGG19_URL)
            return vgg
        except Exception as exc:  # no network, proxy, disk full, wrong file...: fall back below, loudly
            log.warning("VGG19 download failed: %s", exc)
    message = (f"ImageNet VGG19 weights not found (looked in {cached}, download "
               f"{'failed' if download else 'disabled'}); using {RANDOM_FALLBACK}. Put {VGG19_FILENAME} "
               f"there or pass --vgg-weights PATH.")
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    log.warning(message)
    return vgg


def _check_sha256(path: Path, expected: str = VGG19_SHA256) -> None:
    digest = sha256_of(path)
    if digest != expected:
        raise VGGWeightsError(f"{path} has SHA-256 {digest}, expected {expected} (torchvision's {VGG19_FILENAME}); "
                              f"delete it and download {VGG19_URL} again")


def download_checkpoint(dest: Path, url: str = VGG19_URL, expected: str = VGG19_SHA256) -> Path:
    """Download ``url`` to ``dest`` through a ``.part`` file; keep it only if its SHA-256 is ``expected``.

    Why not torch.hub.load_state_dict_from_url: it unpickles with torch.load's defaults and checks only the
    8-digit prefix of the hash; here the full digest is checked before the file is read, and it is then read with
    ``weights_only=True`` (no code from the file runs).
    """
    try:
        return download_checked(url, dest, expected, what="VGG19 weights")
    except DownloadError as exc:
        raise VGGWeightsError(f"{exc}; download {VGG19_FILENAME} by hand and pass --vgg-weights PATH") from exc


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return read_state_dict(path)
    except WeightsFileError as exc:
        raise VGGWeightsError(f"{exc}; re-download {VGG19_URL}") from exc
