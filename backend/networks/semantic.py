"""The semantic predictor S: deep buffer -> plausible class logits for views no photo was taken from (paper §3.3)."""

from __future__ import annotations

import torch

from .config import NetworkConfig, input_channels
from .unet import UNet


class SemanticPredictor(UNet):
    """S(B): "the same architecture as the rendering network (minus the injected appearance vector)".

    Its input is the deep buffer without label channels (labels are what it predicts), so it can fill the classes
    that points do not cover (sky, ground). Output: N x K x H x W logits, K = number of classes in the bundle.
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__(
            input_channels(config, with_labels=False), config.num_classes,
            base_channels=config.base_channels, depth=config.depth, max_channels=config.max_channels,
            latent_size=0,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, None, "SemanticPredictor")
        return self.run(x, None)
