"""THE one place where deep buffers and photos become network tensors, and network output becomes pixels.

Every number that shapes the network input (depth range and mode, label encoding, palette) lives in an
``InputEncoding`` stored in the model bundle's config, so training, the server and evaluation cannot disagree
(docs/design.md §3: "Network input normalisation ... is stored in the model bundle, not hard-coded twice").

Channel layout of an encoded buffer, every channel in [-1, 1] (the authors' 7 channels + a mask):
  0..2  point color as sRGB (the buffer stores linear float16; converted with bridge.colors), empty -> -1
  3     depth: near -> +1, far -> -1 ("inverse": 1/z interpolated between 1/near and 1/far, the default, which
        spends the range where the detail is; "linear": z itself), empty -> ``empty_depth``
  4..   labels (only ``with_labels``): "color" = the class palette as 3 channels (the authors' semantic color image),
        unknown (255) -> ``unknown_color``; or "onehot" = K channels of +1/-1, unknown -> all -1
  last  mask: +1 where a point was drawn, -1 where empty (so an empty pixel never looks like a black point)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import DEFAULT_CLASSES, UNKNOWN, ClassTable

from .tensor_encoding import TensorEncoder, as_tensor, encoder_for, stack_numpy

DEPTH_MODES = ("inverse", "linear")
LABEL_MODES = ("color", "onehot")


def _default_palette() -> list[tuple[int, int, int]]:
    return [tuple(c.color) for c in DEFAULT_CLASSES]


@dataclass
class InputEncoding:
    """How a DeepBuffer becomes N x C x H x W network input; serialisable into the bundle config."""

    depth_mode: str = "inverse"
    near: float = 1.0
    far: float = 100.0
    empty_depth: float = -1.0
    label_mode: str = "color"
    palette: list[tuple[int, int, int]] = field(default_factory=_default_palette)  # sRGB per class id
    unknown_color: tuple[int, int, int] = (0, 0, 0)
    mask_channel: bool = True

    def __post_init__(self) -> None:
        if self.depth_mode not in DEPTH_MODES:
            raise ValueError(f"depth_mode must be one of {DEPTH_MODES}, got {self.depth_mode!r}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {self.label_mode!r}")
        self.near, self.far, self.empty_depth = float(self.near), float(self.far), float(self.empty_depth)
        if not (0 < self.near < self.far < np.inf):
            raise ValueError(f"depth range must satisfy 0 < near < far < inf, got near={self.near}, far={self.far}; "
                             f"take them from the dataset's depth_stats (p01, p99)")
        self.palette = [tuple(int(v) for v in c) for c in self.palette]
        self.unknown_color = tuple(int(v) for v in self.unknown_color)
        if not self.palette or len(self.palette) > UNKNOWN:
            raise ValueError(f"palette needs 1..{UNKNOWN} classes, got {len(self.palette)}")
        for c in (*self.palette, self.unknown_color):
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise ValueError(f"palette colors must be 3 ints in 0..255, got {c}")
        if self.label_mode == "color":
            if self.unknown_color in self.palette:
                raise ValueError(f"unknown_color {self.unknown_color} is also a class color: unknown labels would "
                                 f"look like class {self.palette.index(self.unknown_color)}; pick another color")
            if len(set(self.palette)) != len(self.palette):
                raise ValueError("two classes share a palette color: the 'color' label encoding cannot tell them "
                                 "apart; use label_mode='onehot' or distinct colors")

    # ---- construction -------------------------------------------------------------------------------------------

    @classmethod
    def for_classes(cls, classes: ClassTable, **kwargs: Any) -> "InputEncoding":
        """An encoding whose palette is the class table's (the usual way to build one)."""
        return cls(palette=[tuple(c.color) for c in classes], **kwargs)

    @classmethod
    def for_dataset(cls, depth_stats: dict, classes: ClassTable = DEFAULT_CLASSES, **kwargs: Any) -> "InputEncoding":
        """Depth range from a dataset manifest's ``depth_stats`` ({"p01", "p50", "p99"}): near = p01, far = p99."""
        try:
            near, far = float(depth_stats["p01"]), float(depth_stats["p99"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"depth_stats must hold numbers p01 and p99, got {depth_stats!r}") from exc
        if far <= near:
            far = near * 2.0  # a flat scene: any positive range works, the network sees a constant
        return cls.for_classes(classes, near=near, far=far, **kwargs)

    def to_json(self) -> dict:
        d = asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        d["unknown_color"] = list(self.unknown_color)
        return d

    @classmethod
    def from_json(cls, data: dict) -> "InputEncoding":
        if not isinstance(data, dict):
            raise ValueError(f"input encoding must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"input encoding has unknown fields {sorted(unknown)}; the bundle was written by a newer "
                             f"rerender: upgrade")
        return cls(**data)

    # ---- sizes --------------------------------------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return len(self.palette)

    def label_channels(self) -> int:
        return 3 if self.label_mode == "color" else self.num_classes

    def channels(self, with_labels: bool) -> int:
        """Channels of an encoded buffer: color 3 + depth 1 (+ labels) (+ mask)."""
        return 4 + (self.label_channels() if with_labels else 0) + (1 if self.mask_channel else 0)

    # ---- encoding -----------------------------------------------------------------------------------------------

    def encode_buffers(self, buffers: Sequence[DeepBuffer], with_labels: bool = True,
                       labels: np.ndarray | None = None) -> torch.Tensor:
        """Deep buffers (all one size) -> float32 N x C x H x W on the CPU.

        ``labels`` (uint8 N x H x W) replaces the buffers' own label passes: training conditions R on the photo's
        segmentation, as the paper does, while the buffer provides color and depth. The numbers are those of the
        channel definitions above (exact lookup tables, see backend/tensor_encoding.py); :meth:`encode_wire` is
        the same on any device.
        """
        buffers = list(buffers)
        if not buffers:
            raise ValueError("encode_buffers needs at least one DeepBuffer")
        if not all(isinstance(b, DeepBuffer) for b in buffers):
            raise TypeError("encode_buffers takes rerender.bridge.DeepBuffer objects")
        sizes = {b.shape for b in buffers}
        if len(sizes) > 1:
            raise ValueError(f"all deep buffers of a batch must have one size, got {sorted(sizes)}")
        arrays = buffer_tensors(buffers)
        if with_labels and labels is not None:
            lab = np.asarray(labels)
            if lab.shape != tuple(arrays["mask"].shape):
                raise ValueError(f"labels must be N x H x W = {tuple(arrays['mask'].shape)}, got {lab.shape}")
            if lab.dtype != np.uint8 or lab.ndim != 3:
                raise ValueError(f"labels must be uint8 N x H x W, got {lab.dtype} {lab.shape}")
            arrays["label"] = torch.from_numpy(np.ascontiguousarray(lab))
        if with_labels:
            encoder_for(self, "cpu").check_labels(arrays["label"])
        return self.encode_wire(arrays, with_labels=with_labels)

    def encode_wire(self, arrays: dict[str, torch.Tensor], *, with_labels: bool = True, multiple: int = 1,
                    photo: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """Batched arrays on any device -> float32 N x C x Hp x Wp there, replicate-padded up to ``multiple``.

        ``arrays``: color (uint8 sRGB as on the wire, or float16 linear as in a DeepBuffer) N x H x W x 3, depth
        (float16 or float32) N x H x W, label uint8 N x H x W, mask bool/uint8 N x H x W (optional: without it a
        pixel is drawn where its depth is finite). Class ids are not checked here (``check_labels``).
        """
        color = arrays["color"]
        return encoder_for(self, color.device).encode(
            color, arrays["depth"], arrays.get("label"), arrays.get("mask"), with_labels=with_labels,
            multiple=multiple, photo=photo, out=out)

    def check_labels(self, label: torch.Tensor) -> None:
        """ValueError when a class id is outside this encoding's classes (255 = unknown is fine)."""
        encoder_for(self, label.device).check_labels(label)

    def decode_output(self, y: torch.Tensor, output: str = "uint8", *, in_place: bool = False) -> torch.Tensor:
        """Network output N x 3 x H x W -> N x H x W x 3 pixels on its device: ``"uint8"`` exactly as
        :meth:`decode_rgb`, ``"float16"`` the network's own values mapped to [0, 1] (no 8-bit step).
        ``in_place`` allows overwriting ``y`` (when nothing else reads it)."""
        if output == "uint8":
            return TensorEncoder.to_uint8(y, in_place=in_place)
        if output == "float16":
            return TensorEncoder.to_float16(y)
        raise ValueError(f"output must be 'uint8' or 'float16', got {output!r}")

    def encode_depth(self, depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Planar depth (scene units, +inf empty) -> float32 in [-1, 1]: near -> +1, far -> -1, empty -> empty_depth."""
        d = np.asarray(depth, dtype=np.float32)
        valid = np.isfinite(d) & (d > 0)
        if mask is not None:
            valid &= mask
        safe = np.where(valid, d, self.far)
        if self.depth_mode == "inverse":
            t = (1.0 / safe - 1.0 / self.far) / (1.0 / self.near - 1.0 / self.far)
        else:
            t = (self.far - safe) / (self.far - self.near)
        out = np.clip(t, 0.0, 1.0) * 2.0 - 1.0
        return np.where(valid, out, self.empty_depth).astype(np.float32)

    def encode_labels(self, label: np.ndarray) -> torch.Tensor:
        """uint8 class ids N x H x W (255 = unknown) -> float32 N x label_channels x H x W in [-1, 1].

        Used for the buffer's label pass and, in training, for a photo's segmentation.
        """
        return torch.from_numpy(np.ascontiguousarray(self._label_array(np.asarray(label))))

    def _label_array(self, label: np.ndarray) -> np.ndarray:
        if label.dtype != np.uint8 or label.ndim != 3:
            raise ValueError(f"labels must be uint8 N x H x W, got {label.dtype} {label.shape}")
        bad = (label >= self.num_classes) & (label != UNKNOWN)
        if bad.any():
            raise ValueError(f"label ids {sorted(set(np.unique(label[bad]).tolist()))} are outside the bundle's "
                             f"{self.num_classes} classes (and not {UNKNOWN} = unknown): the buffer was labelled "
                             f"with another class table")
        return self._label_lut()[label].transpose(0, 3, 1, 2)

    def _label_lut(self) -> np.ndarray:
        """256 x label_channels table: class id -> encoded channels."""
        if self.label_mode == "color":
            lut = np.zeros((256, 3), np.float32)
            lut[:] = np.asarray(self.unknown_color, np.float32) / 127.5 - 1.0
            lut[: self.num_classes] = np.asarray(self.palette, np.float32) / 127.5 - 1.0
        else:
            lut = np.full((256, self.num_classes), -1.0, np.float32)
            lut[np.arange(self.num_classes), np.arange(self.num_classes)] = 1.0
        return lut

    def encode_photos(self, photos: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 sRGB photos (N x H x W x 3, or a list of H x W x 3 of one size) -> float32 N x 3 x H x W in [-1, 1]."""
        return encoder_for(self, "cpu").encode_photos(as_tensor(photo_batch(photos)))

    @staticmethod
    def decode_rgb(t: torch.Tensor | np.ndarray) -> np.ndarray:
        """Network output N x 3 x H x W, sRGB in [-1, 1] (values outside are clipped) -> uint8 N x H x W x 3."""
        if isinstance(t, torch.Tensor):
            t = t.detach().to("cpu", torch.float32).numpy()
        a = np.asarray(t, dtype=np.float32)
        if a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"decode_rgb expects N x 3 x H x W, got {a.shape}")
        a = np.nan_to_num(a, nan=-1.0)
        return np.rint((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def buffer_tensors(buffers: Sequence[DeepBuffer]) -> dict[str, torch.Tensor]:
    """The arrays of same-sized DeepBuffers as batched CPU tensors (views when there is one buffer)."""
    sizes = {b.shape for b in buffers}
    if len(sizes) > 1:
        raise ValueError(f"all deep buffers of a batch must have one size, got {sorted(sizes)}")
    return {name: stack_numpy([getattr(b, name) for b in buffers]) for name in ("color", "depth", "label", "mask")}


def photo_batch(photos: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Checked uint8 N x H x W x 3 array of photos of one size."""
    if isinstance(photos, np.ndarray) and photos.ndim == 3:
        raise ValueError(f"encode_photos takes a batch N x H x W x 3 or a list of photos, got one {photos.shape} "
                         f"array; wrap it in a list")
    items = list(photos)
    if not items:
        raise ValueError("encode_photos needs at least one photo")
    for p in items:
        p = np.asarray(p)
        if p.dtype != np.uint8 or p.ndim != 3 or p.shape[2] != 3:
            raise ValueError(f"photos must be uint8 H x W x 3 sRGB, got {p.dtype} {p.shape}")
    sizes = {np.asarray(p).shape for p in items}
    if len(sizes) > 1:
        raise ValueError(f"all photos of a batch must have one size, got {sorted(sizes)}")
    return np.stack([np.asarray(p) for p in items]) if len(items) > 1 else np.asarray(items[0])[None]
