"""The three networks of Neural Rerendering in the Wild: rerenderer R, appearance encoder Ea, semantic predictor S."""

from .config import NetworkConfig, input_channels
from .encoder import AppearanceEncoder
from .layers import EqualizedConv2d, EqualizedLinear, PixelNorm
from .rerenderer import Rerenderer
from .semantic import SemanticPredictor
from .unet import UNet, channel_schedule

__all__ = [
    "AppearanceEncoder", "EqualizedConv2d", "EqualizedLinear", "NetworkConfig", "PixelNorm", "Rerenderer",
    "SemanticPredictor", "UNet", "channel_schedule", "input_channels",
]
