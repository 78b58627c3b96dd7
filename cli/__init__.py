"""Rerender: Neural Rerendering in the Wild as a Blender render engine backed by a GPU server.

The package root holds only the version and the ``rerender`` command; the parts live in
``rerender.bridge`` (wire protocol), ``rerender.backend`` (networks and server), ``rerender.training``
(datasets, training, evaluation) and ``rerender.addon`` (the Blender extension).
"""

from __future__ import annotations

__version__ = "0.1.0"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``rerender`` command (see :mod:`rerender.commands`)."""
    from .commands import main as _main

    return _main(argv)
