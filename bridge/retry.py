"""How a client retries requests the backend answered ``overloaded``: backoff with jitter, a window that shrinks.

Why: ``overloaded`` means "momentarily full", not "failed": the server's queue or memory budget is taken by other
clients' frames and drains within milliseconds to seconds. A batch render must not abort on it, and a client that
re-sends at once only adds to the crowd. So a refused request waits for the server's ``retry_after_ms`` (or an
exponential backoff from 20 ms when it gives none, up to 2 s), with ±50 % jitter so many clients do not come back
in step, and the pipelining window halves on every refusal and grows by one per success (AIMD, as TCP does), so
each client settles at what the server can take. Only after ``patience`` seconds of refusals for the same request
does the caller see :class:`~.errors.BackendBusy`.

Imports only the standard library (vendored into the Blender extension).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from typing import Any

BASE_DELAY_S = 0.02
MAX_DELAY_S = 2.0


class OverloadRetry:
    """Requests waiting to be re-sent after an ``overloaded`` reply, keyed by request id."""

    def __init__(self, patience: float, *, seed: int | None = None) -> None:
        self.patience = float(patience)
        self._heap: list[tuple[float, int, Any, Any]] = []
        self._first_refusal: dict[Any, float] = {}
        self._attempts: dict[Any, int] = {}
        self._order = itertools.count()
        self._random = random.Random(seed)
        self.retries = 0  # re-sends scheduled over this object's life (reported by benchmarks and tests)

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, key: Any, request: Any, retry_after_ms: float | None) -> bool:
        """Plan a re-send of ``request``; False when it has been refused for longer than ``patience``."""
        now = time.monotonic()
        first = self._first_refusal.setdefault(key, now)
        if now - first > self.patience:
            self.forget(key)
            return False
        attempt = self._attempts.get(key, 0) + 1
        self._attempts[key] = attempt
        backoff = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** min(attempt - 1, 10))
        hint = (retry_after_ms or 0.0) / 1000
        delay = min(MAX_DELAY_S, max(hint, backoff)) * self._random.uniform(0.5, 1.5)
        heapq.heappush(self._heap, (now + delay, next(self._order), key, request))
        self.retries += 1
        return True

    def due(self, limit: int | None = None) -> list[tuple[Any, Any]]:
        """(key, request) pairs whose wait is over, oldest due first, at most ``limit``."""
        now = time.monotonic()
        out = []
        while self._heap and self._heap[0][0] <= now and (limit is None or len(out) < limit):
            _, _, key, request = heapq.heappop(self._heap)
            out.append((key, request))
        return out

    def seconds_to_next(self) -> float | None:
        return max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None

    def forget(self, key: Any) -> None:
        """The request got an answer (or was given up): its refusal history ends."""
        self._first_refusal.pop(key, None)
        self._attempts.pop(key, None)

    def discard(self, key: Any) -> None:
        """Drop a scheduled re-send (a cancelled request)."""
        self._heap = [item for item in self._heap if item[2] != key]
        heapq.heapify(self._heap)
        self.forget(key)

    def keys(self) -> list[Any]:
        return [item[2] for item in self._heap]

    def requests(self) -> list[Any]:
        return [item[3] for item in self._heap]

    def clear(self) -> None:
        self._heap.clear()
        self._first_refusal.clear()
        self._attempts.clear()


class Window:
    """The pipelining window: halves on a refusal, grows by one per success, between 1 and ``maximum``."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, int(maximum))
        self.size = self.maximum

    def refused(self) -> None:
        self.size = max(1, self.size // 2)

    def succeeded(self) -> None:
        self.size = min(self.maximum, self.size + 1)


__all__ = ["OverloadRetry", "Window"]
