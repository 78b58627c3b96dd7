"""Rerender, the Blender add-on: import a COLMAP reconstruction, render it through a neural rerenderer.

The same package is a Blender 4.2+ extension (``bl_ext.<repo>.rerender``, see ``blender_manifest.toml``) and the
Python package ``rerender.addon`` that scripts and tests enable inside the ``bpy`` module (docs/addon.md)::

    import addon_utils; addon_utils.enable("rerender.addon", default_set=True)

Why the sub-modules are imported inside ``register()``: importing ``rerender.addon.deep_buffer`` from training
code must not register UI classes, and an add-on whose import fails halfway should fail in ``register()`` with
Blender's message rather than at import time. Order matters: properties and preferences before the classes that
read them; unregister runs in reverse.
"""

from __future__ import annotations

import importlib

# Modules that define register()/unregister(), in registration order (the teammates' import UI first).
_MODULE_NAMES = ("properties", "preferences", "colmap_import", "engine", "semantics", "appearance", "panels")
_registered: list = []


def _modules() -> list:
    return [importlib.import_module(f"{__package__}.{name}") for name in _MODULE_NAMES]


def register() -> None:
    """Register every class of the add-on; on failure, undo what was registered and re-raise."""
    if _registered:
        return  # already registered (e.g. enabled twice by scripts): registering twice would raise
    try:
        for module in _modules():
            module.register()
            _registered.append(module)
    except Exception:
        unregister()
        raise


def unregister() -> None:
    """Unregister in reverse order; stops a backend this Blender launched."""
    while _registered:
        module = _registered.pop()
        module.unregister()
    from .connection import local_backend

    local_backend.stop()
