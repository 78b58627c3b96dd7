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

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from rerender.bridge.launcher import ENTRY, BackendLauncher, serve_command
from rerender.bridge.security import ClientCurve

SMALL_BUNDLE_SIZES = dict(base_channels=4, depth=2, max_channels=16, latent_size=8, encoder_channels=8,
                          encoder_blocks=1, training_resolution=(32, 32), name="test-small")
SMALL_BUNDLE_MULTIPLE = 2 ** SMALL_BUNDLE_SIZES["depth"]


# A Blender test lane (packaging/blender_lanes.sh) runs Blender's Python without torch: the backend and its bundles
# come from the project's main environment, named here.
BACKEND_PYTHON = os.environ.get("RERENDER_BACKEND_PYTHON") or sys.executable


def make_small_bundle(out: Path, **overrides) -> Path:
    """A model bundle with freshly initialised, tiny networks (milliseconds per 32x32 frame on a CPU)."""
    if BACKEND_PYTHON != sys.executable:
        code = ("import json, sys; from rerender.backend.bundle import init_bundle; "
                "init_bundle(sys.argv[1], **json.loads(sys.argv[2]))")
        subprocess.run([BACKEND_PYTHON, "-c", code, str(out), json.dumps({**SMALL_BUNDLE_SIZES, **overrides})],
                       check=True)
        return Path(out)
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


class BackendProcess(BackendLauncher):
    """``rerender serve -vv`` in a subprocess (the project's one launcher); a context manager that starts it and
    always stops it. ``entry`` replaces ``-m rerender`` (a patched server); ``security`` holds the CURVE keys the
    readiness hello uses."""

    def __init__(self, bundle: Path | None, address: str, *, device: str = "cpu", extra_args: tuple[str, ...] = (),
                 start_timeout: float = 90.0, log_path: Path | None = None, entry: tuple[str, ...] = ENTRY,
                 security: ClientCurve | None = None) -> None:
        self.bundle = bundle
        self.device = device
        self.extra_args = tuple(extra_args)
        command = serve_command(address, bundle=bundle, device=device if bundle else None, verbose=2,
                                extra_args=self.extra_args, entry=entry, python=BACKEND_PYTHON)
        super().__init__(command, address, log_path=log_path, start_timeout=start_timeout, security=security)

    @property
    def info(self):
        """The typed hello of the last start (``rerender.bridge.hello.ServerHello``)."""
        return self.hello

    def start(self) -> "BackendProcess":
        """Start the server and block until it answers ``hello`` (raises BackendStartError, a RuntimeError, with
        the end of its log otherwise)."""
        super().start()
        return self

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux), to check that hostile input does not grow it."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("VmRSS not found")
