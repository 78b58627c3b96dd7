"""The bridge client: what the Blender add-on (and scripts, and the benchmark) use to talk to a backend.

One DEALER socket; every request carries an id and replies are matched by it, so many frames can be in flight
(:meth:`Client.rerender_many` keeps N in flight and yields results in order; :meth:`Client.submit` /
:meth:`Client.collect` send and receive in separate calls, for a caller that works between the two). Nothing waits forever: every call
has a timeout and raises :class:`~.errors.BackendUnavailable` when no backend answers in time.

Backend restarts: ZeroMQ reconnects by itself, but requests that were inside the dead process are gone. The client
watches its socket's connection events; when the backend drops the connection while requests are in flight it
reports it (log warning + ``on_event`` callback), opens a fresh socket and re-sends every unanswered request
(all ops are stateless, so a re-send is safe). A request is therefore answered, or its index is reported in the
``BackendUnavailable.pending`` of the exception — never silently dropped.

A Client is not thread-safe (ZeroMQ sockets are not): use one per thread. Imports only numpy/zmq/msgpack.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from .allocator import keep_frame_buffers
from .gallery import Appearance
from .compression import choose_codec
from .buffers import DeepBuffer
from .errors import (
    CODE_OVERLOADED, AuthenticationFailed, BackendUnavailable, FrameTooLarge, InvalidAddress, ProtocolError,
    ProtocolMismatch, TransportError, remote_error,
)
from .hello import ServerHello
from .protocol import (
    DEFAULT_ADDRESS, DEFAULT_LIMITS, PROTOCOL_VERSION, REPLY_LIMITS, Limits, Message, buffer_to_wire,
    check_request_size, decode, encode_request,
)
from .client_async import SubmitCollect, _as_latent, _reply_array, _Request, _seconds
from .retry import OverloadRetry, Window
from .security import HANDSHAKE_EVENTS, ClientCurve, HandshakeWatch

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]


class Client(SubmitCollect):
    """A connection to one backend.

    ``timeout`` (seconds) bounds how long a call waits without any reply arriving; ``reconnects`` is how many
    times one call may re-send its in-flight requests after the backend dropped the connection; ``on_event``
    is called as ``on_event(kind, info)`` for ``"disconnected"`` / ``"resent"`` (the add-on shows these).
    A request answered ``overloaded`` is re-sent after a backoff (``bridge.retry``) for up to ``overload_patience``
    seconds before :class:`~.errors.BackendBusy` is raised. ``compression`` ("auto" or "zlib"; default none)
    compresses the requests' large frames, for a backend across a slow network (bridge/compression.py).
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 10.0, *, reconnects: int = 3,
                 on_event: EventCallback | None = None, context: zmq.Context | None = None,
                 security: ClientCurve | None = None, overload_patience: float = 120.0,
                 compression: str | None = None) -> None:
        if not isinstance(address, str) or "://" not in address:
            raise InvalidAddress(f"bridge address must look like tcp://HOST:PORT or ipc:///path, got {address!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        keep_frame_buffers()  # frame-sized replies reuse freed memory instead of faulting fresh pages in
        self.compression = choose_codec(compression)  # requests' large frames; for a backend across a network
        self.address = address
        self.timeout = float(timeout)
        self.reconnects = int(reconnects)
        self.on_event = on_event
        self.security = security  # CURVE keys for a backend that requires them (bridge.security)
        self._handshakes = HandshakeWatch(address, security)  # tells a refused handshake from a drop
        self._context = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._async: OrderedDict[int, _Request] = OrderedDict()  # submitted, unanswered: id -> request
        self._ready: dict[int, Message] = {}                       # answered, not yet collected
        self._async_progress = time.monotonic()
        self._async_reconnects_left = self.reconnects
        self._async_retry = OverloadRetry(overload_patience)
        self.overload_patience = float(overload_patience)
        self.overload_retries = 0  # re-sends after `overloaded` replies, over this client's life
        self.server_limits: dict[str, Any] = {}  # the backend's limits, from the last hello()
        self._open()

    # ------------------------------------------------------------------------------------------ lifetime
    def _open(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)  # a backend whose machine vanished is noticed in ~20 s:
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)  # the requests in flight are then re-sent
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED
                                                | HANDSHAKE_EVENTS)
        try:
            if self.security is not None:
                self.security.apply(sock)
            sock.connect(self.address)
        except zmq.ZMQError as exc:
            self._socket = sock
            self.close()
            raise InvalidAddress(f"cannot connect to bridge address {self.address!r}: {exc}") from None
        self._socket = sock

    def close(self) -> None:
        """Close the socket (pending requests are abandoned). Safe to call twice."""
        if self._socket is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._socket.close(linger=0)
            self._socket = None
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None

    def _reopen(self) -> None:
        self.close()
        self._open()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; sockets must not outlive a context being terminated
        try:
            self.close()
        except Exception:
            pass

    # ---------------------------------------------------------------------------------------------- ops
    def hello(self) -> ServerHello:
        """Server info (protocol, model, latent size, device, limits, ...; :class:`~.hello.ServerHello`).

        Raises ProtocolMismatch if the backend speaks another protocol version."""
        info = self._call("hello").params
        if info.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolMismatch("version_mismatch",
                                   f"the backend at {self.address} speaks bridge protocol v{info.get('protocol')}, "
                                   f"this client v{PROTOCOL_VERSION}: install matching releases", op="hello")
        hello = ServerHello.from_params(info)
        self.server_limits = dict(hello.limits)  # frames above them are refused here, before sending
        return hello

    def echo(self, arrays: dict[str, np.ndarray] | None = None,
             params: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Send arrays and params; the backend returns them untouched (measures the transport alone)."""
        reply = self._call("echo", params or {}, arrays or {})
        return reply.params, reply.arrays

    def rerender(self, buffer: DeepBuffer, latent: np.ndarray, *, output: str = "uint8",
                 depth_dtype: str = "float16") -> np.ndarray:
        """Render one frame: deep buffer + appearance latent -> sRGB image H x W x 3 (uint8, or float16 in [0, 1]
        with ``output="float16"``)."""
        return next(self.rerender_many([buffer], [latent], in_flight=1, output=output, depth_dtype=depth_dtype))

    def rerender_many(self, buffers: Iterable[DeepBuffer], latents: np.ndarray | Iterable[np.ndarray], *,
                      in_flight: int = 8, output: str = "uint8", depth_dtype: str = "float16") -> Iterator[np.ndarray]:
        """Pipelined rerender: keeps ``in_flight`` frames at the backend and yields the images in input order.

        ``latents`` is one vector for every frame, or one vector per frame (an N x L array or an iterable).
        ``buffers`` may be a lazy iterator (frames rendered while earlier ones are at the backend)."""
        requests = ({"op": "rerender", "params": {"output": output},
                     "arrays": {**buffer_to_wire(b, depth_dtype, send_mask=None), "latent": latent}}
                    for b, latent in _paired_latents(buffers, latents))
        for reply in self.pipeline(requests, in_flight=in_flight):
            yield _reply_array(reply, "image")

    def encode(self, photo: np.ndarray, buffer: DeepBuffer) -> np.ndarray:
        """Appearance latent (float32, latent_size) of a photo (uint8 sRGB H x W x 3) seen through its deep buffer
        (same H x W)."""
        photo = np.asarray(photo)
        if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
            raise ValueError(f"photo must be uint8 sRGB H x W x 3, got {photo.dtype}{photo.shape}")
        reply = self._call("encode", {}, {**buffer_to_wire(buffer, send_mask=None), "photo": photo})
        return np.array(reply.arrays["latent"], dtype=np.float32)

    def segment(self, buffer: DeepBuffer) -> np.ndarray:
        """Predicted semantic labels (uint8 H x W, class ids of the bundle's class table) for a deep buffer."""
        return np.array(self._call("segment", {}, buffer_to_wire(buffer, send_mask=None)).arrays["labels"])

    def appearances(self) -> list[Appearance]:
        """The bundle's gallery of named appearance latents with thumbnails."""
        reply = self._call("appearances")
        latents = reply.arrays.get("latents", np.zeros((0, 0), np.float32))
        names = reply.params.get("names", [])
        try:
            return [Appearance(str(name), np.array(latents[i], dtype=np.float32),
                               np.array(reply.arrays.get(f"thumbnail.{i}", np.zeros((0, 0, 3), np.uint8))))
                    for i, name in enumerate(names)]
        except (ValueError, IndexError) as exc:
            raise ProtocolError(f"the backend's gallery reply is malformed: {exc}") from exc

    # ------------------------------------------------------------------------------------------ engine
    def _call(self, op: str, params: dict[str, Any] | None = None,
              arrays: dict[str, np.ndarray] | None = None) -> Message:
        return next(self.pipeline([{"op": op, "params": params or {}, "arrays": arrays or {}}], in_flight=1))

    def pipeline(self, requests: Iterable[dict[str, Any]], *, in_flight: int = 8) -> Iterator[Message]:
        """Send requests (``{"op", "params", "arrays"}``) keeping up to ``in_flight`` unanswered, yield the reply
        messages in request order. Error replies raise the matching RemoteError subclass."""
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        if self._async or self._ready:
            raise RuntimeError(f"{len(self.submitted)} submitted request(s) are not collected yet: collect() or "
                               "cancel() them before a blocking call on the same client (or use a second Client)")
        source = (_Request(i, r["op"], r.get("params", {}), r.get("arrays", {})) for i, r in enumerate(requests))
        self._backend_dropped()  # forget connection events from before this call: nothing of ours was lost
        pending: OrderedDict[int, _Request] = OrderedDict()  # request id -> request at the backend, in send order
        done: dict[int, Message] = {}                       # request index -> reply
        retry, window = OverloadRetry(self.overload_patience), Window(in_flight)  # refused: wait, send fewer
        next_index, exhausted, reconnects_left = 0, False, self.reconnects
        last_progress = time.monotonic()
        while True:
            for request_id, request in retry.due(max(0, window.size - len(pending))):
                self._send(request_id, request)
                pending[request_id] = request
            while not exhausted and len(pending) + len(done) + len(retry) < window.size:
                request = next(source, None)
                if request is None:
                    exhausted = True
                    break
                request_id = next(self._ids)
                self._send(request_id, request)
                pending[request_id] = request
            if next_index in done:
                reply = done.pop(next_index)
                next_index += 1
                if not reply.ok:
                    raise remote_error(reply.error_code or "internal", reply.error_message or "", reply.id, reply.op,
                                       retry_after=_seconds(reply.retry_after_ms))
                yield reply
                continue
            if exhausted and not pending and not retry:
                return
            remaining = self.timeout - (time.monotonic() - last_progress)
            if remaining <= 0 and not self._reply_waiting():  # a caller slower than the timeout is not a dead backend
                lost = tuple(sorted(r.index for r in [*pending.values(), *retry.requests()]))
                self._reopen()  # drop whatever the dead/hung peer may still send
                raise BackendUnavailable(self.address, self.timeout,
                                         f"{len(lost)} request(s) unanswered", pending=lost)
            retry_in = retry.seconds_to_next()
            events = self._poll(max(1, int(1000 * (remaining if retry_in is None else min(remaining, retry_in)))))
            if self._monitor in events and self._backend_dropped(r.index for r in pending.values()):
                if pending:
                    if reconnects_left <= 0:
                        lost = tuple(sorted(r.index for r in [*pending.values(), *retry.requests()]))
                        self._reopen()
                        raise BackendUnavailable(self.address, self.timeout,
                                                 "the backend dropped the connection repeatedly", pending=lost)
                    reconnects_left -= 1
                    self._resend_after_drop(pending)
                    last_progress = time.monotonic()
                continue
            if self._socket in events:
                message = self._receive()
                if message is not None and message.id in pending:
                    request = pending.pop(message.id)
                    last_progress = time.monotonic()  # refused or answered: the backend is alive
                    if self._retry_later(retry, message.id, request, message):
                        window.refused()
                        continue
                    window.succeeded()
                    done[request.index] = message

    def _retry_later(self, retry: OverloadRetry, request_id: int, request: _Request, message: Message) -> bool:
        """Whether ``message`` is an ``overloaded`` refusal that ``retry`` will re-send (False once its patience
        is used up: the caller then raises BackendBusy)."""
        if message.ok or message.error_code != CODE_OVERLOADED:
            retry.forget(request_id)
            return False
        if retry.schedule(request_id, request, message.retry_after_ms):
            self.overload_retries += 1
            log.debug("request %d (%s) refused as overloaded; retrying", request_id, request.op)
            return True
        return False

    def _wire_limits(self) -> Limits:
        """The wire limits, lowered to the backend's where its hello said so (a small memory budget)."""
        known = {k: v for k, v in self.server_limits.items() if k in ("max_array_bytes", "max_message_bytes")
                 and isinstance(v, int) and 0 < v < getattr(DEFAULT_LIMITS, k)}
        return dataclasses.replace(DEFAULT_LIMITS, **known) if known else DEFAULT_LIMITS

    def _reply_waiting(self) -> bool:
        try:
            return bool(self._socket.poll(0))
        except zmq.ZMQError as exc:
            raise TransportError(f"waiting for {self.address} failed: {exc}") from exc

    def _poll(self, timeout_ms: int) -> dict:
        """Wait for a reply or a connection event; ZeroMQ's failures become TransportError."""
        try:
            poller = zmq.Poller()
            poller.register(self._socket, zmq.POLLIN)
            poller.register(self._monitor, zmq.POLLIN)
            return dict(poller.poll(timeout_ms))
        except zmq.ZMQError as exc:
            raise TransportError(f"waiting for {self.address} failed: {exc}") from exc

    def _send(self, request_id: int, request: _Request) -> None:
        try:  # a frame the backend would refuse is refused here, before hundreds of MB travel for nothing
            check_request_size(request.arrays, self._wire_limits(),
                               max_frame_pixels=self.server_limits.get("max_frame_pixels"))
        except ProtocolError as err:
            raise FrameTooLarge(err.code, f"not sent to {self.address}: {err.message}", op=request.op) from None
        codec = None if request.op == "echo" else self.compression  # echo measures the raw transport
        frames = encode_request(request.op, request_id, request.params, request.arrays, codec=codec)
        try:
            self._socket.send_multipart(frames, copy=False)
        except zmq.ZMQError as exc:
            raise TransportError(f"sending to {self.address} failed: {exc}") from exc

    def _receive(self) -> Message | None:
        try:
            frames = self._socket.recv_multipart(copy=False)
        except zmq.ZMQError as exc:
            raise TransportError(f"receiving from {self.address} failed: {exc}") from exc
        try:
            message = decode(frames, REPLY_LIMITS, reply=True)
        except ProtocolError as err:
            if err.code == "version_mismatch":
                raise ProtocolMismatch(err.code, err.message) from None
            raise ProtocolError(err.code, f"the backend at {self.address} sent a malformed reply: "
                                          f"{err.message}") from None
        if message.id is None and not message.ok:
            # The server could not read our request's id: only possible if this client is broken or mismatched.
            raise remote_error(message.error_code or "malformed", message.error_message or "", None, message.op)
        return message

    def _backend_dropped(self, pending: Iterable[int] = ()) -> bool:
        """Whether the backend dropped the connection since the last look; raises AuthenticationFailed (with
        ``pending`` as its unanswered requests) when it refused our CURVE handshake, as it will every retry."""
        dropped = False
        while True:
            try:
                if self._monitor is None or not self._monitor.poll(0):
                    break
                event = recv_monitor_message(self._monitor)
            except zmq.ZMQError as exc:
                raise TransportError(f"watching the connection to {self.address} failed: {exc}") from exc
            if event["event"] == zmq.EVENT_DISCONNECTED:
                dropped = True
            refusal = self._handshakes.see(event)
            if refusal is not None:
                lost = tuple(pending)
                self._async.clear()
                self._ready.clear()
                self._reopen()
                raise AuthenticationFailed(self.address, self.timeout, refusal, pending=lost)
        return dropped

    def _resend_after_drop(self, pending: "OrderedDict[int, _Request]") -> None:
        indices = [r.index for r in pending.values()]
        log.warning("backend at %s dropped the connection with %d request(s) in flight; reconnecting and "
                    "re-sending them", self.address, len(indices))
        self._emit("disconnected", {"address": self.address, "in_flight": indices})
        self._reopen()  # a fresh socket: nothing half-sent to the dead process gets delivered twice
        for request_id, request in pending.items():
            self._send(request_id, request)
        self._emit("resent", {"address": self.address, "in_flight": indices})

    def _emit(self, kind: str, info: dict) -> None:
        if self.on_event is not None:
            self.on_event(kind, info)


def _paired_latents(buffers: Iterable[DeepBuffer],
                    latents: np.ndarray | Iterable[np.ndarray]) -> Iterator[tuple[DeepBuffer, np.ndarray]]:
    """(buffer, latent) pairs: one latent for all frames (a 1-d vector) or one per frame."""
    if isinstance(latents, np.ndarray) and latents.ndim == 1:
        shared = _as_latent(latents)
        for buffer in buffers:
            yield buffer, shared
        return
    latent_iter = iter(latents)
    for i, buffer in enumerate(buffers):
        latent = next(latent_iter, None)
        if latent is None:
            raise ValueError(f"rerender_many got {i} latents for more than {i} frames: give one latent per frame "
                             f"or a single 1-d latent for all")
        yield buffer, _as_latent(latent)


__all__ = ["Client", "Appearance"]
