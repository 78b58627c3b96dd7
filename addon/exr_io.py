"""Reading EXR render passes back into numpy with the OpenImageIO module that ships inside the bpy wheel.

Why OpenImageIO: in background mode Blender's own image API cannot give us pass pixels (the Viewer node stays
empty, ``bpy.data.images.load`` of a multilayer EXR is 0x0; reference/blender-facts.md). The bpy wheel carries
OpenImageIO's Python module in Blender's private site-packages, so we only have to put that folder on sys.path.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

_oiio = None


def _openimageio():
    """Import OpenImageIO from Blender's bundled site-packages (once)."""
    global _oiio
    if _oiio is not None:
        return _oiio
    try:
        import OpenImageIO  # noqa: F401  (already importable: Blender's own Python)
    except ImportError:
        import bpy

        local = bpy.utils.resource_path("LOCAL")
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [Path(local) / "python" / "lib" / ver / "site-packages",
                      Path(local) / "python" / "lib" / "site-packages"]
        for folder in candidates:
            if (folder / "OpenImageIO").exists() and str(folder) not in sys.path:
                sys.path.append(str(folder))
        try:
            import OpenImageIO  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(
                "OpenImageIO is missing from this Blender build (looked in "
                f"{', '.join(map(str, candidates))}); the deep-buffer read-back needs it. "
                "Use the official Blender 5.0 / bpy 5.0.1 build.") from exc
    import OpenImageIO as oiio

    _oiio = oiio
    return oiio


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """Read the first part of an EXR as float32 H x W x C, row 0 = top (EXR's own order)."""
    oiio = _openimageio()
    inp = oiio.ImageInput.open(str(path))
    if inp is None:
        raise OSError(f"cannot open EXR {path}: {oiio.geterror()}")
    try:
        spec = inp.spec()
        pixels = inp.read_image(0, 0, 0, spec.nchannels, "float")
        if pixels is None:
            raise OSError(f"cannot read pixels of EXR {path}: {inp.geterror()}")
    finally:
        inp.close()
    return np.asarray(pixels, dtype=np.float32).reshape(spec.height, spec.width, spec.nchannels)


def ram_folder(prefix: str = "rerender-") -> Path:
    """A fresh private folder in RAM (/dev/shm) when there is one, else in the system temp dir.

    Why: every deep buffer goes through EXR files; on a RAM disk that costs milliseconds and never touches a disk.
    """
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))
