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
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._bridge import bridge

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

    def replace(self, **changes: Any) -> "BackendSettings":
        return dataclasses.replace(self, **changes)

    @property
    def can_launch(self) -> bool:
        return bool(self.python_executable and self.bundle_path)


@dataclass(frozen=True)
class BackendStatus:
    """What the panels show: the outcome of the last hello."""

    state: str = "unknown"  # unknown | checking | connected | error
    address: str = ""
    message: str = "not checked yet"
    device: str = ""
    model: str = ""
    latent_size: int = 0
    info: dict = field(default_factory=dict)
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


# --- hello and its interpretation --------------------------------------------------------------------------------

def describe_hello(info: dict) -> tuple[str, str, int]:
    """(device, model name, latent size) from a hello reply, tolerant of fields a backend leaves out."""
    model_info = info.get("model_info") if isinstance(info.get("model_info"), dict) else {}
    model = info.get("model")
    if isinstance(model, dict):
        model = model.get("name") or model.get("bundle")
    name = str(model or model_info.get("bundle") or model_info.get("name") or "")
    device = str(info.get("device") or model_info.get("device") or "")
    size = info.get("latent_size", model_info.get("latent_size")) or 0
    return device, name, int(size)


def has_model(info: dict) -> bool:
    """Whether a hello describes a backend that can rerender (not a ``--transport-only`` one)."""
    model_info = info.get("model_info") if isinstance(info.get("model_info"), dict) else {}
    return bool(info.get("model") or model_info.get("bundle")) and "rerender" in info.get("ops", ["rerender"])


def explain(exc: BaseException, settings: BackendSettings) -> str:
    """The artist-facing message for a failure reaching or using the backend."""
    errors = bridge.errors
    address = settings.address
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
    if _is_zmq_address_error(exc) or (isinstance(exc, ValueError) and "address" in str(exc)):
        return (f"'{address}' is not a valid backend address ({exc}). Use tcp://HOST:PORT or ipc:///path "
                "(Preferences > Add-ons > Rerender).")
    return f"Talking to the backend at {address} failed: {type(exc).__name__}: {exc}"


def _is_zmq_address_error(exc: BaseException) -> bool:
    try:
        import zmq
    except ImportError:  # pragma: no cover - pyzmq is a hard dependency of the bridge
        return False
    return isinstance(exc, zmq.ZMQError)


def check(settings: BackendSettings, timeout: float = STATUS_TIMEOUT) -> BackendStatus:
    """One synchronous hello with a short timeout; never raises (the failure becomes the status message)."""
    started = time.monotonic()
    try:
        client = bridge.Client(settings.address, timeout=min(timeout, settings.timeout))
        try:
            info = client.hello()
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - every failure is a status to show, not a crash
        return BackendStatus("error", settings.address, explain(exc, settings), checked_at=time.time())
    device, model, size = describe_hello(info)
    if not has_model(info):
        return BackendStatus("error", settings.address, explain(bridge.errors.ModelUnavailable("no_model", ""),
                                                                settings), device, "", 0, dict(info), time.time())
    return BackendStatus("connected", settings.address, f"connected in {time.monotonic() - started:.2f} s",
                         device, model, size, dict(info), time.time())


class StatusMonitor:
    """Runs status checks in a daemon thread and keeps the latest result for the panels to read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = BackendStatus()
        self._thread: threading.Thread | None = None
        self.generation = 0  # bumps on every new status, so a UI timer knows when to redraw

    @property
    def status(self) -> BackendStatus:
        with self._lock:
            return self._status

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive()

    def publish(self, status: BackendStatus) -> None:
        with self._lock:
            self._status = status
            self.generation += 1

    def request(self, settings: BackendSettings) -> bool:
        """Start a check unless one is running; returns whether one was started. Returns at once."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False
            self._status = dataclasses.replace(self._status, state="checking", address=settings.address)
            self.generation += 1
            self._thread = threading.Thread(target=self._run, args=(settings,), name="rerender-status",
                                            daemon=True)
            self._thread.start()
            return True

    def wait(self, timeout: float | None = None) -> BackendStatus:
        """Block until the running check ends (scripts and tests only, never the UI)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status

    def _run(self, settings: BackendSettings) -> None:
        self.publish(check(settings))


monitor = StatusMonitor()


# --- the render engine's connection ------------------------------------------------------------------------------

class _EngineLink:
    """One cached client per (address, timeout) for the render engine: the DEALER socket and its connection
    survive from frame to frame of an animation, and a hello is repeated only when the address changed or the
    last request failed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, float] | None = None
        self._client: Any = None
        self._info: dict | None = None

    def get(self, settings: BackendSettings) -> tuple[Any, dict]:
        with self._lock:
            key = (settings.address, float(settings.timeout))
            if key != self._key or self._client is None:
                self._close_locked()
                self._client = bridge.Client(settings.address, timeout=settings.timeout)
                self._key = key
            if self._info is None:
                self._info = self._hello_locked(settings)
            return self._client, self._info

    def _hello_locked(self, settings: BackendSettings) -> dict:
        # The hello gets a short timeout of its own: a dead backend is reported in seconds, not after the
        # (long) frame timeout. A separate client keeps the cached one's timeout untouched.
        probe = bridge.Client(settings.address, timeout=min(HELLO_TIMEOUT, settings.timeout))
        try:
            info = probe.hello()
        finally:
            probe.close()
        if not has_model(info):
            raise bridge.errors.ModelUnavailable("no_model", "hello reports no model loaded", op="hello")
        monitor.publish(BackendStatus("connected", settings.address, "connected", *describe_hello(info),
                                      dict(info), time.time()))
        return dict(info)

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


def engine_client(settings: BackendSettings) -> tuple[Any, dict]:
    """(client, hello info) for rendering; raises ``BackendProblem`` with an artist-facing message.

    With 'Launch on Render' and no backend answering, starts the local backend and waits for it (bounded by the
    launch timeout) before giving up.
    """
    try:
        return engine_link.get(settings)
    except Exception as exc:  # noqa: BLE001
        engine_link.invalidate()
        unreachable = isinstance(exc, bridge.errors.BackendUnavailable)
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
    """``rerender serve`` started from the preferences' Python, owned by this Blender process.

    Its output goes to a log file (never a pipe nobody reads, which would block the child when full); when it
    dies, the last lines of that log become the error message.
    """

    LAUNCH_TIMEOUT = 120.0  # importing torch and loading a bundle can take a while on a cold disk

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log_path = ""
        self.address = ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @staticmethod
    def command(settings: BackendSettings) -> list[str]:
        """The child's command line (no shell: paths with spaces are safe)."""
        return [settings.python_executable, "-c", "import sys; from rerender import main; sys.exit(main())",
                "serve", "--bundle", settings.bundle_path, "--address", settings.address,
                "--device", settings.device]

    def start(self, settings: BackendSettings) -> None:
        if not settings.python_executable:
            raise BackendProblem("Set 'Backend Python' in Preferences > Add-ons > Rerender to a Python that has "
                                 "the backend installed (pip install 'rerender[backend]').")
        if not os.path.isfile(settings.python_executable):
            raise BackendProblem(f"'Backend Python' {settings.python_executable!r} is not a file: point it to "
                                 "the python executable of the environment with the backend.")
        if not settings.bundle_path or not os.path.isdir(settings.bundle_path):
            raise BackendProblem(f"'Model Bundle' {settings.bundle_path!r} is not a folder: choose the bundle "
                                 "made by `rerender train` or `rerender bundle init`.")
        if self.running:
            if self.address == settings.address:
                return
            self.stop()
        fd, self.log_path = tempfile.mkstemp(prefix="rerender-backend-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                self.command(settings), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=sys.platform != "win32",
            )
        self.address = settings.address

    def wait_ready(self, settings: BackendSettings, timeout: float | None = None) -> BackendStatus:
        """Poll with short hellos until the child answers; raise ``BackendProblem`` if it dies or never does."""
        deadline = time.monotonic() + (self.LAUNCH_TIMEOUT if timeout is None else timeout)
        while True:
            if not self.running:
                raise BackendProblem(f"The local backend exited (code {self.process.poll() if self.process else '?'}"
                                     f"): {self.log_tail()}")
            status = check(settings, timeout=1.0)
            if status.connected:
                monitor.publish(status)
                return status
            if time.monotonic() > deadline:
                raise BackendProblem(f"The local backend did not answer at {settings.address} within "
                                     f"{self.LAUNCH_TIMEOUT:g} s; its log: {self.log_path}")
            time.sleep(0.25)

    def log_tail(self, lines: int = 6) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(line.rstrip() for line in deque(f, maxlen=lines)) or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (then kill it if it ignores that); only the process this object started."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


local_backend = LocalBackend()
atexit.register(local_backend.stop)
