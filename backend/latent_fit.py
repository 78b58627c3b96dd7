"""Fitting an appearance latent to a photo: "match this photo" for the artist, and the NeRF-W evaluation protocol.

The encoder Ea answers in one forward pass, but it was trained on the training photos; on a new photo (or half of
one) its answer is a good start, not the best latent the rerenderer can use. Fitting optimises only the latent z,
with the network frozen, so that R(B, z) matches the photo on the pixels given: a few hundred Adam steps on an
8-number vector, seconds on a CPU for a frame of a few hundred pixels.

Why the loss is L1 on [-1, 1] images plus a small pull towards the start: L1 is what the CPU presets train R with,
so its minimum is where R is accurate; the pull (``anchor_weight`` times the squared distance to the encoder's
answer) keeps z near latents R has seen, where a latent that fits the given pixels also renders sensibly elsewhere
(the half-image protocol measures exactly that: fit on the left half, score on the right half).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rerender.bridge.buffers import DeepBuffer

DEFAULT_FIT_STEPS = 200
MAX_FIT_STEPS = 5000


@dataclass
class LatentFit:
    """The fitted latent and how the photo loss went (``losses[0]`` is the starting latent's loss)."""

    latent: np.ndarray
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    cancelled: bool = False

    @property
    def initial_loss(self) -> float:
        return self.losses[0]

    @property
    def final_loss(self) -> float:
        return min(self.losses)


def fit_latent(runtime, photo: np.ndarray, buffer: DeepBuffer, *, steps: int = DEFAULT_FIT_STEPS, lr: float = 0.05,
               init: np.ndarray | None = None, mask: np.ndarray | None = None, anchor_weight: float = 1e-3,
               anchor: np.ndarray | None = None, progress: Callable[[int, int, float], None] | None = None,
               cancel: Callable[[], bool] | None = None) -> LatentFit:
    """Optimise the latent of ``runtime``'s bundle so that R(buffer, z) matches ``photo``.

    ``runtime`` is a :class:`~rerender.backend.runtime.ModelRuntime`. Starts from ``init`` or the encoder's answer
    for (photo, buffer); ``mask`` (H x W bool) restricts the loss to some pixels. ``anchor`` is the latent the
    small pull goes towards (default: the start); a fit run as a chain of short requests passes the encoder's
    answer here on every link, so that the chain optimises the same objective as one long fit would.
    ``progress(step, steps, loss)`` is called every step; ``cancel()`` returning True stops early (the best latent
    so far is returned). The returned latent is the best one seen, so the result is never worse than the start on
    the fitted pixels.
    """
    if runtime.bundle.encoder is None and init is None:
        raise ValueError(f"bundle {runtime.config.name!r} has no appearance latent to fit (latent_size 0)")
    steps = int(steps)
    if not 0 <= steps <= MAX_FIT_STEPS:
        raise ValueError(f"fit steps must be between 0 and {MAX_FIT_STEPS}, got {steps}")
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3 or photo.shape[:2] != buffer.shape:
        raise ValueError(f"fit_latent needs a uint8 H x W x 3 photo the size of its deep buffer {buffer.shape}, "
                         f"got {photo.dtype} {photo.shape}")
    if mask is not None and (mask.shape != buffer.shape or not mask.any()):
        raise ValueError(f"mask must be a non-empty H x W bool array of the buffer's size {buffer.shape}")
    start = np.asarray(init if init is not None else runtime.encode([photo], [buffer])[0], np.float32).reshape(-1)
    if start.shape != (runtime.latent_size,):
        raise ValueError(f"init latent must have {runtime.latent_size} values, got {start.size}")
    pull = start if anchor is None else np.asarray(anchor, np.float32).reshape(-1)
    if pull.shape != start.shape:
        raise ValueError(f"anchor latent must have {runtime.latent_size} values, got {pull.size}")
    with torch.inference_mode(False), torch.enable_grad():  # callable from inside a server's inference context
        return _optimise(runtime, photo, buffer, start, pull, steps, lr, mask, anchor_weight, progress, cancel)


def photo_losses(runtime, photo: np.ndarray, buffer: DeepBuffer, latents: np.ndarray) -> np.ndarray:
    """The photo loss of each of N candidate latents (N x latent_size) for (photo, buffer): float32 N.

    The same L1 as :func:`fit_latent` (its ``losses[0]`` for that start), in batched forward passes of the
    runtime's batch size (64 candidates of a large frame at once would not fit in memory); a request with several
    candidate starts is fitted from the lowest.
    """
    latents = np.asarray(latents, np.float32).reshape(-1, runtime.latent_size)
    step = max(1, int(getattr(runtime, "batch_size", 1)))  # as many frames at once as the runtime renders
    out = []
    with torch.inference_mode(False), torch.no_grad():
        x, h, w, target = _inputs(runtime, photo, buffer)
        for i in range(0, len(latents), step):
            z = torch.from_numpy(np.ascontiguousarray(latents[i:i + step])).to(runtime.device)
            image = runtime.bundle.rerenderer(x.repeat(len(z), 1, 1, 1), z)[:, :, :h, :w].float()
            out.append((image - target).abs().mean(dim=(1, 2, 3)).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _inputs(runtime, photo: np.ndarray, buffer: DeepBuffer) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """The rerenderer's padded input for ``buffer`` (on the device), its unpadded (h, w), and the photo in [-1, 1]."""
    encoding = runtime.encoding
    x = encoding.encode_buffers([buffer], with_labels=runtime.config.use_semantics)
    x, h, w = runtime._pad(x)
    return x.to(runtime.device), h, w, encoding.encode_photos([photo]).to(runtime.device)


def _optimise(runtime, photo: np.ndarray, buffer: DeepBuffer, start: np.ndarray, anchor: np.ndarray, steps: int,
              lr: float, mask: np.ndarray | None, anchor_weight: float, progress, cancel) -> LatentFit:
    device = runtime.device
    x, h, w, target = _inputs(runtime, photo, buffer)
    weight = torch.ones_like(target[:, :1]) if mask is None else \
        torch.from_numpy(np.ascontiguousarray(mask)).to(device, torch.float32)[None, None]
    z0 = torch.from_numpy(anchor).to(device)[None]
    z = torch.from_numpy(start).to(device)[None].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    R = runtime.bundle.rerenderer
    flags = [p.requires_grad for p in R.parameters()]
    R.requires_grad_(False)
    result = LatentFit(start.copy())
    best = float("inf")
    try:
        for step in range(steps + 1):
            out = R(x, z)[:, :, :h, :w].float()
            photo_loss = ((out - target).abs() * weight).sum() / (weight.sum() * 3)
            value = float(photo_loss.detach())
            result.losses.append(value)
            if value < best:
                best, result.latent = value, z.detach()[0].cpu().numpy().astype(np.float32).copy()
            if progress is not None and step:
                progress(step, steps, value)
            if step == steps:
                break
            if cancel is not None and cancel():
                result.cancelled = True
                break
            loss = photo_loss + anchor_weight * F.mse_loss(z, z0, reduction="sum")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            result.steps = step + 1
    finally:
        for p, flag in zip(R.parameters(), flags):
            p.requires_grad_(flag)
    return result


__all__ = ["DEFAULT_FIT_STEPS", "LatentFit", "MAX_FIT_STEPS", "fit_latent", "photo_losses"]
