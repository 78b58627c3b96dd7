"""The add-on's side of the backend: settings, status checks off the UI thread, artist-facing errors, and an
optional local backend started as a child process.

Why this shape: Blender's UI must never wait on a socket. Panels only *read* the last known ``BackendStatus``;
checks run in a daemon thread with a short timeout and a ``bpy.app.timers`` callback (registered by the panels)
redraws when a result arrives. The render engine, which may block (it runs in a render job), talks to the backend
synchronously through ``engine_client`` and turns every bridge failure into a ``BackendProblem`` whose message
says what is wrong and what to do. Nothing in this module imports bpy, so it is plain-Python testable.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._bridge import bridge
from .jobs import ONE_AT_A_TIME, JobRunner

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
STATUS_TIMEOUT = 2.0  # seconds a status check may take: the panel shows "checking" meanwhile, never freezes
HELLO_TIMEOUT = 5.0  # upper bound for the hello a render does before its first frame


@dataclass(frozen=True)
class BackendSettings:
    """Everything needed to reach (or start) a backend; built from the add-on preferences."""

    address: str = DEFAULT_ADDRESS
    timeout: float = 30.0
    python_executable: str = ""
    bundle_path: str = ""
    device: str = "auto"
    launch_on_render: bool = False
    server_key: str = ""       # the backend's CURVE public key (40 characters) or its .key file; "" = no CURVE
    client_key_file: str = ""  # this machine's NAME.key_secret (from `rerender keys create`)

    def replace(self, **changes: Any) -> "BackendSettings":
        return dataclasses.replace(self, **changes)

    @property
    def can_launch(self) -> bool:
        return bool(self.python_executable and self.bundle_path)

    @property
    def uses_keys(self) -> bool:
        return bool(self.server_key or self.client_key_file)

    def curve(self) -> Any:
        """The CURVE key set for the client (``bridge.security.ClientCurve``), None without keys; raises
        BackendProblem when only half of the keys are set or a key file cannot be read."""
        if not self.uses_keys:
            return None
        if not (self.server_key and self.client_key_file):
            missing = "Client Key File" if self.server_key else "Server Public Key"
            raise BackendProblem(f"CURVE needs both keys: set '{missing}' too (Preferences > Add-ons > Rerender), "
                                 "or clear both for a backend without keys")
        try:
            return bridge.security.ClientCurve.from_files(self.server_key, self.client_key_file)
        except bridge.errors.KeyFileError as exc:
            raise BackendProblem(f"The backend keys in the preferences cannot be used: {exc}") from None


def open_client(settings: BackendSettings, timeout: float | None = None) -> Any:
    """A bridge Client for ``settings`` (address, keys); ``timeout`` defaults to the settings' frame timeout.
    Every part of the add-on that talks to the backend opens its client here, so the keys apply everywhere."""
    return bridge.Client(settings.address, timeout=settings.timeout if timeout is None else timeout,
                         security=settings.curve())


@dataclass(frozen=True)
class BackendStatus:
    """What the panels show: the outcome of the last hello."""

    state: str = "unknown"  # unknown | checking | connected | error
    address: str = ""
    message: str = "not checked yet"
    device: str = ""
    model: str = ""
    latent_size: int = 0
    hello: Any = None  # the backend's typed hello (bridge.hello.ServerHello) when connected
    checked_at: float = 0.0

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def line(self) -> str:
        """One line for a panel: connected, device, model, latent size — or what is wrong."""
        if self.state == "connected":
            parts = [f"Connected: {self.address}"]
            parts += [p for p in (self.device, self.model) if p]
            if self.latent_size:
                parts.append(f"latent {self.latent_size}")
            return " · ".join(parts)
        if self.state == "checking":
            return f"Checking {self.address} …"
        return self.message


class BackendProblem(RuntimeError):
    """A backend failure worded for the artist: what is wrong, and what to do about it."""


# --- artist-facing errors ---------------------------------------------------------------------------------------

def connected_status(settings: BackendSettings, hello: Any, message: str) -> BackendStatus:
    """The status of a backend that answered ``hello`` (a ``ServerHello``)."""
    return BackendStatus("connected", settings.address, message, "" if hello.device == "none" else hello.device,
                         hello.model or "", int(hello.latent_size or 0), hello, time.time())


def explain(exc: BaseException, settings: BackendSettings) -> str:
    """The artist-facing message for a failure reaching or using the backend."""
    errors = bridge.errors
    address = settings.address
    if isinstance(exc, errors.AuthenticationFailed):
        return (f"The backend at {address} refused this connection: {exc}. Check 'Server Public Key' and "
                "'Client Key File' (Preferences > Add-ons > Rerender) against the backend's keys.")
    if isinstance(exc, errors.BackendUnavailable):
        how = ("start it: `rerender serve --bundle BUNDLE --address " + address + "`"
               + (", or enable 'Launch on Render'" if settings.can_launch else
                  ", or set 'Backend Python' and 'Model Bundle' in the add-on preferences to launch one"))
        return (f"Rerender backend not reachable at {address} (no answer within {exc.timeout:g} s). "
                f"Is it running? Is the address right (Preferences > Add-ons > Rerender)? To {how}.")
    if isinstance(exc, errors.ProtocolMismatch):
        return (f"The backend at {address} speaks another protocol version ({exc.message}). Update the add-on "
                "and the backend to the same Rerender release.")
    if isinstance(exc, errors.ModelUnavailable):
        return (f"The backend at {address} runs without a model. Restart it with `rerender serve --bundle "
                "BUNDLE`.")
    if isinstance(exc, errors.BackendBusy):
        return f"The backend at {address} is busy or stopping ({exc.message}); render again in a moment."
    if isinstance(exc, errors.InvalidRequest):
        return f"The backend at {address} rejected the frame: {exc.message}"
    if isinstance(exc, errors.RemoteError):
        return f"The backend at {address} failed on this frame: {exc.message}"
    if isinstance(exc, errors.ProtocolError):
        return (f"Something at {address} answered, but not as a Rerender backend ({exc}). Check the address.")
    if isinstance(exc, BackendProblem):
        return str(exc)
    if isinstance(exc, errors.InvalidAddress):
        return (f"'{address}' is not a valid backend address ({exc}). Use tcp://HOST:PORT or ipc:///path "
                "(Preferences > Add-ons > Rerender).")
    if isinstance(exc, errors.BridgeError):
        return f"Talking to the backend at {address} failed: {exc}"
    return f"Talking to the backend at {address} failed: {type(exc).__name__}: {exc}"


def check(settings: BackendSettings, timeout: float = STATUS_TIMEOUT) -> BackendStatus:
    """One synchronous hello with a short timeout; never raises (the failure becomes the status message)."""
    started = time.monotonic()
    try:
        with open_client(settings, min(timeout, settings.timeout)) as client:
            hello = client.hello()
    except Exception as exc:  # noqa: BLE001 - every failure is a status to show, not a crash
        return BackendStatus("error", settings.address, explain(exc, settings), checked_at=time.time())
    return _hello_status(settings, hello, f"connected in {time.monotonic() - started:.2f} s")


def _hello_status(settings: BackendSettings, hello: Any, message: str) -> BackendStatus:
    if not hello.has_model:
        return BackendStatus("error", settings.address, explain(bridge.errors.ModelUnavailable("no_model", ""),
                                                                settings), hello.device, "", 0, hello, time.time())
    return connected_status(settings, hello, message)


class StatusMonitor:
    """Runs status checks as background jobs, one at a time (``jobs.py``), and keeps the latest result for the
    panels to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = BackendStatus()
        self._checks = JobRunner("status", ONE_AT_A_TIME)
        self.generation = 0  # bumps on every new status, so the UI's pump knows when to redraw

    @property
    def status(self) -> BackendStatus:
        with self._lock:
            return self._status

    @property
    def busy(self) -> bool:
        return self._checks.running

    def publish(self, status: BackendStatus) -> None:
        with self._lock:
            self._status = status
            self.generation += 1

    def request(self, settings: BackendSettings) -> bool:
        """Start a check unless one is running; returns whether one was started. Returns at once."""
        with self._lock:  # the worker's publish waits for this lock, so "checking" always comes first
            if self._checks.running:
                return False
            self._status = dataclasses.replace(self._status, state="checking", address=settings.address)
            self.generation += 1
            return self._checks.start("status check", lambda: self.publish(check(settings)))

    def wait(self, timeout: float | None = None) -> BackendStatus:
        """Block until the running check ends (scripts and tests only, never the UI)."""
        self._checks.wait(timeout)
        return self.status


monitor = StatusMonitor()


# --- the render engine's connection ------------------------------------------------------------------------------

class _EngineLink:
    """One cached client per (address, timeout) for the render engine: the DEALER socket and its connection
    survive from frame to frame of an animation, and a hello is repeated only when the address changed or the
    last request failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._client: Any = None
        self._info: Any = None

    def get(self, settings: BackendSettings) -> tuple[Any, Any]:
        with self._lock:
            key = (settings.address, float(settings.timeout), settings.server_key, settings.client_key_file)
            if key != self._key or self._client is None:
                self._close_locked()
                self._client = open_client(settings)
                self._key = key
            if self._info is None:
                self._info = self._hello_locked(settings)
            return self._client, self._info

    def _hello_locked(self, settings: BackendSettings) -> Any:
        # The hello gets a short timeout of its own: a dead backend is reported in seconds, not after the
        # (long) frame timeout. A separate client keeps the cached one's timeout untouched.
        with open_client(settings, min(HELLO_TIMEOUT, settings.timeout)) as probe:
            hello = probe.hello()
        if not hello.has_model:
            raise bridge.errors.ModelUnavailable("no_model", "hello reports no model loaded", op="hello")
        monitor.publish(connected_status(settings, hello, "connected"))
        return hello

    def invalidate(self) -> None:
        """Forget the hello (and the socket) after a failure, so the next frame checks the backend again."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken socket must not hide the real error
                pass
        self._client, self._info, self._key = None, None, None


engine_link = _EngineLink()


def engine_client(settings: BackendSettings) -> tuple[Any, Any]:
    """(client, typed hello) for rendering; raises ``BackendProblem`` with an artist-facing message.

    With 'Launch on Render' and no backend answering, starts the local backend and waits for it (bounded by the
    launch timeout) before giving up.
    """
    try:
        return engine_link.get(settings)
    except Exception as exc:  # noqa: BLE001
        engine_link.invalidate()
        # A backend that refused our keys is there: starting a local one would not help.
        unreachable = isinstance(exc, bridge.errors.BackendUnavailable) and \
            not isinstance(exc, bridge.errors.AuthenticationFailed)
        if not (unreachable and settings.launch_on_render and settings.can_launch):
            status = BackendStatus("error", settings.address, explain(exc, settings), checked_at=time.time())
            monitor.publish(status)
            raise BackendProblem(status.message) from exc
    local_backend.start(settings)
    local_backend.wait_ready(settings)
    try:
        return engine_link.get(settings)
    except Exception as exc:  # noqa: BLE001
        engine_link.invalidate()
        raise BackendProblem(explain(exc, settings)) from exc


# --- a local backend as a child process --------------------------------------------------------------------------

class LocalBackend:
    """``rerender serve`` started from the preferences' Python, owned by this Blender process, through the
    project's one launcher (``bridge.launcher``): output to a log file, readiness by ``hello``, the end of the log
    as the error when it dies, SIGTERM then SIGKILL to stop."""

    LAUNCH_TIMEOUT = 120.0  # importing torch and loading a bundle can take a while on a cold disk

    def __init__(self) -> None:
        self.launcher: Any = None
        self.address = ""

    @property
    def running(self) -> bool:
        return self.launcher is not None and self.launcher.running

    @property
    def process(self) -> Any:
        return None if self.launcher is None else self.launcher.process

    @property
    def log_path(self) -> str:
        return str(self.launcher.log_path) if self.launcher is not None and self.launcher.log_path else ""

    @staticmethod
    def command(settings: BackendSettings) -> list[str]:
        """The child's command line (no shell: paths with spaces are safe)."""
        return bridge.launcher.serve_command(settings.address, bundle=settings.bundle_path, device=settings.device,
                                             python=settings.python_executable)

    def start(self, settings: BackendSettings) -> None:
        """Start the child and return at once (``wait_ready`` or the panel's timer watches it come up)."""
        if not settings.python_executable:
            raise BackendProblem("Set 'Backend Python' in Preferences > Add-ons > Rerender to a Python that has "
                                 "the backend installed (pip install 'rerender[backend]').")
        if not os.path.isfile(settings.python_executable):
            raise BackendProblem(f"'Backend Python' {settings.python_executable!r} is not a file: point it to "
                                 "the python executable of the environment with the backend.")
        if not settings.bundle_path or not os.path.isdir(settings.bundle_path):
            raise BackendProblem(f"'Model Bundle' {settings.bundle_path!r} is not a folder: choose the bundle "
                                 "made by `rerender train` or `rerender bundle init`.")
        if settings.uses_keys:
            raise BackendProblem("A local backend serves this machine without CURVE keys: clear 'Server Public "
                                 "Key' and 'Client Key File' to launch one, or start the keyed backend yourself "
                                 "(`rerender serve --server-key ... --client-keys ...`).")
        if self.running:
            if self.address == settings.address:
                return
            self.stop()
        launcher = bridge.launcher.BackendLauncher(self.command(settings), settings.address,
                                                   start_timeout=self.LAUNCH_TIMEOUT, new_session=True)
        try:
            launcher.spawn()
        except bridge.launcher.BackendStartError as exc:
            raise BackendProblem(f"The local backend could not start: {exc}") from None
        self.launcher, self.address = launcher, settings.address

    def wait_ready(self, settings: BackendSettings, timeout: float | None = None) -> BackendStatus:
        """Block until the child answers hello (render jobs only, never the UI); raise ``BackendProblem`` with the
        end of its log if it dies, or its log's path if it never answers."""
        if self.launcher is None:
            raise BackendProblem("The local backend was not started.")
        try:
            hello = self.launcher.wait_ready(self.LAUNCH_TIMEOUT if timeout is None else timeout)
        except bridge.launcher.BackendStartError as exc:
            raise BackendProblem(f"The local backend did not come up: {exc}") from None
        except bridge.errors.BridgeError as exc:
            raise BackendProblem(explain(exc, settings)) from exc
        status = _hello_status(settings, hello, "connected")
        monitor.publish(status)
        return status

    def log_tail(self, lines: int = 6) -> str:
        if self.launcher is None:
            return "(no log)"
        return " | ".join(self.launcher.log_tail(lines).splitlines())

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (then kill it if it ignores that); only the process this object started."""
        launcher, self.launcher = self.launcher, None
        if launcher is not None:
            launcher.stop(timeout)


local_backend = LocalBackend()
atexit.register(local_backend.stop)
