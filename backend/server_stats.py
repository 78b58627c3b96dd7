"""Where a request's time goes: per-request stage timings, their running summary, and the runtime's stage clock.

Stages, in the order a request meets them (milliseconds):
  receive  the I/O thread reading the message off the socket and checking its header and declared arrays
  queue    waiting: for the worker's host thread, then (prepared) for the device
  decode   wire arrays -> validated inputs (deep buffer, latent, photo) on the worker's host thread
  encode   inputs -> network tensors (the runtime's input encoding)
  forward  the network itself (everything of the compute call that is neither encode nor output)
  output   network output -> reply pixels (the runtime's output decoding)
  send     the I/O thread handing the reply to ZeroMQ

Why measured this way: the runtime owns encode/forward/output and batches several requests into one call, so the
server times the whole call and asks the runtime's input encoding which part was its own (``instrument_runtime``
wraps the encoding's methods for the compute thread only, two clock reads per call). A batch's encode/forward/output
are shared by its requests; each reply reports the batch's figures with ``batch`` saying how many shared them.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from typing import Any, Callable

STAGES = ("receive", "queue", "decode", "encode", "forward", "output", "send")

# Methods of the runtime's input encoding whose time counts as "encode" / "output"; whichever exist are timed.
_ENCODE_METHODS = ("encode_buffers", "encode_photos", "encode_wire", "encode_wire_buffers")
_OUTPUT_METHODS = ("decode_rgb", "decode_output", "decode_float16")

_clock = threading.local()


class StageClock:
    """Accumulates encode/output milliseconds of the calls made by the thread that installed it."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {"encode": 0.0, "output": 0.0}

    def __enter__(self) -> "StageClock":
        _clock.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _clock.current = None


def instrument_runtime(runtime: Any) -> list[str]:
    """Wrap the stage methods of ``runtime.encoding`` so a :class:`StageClock` sees their time; returns what was
    wrapped. Idempotent; other threads (training, evaluation) calling the same methods are not affected."""
    encoding = getattr(runtime, "encoding", None)
    if encoding is None:
        return []
    wrapped = []
    for stage, names in (("encode", _ENCODE_METHODS), ("output", _OUTPUT_METHODS)):
        for name in names:
            method = getattr(encoding, name, None)
            if method is None or getattr(method, "_rerender_stage", None):
                continue
            try:
                setattr(encoding, name, _timed(method, stage))
                wrapped.append(name)
            except (AttributeError, TypeError):  # a frozen or slotted encoding: those stages count as forward
                pass
    return wrapped


def _timed(method: Callable, stage: str) -> Callable:
    @functools.wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        clock = getattr(_clock, "current", None)
        if clock is None:
            return method(*args, **kwargs)
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            clock.ms[stage] += (time.perf_counter() - started) * 1000

    timed._rerender_stage = stage  # type: ignore[attr-defined]
    return timed


class TimingLog:
    """The last ``keep`` requests' stage timings per op; :meth:`summary` gives medians and 90th percentiles (the
    ``stats`` op). Thread-safe: the worker adds compute stages, the I/O thread the send stage."""

    def __init__(self, keep: int = 512) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, deque] = {}
        self._keep = keep

    def add(self, op: str, timings: dict[str, float]) -> None:
        with self._lock:
            self._rows.setdefault(op, deque(maxlen=self._keep)).append(dict(timings))

    def summary(self) -> dict[str, Any]:
        with self._lock:
            rows = {op: list(r) for op, r in self._rows.items()}
        out: dict[str, Any] = {}
        for op, items in rows.items():
            stages: dict[str, Any] = {}
            for stage in (*STAGES, "total"):
                values = sorted(r[stage] for r in items if r.get(stage) is not None)
                if values:
                    stages[stage] = {"median": round(_quantile(values, 0.5), 3),
                                     "p90": round(_quantile(values, 0.9), 3)}
            out[op] = {"count": len(items), "ms": stages}
        return out


def _quantile(sorted_values: list[float], q: float) -> float:
    i = (len(sorted_values) - 1) * q
    lo = int(i)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (i - lo)


def format_timings(timings: dict[str, float | None]) -> str:
    """One log line's worth: ``receive 0.4 queue 1.2 decode 3.1 ... ms``."""
    parts = [f"{stage} {timings[stage]:.1f}" for stage in (*STAGES, "total") if timings.get(stage) is not None]
    return " ".join(parts) + " ms"


__all__ = ["STAGES", "StageClock", "instrument_runtime", "TimingLog", "format_timings"]
