"""The one way to start ``rerender serve`` as a child process: the add-on's *Launch Local*, the demo, the
benchmarks and the tests all use :class:`BackendLauncher`, and :func:`serve_command` is the only place the
command line is written.

What it does, and why each part: the child's output goes to a log file (a pipe nobody reads would block the
child once full); readiness is a real ``hello`` answered over the bridge (a port that accepts connections is not
yet a backend that has loaded its model); when the child dies before answering, the error carries the last lines
of its log (usually the reason: a missing bundle, a port in use, a CUDA error); stopping is SIGTERM (the server
then answers its queue with ``shutting_down`` and exits 0) and SIGKILL only if it does not exit in time.

Imports only the standard library and the bridge client: it is vendored into the extension with the bridge.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Sequence

from .client import Client
from .errors import AuthenticationFailed, BackendUnavailable, BridgeError
from .hello import ServerHello
from .security import ClientCurve

ENTRY = ("-m", "rerender")  # how the child's Python runs the command


class BackendStartError(BridgeError, RuntimeError):
    """``rerender serve`` exited before answering, or did not answer in time; the message carries its log tail."""


def serve_command(address: str, *, bundle: str | os.PathLike | None = None, device: str | None = None,
                  python: str | None = None, verbose: int = 0, extra_args: Sequence[str] = (),
                  entry: Sequence[str] = ENTRY) -> list[str]:
    """``python -m rerender [-v…] serve (--bundle B [--device D] | --transport-only) --address A [extra…]``.

    No shell is involved, so paths with spaces are safe. ``bundle=None`` serves no model (hello and echo only,
    starts in about a second: no torch import). ``entry`` replaces ``-m rerender`` (tests run a patched server)."""
    model = ["--bundle", str(bundle), *(["--device", device] if device else [])] if bundle is not None \
        else ["--transport-only"]
    flags = ["-" + "v" * verbose] if verbose > 0 else []
    return [python or sys.executable, *entry, *flags, "serve", *model, "--address", address, *extra_args]


class BackendLauncher:
    """A ``rerender serve`` child process: :meth:`spawn` it, :meth:`wait_ready` for its hello, :meth:`stop` it.

    As a context manager it does both and always stops the child. ``log_path=None`` writes the log to a fresh
    temporary file; an existing log is appended to (restarts keep the history). ``security`` is the CURVE key set
    the readiness hello uses when the backend requires keys.
    """

    def __init__(self, command: Sequence[str], address: str, *, log_path: str | os.PathLike | None = None,
                 start_timeout: float = 120.0, security: ClientCurve | None = None, new_session: bool = False,
                 env: dict[str, str] | None = None) -> None:
        self.command = list(command)
        self.address = address
        self.start_timeout = float(start_timeout)
        self.security = security
        self.new_session = new_session
        self.env = env
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen | None = None
        self.hello: ServerHello | None = None
        self.starts = 0

    # ---------------------------------------------------------------------------------------------- state
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    # ------------------------------------------------------------------------------------------ lifecycle
    def spawn(self) -> "BackendLauncher":
        """Start the child and return at once (the add-on polls readiness from a timer instead of blocking)."""
        if self.running:
            raise BackendStartError(f"the backend at {self.address} is already running (pid {self.process.pid}); "
                                    "stop it first")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="rerender-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.hello = None
        with open(self.log_path, "ab") as log:
            try:
                self.process = subprocess.Popen(
                    self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                    start_new_session=self.new_session and sys.platform != "win32")
            except OSError as exc:
                raise BackendStartError(f"cannot run {self.command[0]!r}: {exc.strerror or exc}; point it to the "
                                        "python executable of the environment that has the backend") from None
        self.starts += 1
        return self

    def wait_ready(self, timeout: float | None = None) -> ServerHello:
        """Poll with short hellos until the child answers; raises BackendStartError (with the log tail) when it
        exits or stays silent past ``timeout`` (default ``start_timeout``), ProtocolMismatch when it answers in
        another protocol version, AuthenticationFailed when it refuses our keys."""
        if self.process is None:
            raise BackendStartError("the backend was never started: spawn() it first")
        limit = self.start_timeout if timeout is None else float(timeout)
        deadline = time.monotonic() + limit
        with Client(self.address, timeout=1.0, security=self.security) as client:
            while True:
                if not self.running:
                    raise BackendStartError(f"`rerender serve` exited with code {self.returncode} before answering "
                                            f"at {self.address}; the end of its log ({self.log_path}):\n"
                                            f"{self.log_tail()}")
                try:
                    self.hello = client.hello()
                    return self.hello
                except AuthenticationFailed:
                    raise
                except BackendUnavailable:
                    if time.monotonic() > deadline:
                        raise BackendStartError(f"`rerender serve` did not answer at {self.address} within "
                                                f"{limit:g} s; the end of its log ({self.log_path}):\n"
                                                f"{self.log_tail()}") from None

    def start(self) -> ServerHello:
        """:meth:`spawn` and :meth:`wait_ready`; a child that never answers is stopped before the error."""
        self.spawn()
        try:
            return self.wait_ready()
        except BackendStartError:
            self.stop(timeout=5.0)
            raise

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (a clean exit: the queue is answered ``shutting_down``), then SIGKILL after ``timeout`` s;
        returns the exit code (negative: killed by that signal). Only ever the process this object started."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL at once: the crash case (in-flight requests are lost)."""
        if self.running:
            self.process.kill()
            self.process.wait(10)

    # ---------------------------------------------------------------------------------------------- logs
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 25, max_chars: int = 4000) -> str:
        """The last lines of the child's log (where the reason it died is), or a note that there are none."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = "".join(deque(f, maxlen=lines))
        except (OSError, TypeError):
            return "(no log)"
        return tail[-max_chars:].rstrip() or "(no output)"

    def __enter__(self) -> "BackendLauncher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BackendLauncher", "BackendStartError", "serve_command", "ENTRY"]
