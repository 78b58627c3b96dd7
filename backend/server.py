"""The backend server behind ``rerender serve``: a ZeroMQ ROUTER socket in front of one model runtime.

Threads, and why:
  * the I/O thread (the one that calls :meth:`Server.serve_forever`, the main thread under ``rerender serve`` so
    signals reach it) owns the ROUTER socket. It decodes and validates every message (bridge.protocol treats the
    bytes as hostile), answers ``hello``, ``echo`` and ``appearances`` itself, so they stay fast while the GPU is
    busy, and queues the model ops.
  * the compute worker owns the device. It takes what is queued, waits a few milliseconds for more, groups
    requests of the same op and frame size into micro-batches (one forward pass for several frames: this is how
    several Blender instances or a pipelined client share a GPU efficiently), runs them under autocast on CUDA,
    and sends the replies back to the I/O thread over an inproc socket (ZeroMQ sockets are not thread-safe).

Every request gets exactly one reply, an error reply if anything is wrong with it; no request can kill the server:
protocol errors, bad inputs and model exceptions all become error replies and a log line.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from rerender import __version__
from rerender.bridge.buffers import BufferError
from rerender.bridge.errors import (
    CODE_BAD_PARAMS, CODE_INTERNAL, CODE_NO_MODEL, CODE_OVERLOADED, CODE_SHUTTING_DOWN, CODE_UNKNOWN_OP,
    ProtocolError,
)
from rerender.bridge.protocol import (
    DEFAULT_LIMITS, OPS, PROTOCOL_VERSION, Limits, Message, buffer_from_wire, check_latent, decode, encode_error,
    encode_reply,
)

log = logging.getLogger(__name__)

MODEL_OPS = ("rerender", "encode", "segment")
# Parameters each op accepts (anything else is rejected, so a typo never passes silently).
OP_PARAMS: dict[str, set[str]] = {"hello": set(), "appearances": set(), "rerender": {"output", "fill_labels"},
                                  "encode": set(), "segment": set()}
RERENDER_OUTPUTS = ("uint8", "float16")
_INPROC = "inproc://rerender-server-replies-{}"


@dataclass
class _Job:
    """A validated model request waiting for the compute worker."""

    identity: bytes
    request_id: int
    op: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    frames: list  # keeps the received zmq frames (which the arrays view) alive
    received: float = field(default_factory=time.monotonic)

    @property
    def batch_key(self) -> tuple:
        color = self.arrays.get("color")
        size = tuple(color.shape[:2]) if color is not None else ()
        return self.op, size, self.params.get("output", "uint8"), bool(self.params.get("fill_labels", False))


class Server:
    """Serves ``runtime`` (a ``rerender.backend.runtime.ModelRuntime``, or None for a transport-only server that
    answers hello/echo and refuses model ops with ``no_model``) on ``address``."""

    def __init__(self, runtime: Any | None, address: str, *, max_batch: int = 8, batch_window_s: float = 0.002,
                 max_queue: int = 64, limits: Limits = DEFAULT_LIMITS, precision: str = "auto",
                 context: zmq.Context | None = None, simulate_latency_s: float = 0.0) -> None:
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
        self.batch_window_s = batch_window_s
        self.max_queue = max_queue
        self.limits = limits
        self._context = context or zmq.Context.instance()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._inproc = _INPROC.format(id(self))
        self._router: zmq.Socket | None = None
        self._replies: zmq.Socket | None = None
        self._worker: threading.Thread | None = None
        self.bound_address: str | None = None
        self.requests_served = 0
        self.batches_run = 0     # forward passes of the worker (micro-batches), reported by hello
        self.largest_batch = 0
        self._info = self._model_info()
        self.precision = _resolve_precision(precision, self._info.get("device", "cpu"))
        _apply_precision(runtime, self.precision)
        self._appearances = self._load_appearances()

    # ------------------------------------------------------------------------------------------- lifecycle
    def bind(self) -> str:
        """Bind the ROUTER socket and start the worker; returns the bound address (a ``tcp://host:*`` wildcard
        resolves to the chosen port). Raises OSError with a clear message if the address cannot be bound."""
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # A peer that sends a frame larger than any array we accept is disconnected by ZeroMQ before we see it.
        router.setsockopt(zmq.MAXMSGSIZE, max(self.limits.max_array_bytes, self.limits.max_header_bytes))
        router.setsockopt(zmq.RCVHWM, 256)
        try:
            router.bind(self.address)
        except zmq.ZMQError as exc:
            router.close(linger=0)
            raise OSError(f"cannot listen on {self.address}: {exc.strerror}. Is another backend already running "
                          f"there? Stop it or choose another --address.") from None
        self._router = router
        self.bound_address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._replies = self._context.socket(zmq.PULL)
        self._replies.bind(self._inproc)
        self._worker = threading.Thread(target=self._work, name="rerender-compute", daemon=True)
        self._worker.start()
        return self.bound_address

    def stop(self) -> None:
        """Ask the server to stop (safe from a signal handler or another thread)."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Run the I/O loop until :meth:`stop`; then finish the batch being computed, answer queued requests with
        ``shutting_down`` and close the sockets."""
        if self._router is None:
            self.bind()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._replies, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(100):
                    if sock is self._router:
                        self._on_request(self._router.recv_multipart(copy=False))
                    else:
                        self._forward_reply()
            self._jobs.put(None)  # the worker drains the queue with shutting_down replies, then exits
            deadline = time.monotonic() + 30
            while self._worker.is_alive() and time.monotonic() < deadline:
                if self._replies.poll(50):
                    self._forward_reply()
            while self._replies.poll(0):
                self._forward_reply()
        finally:
            self._close()

    def _forward_reply(self) -> None:
        """A reply the worker computed: [identity, header, *arrays] goes out on the ROUTER."""
        self._router.send_multipart(self._replies.recv_multipart(copy=False), copy=False)
        self.requests_served += 1

    def _close(self) -> None:
        for sock in (self._router, self._replies):
            if sock is not None:
                sock.close(linger=0)
        self._router = self._replies = None

    def start_in_thread(self) -> threading.Thread:
        """Bind and run the I/O loop in a background thread (for benchmarks and in-process use)."""
        self.bind()
        thread = threading.Thread(target=self.serve_forever, name="rerender-io", daemon=True)
        thread.start()
        return thread

    def describe(self) -> str:
        """The startup line: address, device, precision and model."""
        if self.runtime is None:
            return f"listening on {self.bound_address or self.address}, transport only (no model: echo and hello)"
        return (f"listening on {self.bound_address or self.address}, device {self._info.get('device')} "
                f"({self.precision}), model {self._model_name()!r} "
                f"(latent {self._info.get('latent_size')}), micro-batches of up to {self.max_batch}"
                + (f", SIMULATED latency {self.simulate_latency_s * 1000:g} ms per forward pass"
                   if self.simulate_latency_s else ""))

    # ------------------------------------------------------------------------------------------ I/O thread
    def _on_request(self, frames: list) -> None:
        if len(frames) < 2:  # ROUTER always prepends the peer identity; a bare identity is not a request
            return
        identity, body = frames[0], frames[1:]
        try:
            message = decode(body, self.limits)
        except ProtocolError as err:
            self._reject(identity, getattr(err, "op", None), getattr(err, "request_id", None), err)
            return
        try:
            self._dispatch(identity, message, body)
        except ProtocolError as err:
            self._reject(identity, message.op, message.id, err)
        except Exception as exc:  # never die from a request
            log.exception("unexpected error while handling request id=%s op=%s", message.id, message.op)
            self._send(identity, encode_error(message.op, message.id, CODE_INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _reject(self, identity: Any, op: str | None, request_id: int | None, err: ProtocolError) -> None:
        log.debug("rejected request id=%s op=%s: [%s] %s", request_id, op, err.code, err.message)
        self._send(identity, encode_error(op, request_id, err.code, err.message))

    def _dispatch(self, identity: Any, message: Message, frames: list) -> None:
        op, rid = message.op, message.id
        if op not in OPS:
            raise ProtocolError(CODE_UNKNOWN_OP, f"unknown op {op!r}; this server knows {list(OPS)}")
        if op == "echo":  # untouched: the very frames we received go back
            self._send(identity, _echo_frames(rid, message, frames))
            log.debug("id=%s op=echo arrays=%d", rid, len(message.arrays))
            return
        unknown = set(message.params) - OP_PARAMS[op]
        if unknown:
            raise ProtocolError(CODE_BAD_PARAMS, f"op {op!r} does not take parameters {sorted(unknown)}; "
                                                 f"it takes {sorted(OP_PARAMS[op]) or 'none'}")
        if op == "hello":
            self._send(identity, encode_reply("hello", rid, self._hello()))
            return
        if self.runtime is None:
            raise ProtocolError(CODE_NO_MODEL, "this backend runs without a model (--transport-only); "
                                               "restart it with `rerender serve --bundle PATH`")
        if op == "appearances":
            names, arrays = self._appearances
            self._send(identity, encode_reply("appearances", rid, {"names": names}, arrays))
            return
        output = message.params.get("output", "uint8")
        if not isinstance(message.params.get("fill_labels", False), bool):
            raise ProtocolError(CODE_BAD_PARAMS, "'fill_labels' must be true or false")
        if output not in RERENDER_OUTPUTS:
            raise ProtocolError(CODE_BAD_PARAMS, f"'output' must be one of {list(RERENDER_OUTPUTS)}, got {output!r}")
        if self._jobs.qsize() >= self.max_queue:
            raise ProtocolError(CODE_OVERLOADED, f"{self.max_queue} requests are already queued; retry shortly")
        self._jobs.put(_Job(bytes(identity.bytes), rid, op, message.params, message.arrays, frames))

    def _send(self, identity: Any, frames: list) -> None:
        self._router.send_multipart([identity, *frames], copy=False)
        self.requests_served += 1

    def _hello(self) -> dict[str, Any]:
        info = self._info
        return {
            "protocol": PROTOCOL_VERSION,
            "server": f"rerender {__version__}",
            "ops": list(OPS),
            "model": self._model_name(),
            "latent_size": info.get("latent_size") if self.runtime is not None else None,
            "device": info.get("device", "none"),
            "precision": self.precision,
            "max_batch": self.max_batch,
            "limits": {k: getattr(self.limits, k) for k in ("max_header_bytes", "max_arrays", "max_image_side",
                                                             "max_array_bytes", "max_message_bytes")},
            "model_info": info,
            "stats": {"replies": self.requests_served, "batches": self.batches_run,
                      "largest_batch": self.largest_batch},
        }

    def _model_name(self) -> str | None:
        if self.runtime is None:
            return None
        return str(self._info.get("model") or self._info.get("bundle") or self._info.get("name") or "unnamed")

    def _model_info(self) -> dict[str, Any]:
        if self.runtime is None:
            return {"device": "none"}
        info = _plain(dict(self.runtime.info()))
        info.setdefault("latent_size", int(getattr(self.runtime, "latent_size", 0) or 0))
        return info

    def _load_appearances(self) -> tuple[list[str], dict[str, np.ndarray]]:
        if self.runtime is None:
            return [], {}
        entries = list(self.runtime.appearances())
        names, latents, arrays = [], [], {}
        size = int(self._info.get("latent_size") or 0)
        for i, entry in enumerate(entries):
            name, latent, thumbnail = (entry.name, entry.latent, entry.thumbnail) if hasattr(entry, "name") \
                else entry
            names.append(str(name))
            latents.append(np.asarray(latent, dtype=np.float32).reshape(-1))
            arrays[f"thumbnail.{i}"] = np.ascontiguousarray(thumbnail, dtype=np.uint8)
        arrays = {"latents": np.stack(latents) if latents else np.zeros((0, size), np.float32), **arrays}
        return names, arrays

    # -------------------------------------------------------------------------------------- compute worker
    def _work(self) -> None:
        out = self._context.socket(zmq.PUSH)
        out.setsockopt(zmq.LINGER, 0)
        out.connect(self._inproc)
        try:
            with _device_context(self.runtime):
                while True:
                    jobs = self._gather()
                    if jobs is None:
                        break
                    for group in _group(jobs, self.max_batch):
                        self._run_group(group, out)
            while True:  # drain: requests still queued at shutdown get an honest answer
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    out.send_multipart([job.identity, *encode_error(job.op, job.request_id, CODE_SHUTTING_DOWN,
                                                                    "the backend is shutting down")])
        except Exception:  # pragma: no cover - a bug here must be loud, but the I/O thread keeps answering
            log.exception("the compute worker crashed; model requests will time out")
        finally:
            out.close(linger=1000)

    def _gather(self) -> list[_Job] | None:
        """Block for one job, then collect whatever arrives within the batch window (micro-batching)."""
        while True:
            try:
                first = self._jobs.get(timeout=0.2)
                break
            except queue.Empty:
                if self._stop.is_set():
                    return None
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(jobs) < 4 * self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # handle the jobs in hand, stop on the next _gather
                break
            jobs.append(job)
        return jobs

    def _run_group(self, jobs: list[_Job], out: zmq.Socket) -> None:
        op = jobs[0].op
        prepared: list[tuple[_Job, Any]] = []
        for job in jobs:  # input errors concern one job only
            try:
                prepared.append((job, self._prepare(job)))
            except ProtocolError as err:
                self._reply_error(out, job, err.code, err.message)
        if not prepared:
            return
        started = time.monotonic()
        try:
            results = self._compute(op, [p for _, p in prepared], prepared[0][0].params)
            if self.simulate_latency_s > 0:
                time.sleep(max(0.0, self.simulate_latency_s - (time.monotonic() - started)))
        except Exception as exc:
            if len(prepared) > 1:  # find out which request breaks the model; the others still get answers
                log.warning("batch of %d %s requests failed (%s); retrying one by one", len(prepared), op, exc)
                for job, _ in prepared:
                    self._run_group([job], out)
                return
            job = prepared[0][0]
            code = CODE_BAD_PARAMS if isinstance(exc, (ValueError, BufferError)) else CODE_INTERNAL
            if code == CODE_INTERNAL:
                log.exception("the model failed on request id=%s op=%s", job.request_id, op)
            self._reply_error(out, job, code, f"the model could not process this request: "
                                              f"{type(exc).__name__}: {exc}")
            return
        compute_ms = (time.monotonic() - started) * 1000
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(prepared))
        for (job, _), result in zip(prepared, results):
            out.send_multipart([job.identity, *encode_reply(op, job.request_id, {}, result)], copy=False)
            log.debug("id=%s op=%s size=%s batch=%d wait=%.1fms compute=%.1fms", job.request_id, op,
                      job.batch_key[1], len(prepared), (started - job.received) * 1000, compute_ms)

    def _prepare(self, job: _Job) -> Any:
        buffer = buffer_from_wire(job.arrays)
        if job.op == "rerender":
            if "latent" not in job.arrays:
                raise ProtocolError(CODE_BAD_PARAMS, "rerender needs a 'latent' array (float32, latent_size)")
            return buffer, check_latent(job.arrays["latent"], self._info.get("latent_size"))
        if job.op == "encode":
            photo = job.arrays.get("photo")
            if photo is None or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
                raise ProtocolError(CODE_BAD_PARAMS, "encode needs a 'photo' array, uint8 sRGB H x W x 3")
            if photo.shape[:2] != buffer.shape:
                raise ProtocolError(CODE_BAD_PARAMS, f"the photo is {photo.shape[:2]} but its deep buffer is "
                                                     f"{buffer.shape}; render the buffer at the photo's size")
            return buffer, np.array(photo)
        return buffer

    def _compute(self, op: str, inputs: list[Any], params: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        rt = self.runtime
        if op == "rerender":
            buffers = [b for b, _ in inputs]
            if params.get("fill_labels"):  # S predicts the labels no point gives; the reply says what was used
                buffers = rt.fill_labels(buffers)
            images = rt.rerender(buffers, np.stack([z for _, z in inputs]))
            images = np.asarray(images)
            if params.get("output", "uint8") == "float16":
                images = (images.astype(np.float32) / 255.0).astype(np.float16) if images.dtype == np.uint8 \
                    else images.astype(np.float16)
            if params.get("fill_labels"):
                return [{"image": im, "labels": b.label} for im, b in zip(images, buffers)]
            return [{"image": im} for im in images]
        if op == "encode":
            latents = np.asarray(rt.encode([p for _, p in inputs], [b for b, _ in inputs]), dtype=np.float32)
            return [{"latent": z} for z in latents]
        labels = np.asarray(rt.segment(inputs), dtype=np.uint8)
        return [{"labels": lab} for lab in labels]

    def _reply_error(self, out: zmq.Socket, job: _Job, code: str, message: str) -> None:
        log.debug("id=%s op=%s -> error [%s] %s", job.request_id, job.op, code, message)
        out.send_multipart([job.identity, *encode_error(job.op, job.request_id, code, message)], copy=False)


def _echo_frames(request_id: int | None, message: Message, frames: list) -> list:
    """The echo reply: a reply header declaring the same arrays, followed by the very frames that came in
    (passed through without a copy, so echo measures the transport alone)."""
    header = {"op": "echo", "v": PROTOCOL_VERSION, "id": request_id, "ok": True, "params": message.params,
              "arrays": [{"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in message.arrays.items()]}
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _group(jobs: list[_Job], max_batch: int) -> list[list[_Job]]:
    """Jobs with the same (op, size, output) in arrival order, in chunks of at most max_batch."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.batch_key, []).append(job)
    return [g[i:i + max_batch] for g in groups.values() for i in range(0, len(g), max_batch)]


def _resolve_precision(precision: str, device: str) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if not str(device).startswith("cuda"):
        return "fp32"  # autocast is a CUDA feature here; CPU stays in float32
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _apply_precision(runtime: Any, precision: str) -> None:
    """The runtime runs its forward passes under ``torch.autocast`` with ``runtime.autocast_dtype`` (None = fp32);
    the server's --precision sets it, so the choice is made in one place and reported by hello."""
    if runtime is None or not hasattr(runtime, "autocast_dtype"):
        return
    import torch

    runtime.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@contextlib.contextmanager
def _device_context(runtime: Any):
    """The worker thread owns the device: everything it runs is under inference_mode (the runtime adds
    autocast per forward pass)."""
    if runtime is None:
        yield
        return
    import torch

    with torch.inference_mode():
        yield


def _plain(x: Any) -> Any:
    """JSON/msgpack-safe copy of runtime info (tuples, numpy scalars, paths, torch devices become plain types)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


__all__ = ["Server"]
