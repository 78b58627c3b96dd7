"""sRGB <-> linear transfer functions (IEC 61966-2-1), in numpy, shared by every part.

Why: Blender's point attributes and render passes are scene-linear, photos and the networks are sRGB. Every
conversion between the two goes through these two functions so that a point color from an 8-bit photo survives
photo -> point cloud -> EEVEE pass -> wire (uint8 sRGB) -> network exactly.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear values in [0, 1] (float32)."""
    s = np.asarray(srgb, dtype=np.float32)
    return np.where(s <= 0.04045, s / 12.92, ((s + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear values -> sRGB-encoded values, clipped to [0, 1] (float32)."""
    x = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def linear_to_srgb8(linear: np.ndarray) -> np.ndarray:
    """Linear values -> uint8 sRGB (rounded), the compact form colors take on the wire and on disk."""
    return np.rint(linear_to_srgb(linear) * 255.0).astype(np.uint8)


def srgb8_to_linear(srgb8: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> linear float32."""
    return srgb_to_linear(np.asarray(srgb8, dtype=np.float32) / 255.0)
