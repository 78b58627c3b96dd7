"""Matching a photo: fitting an appearance latent as a chain of short ``encode`` requests.

Why a chain and not one long request: the backend fits on its device worker, which then serves nobody else (the
viewport's frames wait), and a single 200-step request gives its caller nothing to show and nothing to stop for
seconds or minutes. Here each request fits ``chunk`` steps and passes the best latent so far as the next request's
``init`` (docs/protocol.md, ``encode``); between requests the caller gets a :class:`FitProgress` (the add-on
shows it in the status bar), and ``cancel()`` returning True stops issuing requests and returns the best latent so
far. The backend pulls every link towards the encoder's answer, so the chain optimises what one long fit would
(only Adam's moment estimates restart per link).

A request stays well inside the client's timeout: with ``max_chunk_s`` set, the first link is a short probe and
later links are sized from its measured time per step. A backend that restarts under the chain gets the request in
flight re-sent by the client (ops are stateless) and the chain goes on; one that stays away, or comes back with
another model (a ``hello`` before each link says), ends the chain with :class:`FitInterrupted`, which carries what
was fitted before.

Imports only numpy and the bridge (vendored into the Blender extension).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .buffers import DeepBuffer
from .errors import BridgeError, ProtocolError
from .protocol import buffer_to_wire

DEFAULT_STEPS = 200
DEFAULT_CHUNK = 25
MAX_CHUNK = 5000  # the backend's bound on ``fit_steps`` (backend/latent_fit.py MAX_FIT_STEPS)
PROBE_STEPS = 5   # the first link when links are sized by time
POLL_S = 0.1      # how often cancel() is asked while a link is at the backend


@dataclass(frozen=True)
class FitProgress:
    """Where a chained fit stands after a link: ``loss`` is the best photo loss so far."""

    steps_done: int
    steps: int
    initial_loss: float
    loss: float
    seconds: float
    links: int

    @property
    def fraction(self) -> float:
        return self.steps_done / self.steps if self.steps else 1.0

    def line(self) -> str:
        """'60/200 steps, loss 0.368 → 0.310' for a status bar."""
        return f"{self.steps_done}/{self.steps} steps, loss {self.initial_loss:.3f} → {self.loss:.3f}"


@dataclass
class PhotoFit:
    """The best latent of a chained fit and how it went; ``initial_loss`` is the start's (the encoder's answer,
    or ``init``) photo loss, ``final_loss`` the returned latent's."""

    latent: np.ndarray
    initial_loss: float
    final_loss: float
    steps_done: int
    steps: int
    cancelled: bool = False
    link_seconds: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return float(sum(self.link_seconds))

    def line(self) -> str:
        """'loss 0.368 → 0.302 in 200 steps (2.9 s)' (plus 'cancelled at 60/200' when stopped early)."""
        text = f"loss {self.initial_loss:.3f} → {self.final_loss:.3f} in {self.steps_done} steps ({self.seconds:.1f} s)"
        return text + (f", cancelled at {self.steps_done}/{self.steps}" if self.cancelled else "")


class FitInterrupted(BridgeError):
    """The backend failed, vanished or changed model in the middle of a chained fit.

    ``partial`` is the :class:`PhotoFit` of the links that were answered (None when none was); ``__cause__`` is the
    bridge error that stopped the chain (None for a changed model)."""

    def __init__(self, message: str, partial: PhotoFit | None) -> None:
        super().__init__(message)
        self.partial = partial


def fit_photo(client: Any, photo: np.ndarray, buffer: DeepBuffer, *, steps: int = DEFAULT_STEPS,
              chunk: int = DEFAULT_CHUNK, progress: Callable[[FitProgress], None] | None = None,
              cancel: Callable[[], bool] | None = None, init: np.ndarray | None = None,
              max_chunk_s: float | None = None, depth_dtype: str = "float16") -> PhotoFit:
    """Fit the appearance latent of ``photo`` (uint8 sRGB H x W x 3) seen through ``buffer`` for ``steps`` steps.

    ``client`` is a connected :class:`~.client.Client` (used from this thread only). Starts from ``init`` (a
    latent, or N candidate latents: the backend starts from the lowest-loss one) or the encoder's answer; each
    request fits at most ``chunk`` steps, fewer when ``max_chunk_s`` (seconds) sizes them by measured time.
    ``progress(FitProgress)`` is called after every link; ``cancel()`` is asked before and during every link, and
    returning True ends the fit with the best latent so far (the first link is always waited for: it gives the
    first latent). Raises :class:`FitInterrupted` when the backend stops answering mid-fit, and the bridge's own
    errors (``InvalidRequest`` for a bad ``init``, ``BackendUnavailable``, ...) when the first link fails.
    """
    steps, chunk = int(steps), int(chunk)
    if steps < 1 or not 1 <= chunk <= MAX_CHUNK:
        raise ValueError(f"a photo fit needs steps >= 1 and 1 <= chunk <= {MAX_CHUNK}, got {steps} and {chunk}")
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3 or photo.shape[:2] != buffer.shape:
        raise ValueError(f"the photo must be uint8 sRGB H x W x 3 of its deep buffer's size {buffer.shape}, got "
                         f"{photo.dtype}{photo.shape}")
    chain = _Chain(client, {**buffer_to_wire(buffer, depth_dtype, send_mask=None), "photo": photo}, steps)
    latent = None if init is None else np.ascontiguousarray(init, np.float32)
    size = min(chunk, PROBE_STEPS) if max_chunk_s else chunk
    while chain.done < steps:
        if cancel is not None and chain.fit is not None and cancel():
            chain.fit.cancelled = True
            break
        n = min(size, steps - chain.done)
        started = time.monotonic()
        reply = chain.link(n, latent if chain.fit is None else chain.fit.latent, cancel)
        if reply is None:  # cancelled while the link was at the backend
            chain.fit.cancelled = True
            break
        seconds = time.monotonic() - started
        chain.record(reply, n, seconds)
        if progress is not None:
            fit = chain.fit
            progress(FitProgress(fit.steps_done, steps, fit.initial_loss, fit.final_loss, fit.seconds,
                                 len(fit.link_seconds)))
        if max_chunk_s:
            size = max(1, min(chunk, int(max_chunk_s * n / max(seconds, 1e-6))))
    return chain.fit


class _Chain:
    """The state of one chained fit: the wire arrays, the best result so far, and the model it started on."""

    def __init__(self, client: Any, wire: dict[str, np.ndarray], steps: int) -> None:
        self.client, self.wire, self.steps = client, wire, steps
        self.fit: PhotoFit | None = None
        self.model = _model_of(client.hello())

    @property
    def done(self) -> int:
        return 0 if self.fit is None else self.fit.steps_done

    def link(self, n: int, start: np.ndarray | None, cancel: Callable[[], bool] | None) -> Any:
        """Send one link and wait for it (asking ``cancel`` every POLL_S once a latent exists); None if cancelled.

        Why a ``hello`` before every link but the first: a backend restarted between links (or under one: the
        client re-sends the link in flight) may serve another bundle, whose latents mean something else."""
        arrays = self.wire if start is None else {**self.wire, "init": start}
        try:
            if self.fit is not None and _model_of(self.client.hello()) != self.model:
                raise FitInterrupted(self._where("the backend restarted with another model, to which the latents "
                                                 "of the first mean nothing; match the photo again"), self.fit)
            request_id = self.client.submit("encode", {"fit_steps": n}, arrays)
            while True:
                reply = self.client.collect(request_id, wait=POLL_S)
                if reply is not None:
                    return reply
                if cancel is not None and self.fit is not None and cancel():
                    self.client.cancel(request_id)
                    return None
        except FitInterrupted:
            raise
        except BridgeError as exc:
            if self.fit is None:
                raise
            raise FitInterrupted(self._where(str(exc)), self.fit) from exc

    def _where(self, what: str) -> str:
        return (f"the fit stopped after {self.fit.steps_done} of {self.steps} steps (loss "
                f"{self.fit.initial_loss:.3f} → {self.fit.final_loss:.3f} so far): {what}")

    def record(self, reply: Any, n: int, seconds: float) -> None:
        latent, loss = reply.arrays.get("latent"), reply.arrays.get("photo_loss")
        if latent is None or loss is None or np.shape(loss) != (2,):
            raise ProtocolError("malformed", "the backend's encode reply has no 'photo_loss': it is older than "
                                             "this add-on and cannot fit in links; update the backend")
        latent = np.array(latent, np.float32)
        before, after = float(loss[0]), float(loss[1])
        if self.fit is None:
            self.fit = PhotoFit(latent, before, after, n, self.steps)
        else:
            self.fit.steps_done += n
            if after < self.fit.final_loss:  # each link returns its best; keep the best of the chain
                self.fit.latent, self.fit.final_loss = latent, after
        self.fit.link_seconds.append(seconds)


def _model_of(hello: Any) -> tuple:
    return getattr(hello, "model", None), getattr(hello, "latent_size", None)


__all__ = ["DEFAULT_CHUNK", "DEFAULT_STEPS", "FitInterrupted", "FitProgress", "PhotoFit", "fit_photo"]
