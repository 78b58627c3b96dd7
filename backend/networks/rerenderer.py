"""The rerenderer R: deep buffer (+ semantic labels) and appearance latent -> photo (official-code-facts.md)."""

from __future__ import annotations

import torch

from .config import NetworkConfig, conditioning_of, input_channels
from .unet import UNet


class Rerenderer(UNet):
    """R(B, z): the authors' U-Net with the appearance latent tiled at the bottleneck (and, with the config's
    ``appearance_conditioning`` "film", FiLM-modulating every decoder stage).

    Variants for the paper's ablation come from the config: ``latent_size`` 0 or None is the image-to-image
    baseline without appearance; ``use_semantics`` False drops the label channels from the input.
    Output: N x 3 x H x W sRGB scaled to [-1, 1], linear (not squashed), as in the authors' code.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__(
            input_channels(config, with_labels=bool(config.use_semantics)), 3,
            base_channels=config.base_channels, depth=config.depth, max_channels=config.max_channels,
            latent_size=int(config.latent_size or 0),
            film=conditioning_of(config) == "film" and bool(config.latent_size),
            latent_standardised=bool(getattr(config, "latent_standardised", False)),
        )
        self.use_semantics = bool(config.use_semantics)

    def forward(self, x: torch.Tensor, latent: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(x, latent, "Rerenderer")
        return self.run(x, latent)
