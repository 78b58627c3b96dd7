"""The appearance encoder Ea: photo + its deep buffer -> appearance latent (official-code-facts.md).

Architecture (BicycleGAN's ResNet encoder, which the paper cites as [25], with pixel norm as the authors use):
4x4 stride-2 conv (3 + C -> w), residual blocks w -> 2w -> 3w -> 4w each halving the resolution, leaky ReLU,
global average pool, two linear heads (mean, log-variance) of the latent length.

Seeing the deep buffer next to the photo lets Ea explain away what the viewpoint and the semantics already say,
so the latent holds appearance (light, weather, season) rather than geometry.

With ``encoder_colour_statistics`` (bundles trained since it exists), the heads also read the photo's global colour
statistics (per-channel mean, spread and 8-bin histogram). Why: most of a look is its colours, and a small
convolutional encoder whose every block starts with pixel norm (which divides out each pixel's brightness) has to
rebuild them from scratch, while a colour histogram alone already finds a photo of the same kind of light for ~90 %
of the generated collection's photos. Measured in docs/training.md (stage 1 alone, four seeds).
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


#: histogram bins per colour channel of ``photo_colour_statistics``
COLOUR_BINS = 8
#: length of ``photo_colour_statistics``: mean and spread of each channel, and each channel's histogram
COLOUR_STATISTICS = 6 + 3 * COLOUR_BINS


def photo_colour_statistics(photo: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W photos in [-1, 1] -> N x COLOUR_STATISTICS: per channel the mean, the standard deviation and
    the square roots of the histogram's fractions (so Euclidean distances between them are Hellinger distances).

    Each part is scaled to a spread of about one between photos, like the pooled features beside it. The
    histogram is not differentiable in the photo, which nothing needs (latent fitting optimises the latent).
    """
    p = ((photo.float() + 1.0) * 0.5).clamp(0.0, 1.0).flatten(2)
    mean, std = p.mean(-1), p.std(-1, correction=0)
    cells = (p * COLOUR_BINS).long().clamp_(max=COLOUR_BINS - 1)
    hist = torch.zeros(p.shape[0], 3, COLOUR_BINS, device=p.device).scatter_add_(2, cells, torch.ones_like(p))
    hist = (hist / p.shape[-1]).sqrt().flatten(1)
    return torch.cat([(mean - 0.5) * 4.0, std * 4.0, hist * 2.0], dim=1)


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
        # False for bundles made before the option existed (their heads read the pooled features alone)
        self.colour_statistics = bool(getattr(config, "encoder_colour_statistics", False))
        head_in = widths[-1] + (COLOUR_STATISTICS if self.colour_statistics else 0)
        self.mean = EqualizedLinear(head_in, latent, gain=1.0)
        self.logvar = EqualizedLinear(head_in, latent, gain=1.0)
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
        if self.colour_statistics:
            h = torch.cat([h, photo_colour_statistics(x[:, :3]).to(h.dtype)], dim=1)
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
