"""The backend server behind ``rerender serve``: a ZeroMQ ROUTER socket in front of one model runtime.

Threads, and why:
  * the I/O thread (the one that calls :meth:`Server.serve_forever`, the main thread under ``rerender serve`` so
    signals reach it) owns the ROUTER socket. It decodes and validates every message (bridge.protocol treats the
    bytes as hostile), answers ``hello``, ``echo``, ``stats`` and ``appearances`` itself, so they stay fast while
    the device is busy, admits model requests against the byte budget and sends every reply;
  * the compute worker (``server_worker``) owns the device: a host thread prepares request k+1 while a device
    thread computes request k's batch. It hands replies back through a queue and a wake-up pipe (ZeroMQ sockets
    are not thread-safe, so only the I/O thread touches the ROUTER).

Every request gets exactly one reply, an error reply if anything is wrong with it, and nothing a request carries
can kill a thread or the process: decoding, admission, preparation, computation and the reply are each guarded,
and a worker thread that still dies is restarted (``hello`` reports ``health``). Memory is bounded in bytes
(``server_limits``), connections by heartbeats and a descriptor budget (``server_connections``). The ops are one
table (``server_ops.OP_TABLE``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Any

import msgpack
import numpy as np
import zmq

from rerender import __version__
from rerender.bridge.allocator import keep_frame_buffers
from rerender.bridge.errors import (
    CODE_INTERNAL, CODE_NO_MODEL, CODE_OVERLOADED, CODE_SHUTTING_DOWN, CODE_TOO_LARGE, CODE_UNKNOWN_OP,
    ProtocolError,
)
from rerender.bridge.protocol import (
    DEFAULT_LIMITS, OPS, PROTOCOL_VERSION, Limits, Message, decode, encode_error, encode_reply,
)

from .server_connections import ConnectionTracker, configure_heartbeats
from .server_model import apply_precision, load_appearances, model_info, resolve_precision
from .server_limits import (
    TRACK_MIN_BYTES, ByteBudget, ServerLimits, connection_budget, default_memory_budget, derive_max_frame_pixels,
)
from .server_ops import OP_TABLE, frame_size
from .server_stats import TimingLog, format_timings, instrument_runtime
from .server_worker import ComputeWorker, Job

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S = 5.0  # how long a stopping server keeps writing replies to slow readers
_ROUTER_READS_PER_TURN = 64


class Server:
    """Serves ``runtime`` (a ``rerender.backend.runtime.ModelRuntime``, or None for a transport-only server that
    answers hello/echo/stats and refuses model ops with ``no_model``) on ``address``."""

    def __init__(self, runtime: Any | None, address: str, *, max_batch: int = 8, batch_window_s: float = 0.0,
                 max_queue: int = 64, limits: Limits = DEFAULT_LIMITS, precision: str = "auto",
                 context: zmq.Context | None = None, simulate_latency_s: float = 0.0,
                 memory_budget_bytes: int | None = None, max_frame_pixels: int | None = None,
                 max_connections: int = 512, idle_timeout_s: float = 600.0, heartbeat_s: float = 10.0,
                 log_timings: bool = False, curve: Any | None = None) -> None:
        keep_frame_buffers()  # received frames reuse freed memory instead of faulting fresh pages in
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        if not 0.0 <= simulate_latency_s <= 60.0:
            raise ValueError(f"simulate_latency_s must be between 0 and 60 seconds, got {simulate_latency_s}")
        # A testing/benchmark aid: every forward pass of the worker takes at least this long, so a CPU machine can
        # stand in for a backend whose GPU work takes a known time (the pipelining benchmark needs one).
        self.simulate_latency_s = float(simulate_latency_s)
        self.runtime = runtime
        self.address = address
        self.max_batch = max_batch
        self.limits = limits
        self.log_timings = log_timings
        self.curve = curve  # bridge.security.ServerCurve: CURVE keys and the allowed clients, or None
        self._authenticator: Any | None = None
        self._context = context or zmq.Context.instance()
        self._info = model_info(runtime)
        self.precision = resolve_precision(precision, self._info.get("device", "cpu"))
        apply_precision(runtime, self.precision)
        self._appearances = load_appearances(runtime, self._info)
        derived, per_pixel = derive_max_frame_pixels(runtime, self._info.get("device", "cpu"))
        self.server_limits = ServerLimits(
            memory_budget_bytes=int(memory_budget_bytes or default_memory_budget()), max_queue=max_queue,
            max_frame_pixels=int(min(max_frame_pixels or derived, derived)), bytes_per_pixel=per_pixel,
            max_connections=max_connections, idle_timeout_s=idle_timeout_s, heartbeat_s=heartbeat_s)
        self.budget = ByteBudget(self.server_limits.memory_budget_bytes)
        # Decoding never builds more than the budget: a compressed frame could otherwise inflate to the wire's
        # 768 MiB per message before the budget is asked (frames above the wire limits still end at ZeroMQ).
        budget = self.server_limits.memory_budget_bytes
        self.decode_limits = dataclasses.replace(limits, max_array_bytes=min(limits.max_array_bytes, budget),
                                                 max_message_bytes=min(limits.max_message_bytes, budget))
        self.timings = TimingLog()
        if runtime is not None:
            instrument_runtime(runtime)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._worker = ComputeWorker(runtime, self._deliver, latent_size=self._info.get("latent_size"),
                                     max_batch=max_batch, batch_pixels=self.server_limits.max_frame_pixels,
                                     batch_window_s=batch_window_s, simulate_latency_s=self.simulate_latency_s)
        self._stop = threading.Event()
        self._stopping = False
        self._router: zmq.Socket | None = None
        self._connections: ConnectionTracker | None = None
        self.bound_address: str | None = None
        self.requests_served = 0
        self.undeliverable = 0
        self.refused_overloaded = 0
        self._forward_ms, self._forward_ms_at = 20.0, 0.0  # median forward per request, for retry_after_ms

    # ------------------------------------------------------------------------------------------- lifecycle
    def bind(self) -> str:
        """Bind the ROUTER socket and start the worker; returns the bound address (a ``tcp://host:*`` wildcard
        resolves to the chosen port). Raises OSError with a clear message if the address cannot be bound."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # A peer that sends a frame larger than any array we accept is disconnected by ZeroMQ before we see it.
        router.setsockopt(zmq.MAXMSGSIZE, max(self.limits.max_array_bytes, self.limits.max_header_bytes))
        router.setsockopt(zmq.RCVHWM, 32)
        # Replies are never dropped: no message-count limit (the byte budget bounds them) and an error, not
        # silence, when the peer is gone.
        router.setsockopt(zmq.SNDHWM, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        configure_heartbeats(router, self.server_limits.heartbeat_s)
        if self.curve is not None:  # before bind: a peer must never reach an unauthenticated socket
            self._authenticator = self.curve.secure(router, self._context)
        connections = ConnectionTracker(router, budget=connection_budget(self.server_limits.max_connections),
                                        idle_timeout_s=self.server_limits.idle_timeout_s)
        try:
            router.bind(self.address)
        except zmq.ZMQError as exc:
            connections.close()
            router.close(linger=0)
            if self._authenticator is not None:
                self._authenticator.stop()
            raise OSError(f"cannot listen on {self.address}: {exc.strerror}. Is another backend already running "
                          f"there? Stop it or choose another --address.") from None
        self._router, self._connections = router, connections
        self.bound_address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._worker.start()
        return self.bound_address

    def stop(self) -> None:
        """Ask the server to stop (safe from a signal handler or another thread)."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"s")
        except OSError:
            pass

    def serve_forever(self) -> None:
        """Run the I/O loop until :meth:`stop`; then finish the batch being computed, answer every queued and
        arriving request with ``shutting_down``, write out the replies and close."""
        if self._router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._connections.monitor, zmq.POLLIN)
        try:
            next_housekeeping = 0.0
            while not self._stop.is_set():
                self._turn(poller, 100)
                if time.monotonic() >= next_housekeeping:
                    self._worker.supervise()
                    self._connections.reap()
                    next_housekeeping = time.monotonic() + 0.1
            self._shutdown(poller)
        finally:
            self._close()

    def _turn(self, poller: zmq.Poller, timeout_ms: int) -> None:
        events = dict(poller.poll(timeout_ms))
        if self._router in events:
            for _ in range(_ROUTER_READS_PER_TURN):  # bounded, so replies and housekeeping are never starved
                try:
                    started = time.perf_counter()
                    frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._on_request(frames, started)
        if self._wake_r in events:
            try:
                os.read(self._wake_r, 65536)
            except OSError:
                pass
        self._drain_outbox()
        if self._connections.monitor in events:
            self._connections.on_events()

    def _shutdown(self, poller: zmq.Poller) -> None:
        self._stopping = True  # from now on every request is answered shutting_down
        left: list[Job] = []
        stopper = threading.Thread(target=lambda: left.extend(self._worker.stop()), daemon=True)
        stopper.start()
        while stopper.is_alive():
            self._turn(poller, 20)
        for job in left:
            self._worker.fail_shutting_down(job)
        deadline = time.monotonic() + SHUTDOWN_FLUSH_S
        while time.monotonic() < deadline:
            self._turn(poller, 20)
            usage = self.budget.usage()
            if not usage["unread_reply_bytes"] and self._outbox.empty() and not self._router.poll(50):
                break

    def _close(self) -> None:
        if self._connections is not None:
            self._connections.close()
        if self._router is not None:
            self._router.close(linger=1000)
        self._router = self._connections = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1  # a late stop() or reply must never write into a reused descriptor

    def start_in_thread(self) -> threading.Thread:
        """Bind and run the I/O loop in a background thread (for benchmarks and in-process use)."""
        self.bind()
        thread = threading.Thread(target=self.serve_forever, name="rerender-io", daemon=True)
        thread.start()
        return thread

    def describe(self) -> str:
        """The startup line: address, device, precision, model and the limits in force."""
        lim = self.server_limits
        connections = self._connections.budget if self._connections else lim.max_connections
        bounds = (f"memory budget {lim.memory_budget_bytes / 2**20:.0f} MiB, frames up to "
                  f"{lim.max_frame_pixels / 1e6:.1f} Mpx, {connections} connections")
        if self.runtime is None:
            return (f"listening on {self.bound_address or self.address}, transport only (no model: echo and "
                    f"hello); {bounds}")
        return (f"listening on {self.bound_address or self.address}, device {self._info.get('device')} "
                f"({self.precision}), model {self._model_name()!r} "
                f"(latent {self._info.get('latent_size')}), micro-batches of up to {self.max_batch}; {bounds}"
                + (f", SIMULATED latency {self.simulate_latency_s * 1000:g} ms per forward pass"
                   if self.simulate_latency_s else ""))

    @property
    def health(self) -> str:
        """``ok``, ``restarting`` (a worker thread died and is being restarted) or ``stopping``."""
        return "stopping" if self._stopping else self._worker.health

    def health_report(self) -> dict[str, Any]:
        """``hello``'s ``health``: ``ok`` is false while a worker thread is being restarted or the server stops."""
        state = self.health
        return {"ok": state == "ok", "worker": state, "restarts": self._worker.restarts,
                "last_crash": self._worker.last_crash}

    # ------------------------------------------------------------------------------------------ I/O thread
    def _on_request(self, frames: list, started: float) -> None:
        if len(frames) < 2:  # ROUTER always prepends the peer identity; a bare identity is not a request
            return
        identity, body = frames[0], frames[1:]
        message: Message | None = None
        try:
            message = decode(body, self.decode_limits)
            self._dispatch(identity, message, body, started)
        except ProtocolError as err:
            op = message.op if message else getattr(err, "op", None)
            rid = message.id if message else getattr(err, "request_id", None)
            log.debug("rejected request id=%s op=%s: [%s] %s", rid, op, err.code, err.message)
            retry = getattr(err, "retry_after_ms", None)
            self._send(identity, encode_error(op, rid, err.code, err.message, retry_after_ms=retry))
        except Exception as exc:  # never die from a request
            op, rid = (message.op, message.id) if message else (None, None)
            log.exception("unexpected error while handling request id=%s op=%s", rid, op)
            self._send(identity, encode_error(op, rid, CODE_INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _dispatch(self, identity: Any, message: Message, frames: list, started: float) -> None:
        spec = OP_TABLE.get(message.op)
        if spec is None:
            raise ProtocolError(CODE_UNKNOWN_OP, f"unknown op {message.op!r}; this server knows {list(OPS)}")
        params = spec.check(message)
        if spec.needs_model and self.runtime is None:
            raise ProtocolError(CODE_NO_MODEL, "this backend runs without a model (--transport-only); "
                                               "restart it with `rerender serve --bundle PATH`")
        # what the request holds in memory: a compressed frame is held decompressed
        nbytes = len(frames[0]) + sum(a.nbytes for a in message.arrays.values())
        if spec.answer is not None:
            if spec.name == "echo" and not self.budget.fits(nbytes):
                raise self._overloaded("unread replies fill the backend's memory budget", 250.0)
            self._send(identity, spec.answer(self, message, frames))
            return
        if self._stopping:
            raise ProtocolError(CODE_SHUTTING_DOWN, "the backend is shutting down; the request was not computed")
        size = frame_size(message.arrays)
        if size[0] * size[1] > self.server_limits.max_frame_pixels:
            raise ProtocolError(CODE_TOO_LARGE, f"the frame is {size[0]} x {size[1]} = {size[0] * size[1]:,} px; "
                                                f"this backend's device fits at most "
                                                f"{self.server_limits.max_frame_pixels:,} px per frame (hello: "
                                                f"limits.max_frame_pixels): render smaller frames or tiles")
        if nbytes > self.budget.limit:
            raise ProtocolError(CODE_TOO_LARGE, f"the request is {nbytes / 2**20:.0f} MiB, above this backend's "
                                                f"memory budget of {self.budget.limit / 2**20:.0f} MiB")
        queued = self._worker.queued()
        if queued >= self.server_limits.max_queue:
            raise self._overloaded(f"{queued} requests are already queued", self._retry_after_ms(queued))
        if not self.budget.try_reserve(nbytes):
            raise self._overloaded("queued requests and unread replies fill the backend's memory budget "
                                   f"({self.budget.limit / 2**20:.0f} MiB)", self._retry_after_ms(queued))
        fd = self._connections.message_fd(frames[0])
        self._connections.begin(fd)
        job = Job(bytes(identity.bytes), message.id, spec, params, message.arrays, frames, nbytes, size, fd=fd)
        job.timings["receive"] = (time.perf_counter() - started) * 1000
        self._worker.submit(job)
        log.debug("id=%s op=%s %dx%d queued (%d ahead)", message.id, spec.name, *size, queued)

    def _overloaded(self, why: str, retry_after_ms: float) -> ProtocolError:
        self.refused_overloaded += 1
        err = ProtocolError(CODE_OVERLOADED, f"{why}; retry in about {retry_after_ms:.0f} ms")
        err.retry_after_ms = retry_after_ms  # type: ignore[attr-defined]
        return err

    def _retry_after_ms(self, queued: int) -> float:
        """About how long until the queue has room: the queue's length times the median compute time (the
        median is refreshed at most twice a second: a flood of refusals must not cost the I/O thread)."""
        now = time.monotonic()
        if now - self._forward_ms_at > 0.5:
            summary = self.timings.summary()
            forwards = [s["ms"]["forward"]["median"] / max(1, self.max_batch) for s in summary.values()
                        if "forward" in s["ms"]]
            self._forward_ms, self._forward_ms_at = (max(1.0, max(forwards)) if forwards else 20.0), now
        return float(min(2000.0, max(10.0, self._forward_ms * max(1, queued) / 2)))

    def _send(self, identity: Any, frames: list) -> None:
        """Send one reply; its large frames are counted in the byte budget until ZeroMQ has written them.

        Why one tracker: ZeroMQ writes a message's frames in order and releases each once written, so the last
        large frame's tracker tells when all of them are gone. Every other frame that came in as a ``zmq.Frame``
        (an echo's arrays) is sent as that frame, which ZeroMQ only reference-counts: wrapping its buffer in a
        new zero-copy frame instead costs a release callback through pyzmq's garbage-collection thread per frame,
        about 0.5 ms of a 1080p echo (docs/benchmarks.md)."""
        parts = [identity, *frames]
        sizes = [_nbytes(part) for part in parts]
        large = [i for i, size in enumerate(sizes) if size >= TRACK_MIN_BYTES]
        tracked = large[-1] if large else -1
        tracker = None
        try:
            for i, part in enumerate(parts):
                flags = zmq.SNDMORE if i < len(parts) - 1 else 0
                if i == tracked:
                    data = memoryview(part.buffer) if isinstance(part, zmq.Frame) else part
                    tracker = self._router.send(data, flags, copy=False, track=True)
                else:
                    self._router.send(part, flags, copy=False)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer left; its replies have nowhere to go
            self.undeliverable += 1
            log.debug("reply not delivered (%s)", exc.strerror)
            return
        self.budget.track([tracker], sum(sizes[i] for i in large))
        self.requests_served += 1

    def _deliver(self, job: Job, frames: list) -> None:
        """From the worker's threads: hand a reply to the I/O thread and wake it."""
        self._outbox.put((job, frames))
        try:
            os.write(self._wake_w, b"r")
        except (BlockingIOError, OSError):  # the pipe is full of wake-ups already: the I/O thread is awake
            pass

    def _drain_outbox(self) -> None:
        while True:
            try:
                job, frames = self._outbox.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            self.budget.release(job.nbytes)  # the request's bytes go now; the reply's are tracked instead
            job.frames = job.arrays = None
            self._send(job.identity, frames)
            self._connections.end(job.fd)
            job.timings["send"] = (time.perf_counter() - started) * 1000
            job.timings["total"] = (time.perf_counter() - job.received) * 1000 + job.timings.get("receive", 0.0)
            self.timings.add(job.spec.name, job.timings)
            log.log(logging.INFO if self.log_timings else logging.DEBUG, "id=%s op=%s %dx%d batch=%s %s",
                    job.request_id, job.spec.name, *job.size, job.timings.get("batch", 1), format_timings(job.timings))

    # ------------------------------------------------------------------------------------- I/O-thread ops
    def reply_hello(self, message: Message) -> list:
        info = self._info
        return encode_reply("hello", message.id, {
            "protocol": PROTOCOL_VERSION,
            "server": f"rerender {__version__}",
            "ops": list(OPS),
            "model": self._model_name(),
            "latent_size": info.get("latent_size") if self.runtime is not None else None,
            "device": info.get("device", "none"),
            "precision": self.precision,
            "max_batch": self.max_batch,
            "health": self.health_report(),
            "limits": {**{k: getattr(self.decode_limits, k) for k in ("max_header_bytes", "max_arrays", "max_image_side",
                                                                "max_array_bytes", "max_message_bytes")},
                       **self.server_limits.as_hello()},
            "model_info": info,
            "stats": {"replies": self.requests_served, "batches": self._worker.batches_run,
                      "largest_batch": self._worker.largest_batch},
        })

    def reply_stats(self, message: Message) -> list:
        """Per-op stage timings (medians, p90), the budget's use, queue, connections and worker health."""
        self._connections.on_events()
        return encode_reply("stats", message.id, {
            "health": self.health_report(),
            "replies": self.requests_served, "batches": self._worker.batches_run,
            "largest_batch": self._worker.largest_batch, "queued": self._worker.queued(),
            "overloaded": self.refused_overloaded, "undeliverable": self.undeliverable,
            "memory": self.budget.usage(), "connections": self._connections.describe(),
            "timings": self.timings.summary(),
        })

    def reply_echo(self, message: Message, frames: list) -> list:
        """A reply header declaring the same arrays, followed by the very frames that came in (passed through
        without a copy, so echo measures the transport alone)."""
        header = {"op": "echo", "v": PROTOCOL_VERSION, "id": message.id, "ok": True, "params": message.params,
                  "arrays": [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)}
                             for n, a in message.arrays.items()]}
        data = [frame if array.nbytes == len(frame) else array  # a compressed frame goes back decompressed
                for array, frame in zip(message.arrays.values(), frames[1:])]
        return [msgpack.packb(header, use_bin_type=True), *data]

    def reply_appearances(self, message: Message) -> list:
        names, arrays = self._appearances
        return encode_reply("appearances", message.id, {"names": names}, arrays)

    def _model_name(self) -> str | None:
        if self.runtime is None:
            return None
        return str(self._info.get("model") or self._info.get("bundle") or self._info.get("name") or "unnamed")


def _nbytes(part: Any) -> int:
    if isinstance(part, zmq.Frame):
        return len(part)
    if isinstance(part, np.ndarray):
        return part.nbytes
    return memoryview(part).nbytes


__all__ = ["Server"]
