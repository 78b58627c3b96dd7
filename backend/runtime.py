"""ModelRuntime: batched inference on a loaded bundle, used by the server and by evaluation.

Takes and returns numpy (what travels on the wire), hides devices, padding and mixed precision:
- runs in ``torch.inference_mode``; on CUDA under autocast (bf16 where supported: same range as fp32, so the
  pixel-norm's sum of squares cannot overflow as it can in fp16; fp16 otherwise);
- pads each frame up to the U-Net's multiple (2**depth) by replicating the border and crops the result back, so
  any frame size works; replicate (not zeros / "empty") because a frame border is not the edge of the world, and
  the network was trained on crops whose surroundings continue.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN

from .bundle import Appearance, Bundle

DEFAULT_BATCH = 8


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; an explicit 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


class ModelRuntime:
    """Inference on a model bundle: rerender, encode, segment; numpy in, numpy out.

    The bundle's modules are moved to ``device`` in place (no copy: a bundle's weights exist once in memory), so
    one bundle object serves one runtime at a time.
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", *, batch_size: int = DEFAULT_BATCH) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.config = self.bundle.config
        self.encoding = self.config.encoding
        self.device = resolve_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        for m in self.bundle.modules().values():
            m.to(self.device).eval()
        self.autocast_dtype: torch.dtype | None = None
        if self.device.startswith("cuda"):
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    @property
    def multiple(self) -> int:
        return self.config.multiple

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast("cuda", dtype=self.autocast_dtype):
                    yield
            else:
                yield

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x, h, w

    def _chunks(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))

    # ---- operations ---------------------------------------------------------------------------------------------

    def rerender(self, buffers: Sequence[DeepBuffer], latents: np.ndarray | None, *,
                 output: str = "uint8", fill_labels: bool = False) -> np.ndarray:
        """Deep buffers (one size) + appearance latents N x L -> sRGB frames N x H x W x 3.

        ``output="uint8"`` (default) gives 0..255; ``"float16"`` gives sRGB in [0, 1] without 8-bit quantisation,
        for renders that go on to a float compositor. ``fill_labels=True`` first lets S predict the labels of
        pixels no point covers (:meth:`fill_labels`); call that yourself to also get the labels used.
        """
        if output not in ("uint8", "float16"):
            raise ValueError(f"output must be 'uint8' or 'float16', got {output!r}")
        buffers = _buffer_list(buffers)
        if fill_labels:
            buffers = self.fill_labels(buffers)
        n = len(buffers)
        z = self._check_latents(latents, n)
        out = []
        for s in self._chunks(n):
            x = self.encoding.encode_buffers(buffers[s], with_labels=self.config.use_semantics)
            x, h, w = self._pad(x)
            zz = None if z is None else torch.from_numpy(z[s]).to(self.device)
            with self._inference():
                y = self.bundle.rerenderer(x.to(self.device), zz)
            y = y[:, :, :h, :w].float()
            if output == "uint8":
                out.append(self.encoding.decode_rgb(y))
            else:
                out.append(((y + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float16))
        return np.concatenate(out)

    def encode(self, photos: Sequence[np.ndarray], buffers: Sequence[DeepBuffer]) -> np.ndarray:
        """Photos (uint8 H x W x 3 sRGB) and their deep buffers -> appearance latents, float32 N x L."""
        if self.bundle.encoder is None:
            raise ValueError(f"bundle {self.config.name!r} has no appearance encoder (latent_size 0)")
        buffers = _buffer_list(buffers)
        photos = list(photos)
        if len(photos) != len(buffers):
            raise ValueError(f"encode needs one deep buffer per photo, got {len(photos)} photos and "
                             f"{len(buffers)} buffers")
        for p, b in zip(photos, buffers):
            if np.asarray(p).shape[:2] != b.shape:
                raise ValueError(f"photo {np.asarray(p).shape[:2]} and deep buffer {b.shape} differ in size; "
                                 f"render the buffer at the photo's resolution")
        out = []
        for s in self._chunks(len(buffers)):
            x = torch.cat([self.encoding.encode_photos(photos[s]),
                           self.encoding.encode_buffers(buffers[s], with_labels=self.config.use_semantics)], dim=1)
            with self._inference():
                z = self.bundle.encoder.latent(x.to(self.device))
            out.append(z.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def segment(self, buffers: Sequence[DeepBuffer]) -> np.ndarray:
        """Deep buffers -> predicted class ids (argmax of S), uint8 N x H x W."""
        buffers = _buffer_list(buffers)
        out = []
        for s in self._chunks(len(buffers)):
            x, h, w = self._pad(self.encoding.encode_buffers(buffers[s], with_labels=False))
            with self._inference():
                logits = self.bundle.semantic(x.to(self.device))
            out.append(logits[:, :, :h, :w].argmax(dim=1).to(torch.uint8).cpu().numpy())
        return np.concatenate(out)

    def fill_labels(self, buffers: Sequence[DeepBuffer]) -> list[DeepBuffer]:
        """The buffers with S's predicted class where no point was drawn and the label is unknown (DESIGN §4b).

        Why only there: a point's label came from the photos (or from the artist's tagged object) and is more
        trustworthy than a prediction; S is for the sky and ground that no point covers. Color, depth and mask
        are unchanged (the same arrays), so the network still sees where the points are.
        """
        buffers = _buffer_list(buffers)
        predicted = self.segment(buffers)
        out = []
        for buffer, labels in zip(buffers, predicted):
            hole = ~buffer.mask & (buffer.label == UNKNOWN)
            out.append(DeepBuffer(buffer.color, buffer.depth, np.where(hole, labels, buffer.label).astype(np.uint8),
                                  buffer.mask))
        return out

    def appearances(self) -> list[Appearance]:
        return list(self.bundle.gallery)

    def info(self) -> dict:
        c = self.config
        return {
            "device": self.device,
            "latent_size": c.latent_size,
            "bundle": c.name,
            "format_version": c.format_version,
            "created": c.created,
            "classes": c.classes.to_json(),
            "resolution": list(c.training_resolution),
            "multiple": c.multiple,
            "use_semantics": c.use_semantics,
            "appearances": len(self.bundle.gallery),
        }

    def _check_latents(self, latents: np.ndarray | None, n: int) -> np.ndarray | None:
        if not self.latent_size:
            if latents is not None and np.asarray(latents).size:
                raise ValueError(f"bundle {self.config.name!r} has no appearance latent (latent_size 0); pass None")
            return None
        if latents is None:
            raise ValueError(f"rerender needs latents, float32 {n} x {self.latent_size} (one per buffer)")
        z = np.asarray(latents, dtype=np.float32)
        if z.ndim == 1 and n == 1:
            z = z[None]
        if z.shape != (n, self.latent_size):
            raise ValueError(f"latents must be {n} x {self.latent_size} (one per buffer, the bundle's latent size), "
                             f"got shape {z.shape}")
        if not np.all(np.isfinite(z)):
            raise ValueError("latents contain NaN or infinity; check the appearance keys / interpolation")
        return np.ascontiguousarray(z)


def _buffer_list(buffers: Sequence[DeepBuffer]) -> list[DeepBuffer]:
    items = [buffers] if isinstance(buffers, DeepBuffer) else list(buffers)
    if not items:
        raise ValueError("at least one deep buffer is needed")
    return items
