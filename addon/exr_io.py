"""Reading EXR render passes back into numpy with the OpenImageIO module that ships inside Blender.

Why OpenImageIO: in background mode Blender's own image API cannot give us pass pixels (the Viewer node stays
empty, ``bpy.data.images.load`` of a multilayer EXR is 0x0; docs/addon.md). Most Blender builds carry
OpenImageIO's Python module in their private site-packages (compat.openimageio puts it on sys.path); where one
does not, the pure-numpy reader in exr_read.py reads the uncompressed files the deep buffer writes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .compat import openimageio
from .exr_read import read_exr_first_part


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """Read the first part of an EXR as float32 H x W x C, row 0 = top (EXR's own order), channels R, G, B, A
    first. Uses Blender's OpenImageIO where the build ships it, else the pure-numpy reader (exr_read.py)."""
    oiio = openimageio()
    if oiio is None:
        return read_exr_first_part(path)
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
