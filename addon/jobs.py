"""The add-on's one way to work off Blender's UI thread: a worker thread per job, and one main-thread timer pump
that delivers results and tags redraws.

Why: Blender's UI must never wait on a socket (a backend across the network may take seconds, or never answer), and
bpy data may be edited only on the main thread. So work runs in a daemon thread, and its result is handed to an
``on_done`` callback by :func:`pump`, the single ``bpy.app.timers`` callback of the add-on, which runs only while
something is in flight. Policies say what a second start does while a job runs:

- ``PARALLEL``: it runs too (a gallery fetch and photo encodes are independent);
- ``ONE_AT_A_TIME``: it is refused, ``start`` returns False (a status check is already asking the same question);
- ``LATEST_WINS``: it runs, and the older job's result is dropped when it ends (only the newest answer matters).

Scripts and tests run inside the ``bpy`` module, where timers never fire: they call ``runner.wait()`` and
``runner.deliver()`` themselves. No bpy at import time (bpy is imported only to register the timer) and no UI import
(``ui.py`` hands the pump its redraw through :func:`on_change`), so the runner is plain-Python testable and
``connection.py`` can use it without an import cycle.

A job started inside one of the add-on's operators (``@runs_jobs_after`` on its ``execute``/``invoke``) does not
start its thread there: it starts when the operator has returned, from the pump (the UI), ``wait`` or ``deliver``
(scripts). Why: on the Blenders built with Python 3.11 (4.5 LTS, 5.0), an operator called from Python under
``bpy.context.temp_override`` runs its C part with the GIL released, and Blender then reads the override
dictionary without taking the GIL whenever *another* thread holds it. A thread that alternates between Python and
a blocking call (a socket wait) during that window crashes Blender. That is exactly what a job thread does right
after it starts. With Python 3.12 and later (Blender 5.2, 5.3) the check is per thread and the crash cannot
happen. docs/addon.md, "Threads and Blender", has the measurements.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

PARALLEL, ONE_AT_A_TIME, LATEST_WINS = "parallel", "one at a time", "latest wins"
POLL_S = 0.25  # how often the pump looks for finished jobs while any is in flight
MESSAGES_KEPT = 5

# () -> (something changed: redraw; keep pumping: False, True for every POLL_S, or seconds until the next look)
Watcher = Callable[[], "tuple[bool, bool | float]"]


@dataclass
class Job:
    """One piece of work: ``work()`` ran (or runs) in ``thread``; ``on_done(result)`` runs on the main thread."""

    what: str
    on_done: Callable[[Any], Any] | None
    thread: threading.Thread | None = None
    result: Any = None
    error: BaseException | None = None
    superseded: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def pending(self) -> bool:
        """Queued by a start inside an operator; its thread starts once the operator returned."""
        return self.thread is not None and self.thread.ident is None

    @property
    def alive(self) -> bool:
        """Still to finish: running, or waiting to start."""
        return self.pending or (self.thread is not None and self.thread.is_alive())


class JobRunner:
    """Jobs under one policy; finished ones are applied on the main thread by :meth:`deliver` (the pump calls it).

    ``explain(exc)`` turns a failure into the artist-facing message; ``messages`` keeps the last few (level, text)
    pairs for a panel, and ``generation`` bumps whenever they change.
    """

    def __init__(self, name: str, policy: str = PARALLEL, explain: Callable[[BaseException], str] = str) -> None:
        if policy not in (PARALLEL, ONE_AT_A_TIME, LATEST_WINS):
            raise ValueError(f"unknown job policy {policy!r}")
        self.name, self.policy, self.explain = name, policy, explain
        self._lock = threading.Lock()
        self._jobs: list[Job] = []
        self.messages: list[tuple[str, str]] = []  # (INFO or ERROR, text), newest last
        self.generation = 0
        _runners.append(self)

    @property
    def busy(self) -> list[str]:
        """What the jobs not yet delivered are doing (superseded ones excluded): the pump runs while this is set."""
        with self._lock:
            return [job.what for job in self._jobs if not job.superseded]

    @property
    def running(self) -> bool:
        """Whether a (not superseded) job's thread is still working."""
        with self._lock:
            return any(job.alive and not job.superseded for job in self._jobs)

    def start(self, what: str, work: Callable[[], Any], on_done: Callable[[Any], Any] | None = None) -> bool:
        """Run ``work()`` in a thread; ``on_done(result)`` runs later on the main thread. False when refused."""
        job = Job(what, on_done)

        def run() -> None:
            try:
                job.result = work()
            except BaseException as exc:  # noqa: BLE001 - every failure is reported to the artist
                job.error = exc

        job.thread = threading.Thread(target=run, name=f"rerender-{self.name}", daemon=True)
        with self._lock:
            running = [j for j in self._jobs if j.alive and not j.superseded]
            if running and self.policy == ONE_AT_A_TIME:
                return False
            if self.policy == LATEST_WINS:
                for old in running:
                    old.superseded = True
            self._jobs.append(job)
            if _operator_depth == 0:
                job.thread.start()
        ensure_pump()
        return True

    def start_pending(self) -> None:
        """Start the threads of jobs queued inside an operator (main thread, outside any operator)."""
        if _operator_depth:
            return
        with self._lock:
            for job in self._jobs:
                if job.pending:
                    job.thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every job's thread ended (scripts and tests only, never the UI); True if all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.start_pending()
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(job.alive for job in jobs)

    def deliver(self) -> list[tuple[str, str]]:
        """Apply finished jobs on the calling (main) thread; returns the (level, message) pairs they produced."""
        self.start_pending()
        with self._lock:
            done = [job for job in self._jobs if not job.alive]
            self._jobs = [job for job in self._jobs if job.alive]
        produced = []
        for job in done:
            if job.superseded:
                continue
            if job.error is not None:
                produced.append(("ERROR", f"{job.what}: {self.explain(job.error)}"))
                continue
            try:
                message = job.on_done(job.result) if job.on_done is not None else None
                produced.append(("INFO", str(message or f"{job.what}: done")))
            except Exception as exc:  # noqa: BLE001 - a failing callback is a message, not a dead timer
                produced.append(("ERROR", f"{job.what}: {exc}"))
        if produced:
            self.messages = (self.messages + produced)[-MESSAGES_KEPT:]
            self.generation += 1
        return produced


# --- operators: job threads start after the operator returned ---------------------------------------------------

_operator_depth = 0  # > 0 while the main thread runs one of the add-on's operators
F = TypeVar("F", bound=Callable[..., Any])


def runs_jobs_after(method: F) -> F:
    """Decorate an operator's ``execute`` or ``invoke``: jobs it starts begin only after it returned (module
    docstring). The wrapper has the method's exact parameters: Blender counts them when registering the class."""

    def call(*args: Any) -> Any:
        global _operator_depth
        _operator_depth += 1
        try:
            return method(*args)
        finally:
            _operator_depth -= 1

    if method.__code__.co_argcount == 2:
        def wrapper(self, context):  # execute(self, context)
            return call(self, context)
    else:
        def wrapper(self, context, event):  # invoke(self, context, event)
            return call(self, context, event)
    return functools.wraps(method)(wrapper)  # type: ignore[return-value]


# --- the pump: the add-on's one main-thread timer ------------------------------------------------------------------

_runners: list[JobRunner] = []
_watchers: list[Watcher] = []
_change_callbacks: list[Callable[[], None]] = []


def on_change(callback: Callable[[], None]) -> None:
    """Have the pump call ``callback`` (main thread) after a tick that delivered or noticed something (a redraw)."""
    if callback not in _change_callbacks:
        _change_callbacks.append(callback)


def watch(watcher: Watcher) -> None:
    """Also poll ``watcher`` from the pump: state that other threads update (the backend status) and the UI shows."""
    if watcher not in _watchers:
        _watchers.append(watcher)


def unwatch(watcher: Watcher) -> None:
    if watcher in _watchers:
        _watchers.remove(watcher)


def pump() -> float | None:
    """Deliver every runner's finished jobs, poll the watchers, redraw when anything changed (the timer callback).

    Returns when to run again: POLL_S while a job is in flight, sooner when a watcher asks for it (the viewport
    preview wants its frames on screen within 50 ms), None when nothing is left to wait for."""
    changed, due = False, None
    for runner in list(_runners):
        changed |= bool(runner.deliver())  # also starts the jobs an operator queued
        if runner.busy:
            due = POLL_S
    for watcher in list(_watchers):
        try:
            did_change, wants = watcher()
        except Exception:  # noqa: BLE001 - one broken watcher must not stop the others' deliveries
            continue
        changed = changed or did_change
        if wants:
            wants = POLL_S if wants is True else float(wants)
            due = wants if due is None else min(due, wants)
    if changed:
        for callback in list(_change_callbacks):
            callback()
    return due


def ensure_pump() -> None:
    """Start the pump unless it runs, or Blender has no UI (background mode, tests). Call on the main thread."""
    try:
        import bpy
    except ImportError:  # plain Python: the caller delivers itself
        return
    if not bpy.app.background and not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=0.0 if _operator_depth else POLL_S)


def stop_pump() -> None:
    """Unregister the pump (add-on unregister)."""
    try:
        import bpy
    except ImportError:
        return
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
