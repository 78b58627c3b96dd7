"""The compute worker: an overlapped two-stage pipeline in front of the device, supervised.

Why two threads: a request's host work (wire arrays -> checked deep buffer, latent, photo) is independent of the
device, so it runs on a *host* thread while the *device* thread computes the previous batch; request k+1 is ready
the moment request k's forward pass ends. Batching needs no waiting window: requests that arrive while the device
is busy join the prepared batch waiting for it (same op, frame size and output, up to ``max_batch`` frames and
``batch_pixels`` pixels), and a request that finds the device idle goes straight to it.

Bounded: at most one batch computes and one waits prepared; the rest waits as received wire bytes, which the
server's byte budget bounds.

Supervised: every failure concerning a request becomes that request's error reply, and an unexpected exception
that still escapes a stage ends only that stage's thread; :meth:`ComputeWorker.supervise` (called by the server's
I/O loop) answers the requests the dead thread held with ``internal`` and restarts it with a growing back-off,
while :attr:`health` says ``restarting`` (``hello`` reports it, so the add-on does not show a dead backend as
connected).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from rerender.bridge.buffers import BufferError
from rerender.bridge.errors import CODE_BAD_PARAMS, CODE_INTERNAL, CODE_SHUTTING_DOWN, ProtocolError
from rerender.bridge.protocol import encode_error, encode_reply

from .server_ops import OpSpec
from .server_stats import StageClock

log = logging.getLogger("rerender.backend.server")

RESTART_BACKOFF_S = (0.1, 0.5, 2.0, 5.0)


@dataclass
class Job:
    """A model request admitted by the I/O thread, until its reply is handed back."""

    identity: bytes
    request_id: int
    spec: OpSpec
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    frames: list              # the received zmq frames (the arrays are views of them)
    nbytes: int               # wire bytes reserved in the server's budget
    size: tuple[int, int]     # frame H, W
    received: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    prepared: Any = None
    prepared_at: float = 0.0  # when its host work ended: the wait for the device counts as queue time
    fd: int | None = None     # the connection it came through (never closed while the request is in flight)

    @property
    def key(self) -> tuple:
        return (self.spec.name, self.size, *(self.params[p] for p in self.spec.batch_params))

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


@dataclass
class _Batch:
    key: tuple
    jobs: list[Job]


Deliver = Callable[[Job, list], None]  # (job, reply frames) -> None; called from worker threads


class ComputeWorker:
    """Owns the runtime. ``deliver(job, frames)`` hands a reply (success or error) to the server."""

    def __init__(self, runtime: Any, deliver: Deliver, *, latent_size: int | None, max_batch: int = 8,
                 batch_pixels: int = 2**28, batch_window_s: float = 0.0, simulate_latency_s: float = 0.0) -> None:
        self.runtime = runtime
        self._deliver = deliver
        self.latent_size = latent_size
        self.max_batch = max_batch
        self.batch_pixels = max(1, batch_pixels)
        self.batch_window_s = batch_window_s
        self.simulate_latency_s = simulate_latency_s
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._slot: _Batch | None = None          # prepared, waiting for the device
        self._preparing: Job | None = None
        self._computing: _Batch | None = None
        self._stopping = False
        self._threads: dict[str, threading.Thread] = {}
        self._crashes: dict[str, BaseException] = {}
        self._restart_at: dict[str, float] = {}
        self.restarts = 0
        self.last_crash: str | None = None
        self.batches_run = 0
        self.largest_batch = 0

    # ------------------------------------------------------------------------------------------- control
    def start(self) -> None:
        for name in ("prepare", "compute"):
            self._start_thread(name)

    def _start_thread(self, name: str) -> None:
        loop = self._prepare_loop if name == "prepare" else self._compute_loop
        thread = threading.Thread(target=self._guarded, args=(name, loop), name=f"rerender-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def _guarded(self, name: str, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # noqa: BLE001 - reported and restarted by supervise()
            self._crashes[name] = exc
            log.exception("the compute worker's %s thread crashed; it will be restarted", name)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()

    def queued(self) -> int:
        """Requests admitted and not yet computing."""
        with self._cond:
            return len(self._queue) + (len(self._slot.jobs) if self._slot else 0) + (self._preparing is not None)

    @property
    def health(self) -> str:
        if self._stopping:
            return "stopping"
        return "ok" if all(t.is_alive() for t in self._threads.values()) else "restarting"

    def supervise(self) -> None:
        """Restart dead stage threads (from the I/O thread, every loop): answer what they held, back off."""
        if self._stopping:
            return
        now = time.monotonic()
        for name, thread in list(self._threads.items()):
            if thread.is_alive():
                continue
            if name not in self._restart_at:
                exc = self._crashes.pop(name, None)
                self.last_crash = f"{type(exc).__name__}: {exc}" if exc else "the thread ended"
                with self._cond:
                    held = [self._preparing] if name == "prepare" and self._preparing else []
                    if name == "prepare":
                        self._preparing = None
                    if name == "compute" and self._computing is not None:
                        held, self._computing = list(self._computing.jobs), None
                for job in held:
                    self._fail(job, CODE_INTERNAL, f"the backend's compute worker failed ({self.last_crash}) "
                                                   f"while handling this request and is being restarted; retry it")
                delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
                self._restart_at[name] = now + delay
                log.error("compute worker %s thread died (%s); restarting in %.1f s", name, self.last_crash, delay)
            elif now >= self._restart_at[name]:
                del self._restart_at[name]
                self.restarts += 1
                self._start_thread(name)
                log.warning("compute worker %s thread restarted (%d restarts so far)", name, self.restarts)

    def stop(self, timeout: float = 30.0) -> list[Job]:
        """Stop taking work, let the batch being computed finish, and return every job not computed (the server
        answers them ``shutting_down``)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = list(self._slot.jobs) if self._slot else []
            left += [self._preparing] if self._preparing else []
            left += list(self._queue)
            self._slot, self._preparing = None, None
            self._queue.clear()
        return left

    # ---------------------------------------------------------------------------------------- host stage
    def _prepare_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue:
                    self._cond.wait(0.2)
                if self._stopping:
                    return
                job = self._pick()
                self._preparing = job
            started = time.perf_counter()
            job.timings["queue"] = (started - job.received) * 1000
            try:
                job.prepared = job.spec.prepare(self.runtime, job.arrays, self.latent_size)
            except ProtocolError as err:
                self._release_preparing(job)
                self._fail(job, err.code, err.message)
                continue
            except Exception as exc:  # MemoryError on a huge frame, a bug: this request fails, the worker goes on
                self._release_preparing(job)
                self._fail_exception(job, exc, "decoding")
                continue
            job.prepared_at = time.perf_counter()
            job.timings["decode"] = (job.prepared_at - started) * 1000
            with self._cond:
                while not self._stopping and not self._accepts(job):
                    self._cond.wait(0.2)
                if self._stopping:
                    return  # stop() returns the job in hand (_preparing) for a shutting_down reply
                if self._slot is None:
                    self._slot = _Batch(job.key, [job])
                else:
                    self._slot.jobs.append(job)
                self._preparing = None
                self._cond.notify_all()

    def _release_preparing(self, job: Job) -> None:
        with self._cond:
            if self._preparing is job:
                self._preparing = None

    def _pick(self) -> Job:
        """The oldest queued job that can join the waiting batch, else the oldest."""
        if self._slot is not None and not self._full(self._slot):
            for i, job in enumerate(self._queue):
                if job.key == self._slot.key:
                    del self._queue[i]
                    return job
        return self._queue.popleft()

    def _full(self, batch: _Batch) -> bool:
        pixels = max(1, batch.jobs[0].pixels)
        return len(batch.jobs) >= self.max_batch or (len(batch.jobs) + 1) * pixels > self.batch_pixels

    def _accepts(self, job: Job) -> bool:
        return self._slot is None or (self._slot.key == job.key and not self._full(self._slot))

    # -------------------------------------------------------------------------------------- device stage
    def _compute_loop(self) -> None:
        with _device_context(self.runtime):
            while True:
                with self._cond:
                    while not self._stopping and self._slot is None:
                        self._cond.wait(0.2)
                    if self._stopping:
                        return
                    if self.batch_window_s > 0:
                        deadline = time.monotonic() + self.batch_window_s
                        while not self._stopping and not self._full(self._slot) and time.monotonic() < deadline:
                            self._cond.wait(max(0.0, deadline - time.monotonic()))
                    batch, self._slot = self._slot, None
                    self._computing = batch
                    self._cond.notify_all()
                self._run(batch)
                with self._cond:
                    self._computing = None

    def _run(self, batch: _Batch) -> None:
        jobs = batch.jobs
        spec = jobs[0].spec
        started = time.perf_counter()
        for job in jobs:  # prepared, then waiting for the device: queue time too
            job.timings["queue"] = job.timings.get("queue", 0.0) + max(0.0, started - job.prepared_at) * 1000
            job.prepared_at = started
        try:
            with StageClock() as clock:
                results, reported = spec.compute(self.runtime, [j.prepared for j in jobs], jobs[0].params)
            if len(results) != len(jobs):
                raise RuntimeError(f"the runtime returned {len(results)} results for {len(jobs)} requests")
            if self.simulate_latency_s > 0:
                time.sleep(max(0.0, self.simulate_latency_s - (time.perf_counter() - started)))
        except Exception as exc:
            if len(jobs) > 1:  # find out which request breaks the model; the others still get answers
                log.warning("batch of %d %s requests failed (%s); retrying one by one", len(jobs), spec.name, exc)
                for job in jobs:
                    self._run(_Batch(batch.key, [job]))
                return
            self._fail_exception(jobs[0], exc, "computing")
            return
        total = (time.perf_counter() - started) * 1000
        if reported:  # the runtime timed its own stages (on CUDA: device time)
            stages = {k: float(reported.get(k, 0.0)) for k in ("encode", "forward", "output")}
            device_decode = float(reported.get("decode", 0.0))
        else:
            encode, output = clock.ms["encode"], clock.ms["output"]
            stages = {"encode": encode, "forward": max(0.0, total - encode - output), "output": output}
            device_decode = 0.0
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(jobs))
        for job, result in zip(jobs, results):
            job.timings.update(stages, batch=len(jobs))
            job.timings["decode"] = job.timings.get("decode", 0.0) + device_decode
            shown = {k: round(v, 3) for k, v in job.timings.items()}
            try:
                frames = encode_reply(spec.name, job.request_id, {"timings_ms": shown}, result)
            except Exception as exc:
                self._fail_exception(job, exc, "encoding the reply of")
                continue
            job.prepared = None
            self._deliver(job, frames)

    # ------------------------------------------------------------------------------------------- replies
    def _fail_exception(self, job: Job, exc: BaseException, stage: str) -> None:
        if isinstance(exc, MemoryError):
            log.error("out of memory while %s request id=%s op=%s (%d x %d)", stage, job.request_id,
                      job.spec.name, *job.size)
            self._fail(job, CODE_INTERNAL, f"the backend ran out of memory while {stage} this {job.size[0]} x "
                                           f"{job.size[1]} frame; send a smaller frame or free memory on the "
                                           f"backend machine")
            return
        if isinstance(exc, (ValueError, BufferError)):
            code = CODE_BAD_PARAMS
        else:
            code = CODE_INTERNAL
            log.error("the model failed on request id=%s op=%s: %s: %s", job.request_id, job.spec.name,
                      type(exc).__name__, exc, exc_info=exc)
        self._fail(job, code, f"the model could not process this request: {type(exc).__name__}: {exc}")

    def _fail(self, job: Job, code: str, message: str) -> None:
        log.debug("id=%s op=%s -> error [%s] %s", job.request_id, job.spec.name, code, message)
        job.prepared = None
        self._deliver(job, encode_error(job.spec.name, job.request_id, code, message))

    def fail_shutting_down(self, job: Job) -> None:
        self._fail(job, CODE_SHUTTING_DOWN, "the backend is shutting down; the request was not computed")


@contextlib.contextmanager
def _device_context(runtime: Any):
    """The device thread runs under inference_mode (the runtime adds autocast per forward pass)."""
    if runtime is None:
        yield
        return
    import torch

    with torch.inference_mode():
        yield


__all__ = ["ComputeWorker", "Job"]
