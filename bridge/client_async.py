"""Sending and receiving in separate calls: :meth:`submit` now, :meth:`collect` later (a mixin of ``Client``).

Why separate: the render engine rasterizes frame N+1 with EEVEE while the backend works on frame N, and each
``render()`` call must hand back its own frame. A submitted request is kept until collected or cancelled, so it is
re-sent when the backend drops the connection and re-sent after a backoff when it is refused ``overloaded``,
exactly as :meth:`Client.pipeline` does. The mixin relies on ``Client``'s socket plumbing (``_send``, ``_poll``,
``_receive``, ``_backend_dropped``, ``_resend_after_drop``, ``_retry_later``, ``_reopen``); it lives apart only to
keep each module readable.

Imports only numpy/zmq/msgpack through the bridge (vendored into the Blender extension).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .buffers import DeepBuffer
from .errors import BackendUnavailable, ProtocolError, remote_error
from .protocol import Message, buffer_to_wire


@dataclass
class _Request:
    index: int
    op: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]


class SubmitCollect:
    """submit / collect (see the module docstring); mixed into :class:`~.client.Client`."""

    # ------------------------------------------------------------------------------------- async API
    def submit(self, op: str, params: dict[str, Any] | None = None,
               arrays: dict[str, np.ndarray] | None = None) -> int:
        """Send one request without waiting; returns its id for :meth:`collect`.

        Why: the render engine rasterizes frame N+1 with EEVEE while the backend works on frame N, and each
        ``render()`` call must hand back its own frame, so sending and receiving have to be separate calls. The
        request is kept until collected or cancelled, so a backend that drops the connection gets it re-sent,
        exactly like :meth:`pipeline` does."""
        if not self._async:
            self._backend_dropped()  # connection events from before: nothing of ours was lost then
            self._async_progress = time.monotonic()
        request_id = next(self._ids)
        request = _Request(len(self._async), op, params or {}, arrays or {})
        self._send(request_id, request)
        self._async[request_id] = request
        return request_id

    def submit_rerender(self, buffer: DeepBuffer, latent: np.ndarray, *, output: str = "uint8",
                        depth_dtype: str = "float16", fill_labels: bool = False) -> int:
        """:meth:`submit` of one ``rerender`` request (deep buffer + latent); collect the image with
        :meth:`collect_image`, or image and labels with :meth:`collect_rerender`. ``fill_labels=True`` asks the
        backend to let its semantic network label the pixels no point covers first (and to return the labels
        it used)."""
        params: dict[str, Any] = {"output": output}
        if fill_labels:  # only when asked: older backends reject parameters they do not know
            params["fill_labels"] = True
        return self.submit("rerender", params,
                           {**buffer_to_wire(buffer, depth_dtype, send_mask=None), "latent": _as_latent(latent)})

    @property
    def submitted(self) -> tuple[int, ...]:
        """Ids submitted and not yet collected or cancelled, oldest first."""
        return tuple(self._async) + tuple(i for i in self._ready if i not in self._async)

    def cancel(self, request_id: int) -> None:
        """Forget a submitted request: its reply, when it comes, is dropped. Unknown ids are ignored."""
        self._async.pop(request_id, None)
        self._ready.pop(request_id, None)
        self._async_retry.discard(request_id)

    def collect(self, request_id: int, wait: float | None = None) -> Message | None:
        """The reply to a submitted request, or None if it has not arrived within ``wait`` seconds.

        ``wait=None`` blocks until the reply comes. Short waits let a caller poll (Blender's Esc between slices).
        Whatever ``wait`` is, when no reply of any submitted request has arrived for ``self.timeout`` seconds,
        raises :class:`BackendUnavailable` (and forgets every submitted request: their ids are in ``pending``).
        When the backend drops the connection, all unanswered submitted requests are re-sent on a fresh socket
        (at most ``reconnects`` times in a row without a reply). An error reply raises its RemoteError."""
        if request_id not in self._async and request_id not in self._ready:
            raise KeyError(f"request {request_id} was never submitted on this client, or was already collected "
                           "or cancelled")
        slice_end = None if wait is None else time.monotonic() + max(0.0, wait)
        while request_id not in self._ready:
            now = time.monotonic()
            remaining = self.timeout - (now - self._async_progress)
            if remaining <= 0 and not self._reply_waiting():  # a caller slower than the timeout is not a dead backend
                lost = tuple(self._async)
                self._async.clear()
                self._ready.clear()
                self._reopen()  # drop whatever the dead/hung peer may still send
                raise BackendUnavailable(self.address, self.timeout, f"{len(lost)} submitted request(s) unanswered",
                                         pending=lost)
            if slice_end is not None:
                if now >= slice_end:
                    return None
                remaining = min(remaining, slice_end - now)
            for due_id, due in self._async_retry.due():  # re-sends after `overloaded`, once their wait is over
                if due_id in self._async:
                    self._send(due_id, due)
            retry_in = self._async_retry.seconds_to_next()
            if retry_in is not None:
                remaining = min(remaining, retry_in)
            events = self._poll(max(1, int(remaining * 1000)))
            if self._monitor in events and self._backend_dropped(tuple(self._async)) and self._async:
                if self._async_reconnects_left <= 0:
                    lost = tuple(self._async)
                    self._async.clear()
                    self._ready.clear()
                    self._reopen()
                    raise BackendUnavailable(self.address, self.timeout,
                                             "the backend dropped the connection repeatedly", pending=lost)
                self._async_reconnects_left -= 1
                self._resend_after_drop(self._async)
                self._async_progress = time.monotonic()
                continue
            if self._socket in events:
                message = self._receive()
                if message is not None and message.id in self._async:
                    self._async_progress = time.monotonic()  # refused or answered: the backend is alive
                    if self._retry_later(self._async_retry, message.id, self._async[message.id], message):
                        continue
                    del self._async[message.id]
                    self._ready[message.id] = message
                    self._async_reconnects_left = self.reconnects
        reply = self._ready.pop(request_id)
        self._async_retry.forget(request_id)
        if not reply.ok:
            raise remote_error(reply.error_code or "internal", reply.error_message or "", reply.id, reply.op,
                               retry_after=_seconds(reply.retry_after_ms))
        return reply

    def collect_rerender(self, request_id: int,
                         wait: float | None = None) -> tuple[np.ndarray, np.ndarray | None] | None:
        """:meth:`collect` of a ``rerender`` request: (image, labels the network received or None when the
        request did not ask for ``fill_labels``), or None if not there within ``wait``."""
        reply = self.collect(request_id, wait)
        return None if reply is None else (_reply_array(reply, "image"), reply.arrays.get("labels"))

    def collect_image(self, request_id: int, wait: float | None = None) -> np.ndarray | None:
        """:meth:`collect` of a ``rerender`` request: the sRGB image, or None if not there within ``wait``."""
        reply = self.collect(request_id, wait)
        return None if reply is None else _reply_array(reply, "image")


def _reply_array(reply: Message, name: str) -> np.ndarray:
    """An array a successful reply must carry; ProtocolError (not a KeyError) when the peer left it out."""
    array = reply.arrays.get(name)
    if array is None:
        raise ProtocolError("malformed", f"the backend's {reply.op} reply has no {name!r} array "
                                         f"(it sent {sorted(reply.arrays)}): is it a Rerender backend?")
    return array


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _as_latent(latent: Any) -> np.ndarray:
    a = np.asarray(latent, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"a latent must be a 1-d vector, got shape {a.shape}")
    return a
