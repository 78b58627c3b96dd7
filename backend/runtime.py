"""ModelRuntime: batched inference on a loaded bundle, used by the server and by evaluation.

Takes and returns numpy (what travels on the wire), hides devices, padding and mixed precision:
- runs in ``torch.inference_mode``; on CUDA under autocast (bf16 where supported: same range as fp32, so the
  pixel-norm's sum of squares cannot overflow as it can in fp16; fp16 otherwise);
- pads each frame up to the U-Net's multiple (2**depth) by replicating the border and crops the result back, so
  any frame size works; replicate (not zeros / "empty") because a frame border is not the edge of the world, and
  the network was trained on crops whose surroundings continue.

Why the frame path runs on the model's device: decoding the wire arrays, encoding them (exact lookup tables,
backend/tensor_encoding.py), padding, and turning the output into uint8 or float16 pixels are all done in torch
where the network runs. Only the compact wire arrays (8 bytes a pixel at most) travel to the device, through
pinned staging buffers and non-blocking copies on CUDA, and only the finished pixels come back; on CUDA the
network runs channels_last. :meth:`ModelRuntime.rerender_wire` is the server's entry point and reports where a
frame's time went (decode, encode, forward, output).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.protocol import check_wire_buffer

from .bundle import Appearance, Bundle
from .encoding import buffer_tensors, photo_batch
from .tensor_encoding import as_tensor, stack_numpy

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


STAGES = ("decode", "encode", "forward", "output")


@dataclass
class RerenderResult:
    """What :meth:`ModelRuntime.rerender_wire` returns: the frames, the labels used (``fill_labels``), and where
    the time went, in ms per stage (decode: wire arrays to device tensors; encode: network input; forward; output:
    pixels back on the host). On CUDA the stages are timed by CUDA events on the stream, so they are device time."""

    images: np.ndarray
    labels: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class ModelRuntime:
    """Inference on a model bundle: rerender, encode, segment; numpy in, numpy out.

    The bundle's modules are moved to ``device`` in place (no copy: a bundle's weights exist once in memory), so
    one bundle object serves one runtime at a time. ``compile=True`` wraps the rerenderer in ``torch.compile``
    (one graph per frame size, compiled on its first frame; worth it on a GPU for a long render at a fixed size,
    off by default and on the CPU). ``channels_last`` defaults to on for CUDA (faster convolutions there).
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", *, batch_size: int = DEFAULT_BATCH,
                 compile: bool = False, channels_last: bool | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.config = self.bundle.config
        self.encoding = self.config.encoding
        self.device = resolve_device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.cuda = self.device.startswith("cuda")
        self.channels_last = self.cuda if channels_last is None else bool(channels_last)
        for m in self.bundle.modules().values():
            m.to(self.device).eval()
            if self.channels_last:
                m.to(memory_format=torch.channels_last)
        self.autocast_dtype: torch.dtype | None = None
        if self.cuda:
            self.autocast_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self._rerenderer = torch.compile(self.bundle.rerenderer, dynamic=False) if compile else self.bundle.rerenderer
        self._staging = _Staging(self.device)
        self._input: torch.Tensor | None = None  # reused network-input buffer of the last frame size
        self._lock = threading.Lock()  # one frame at a time through the reused buffers

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

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _to_device(self, arrays: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in arrays.items()}

    def _to_host(self, t: torch.Tensor) -> np.ndarray:
        """A device tensor as a fresh numpy array (through a pinned buffer on CUDA)."""
        if not self.cuda:
            return t.numpy() if t.is_contiguous() else t.contiguous().numpy()
        return self._staging.download(t)

    # ---- operations ---------------------------------------------------------------------------------------------

    def rerender(self, buffers: Sequence[DeepBuffer], latents: np.ndarray | None, *,
                 output: str = "uint8", fill_labels: bool = False) -> np.ndarray:
        """Deep buffers (one size) + appearance latents N x L -> sRGB frames N x H x W x 3.

        ``output="uint8"`` (default) gives 0..255; ``"float16"`` gives sRGB in [0, 1] without 8-bit quantisation
        (the network's own values), for renders that go on to a float compositor. ``fill_labels=True`` first lets
        S predict the labels of pixels no point covers (:meth:`fill_labels`); call that yourself to also get the
        labels used.
        """
        if output not in ("uint8", "float16"):
            raise ValueError(f"output must be 'uint8' or 'float16', got {output!r}")
        buffers = _buffer_list(buffers)
        if fill_labels:
            buffers = self.fill_labels(buffers)
        z = self._check_latents(latents, len(buffers))
        out = []
        for s in self._chunks(len(buffers)):
            arrays = buffer_tensors(buffers[s])
            if self.config.use_semantics:
                self.encoding.check_labels(arrays["label"])
            zz = None if z is None else z[s]
            out.append(self._rerender_arrays(self._to_device(arrays), zz, output)[0])
        return np.concatenate(out) if len(out) > 1 else out[0]

    def rerender_wire(self, wires: Sequence[Mapping[str, np.ndarray]], latents: np.ndarray | None, *,
                      output: str = "uint8", fill_labels: bool = False) -> RerenderResult:
        """Wire arrays of N deep buffers (one size; ``bridge.protocol.check_wire_buffer`` form: uint8 sRGB color,
        float16/float32 depth, uint8 label, optional mask) + latents -> frames, straight from the received frames.

        The server's path: no DeepBuffer is built on the host, the arrays go to the device as they arrived.
        ``fill_labels`` lets S predict the labels of undrawn, unknown pixels on the device first; the labels used
        are then returned too. Raises ValueError (a bad request) for arrays that break the wire contract.
        """
        if output not in ("uint8", "float16"):
            raise ValueError(f"output must be 'uint8' or 'float16', got {output!r}")
        wires = [check_wire_buffer(w) for w in wires]
        if not wires:
            raise ValueError("at least one deep buffer is needed")
        if len({w["color"].shape for w in wires}) > 1:
            raise ValueError("all deep buffers of a batch must have one size")
        z = self._check_latents(latents, len(wires))
        images, labels, timings = [], [], {stage: 0.0 for stage in STAGES}
        for s in self._chunks(len(wires)):
            clock = _StageClock(self.cuda)
            names = [n for n in ("color", "depth", "label", "mask") if all(n in w for w in wires[s])]
            host = {n: stack_numpy([w[n] for w in wires[s]]) for n in names}
            if self.config.use_semantics or fill_labels:
                self.encoding.check_labels(host["label"])
            arrays = self._staging.upload(host) if self.cuda else host
            clock.mark("decode")
            im, lab = self._rerender_arrays(arrays, None if z is None else z[s], output, fill_labels=fill_labels,
                                            clock=clock)
            images.append(im)
            labels.append(lab)
            for stage, ms in clock.result().items():
                timings[stage] += ms
        return RerenderResult(np.concatenate(images) if len(images) > 1 else images[0],
                              np.concatenate(labels) if fill_labels else None, timings)

    def _rerender_arrays(self, arrays: dict[str, torch.Tensor], z: np.ndarray | None, output: str, *,
                         fill_labels: bool = False,
                         clock: "_StageClock | None" = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Device arrays of one chunk -> (pixels, labels used or None)."""
        clock = clock or _StageClock(False)
        use_sem = self.config.use_semantics
        h, w = arrays["depth"].shape[-2:]
        with self._lock, self._inference():
            filled = None
            if fill_labels:
                filled = self._filled_labels(arrays, h, w)
                arrays = {**arrays, "label": filled}
            x = self.encoding.encode_wire(arrays, with_labels=use_sem, multiple=self.multiple, out=self._input)
            self._input = x
            zz = None if z is None else torch.from_numpy(z).to(self.device, non_blocking=True)
            clock.mark("encode")
            y = self._rerenderer(self._layout(x), zz)
            clock.mark("forward")
            pixels = self._to_host(self.encoding.decode_output(y[:, :, :h, :w], output, in_place=True))
            labels = None if filled is None else self._to_host(filled)
            clock.mark("output")
        return pixels, labels

    def _filled_labels(self, arrays: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        """Labels with S's prediction where no point was drawn and the label is unknown (see :meth:`fill_labels`)."""
        x = self.encoding.encode_wire(arrays, with_labels=False, multiple=self.multiple)
        predicted = self.bundle.semantic(self._layout(x))[:, :, :h, :w].argmax(dim=1).to(torch.uint8)
        label = arrays["label"]
        drawn = torch.isfinite(arrays["depth"]) if "mask" not in arrays else arrays["mask"].bool()
        return torch.where(~drawn & (label == UNKNOWN), predicted, label)

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
                                 f"render the buffer at the photo's size")
        out = []
        for s in self._chunks(len(buffers)):
            arrays = buffer_tensors(buffers[s])
            if self.config.use_semantics:
                self.encoding.check_labels(arrays["label"])
            photo = as_tensor(photo_batch(photos[s]))
            with self._inference():
                dev = self._to_device({**arrays, "photo": photo})
                x = self.encoding.encode_wire(dev, with_labels=self.config.use_semantics, photo=dev["photo"])
                z = self.bundle.encoder.latent(self._layout(x))
            out.append(z.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def segment(self, buffers: Sequence[DeepBuffer]) -> np.ndarray:
        """Deep buffers -> predicted class ids (argmax of S), uint8 N x H x W."""
        buffers = _buffer_list(buffers)
        out = []
        for s in self._chunks(len(buffers)):
            h, w = buffers[s][0].shape
            with self._inference():
                dev = self._to_device(buffer_tensors(buffers[s]))
                x = self.encoding.encode_wire(dev, with_labels=False, multiple=self.multiple)
                logits = self.bundle.semantic(self._layout(x))
                out.append(self._to_host(logits[:, :, :h, :w].argmax(dim=1).to(torch.uint8)))
        return np.concatenate(out) if len(out) > 1 else out[0]

    def fill_labels(self, buffers: Sequence[DeepBuffer]) -> list[DeepBuffer]:
        """The buffers with S's predicted class where no point was drawn and the label is unknown (docs/design.md §4b).

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


class _StageClock:
    """Stage boundaries of one chunk: host clock on the CPU; CUDA events on the stream on a GPU (no extra sync,
    read once the output copy has finished)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.names: list[str] = []
        self.times = [time.perf_counter()]
        self.events = [self._event()] if cuda else []

    def _event(self) -> "torch.cuda.Event":
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def mark(self, name: str) -> None:
        self.names.append(name)
        self.times.append(time.perf_counter())
        if self.cuda:
            self.events.append(self._event())

    def result(self) -> dict[str, float]:
        if self.cuda:
            self.events[-1].synchronize()
            spans = [a.elapsed_time(b) for a, b in zip(self.events, self.events[1:])]
        else:
            spans = [(b - a) * 1000 for a, b in zip(self.times, self.times[1:])]
        return dict(zip(self.names, spans))


class _Staging:
    """Pinned host buffers for the CUDA copies, reused per array shape.

    Uploads alternate between two buffers per shape, and a buffer is only refilled once the copy that last read it
    has finished (its event), so a non-blocking copy never sees its source change. Downloads wait for their copy
    and hand out a fresh numpy array (the reply may still be on its way out when the next frame arrives).
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._up: dict[tuple, list[Any]] = {}
        self._turn: dict[tuple, int] = {}
        self._down: dict[tuple, torch.Tensor] = {}
        self._lock = threading.Lock()  # a pipelining server uploads frame k+1 while frame k computes
        self._down_lock = threading.Lock()

    def upload(self, host: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with self._lock:
            return self._upload(host)

    def _upload(self, host: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for name, t in host.items():
            key = (name, tuple(t.shape), t.dtype)
            slots = self._up.setdefault(key, [[None, None], [None, None]])
            turn = self._turn[key] = (self._turn.get(key, -1) + 1) % 2
            slot = slots[turn]
            if slot[0] is None:
                slot[0] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            elif slot[1] is not None:
                slot[1].synchronize()
            slot[0].copy_(t)
            out[name] = slot[0].to(self.device, non_blocking=True)
            slot[1] = torch.cuda.Event()
            slot[1].record()
        return out

    def download(self, t: torch.Tensor) -> np.ndarray:
        with self._down_lock:
            return self._download(t)

    def _download(self, t: torch.Tensor) -> np.ndarray:
        key = (tuple(t.shape), t.dtype)
        buf = self._down.get(key)
        if buf is None:
            buf = self._down[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        buf.copy_(t, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return buf.numpy().copy()
