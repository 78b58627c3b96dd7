"""What bounds the server's memory and file descriptors, and how the per-frame pixel limit is derived.

Why bytes and not counts: a request count says nothing about memory (66 queued requests of 8 MiB cost as much as
8,000 small ones), so the server keeps one byte budget for everything a peer can make it hold: the wire bytes of
queued and in-flight model requests, and the reply bytes ZeroMQ has not yet written to a peer that stops reading
(tracked with ZeroMQ's message trackers, which fire when libzmq lets go of a frame). Beyond the budget a request
is answered ``overloaded`` with a retry-after, so a busy backend slows its clients down instead of growing.

The per-frame pixel limit comes from the device: the network's activation bytes per pixel (measured once at start
with forward hooks on a small probe frame, an upper bound: every layer's output counted as if alive at once) plus
the host-side arrays per pixel, against the device memory left after the model was loaded. A frame above it would
fail half-way through a forward pass; refused up front it costs nothing, and ``hello`` states the limit so clients
refuse it before sending.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.protocol import DEFAULT_LIMITS

log = logging.getLogger(__name__)

MiB = 2**20
TRACK_MIN_BYTES = 64 * 1024      # replies smaller than this are copied by pyzmq and need no tracking
DEVICE_MEMORY_SHARE = 0.8        # of the free GPU memory a frame's forward pass may use
HOST_MEMORY_SHARE = 0.4          # of the available RAM, on a CPU device (the queue budget lives there too)
PROBE_SIDE = 64
FALLBACK_BYTES_PER_PIXEL = 4096  # when the probe cannot run: a paper-size network's order of magnitude
FD_RESERVE = 64                  # descriptors kept for files, the inproc/wake pipes and the log


@dataclass(frozen=True)
class ServerLimits:
    """The bounds in force, as ``hello`` reports them (``limits``)."""

    memory_budget_bytes: int = 1024 * MiB
    max_queue: int = 64
    max_frame_pixels: int = DEFAULT_LIMITS.max_image_side ** 2
    bytes_per_pixel: int = 0          # the estimate max_frame_pixels was derived from (0: not derived)
    max_connections: int = 512
    idle_timeout_s: float = 600.0     # a connection without a request for this long is closed when room is needed
    heartbeat_s: float = 10.0         # ZeroMQ PING interval; a peer silent for 3 intervals is dropped

    def __post_init__(self) -> None:
        if self.memory_budget_bytes < MiB or self.max_queue < 1 or self.max_frame_pixels < 1:
            raise ValueError("memory budget must be >= 1 MiB, max_queue and max_frame_pixels >= 1")
        if self.max_connections < 1 or not self.idle_timeout_s > 0 or self.heartbeat_s < 0:
            raise ValueError("max_connections must be >= 1, idle_timeout_s > 0 and heartbeat_s >= 0")

    def as_hello(self) -> dict[str, Any]:
        return asdict(self)


def default_memory_budget() -> int:
    """A quarter of the RAM available now, between 256 MiB and 4 GiB."""
    available = host_memory_available() or 4096 * MiB
    return int(min(4096 * MiB, max(256 * MiB, available // 4)))


def host_memory_available() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit and RLIMIT_AS if set."""
    candidates = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                candidates.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        candidates.append(soft - _vm_size())
    return max(0, min(candidates)) if candidates else None


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def device_memory_free(device: str) -> int | None:
    """Free bytes on the model's device (CUDA: what the driver reports; CPU: host_memory_available)."""
    if str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free * DEVICE_MEMORY_SHARE)
    available = host_memory_available()
    return None if available is None else int(available * HOST_MEMORY_SHARE)


def estimate_bytes_per_pixel(runtime: Any) -> int:
    """Peak bytes one frame pixel costs the server: network activations (forward hooks on every leaf module
    during a small probe of each model op, summed as if all were alive at once) plus the host arrays (wire,
    deep buffer, encoded input, output). Falls back to a conservative constant when the probe cannot run."""
    try:
        import torch
    except ImportError:  # pragma: no cover - a runtime implies torch
        return FALLBACK_BYTES_PER_PIXEL
    counted = [0]

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                counted[0] += t.numel() * t.element_size()

    handles = []
    try:
        for net in runtime.bundle.modules().values():
            for module in net.modules():
                if not any(True for _ in module.children()):
                    handles.append(module.register_forward_hook(hook))
        probe = DeepBuffer.empty(PROBE_SIDE, PROBE_SIDE)
        probe.depth[:] = 5.0
        probe.mask[:] = True
        size = int(getattr(runtime, "latent_size", 0) or 0)
        latent = np.zeros((1, size), np.float32) if size else None
        peak = 0
        for run in (lambda: runtime.rerender([probe], latent), lambda: runtime.segment([probe]),
                    lambda: runtime.encode([np.zeros((PROBE_SIDE, PROBE_SIDE, 3), np.uint8)], [probe])):
            counted[0] = 0
            try:
                run()
            except ValueError:  # e.g. a bundle without an encoder
                continue
            peak = max(peak, counted[0])
    except Exception as exc:  # the limit must never stop a server from starting
        log.warning("could not measure the network's memory per pixel (%s: %s); assuming %d bytes",
                    type(exc).__name__, exc, FALLBACK_BYTES_PER_PIXEL)
        return FALLBACK_BYTES_PER_PIXEL
    finally:
        for h in handles:
            h.remove()
    channels = 16
    encoding = getattr(runtime, "encoding", None)
    if encoding is not None and hasattr(encoding, "channels"):
        channels = int(encoding.channels(True))
    host = 7 + 12 + 4 * channels + 4 * 3 + 3  # wire + deep buffer + encoded input + float output + uint8 reply
    return int(peak / (PROBE_SIDE * PROBE_SIDE) * 1.25 + host)


def derive_max_frame_pixels(runtime: Any, device: str) -> tuple[int, int]:
    """(max_frame_pixels, bytes_per_pixel) for a model on ``device``; never above the wire's side limit squared."""
    ceiling = DEFAULT_LIMITS.max_image_side ** 2
    if runtime is None:
        return ceiling, 0
    per_pixel = estimate_bytes_per_pixel(runtime)
    free = device_memory_free(device)
    if free is None:
        return ceiling, per_pixel
    return max(1, min(ceiling, free // max(1, per_pixel))), per_pixel


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft RLIMIT_NOFILE towards the hard limit (servers usually do); returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard if hard != resource.RLIM_INFINITY else wanted)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_budget(max_connections: int) -> int:
    """Connections the server may hold: the configured number, never more than the descriptors left."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 32
    return max(1, min(max_connections, soft - open_now - FD_RESERVE))


class ByteBudget:
    """Bytes held for peers: reserved request bytes plus reply bytes ZeroMQ still holds. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self._lock = threading.Lock()
        self._reserved = 0
        self._outgoing: list[tuple[Any, int]] = []  # (zmq MessageTracker, bytes)
        self._outgoing_bytes = 0
        self.peak = 0

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes`` for a request; False when that would go beyond the limit."""
        with self._lock:
            self._prune()
            if self._reserved + self._outgoing_bytes + nbytes > self.limit:
                return False
            self._reserved += nbytes
            self.peak = max(self.peak, self._reserved + self._outgoing_bytes)
            return True

    def fits(self, nbytes: int) -> bool:
        with self._lock:
            self._prune()
            return self._reserved + self._outgoing_bytes + nbytes <= self.limit

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - nbytes)

    def track(self, trackers: list, nbytes: int) -> None:
        """Count ``nbytes`` of a sent reply until every tracker in ``trackers`` is done."""
        pending = [t for t in trackers if t is not None and not t.done]
        if not pending or nbytes <= 0:
            return
        with self._lock:
            self._outgoing.append((pending, nbytes))
            self._outgoing_bytes += nbytes
            self.peak = max(self.peak, self._reserved + self._outgoing_bytes)

    def _prune(self) -> None:
        if not self._outgoing:
            return
        keep = []
        for trackers, nbytes in self._outgoing:
            if all(t.done for t in trackers):
                self._outgoing_bytes -= nbytes
            else:
                keep.append((trackers, nbytes))
        self._outgoing = keep

    def usage(self) -> dict[str, int]:
        with self._lock:
            self._prune()
            return {"reserved_bytes": self._reserved, "unread_reply_bytes": self._outgoing_bytes,
                    "limit_bytes": self.limit, "peak_bytes": self.peak}


__all__ = ["ServerLimits", "ByteBudget", "derive_max_frame_pixels", "estimate_bytes_per_pixel", "raise_fd_limit",
           "connection_budget", "default_memory_budget", "host_memory_available", "TRACK_MIN_BYTES", "MiB"]
