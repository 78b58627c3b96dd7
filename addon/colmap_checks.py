"""Checks a COLMAP model must pass before pycolmap reads it, and before anything is written because of it.

Why: pycolmap trusts the counts a binary model declares. A truncated or corrupt file makes it allocate for a garbage
count (a points3D.bin declaring 2**40 points, a track of 2**60 entries) or loop for minutes (a half-truncated
frames.bin stalled it for 80 s, and Blender's UI with it). So every binary file of the model (cameras, images,
points3D, rigs, frames) is walked here first, record by record, with every declared count checked against the
bytes that are left: the walk costs one pass over the file (memory-mapped, nothing allocated beyond it) and refuses a
bad file in well under a second. Image names are confined to the workspace: a model is data from elsewhere, and a
name like ``../../.bashrc`` must never become a path the undistorter or the dataset builder writes to.

Record layouts (COLMAP's ``reconstruction_io_binary.cc``, little endian; every file starts with a uint64 count):

=============  ===============================================================================================
cameras.bin    camera_id u32, model_id i32, width u64, height u64, params f64 x (the model's parameter count)
images.bin     image_id u32, qvec 4 f64, tvec 3 f64, camera_id u32, name NUL-terminated, n u64, n x 24 bytes
points3D.bin   point3D_id u64, xyz 3 f64, rgb 3 u8, error f64, track length u64, length x 8 bytes
rigs.bin       rig_id u32, n u32, then when n > 0 the reference sensor (type i32, id u32) and n - 1 sensors
               (type i32, id u32, has_pose u8, then 7 f64 when has_pose)
frames.bin     frame_id u32, rig_id u32, rig_from_world 7 f64, n u32, n x 16 bytes (sensor type i32, id u32, u64)
=============  ===============================================================================================

No bpy and no pycolmap here: training imports this module without Blender.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath

BINARY_FILES = ("cameras", "images", "points3D", "rigs", "frames")
REEXPORT = "Re-export the model from COLMAP (File > Export model) or re-run `rerender reconstruct`."

# COLMAP camera model id -> number of parameters (checked against pycolmap by tests/test_colmap_checks.py).
CAMERA_MODEL_PARAMS = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12, 11: 16, 12: 4, 13: 5,
                       14: 3, 15: 4, 16: 6, 17: 2}

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class ColmapImportError(ValueError):
    """The folder is not an importable COLMAP reconstruction; the message says what is wrong and what to do."""


class _Reader:
    """Bounds-checked little-endian reads over a file's bytes; every overrun is a ColmapImportError."""

    def __init__(self, path: Path, data) -> None:
        self.path, self.data, self.size, self.pos = path, data, len(data), 0

    def fail(self, what: str) -> ColmapImportError:
        return ColmapImportError(f"{self.path} is truncated or corrupt: {what} (the file has {self.size:,} bytes). "
                                 + REEXPORT)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"{what} runs past the end of the file")

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def unpack(self, fmt: struct.Struct, what: str) -> int:
        self.need(fmt.size, what)
        (value,) = fmt.unpack_from(self.data, self.pos)
        self.pos += fmt.size
        return value

    def count(self, item_bytes: int, what: str) -> int:
        """The file's leading record count, refused at once when even minimal records could not fit."""
        n = self.unpack(_U64, "the record count")
        if n * item_bytes > self.size - self.pos:
            raise self.fail(f"it declares {n:,} {what}, which need at least {n * item_bytes:,} bytes")
        return n

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.fail(f"{what} has no terminating NUL")
        raw = bytes(self.data[self.pos:end])
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8 text") from None

    def finish(self, records: int) -> None:
        if self.pos != self.size:
            raise ColmapImportError(f"{self.path} is corrupt: {self.size - self.pos:,} bytes follow its {records:,} "
                                    "records. " + REEXPORT)


def _cameras(r: _Reader) -> None:
    n = r.count(24, "cameras")
    for i in range(n):
        r.skip(4, f"camera {i + 1}")
        model = r.unpack(_I32, f"camera {i + 1}'s model")
        params = CAMERA_MODEL_PARAMS.get(model)
        if params is None:
            raise r.fail(f"camera {i + 1} of {n:,} has the unknown camera model id {model}")
        r.skip(16 + 8 * params, f"camera {i + 1} of {n:,}")
    r.finish(n)


def _counted_records(r: _Reader, record: str, fixed: int, count: struct.Struct, item: int, entries: str,
                     named: bool = False) -> list[str]:
    """Walk records of ``fixed`` bytes [+ a NUL-terminated name], then a count and that many ``item``-byte entries;
    returns the names. Walked with locals: points3D.bin holds millions of records (about half a microsecond each)."""
    n = r.count(fixed + (1 if named else 0) + count.size, f"{record}s")
    data, size, pos, unpack, names = r.data, r.size, r.pos, count.unpack_from, []
    for i in range(n):
        pos += fixed
        if named:
            r.pos = pos
            names.append(r.name(f"the name of {record} {i + 1} of {n:,}"))
            pos = r.pos
        if pos + count.size > size:
            raise r.fail(f"{record} {i + 1} of {n:,} runs past the end of the file")
        (k,) = unpack(data, pos)
        pos += count.size + item * k
        if pos > size:
            raise r.fail(f"{record} {i + 1} of {n:,} declares {entries.format(k)} that run past the end")
    r.pos = pos
    r.finish(n)
    return names


def _images(r: _Reader) -> list[str]:
    return _counted_records(r, "image", 64, _U64, 24, "{:,} 2-D points", named=True)


def _points3d(r: _Reader) -> None:
    _counted_records(r, "point", 43, _U64, 8, "a track of {:,} entries")


def _frames(r: _Reader) -> None:
    _counted_records(r, "frame", 64, _U32, 16, "{:,} data entries")


def _rigs(r: _Reader) -> None:
    n = r.count(8, "rigs")
    for i in range(n):
        r.skip(4, f"rig {i + 1} of {n:,}")
        sensors = r.unpack(_U32, f"rig {i + 1}'s sensor count")
        if sensors:
            r.skip(8, f"rig {i + 1}'s reference sensor")
        for j in range(max(0, sensors - 1)):
            r.skip(8, f"sensor {j + 2} of rig {i + 1} (of {sensors:,} declared)")
            has_pose = r.unpack(struct.Struct("<B"), f"sensor {j + 2} of rig {i + 1}")
            if has_pose:
                r.skip(56, f"the pose of sensor {j + 2} of rig {i + 1}")
    r.finish(n)


_WALKERS = {"cameras": _cameras, "images": _images, "points3D": _points3d, "rigs": _rigs, "frames": _frames}


def check_binary_model(model_dir: str | os.PathLike) -> list[str]:
    """Walk every binary file of the model in ``model_dir``; returns images.bin's image names (already confined).

    Raises ColmapImportError naming the file, what is wrong and what to do. rigs.bin and frames.bin are optional
    (models written before COLMAP 3.12 have none), the other three are required.
    """
    model_dir = Path(model_dir)
    names: list[str] = []
    for stem in BINARY_FILES:
        path = model_dir / f"{stem}.bin"
        if not path.is_file():
            if stem in ("rigs", "frames"):
                continue
            raise ColmapImportError(f"{path} is missing. " + REEXPORT)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ColmapImportError(f"{path} is truncated ({size} bytes; even an empty model file has 8). "
                                        + REEXPORT)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found = _WALKERS[stem](_Reader(path, data))
        if stem == "images":
            names = found
    for name in names:
        check_image_name(name)
    return names


def check_image_name(name: str) -> None:
    """Refuse an image name that would point outside the workspace's images/ folder (absolute, ``..``, drive)."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if (not name or "\0" in name or posix.is_absolute() or windows.is_absolute() or windows.drive
            or ".." in posix.parts or ".." in windows.parts):
        raise ColmapImportError(
            f"the model names an image {name!r}, which points outside the workspace's images/ folder; image names "
            "must be relative paths inside it. Rename the photo in the COLMAP model (or re-run `rerender "
            "reconstruct` on a folder of photos).")
