"""The backend's image and the deep buffer -> the render passes Blender receives, in numpy with lookup tables.

Why tables and reused arrays: a 1080p frame is 2 M pixels, and the straightforward conversion (``np.power`` for
sRGB -> linear on 6 M values, five passes built as float32 arrays, each then flipped into a copy) cost ~110 ms of
Blender's time per frame, several times the backend's own work on a GPU. Here:
  * uint8 sRGB -> linear is a 256-entry table, and float16 sRGB (``output="float16"``) a 65536-entry one, both
    computed once with ``bridge.colors`` (so the values are exactly ``srgb8_to_linear`` / ``srgb_to_linear``);
  * each pass is written once, bottom-up as Blender wants it, straight from the top-down source (the flip is a
    reversed view, not a copy); float16 albedo -> float32 is a table too (faster than numpy's cast);
  * the Combined pass (RGBA, the largest) goes into an array kept from the last frame of the same size.

The Combined array a :class:`PassWriter` returns is overwritten by its next call: write it to Blender first.
numpy only (no bpy, no torch), so it is testable and benchmarkable outside Blender.
"""

from __future__ import annotations

import numpy as np

from ._bridge import DeepBuffer, srgb8_to_linear, srgb_to_linear

EMPTY_DEPTH = 1.0e10  # Depth of pixels no point covers; Cycles' convention for "background", finite for nodes

_SRGB8_TO_LINEAR = srgb8_to_linear(np.arange(256, dtype=np.uint8)).astype(np.float32)
_ALL_FLOAT16 = np.arange(65536, dtype=np.uint16).view(np.float16)
with np.errstate(invalid="ignore"):
    _SRGB16_TO_LINEAR = srgb_to_linear(_ALL_FLOAT16.astype(np.float32)).astype(np.float32)
_FINITE16 = np.isfinite(_ALL_FLOAT16)
_FLOAT16_TO_FLOAT32 = _ALL_FLOAT16.astype(np.float32)


def _pair_table(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Two float32 tables as one table of float32 pairs (viewed as float64): one gather writes two channels."""
    pairs = np.empty((len(first), 2), np.float32)
    pairs[:, 0], pairs[:, 1] = first, second
    return pairs.view(np.float64).reshape(-1)


_CODES = np.arange(65536)
# index red | green << 8 -> (linear red, linear green); index blue | alpha << 8 -> (linear blue, alpha 0 or 1)
_RG_TO_LINEAR = _pair_table(_SRGB8_TO_LINEAR[_CODES & 255], _SRGB8_TO_LINEAR[_CODES >> 8])
_BA_TO_LINEAR = _pair_table(_SRGB8_TO_LINEAR[_CODES[:512] & 255], (_CODES[:512] >= 256).astype(np.float32))
_UINT8_TO_FLOAT32 = np.arange(256, dtype=np.float32)


class PixelsError(ValueError):
    """The backend's image cannot become passes (wrong shape, NaN pixels); the message says why."""


def image_to_linear(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The backend's sRGB image (uint8, or float16/float32 in [0, 1]) as scene-linear float32 H x W x 3.

    ``out`` (float32, any strides of that shape, e.g. a reversed view) receives the values instead of a new array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise PixelsError(f"the backend returned an array of shape {image.shape}, not an RGB image")
    if image.dtype == np.uint8:
        table, index = _SRGB8_TO_LINEAR, image
    elif image.dtype == np.float16:
        bits = image.view(np.uint16)
        if not _FINITE16[bits].all():
            raise PixelsError("the backend returned NaN or infinite pixels: the model is broken; retrain or reload it")
        table, index = _SRGB16_TO_LINEAR, bits
    else:
        if not np.all(np.isfinite(image)):
            raise PixelsError("the backend returned NaN or infinite pixels: the model is broken; retrain or reload it")
        linear = srgb_to_linear(image)
        if out is None:
            return linear
        out[...] = linear
        return out
    if out is None:
        return table[index]
    out[...] = table[index]
    return out


class PassWriter:
    """Builds the five passes of a frame into arrays reused from frame to frame (one writer per render engine)."""

    def __init__(self) -> None:
        self._arrays: dict[tuple, np.ndarray] = {}

    def _array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        key = (name, shape)
        a = self._arrays.get(key)
        if a is None:
            if len(self._arrays) > 20:  # another resolution: drop the old frame size's arrays
                self._arrays.clear()
            a = self._arrays[key] = np.empty(shape, np.float32)
        return a

    def passes(self, buffer: DeepBuffer, image: np.ndarray, *, transparent: bool) -> dict[str, np.ndarray]:
        """Every pass of one frame as float32 C-contiguous arrays H x W x C, rows bottom-up (Blender's order).

        ``image`` is the backend's sRGB image (uint8 or float); with a transparent film the Combined alpha is the
        point mask, otherwise 1 (the network paints every pixel, sky included).
        """
        h, w = buffer.shape
        image = np.asarray(image)
        if image.shape != (h, w, 3):
            raise PixelsError(f"the backend returned an image of shape {image.shape}, expected {(h, w, 3)}: "
                              "backend and add-on disagree; update both to one release")
        up = slice(None, None, -1)  # top-down source rows -> bottom-up pass rows, as a view
        combined = self._array("Combined", (h, w, 4))
        mask_up = buffer.mask[up]
        if image.dtype == np.uint8:
            _combined_from_srgb8(np.ascontiguousarray(image), mask_up if transparent else None, combined)
        else:
            image_to_linear(image[up], out=combined[..., :3])
            combined[..., 3] = mask_up if transparent else 1.0
        finite_up = np.isfinite(buffer.depth[up])
        depth = np.where(mask_up & finite_up, buffer.depth[up], np.float32(EMPTY_DEPTH))[..., None]
        albedo = _FLOAT16_TO_FLOAT32[buffer.color[up].view(np.uint16)]  # numpy's float16 cast is 2x slower
        label = _UINT8_TO_FLOAT32[buffer.label[up]][..., None]
        mask = mask_up.astype(np.float32)[..., None]
        return {"Combined": combined, "Depth": depth, "Albedo": albedo, "Label": label, "Mask": mask}


def _combined_from_srgb8(image: np.ndarray, alpha_mask: np.ndarray | None, out: np.ndarray) -> None:
    """uint8 sRGB H x W x 3 (top-down, C-contiguous) -> linear RGBA H x W x 4 bottom-up, in two gathers.

    Red and green are read as one little-endian 16-bit index straight from the pixel bytes (a strided view, no
    copy), so a gather of float32 pairs fills two channels at once; blue with the alpha bit fills the other two.
    """
    h, w = image.shape[:2]
    red_green = np.ndarray(shape=(h, w), dtype="<u2", buffer=image.reshape(-1), offset=(h - 1) * w * 3,
                           strides=(-3 * w, 3))
    blue = image[::-1, :, 2].astype(np.uint16)
    if alpha_mask is None:
        blue += 256
    else:
        np.add(blue, 256, out=blue, where=alpha_mask)
    pairs = out.view(np.float64)  # H x W x 2: (R, G), (B, A)
    pairs[..., 0] = _RG_TO_LINEAR[red_green]
    pairs[..., 1] = _BA_TO_LINEAR[blue]


__all__ = ["EMPTY_DEPTH", "PassWriter", "PixelsError", "image_to_linear"]
