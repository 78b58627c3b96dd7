"""Checkpoints written in a background thread, so the step loop does not stall on a ~1 GB ``torch.save``.

Why a snapshot first: the state dict's tensors are the live parameters and optimizer moments, updated in place by
the next step; the writer gets a CPU copy taken at the checkpoint's step (on CUDA, non-blocking copies the writer
thread waits for), so what lands on disk is exactly that step's state. Writes are atomic (``.part`` then rename)
and one at a time: a new checkpoint first waits for the previous one. A write error is raised by the next
:func:`save_in_background` or :func:`wait_for_checkpoints`, never lost.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import Any

import torch


class CheckpointWriter:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: Any, path: str | Path) -> None:
        """Snapshot ``state`` now and write it to ``path`` in the background."""
        self.wait()
        from_cuda: list[bool] = []
        snapshot = _to_cpu(state, from_cuda)
        events = []
        if from_cuda:  # one event after all the non-blocking copies: the writer waits for it, not the step loop
            events.append(torch.cuda.Event())
            events[0].record()
        self._thread = threading.Thread(target=self._write, args=(snapshot, Path(path), events),
                                        name="rerender-checkpoint", daemon=False)
        self._thread.start()

    def _write(self, snapshot: Any, path: Path, events: list) -> None:
        try:
            for event in events:
                event.synchronize()
            tmp = path.with_name(path.name + ".part")
            torch.save(snapshot, tmp)
            os.replace(tmp, path)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the pending write is on disk; raise its error if it failed."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise RuntimeError(f"writing the checkpoint failed: {error}") from error


def _to_cpu(obj: Any, from_cuda: list[bool]) -> Any:
    """A copy of ``obj`` whose tensors are CPU copies (CUDA ones non-blocking, noted in ``from_cuda``)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type == "cuda":
            from_cuda.append(True)
            return t.to("cpu", non_blocking=True)
        return t.clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v, from_cuda) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_to_cpu(v, from_cuda) for v in obj]
        return type(obj)(items) if isinstance(obj, tuple) else items
    return obj


_WRITER = CheckpointWriter()


def save_in_background(state: Any, path: str | Path) -> None:
    """Write a training checkpoint without stalling the caller (see module docstring)."""
    _WRITER.save(state, path)


def wait_for_checkpoints() -> None:
    """Return once every checkpoint handed to :func:`save_in_background` is on disk."""
    _WRITER.wait()


atexit.register(lambda: _WRITER._thread is not None and _WRITER._thread.join())  # never exit mid-write

__all__ = ["CheckpointWriter", "save_in_background", "wait_for_checkpoints"]
