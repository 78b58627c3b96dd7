"""Native (C/C++) chatter into a log file: Blender's per-file "Saved: ..." lines, EGL errors, solver warnings.

Why at the file-descriptor level: these lines are written by C code straight to fds 1 and 2, past Python's
``sys.stdout``; only ``dup2`` catches them. Progress bars and the report are Python output: the caller keeps them
visible through the stream the context manager yields (tqdm draws on it). With ``-v`` (``enabled=False``) nothing is redirected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


@contextlib.contextmanager
def native_output_to(log_path: str | Path | None, fds: tuple[int, ...] = (1,),
                     enabled: bool = True) -> Iterator[TextIO]:
    """Inside the block, what C code writes to ``fds`` is appended to ``log_path`` instead of the terminal.

    Yields a text stream on the terminal's stderr (give it to tqdm as ``file=``); while fd 2 is redirected, Python's
    ``sys.stderr`` and the logging handlers that wrote to it are pointed at that stream too, so progress bars and
    real warnings stay on screen."""
    if not enabled or log_path is None:
        yield sys.stderr
        return
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _flush()
    target = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved: list[tuple[int, int]] = []
    visible, old_stderr, handlers = sys.stderr, sys.stderr, []
    try:
        for fd in fds:
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:  # fd not open (daemonised): nothing to hide
                continue
            os.dup2(target, fd)
        copy_of_2 = dict(saved).get(2)
        if copy_of_2 is not None:
            visible = os.fdopen(os.dup(copy_of_2), "w", buffering=1, encoding="utf-8", errors="replace")
            sys.stderr = visible
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and getattr(h.stream, "fileno", None) is not None \
                        and h.stream in (old_stderr, sys.__stderr__):
                    handlers.append((h, h.setStream(visible)))
        yield visible
    finally:
        _flush()
        for h, stream in handlers:
            h.setStream(stream)
        sys.stderr = old_stderr
        if visible is not old_stderr:
            visible.close()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(target)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def quiet_import_bpy(log_path: str | Path | None, enabled: bool = True):
    """``import bpy`` with its start-up noise (EGL_BAD_MATCH and friends on headless machines) sent to the log."""
    if "bpy" in sys.modules:
        return sys.modules["bpy"]
    with native_output_to(log_path, (1, 2), enabled):
        import bpy
    return bpy


class _OncePerText(logging.Filter):
    """Lets each warning text through once: a RuntimeWarning and the log line that repeats it, or the same
    fallback announced by every trainer a command builds, become one line."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        text = record.getMessage()
        if record.name == "py.warnings":  # "file:line: RuntimeWarning: TEXT\n  source line"
            head = text.split("\n", 1)[0]
            text = head.split("Warning: ", 1)[1] if "Warning: " in head else head
        key = text.strip()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


@contextlib.contextmanager
def warnings_once(enabled: bool = True) -> Iterator[None]:
    """Python warnings go through logging, and a warning text already shown is not shown again (``-v``: off)."""
    if not enabled:
        yield
        return
    once = _OncePerText()
    handlers = list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(once)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            h.removeFilter(once)
