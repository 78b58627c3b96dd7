"""Multiscale PatchGAN discriminator (pix2pixHD style, as the authors configured it).

Why it lives in training/: the backend only serves generators; the discriminator exists only while training.
Input = image (3) concatenated with the generator's conditioning channels; each scale sees the input 2x
average-pooled once more than the previous one. A minibatch-stddev channel lets D notice mode collapse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MinibatchStddev(nn.Module):
    """Appends one channel: the mean over features/pixels of the per-pixel stddev across the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        std = torch.sqrt(x.float().var(dim=0, unbiased=False) + 1e-8).mean() if n > 1 else x.new_zeros(())
        return torch.cat([x, std.to(x.dtype).expand(n, 1, h, w)], dim=1)


class PatchDiscriminator(nn.Module):
    """One scale: 4x4 convs (padding 2, as pix2pixHD, so tiny inputs still give logits), stride 2 -> c, 2c, 4c (instance norm after the first), stddev, stride 1 -> 8c -> 1."""

    def __init__(self, in_channels: int, channels: int = 64):
        super().__init__()
        c = channels
        act = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, 4, 2, 2), act(),
            nn.Conv2d(c, 2 * c, 4, 2, 2), nn.InstanceNorm2d(2 * c), act(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 2), nn.InstanceNorm2d(4 * c), act(),
            MinibatchStddev(),
            nn.Conv2d(4 * c + 1, 8 * c, 4, 1, 2), nn.InstanceNorm2d(8 * c), act(),
            nn.Conv2d(8 * c, 1, 4, 1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MultiscaleDiscriminator(nn.Module):
    """``scales`` PatchGANs on progressively 2x average-pooled inputs; returns one logit map per scale."""

    def __init__(self, in_channels: int, channels: int = 64, scales: int = 3):
        super().__init__()
        if scales < 1:
            raise ValueError("the discriminator needs at least one scale")
        self.discriminators = nn.ModuleList(PatchDiscriminator(in_channels, channels) for _ in range(scales))

    def forward(self, image: torch.Tensor, condition: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([image, condition.to(image.dtype)], dim=1)
        outputs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(d(x))
        return outputs
