"""Image metrics of the paper's Table 1 (VGG perceptual distance, L1 on 0-255, PSNR) plus SSIM.

L1 and PSNR follow the authors' evaluation script (uint8 images, mean absolute difference, PSNR with peak 255).
SSIM is Wang et al. 2004 with the usual 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, computed on each RGB
channel and averaged. The VGG distance is the training perceptual loss with the paper's layer weights; it is only
comparable to the paper when the ImageNet VGG19 weights are loaded (the result records which weights were used).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import PAPER_VGG_WEIGHTS
from .losses import perceptual_loss
from .vgg import VGG19Features

PSNR_CAP = 100.0  # identical images: PSNR is infinite; report this instead so JSON stays numeric


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"metrics compare two uint8 H x W x 3 images of one size, got {a.dtype} {a.shape} and "
                         f"{b.dtype} {b.shape}")


def l1_255(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images, in 0-255 units."""
    _check_pair(a, b)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (peak 255), capped at PSNR_CAP for identical images."""
    _check_pair(a, b)
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 RGB images (1 = identical), valid-window Gaussian SSIM."""
    _check_pair(a, b)
    x = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[:, None]
    y = torch.from_numpy(b.astype(np.float64)).permute(2, 0, 1)[:, None]
    size = min(11, a.shape[0], a.shape[1])
    w = _gaussian_window(size)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mx ** 2
    syy = F.conv2d(y * y, w) - my ** 2
    sxy = F.conv2d(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


@torch.no_grad()
def vgg_distance(vgg: VGG19Features, a: np.ndarray, b: np.ndarray, feature_scale: float = 0.1) -> float:
    """Perceptual distance (conv1_2 ... conv5_2, weights 1/32 ... 1) between two uint8 images."""
    _check_pair(a, b)
    dev = next(vgg.parameters()).device
    t = lambda im: (torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1).to(dev)  # noqa: E731
    return float(perceptual_loss(vgg, t(a), t(b), PAPER_VGG_WEIGHTS, feature_scale))


__all__ = ["PSNR_CAP", "l1_255", "psnr", "ssim", "vgg_distance"]
