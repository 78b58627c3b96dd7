"""The one door from the add-on to the shared bridge package.

Why a module of its own: inside the development checkout (and in tests) the bridge is importable as
``rerender.bridge``; inside the installed Blender extension it is vendored next to the add-on
(``<extension>/vendor/bridge``). Every add-on module imports bridge names from here, so the packaging step only has
to place the vendored copy and nothing else changes. Submodules are imported by name so this works whatever the
bridge package's ``__init__`` chooses to re-export.
"""

from __future__ import annotations

try:
    from rerender import bridge
    from rerender.bridge import buffers as _buffers, cameras as _cameras, classes as _classes, colors as _colors
except ImportError:  # installed as a Blender extension: the bridge travels inside the zip
    from .vendor import bridge  # type: ignore[no-redef]
    from .vendor.bridge import (  # type: ignore[no-redef]
        buffers as _buffers, cameras as _cameras, classes as _classes, colors as _colors)

DeepBuffer = _buffers.DeepBuffer
PinholeCamera = _cameras.PinholeCamera
UNKNOWN: int = _classes.UNKNOWN
srgb_to_linear = _colors.srgb_to_linear
srgb8_to_linear = _colors.srgb8_to_linear

__all__ = ["bridge", "DeepBuffer", "PinholeCamera", "UNKNOWN", "srgb_to_linear", "srgb8_to_linear"]
