"""addon/pixels.py: the render passes from the backend's image and the deep buffer, against the code it replaced."""

from __future__ import annotations

import numpy as np
import pytest

from rerender.addon import pixels
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.colors import srgb8_to_linear, srgb_to_linear


def reference_passes(buffer: DeepBuffer, image: np.ndarray, transparent: bool) -> dict[str, np.ndarray]:
    """The add-on's pass assembly as it was: np.power per pixel, five float32 arrays, each flipped into a copy."""
    rgb = srgb8_to_linear(image) if image.dtype == np.uint8 else srgb_to_linear(image)
    h, w = buffer.shape
    mask = buffer.mask.astype(np.float32)
    alpha = mask if transparent else np.ones((h, w), np.float32)
    depth = np.where(buffer.mask & np.isfinite(buffer.depth), buffer.depth, 1.0e10).astype(np.float32)
    passes = {"Combined": np.concatenate([rgb.astype(np.float32), alpha[..., None]], axis=2),
              "Depth": depth[..., None], "Albedo": buffer.color.astype(np.float32),
              "Label": buffer.label.astype(np.float32)[..., None], "Mask": mask[..., None]}
    return {n: np.ascontiguousarray(a[::-1]) for n, a in passes.items()}


def frame(h: int, w: int, seed: int = 0) -> tuple[DeepBuffer, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.6
    color = np.where(mask[..., None], rng.random((h, w, 3)), 0).astype(np.float16)
    color[0, 0] = [np.float16(6e-8), 0.0, np.float16(2.0)]
    depth = np.where(mask, rng.uniform(0.5, 50, (h, w)), np.inf).astype(np.float32)
    mask[0, 1] = True  # drawn but infinitely far: the Depth pass still gets the background value
    label = np.where(mask, rng.integers(0, 19, (h, w)), UNKNOWN).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(23, 37), (203, 64)], ids=["one band", "bands"])
@pytest.mark.parametrize("transparent", [False, True])
@pytest.mark.parametrize("kind", ["uint8", "float16", "float32"])
def test_passes_equal_the_replaced_code_bit_for_bit(kind: str, transparent: bool, size, monkeypatch):
    monkeypatch.setenv("RERENDER_BAND_THREADS", "2" if size[0] > 64 else "1")  # bands on two threads, or one
    buffer, image8 = frame(*size)
    image = image8 if kind == "uint8" else (image8 / 255.0 + 0.001).astype(kind)
    writer = pixels.PassWriter()
    for _ in range(2):  # the second frame reuses the first one's arrays
        got = writer.passes(buffer, image, transparent=transparent)
        want = reference_passes(buffer, image, transparent)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == np.float32 and got[name].flags.c_contiguous, name
            assert got[name].shape == want[name].shape, name
            assert np.array_equal(got[name].view(np.uint32), want[name].view(np.uint32)), name


def test_every_8_bit_and_float16_value_converts_exactly():
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    assert np.array_equal(pixels.image_to_linear(codes), srgb8_to_linear(codes))
    halves = np.arange(0, 0x3C01, dtype=np.uint16).view(np.float16)  # 0 .. 1.0, every float16 in between
    halves = halves[: len(halves) // 3 * 3].reshape(-1, 1, 3)
    assert np.array_equal(pixels.image_to_linear(halves), srgb_to_linear(halves.astype(np.float32)))


def test_bad_images_are_refused_with_a_reason():
    buffer, image = frame(4, 6)
    writer = pixels.PassWriter()
    with pytest.raises(pixels.PixelsError, match="expected"):
        writer.passes(buffer, image[:3], transparent=False)
    broken = image.astype(np.float16)
    broken[1, 1, 1] = np.nan
    with pytest.raises(pixels.PixelsError, match="NaN"):
        writer.passes(buffer, broken, transparent=False)
    with pytest.raises(pixels.PixelsError, match="not an RGB image"):
        pixels.image_to_linear(image[..., 0])
