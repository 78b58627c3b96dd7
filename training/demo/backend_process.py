"""``rerender serve`` as a child process of the demo, so frames go through the real bridge like in production.

Why a subprocess and not an in-process server: the demo must exercise what an artist runs — Blender's render
engine talking ZeroMQ to a separate backend process holding the bundle — so a broken bridge shows up here too.
The process itself is the project's one launcher (``rerender.bridge.launcher``); this module only picks the
demo's address and log.
"""

from __future__ import annotations

import socket
from pathlib import Path

from rerender.bridge.launcher import BackendLauncher, BackendStartError, serve_command

__all__ = ["ServeProcess", "BackendStartError", "free_tcp_address"]


def free_tcp_address() -> str:
    """``tcp://127.0.0.1:PORT`` on a port that was free a moment ago (the demo never takes the default 5555,
    which an artist's own backend may be using)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class ServeProcess(BackendLauncher):
    """Context manager: start ``rerender serve --bundle B``, wait for ``hello``, always stop it (SIGTERM, then
    SIGKILL). ``info`` is the typed hello; a failed start raises BackendStartError with the end of the log."""

    def __init__(self, bundle: Path, *, address: str | None = None, device: str = "cpu", log_path: Path,
                 start_timeout: float = 120.0) -> None:
        self.bundle = Path(bundle)
        self.device = device
        address = address or free_tcp_address()
        super().__init__(serve_command(address, bundle=self.bundle, device=device), address,
                         log_path=Path(log_path), start_timeout=start_timeout)

    @property
    def info(self):
        """The typed hello (``rerender.bridge.hello.ServerHello``) the backend answered at start."""
        return self.hello
