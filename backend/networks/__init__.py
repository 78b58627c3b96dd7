"""The three networks of Neural Rerendering in the Wild: rerenderer R, appearance encoder Ea, semantic predictor S."""

from .config import NetworkConfig, conditioning_of, input_channels
from .encoder import AppearanceEncoder
from .layers import EqualizedConv2d, EqualizedLinear, PixelNorm
from .rerenderer import Rerenderer
from .semantic import SemanticPredictor
from .unet import CONDITIONING_MODES, FiLM, UNet, channel_schedule

__all__ = [
    "AppearanceEncoder", "CONDITIONING_MODES", "EqualizedConv2d", "FiLM", "EqualizedLinear", "NetworkConfig", "PixelNorm", "Rerenderer",
    "SemanticPredictor", "UNet", "channel_schedule", "conditioning_of",
    "input_channels",
]
