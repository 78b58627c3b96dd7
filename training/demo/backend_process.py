"""``rerender serve`` as a child process of the demo, so frames go through the real bridge like in production.

Why a subprocess and not an in-process server: the demo must exercise what an artist runs — Blender's render
engine talking ZeroMQ to a separate backend process holding the bundle — so a broken bridge shows up here too.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rerender.bridge import BackendUnavailable, Client

_LAUNCH = "import sys; from rerender import main; sys.exit(main())"


class BackendStartError(RuntimeError):
    """``rerender serve`` exited or did not answer; the message carries its log."""


def free_tcp_address() -> str:
    """``tcp://127.0.0.1:PORT`` on a port that was free a moment ago (the demo never takes the default 5555,
    which an artist's own backend may be using)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class ServeProcess:
    """Context manager: start ``rerender serve --bundle B``, wait for ``hello``, always stop it (SIGTERM)."""

    def __init__(self, bundle: Path, *, address: str | None = None, device: str = "cpu", log_path: Path,
                 start_timeout: float = 120.0) -> None:
        self.bundle = Path(bundle)
        self.address = address or free_tcp_address()
        self.device = device
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.info: dict = {}

    def command(self) -> list[str]:
        return [sys.executable, "-c", _LAUNCH, "serve", "--bundle", str(self.bundle), "--address", self.address,
                "--device", self.device]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def start(self) -> "ServeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        with Client(self.address, timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise BackendStartError(f"`rerender serve` exited with code {self.process.returncode}; its log "
                                            f"({self.log_path}):\n{self.log()}")
                try:
                    self.info = client.hello()
                    return self
                except BackendUnavailable:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise BackendStartError(f"`rerender serve` did not answer within {self.start_timeout:.0f} s "
                                                f"at {self.address}; its log ({self.log_path}):\n{self.log()}"
                                                ) from None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
