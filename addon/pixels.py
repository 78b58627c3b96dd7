"""The backend's image and the deep buffer -> the render passes Blender receives, in numpy with lookup tables.

Why tables and reused arrays: a 1080p frame is 2 M pixels, and the straightforward conversion (``np.power`` for
sRGB -> linear on 6 M values, five passes built as float32 arrays, each then flipped into a copy) cost ~110 ms of
Blender's time per frame, several times the backend's own work on a GPU. Here:
  * uint8 sRGB -> linear is a 256-entry table, and float16 sRGB (``output="float16"``) a 65536-entry one, both
    computed once with ``bridge.colors`` (so the values are exactly ``srgb8_to_linear`` / ``srgb_to_linear``);
  * each pass is written once, bottom-up as Blender wants it, straight from the top-down source (the flip is a
    reversed view, not a copy); float16 albedo -> float32 is a table too (faster than numpy's cast);
  * the Combined pass (RGBA, the largest) goes into an array kept from the last frame of the same size;
  * every pass is built in bands of rows on a small thread pool (``bridge.buffers.row_bands``): numpy releases the
    GIL in its gathers and casts, and ``np.take(..., mode="wrap")`` on a band that stays in cache is several times
    faster than fancy indexing on the whole frame (every code is in its table, so "wrap" never wraps).

The Combined array a :class:`PassWriter` returns is overwritten by its next call: write it to Blender first.
numpy only (no bpy, no torch), so it is testable and benchmarkable outside Blender.
"""

from __future__ import annotations

import numpy as np

from ._bridge import DeepBuffer, bridge, srgb8_to_linear, srgb_to_linear

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
_row_bands = bridge.buffers.row_bands


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
        up = slice(None, None, -1)  # top-down source rows -> bottom-up pass rows, as views
        combined = self._array("Combined", (h, w, 4))
        mask_up = buffer.mask[up]
        if image.dtype != np.uint8:
            image_to_linear(image[up], out=combined[..., :3])
            combined[..., 3] = mask_up if transparent else 1.0
        depth = np.empty((h, w, 1), np.float32)
        albedo = np.empty((h, w, 3), np.float32)
        label = np.empty((h, w, 1), np.float32)
        mask = np.empty((h, w, 1), np.float32)
        color_up, label_up = buffer.color[up].view(np.uint16), buffer.label[up]
        rgba = _Srgb8Rows(np.ascontiguousarray(image), mask_up if transparent else None, combined) \
            if image.dtype == np.uint8 else None

        def rows(r0: int, r1: int) -> None:
            if rgba is not None:
                rgba.rows(r0, r1)
            _depth_rows(buffer.depth[h - r1:h - r0], buffer.mask[h - r1:h - r0], depth[r0:r1, :, 0])
            np.take(_FLOAT16_TO_FLOAT32, color_up[r0:r1], out=albedo[r0:r1], mode="wrap")  # numpy's cast: 2x slower
            np.copyto(label[r0:r1, :, 0], label_up[r0:r1])  # uint8 -> float32 is exact
            np.copyto(mask[r0:r1, :, 0], mask_up[r0:r1])

        _row_bands(h, rows)
        return {"Combined": combined, "Depth": depth, "Albedo": albedo, "Label": label, "Mask": mask}


_EMPTY_BITS = np.float32(EMPTY_DEPTH).view(np.uint32)
_RGBA_TABLE = np.concatenate([_RG_TO_LINEAR, _BA_TO_LINEAR])  # (R, G) pairs, then (B, A) pairs from 65536 on


def _depth_rows(depth: np.ndarray, drawn: np.ndarray, out: np.ndarray) -> None:
    """Top-down rows of depth and mask -> ``out`` bottom-up: the depth where drawn and finite, else EMPTY_DEPTH.

    A select without branches (``np.where`` on a random mask mispredicts: 5x slower): with M all ones where the
    value is kept, the bits are EMPTY ^ ((EMPTY ^ depth) & M). The source rows are read forward (faster than a
    reversed view) and written reversed."""
    keep = np.isfinite(depth)
    keep &= drawn
    m = keep.astype(np.uint32)
    np.negative(m, out=m)  # 0 -> 0, 1 -> 0xFFFFFFFF
    bits = np.bitwise_xor(depth.view(np.uint32), _EMPTY_BITS)
    bits &= m
    bits ^= _EMPTY_BITS
    out[...] = bits.view(np.float32)[::-1]


class _Srgb8Rows:
    """uint8 sRGB H x W x 3 (top-down, C-contiguous) -> linear RGBA H x W x 4 bottom-up, one gather per band.

    Red and green are read as one little-endian 16-bit index straight from the pixel bytes (a strided view, no
    copy) and index a table of float32 pairs; blue with the alpha bit indexes the pairs of (blue, alpha) after
    them. Interleaved, the two indices of a pixel gather its 16 bytes of RGBA in one ``np.take``.
    """

    def __init__(self, image: np.ndarray, alpha_mask: np.ndarray | None, out: np.ndarray) -> None:
        h, w = image.shape[:2]
        self.red_green = np.ndarray(shape=(h, w), dtype="<u2", buffer=image.reshape(-1), offset=(h - 1) * w * 3,
                                    strides=(-3 * w, 3))
        self.blue, self.alpha_mask = image[::-1, :, 2], alpha_mask
        self.pairs = out.view(np.float64)  # H x W x 2: (R, G), (B, A)
        self.w = w

    def rows(self, r0: int, r1: int) -> None:
        idx = np.empty((r1 - r0, self.w, 2), np.intp)
        idx[..., 0] = self.red_green[r0:r1]
        ba = idx[..., 1]
        np.add(self.blue[r0:r1], np.intp(len(_RG_TO_LINEAR) + (256 if self.alpha_mask is None else 0)), out=ba)
        if self.alpha_mask is not None:
            ba += self.alpha_mask[r0:r1] * np.intp(256)  # alpha 1 where a point was drawn
        np.take(_RGBA_TABLE, idx, out=self.pairs[r0:r1], mode="wrap")


__all__ = ["EMPTY_DEPTH", "PassWriter", "PixelsError", "image_to_linear"]
