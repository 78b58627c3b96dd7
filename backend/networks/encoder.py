"""The appearance encoder Ea: photo + its deep buffer -> appearance latent (official-code-facts.md).

Architecture (BicycleGAN's ResNet encoder, which the paper cites as [25], with pixel norm as the authors use):
4x4 stride-2 conv (3 + C -> w), residual blocks w -> 2w -> 3w -> 4w each halving the resolution, leaky ReLU,
global average pool, two linear heads (mean, log-variance) of the latent length.

Seeing the deep buffer next to the photo lets Ea explain away what the viewpoint and the semantics already say,
so the latent holds appearance (light, weather, season) rather than geometry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import NetworkConfig, input_channels
from .layers import LEAKY_SLOPE, EqualizedConv2d, EqualizedLinear, PixelNorm


class ResidualDownBlock(nn.Module):
    """pre-activation residual block that halves the resolution: [norm, lrelu, conv, norm, lrelu, conv, pool] + skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            PixelNorm(), nn.LeakyReLU(LEAKY_SLOPE), EqualizedConv2d(in_channels, in_channels, 3),
            PixelNorm(), nn.LeakyReLU(LEAKY_SLOPE), EqualizedConv2d(in_channels, out_channels, 3),
            nn.AvgPool2d(2),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), EqualizedConv2d(in_channels, out_channels, 1, gain=1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class AppearanceEncoder(nn.Module):
    """Ea(I, B) -> (mean, logvar), each N x L."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        latent = int(config.latent_size or 0)
        if latent < 1:
            raise ValueError("AppearanceEncoder needs latent_size >= 1; a bundle without appearance (latent_size 0) "
                             "has no encoder")
        if config.encoder_channels < 1 or config.encoder_blocks < 1:
            raise ValueError(f"bad encoder sizes: encoder_channels={config.encoder_channels}, "
                             f"encoder_blocks={config.encoder_blocks} (both must be >= 1)")
        self.buffer_channels = input_channels(config, with_labels=bool(config.use_semantics))
        self.in_channels = 3 + self.buffer_channels
        self.latent_size = latent
        w = config.encoder_channels
        widths = [w * (i + 1) for i in range(config.encoder_blocks + 1)]
        self.stem = EqualizedConv2d(self.in_channels, widths[0], 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResidualDownBlock(widths[i], widths[i + 1])
                                      for i in range(config.encoder_blocks)))
        self.head_activation = nn.LeakyReLU(LEAKY_SLOPE)
        self.mean = EqualizedLinear(widths[-1], latent, gain=1.0)
        self.logvar = EqualizedLinear(widths[-1], latent, gain=1.0)
        self.min_side = 2 ** (config.encoder_blocks + 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x = photo (3 channels, [-1, 1]) concatenated with the encoded deep buffer -> (mean, logvar)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"AppearanceEncoder expects N x {self.in_channels} x H x W (photo 3 + buffer "
                             f"{self.buffer_channels} channels), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_side:
            raise ValueError(f"AppearanceEncoder needs images at least {self.min_side} px on each side, "
                             f"got {tuple(x.shape[-2:])}")
        h = self.head_activation(self.blocks(self.stem(x)))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.mean(h), self.logvar(h)

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """The latent used at inference: the posterior mean.

        Why the mean and not the authors' ``mean + exp(0.5 * logvar)``: their expression has no noise term, so it is
        not a sample but a deterministic shift by one standard deviation that differs from photo to photo with the
        encoder's uncertainty. The mean is the most likely appearance, it is what interpolation between gallery
        entries should move along, and it does not drift when logvar is poorly trained (the encoder is mostly
        trained by a triplet loss on the mean). Training should feed the rerenderer this same function, so that
        training and inference agree.
        """
        return self.forward(x)[0]
