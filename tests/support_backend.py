"""A real ``rerender serve`` subprocess for tests (the add-on's tests reuse it).

Usage::

    from support_backend import BackendProcess, make_small_bundle, free_tcp_address

    def test_something(tmp_path):
        bundle = make_small_bundle(tmp_path / "bundle")            # init_bundle with tiny, CPU-fast sizes
        with BackendProcess(bundle, free_tcp_address()) as backend:  # waits until `hello` answers
            client = Client(backend.address, timeout=10)
            ...

or, for a module that shares one backend, the ``backend`` fixture pattern::

    @pytest.fixture(scope="module")
    def backend(tmp_path_factory):
        bundle = make_small_bundle(tmp_path_factory.mktemp("bundle"))
        with BackendProcess(bundle, free_tcp_address()) as proc:
            yield proc

``BackendProcess(None, address)`` runs a transport-only server (hello and echo, no model, no torch import: starts
in about a second). ``ipc_address(tmp_path)`` gives an ipc:// address inside a temporary folder. The server's
log (debug level) is in ``backend.log_path``; ``backend.log()`` returns it, and a failed start raises with it.
``kill()`` (SIGKILL, the crash case), ``start()`` (again, same address) and ``stop()`` (SIGTERM, clean) let a test
restart the backend under a client.

Frame sizes for the small bundle must be multiples of ``SMALL_BUNDLE_MULTIPLE`` (the U-Net's depth).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from rerender.bridge import BackendUnavailable, Client

SMALL_BUNDLE_SIZES = dict(base_channels=4, depth=2, max_channels=16, latent_size=8, encoder_channels=8,
                          encoder_blocks=1, training_resolution=(32, 32), name="test-small")
SMALL_BUNDLE_MULTIPLE = 2 ** SMALL_BUNDLE_SIZES["depth"]
_LAUNCH = "import sys; from rerender import main; sys.exit(main())"


def make_small_bundle(out: Path, **overrides) -> Path:
    """A model bundle with freshly initialised, tiny networks (milliseconds per 32x32 frame on a CPU)."""
    from rerender.backend.bundle import init_bundle

    init_bundle(out, **{**SMALL_BUNDLE_SIZES, **overrides})
    return Path(out)


def free_tcp_address() -> str:
    """tcp://127.0.0.1:PORT on a port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def ipc_address(folder: Path) -> str:
    """ipc:// address of a socket file in ``folder`` (kept short: Unix socket paths are limited to ~100 bytes)."""
    path = Path(folder) / "rr.sock"
    if len(str(path)) > 100:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="rr")) / "rr.sock"
    return f"ipc://{path}"


class BackendProcess:
    """``rerender serve`` in a subprocess; a context manager that starts it and always stops it."""

    def __init__(self, bundle: Path | None, address: str, *, device: str = "cpu", extra_args: tuple[str, ...] = (),
                 start_timeout: float = 90.0, log_path: Path | None = None) -> None:
        self.bundle = bundle
        self.address = address
        self.device = device
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.log_path = Path(log_path) if log_path else Path(os.environ.get("TMPDIR", "/tmp")) / \
            f"rerender-serve-{os.getpid()}-{id(self)}.log"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def command(self) -> list[str]:
        model = ["--bundle", str(self.bundle), "--device", self.device] if self.bundle else ["--transport-only"]
        return [sys.executable, "-c", _LAUNCH, "-vv", "serve", *model, "--address", self.address, *self.extra_args]

    def start(self) -> "BackendProcess":
        """Start the server and block until it answers ``hello`` (raises RuntimeError with its log otherwise)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the backend is already running; stop() or kill() it first")
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + self.start_timeout
        with Client(self.address, timeout=1.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"`rerender serve` exited with {self.process.returncode}:\n{self.log()}")
                try:
                    self.info = client.hello()
                    return self
                except BackendUnavailable:
                    if time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"`rerender serve` did not answer within {self.start_timeout} s:\n"
                                           f"{self.log()}") from None

    def kill(self) -> None:
        """SIGKILL: the crash case (no clean shutdown, in-flight requests are lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after ``timeout``); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux), to check that hostile input does not grow it."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")

    def __enter__(self) -> "BackendProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
