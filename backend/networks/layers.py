"""Layers shared by all three networks: equalized-learning-rate convolutions and linear maps, and pixel norm.

Why these (Karras et al., "Progressive Growing of GANs", which the authors' generator is adopted from):
- Equalized learning rate stores weights as N(0, 1) and multiplies by He's constant sqrt(gain / fan_in) at every
  forward pass instead of at initialisation. Adam's update size is then the same for every layer regardless of its
  fan-in, which is what lets the authors train with lr 1e-3 and no batch norm.
- Pixel norm divides each pixel's feature vector by its RMS over channels; it keeps the generator's activations
  from escalating without the batch statistics that batch/instance norm would tie to the batch composition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2


class EqualizedConv2d(nn.Module):
    """A Conv2d whose weights are N(0,1) parameters scaled at run time by sqrt(gain / fan_in)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
                 padding: int | None = None, gain: float = 2.0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = math.sqrt(gain / (in_channels * kernel_size * kernel_size))
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, scale={self.scale:.4g}"


class EqualizedLinear(nn.Module):
    """A Linear map with the same run-time He scaling as EqualizedConv2d."""

    def __init__(self, in_features: int, out_features: int, *, gain: float = 2.0, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = math.sqrt(gain / in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        o, i = self.weight.shape
        return f"{i}, {o}, scale={self.scale:.4g}"


class PixelNorm(nn.Module):
    """Normalise every pixel's feature vector to unit RMS over the channel axis."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the statistic in fp32, the product in x's dtype: under bf16 autocast pow/rsqrt run in fp32 and would turn
        # every activation back into fp32 (2x the memory traffic); for fp32 x this is the same computation
        return x * torch.rsqrt(x.float().pow(2).mean(dim=1, keepdim=True) + self.eps).to(x.dtype)


class ConvBlock(nn.Sequential):
    """3x3 equalized conv -> leaky ReLU 0.2 -> pixel norm: the unit the authors' U-Net is built from."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            EqualizedConv2d(in_channels, out_channels, kernel_size),
            nn.LeakyReLU(LEAKY_SLOPE),
            PixelNorm(),
        )
