"""Reading a COLMAP workspace or model folder, without Blender: cameras, points, labels, dense PLY, alignment.

The format side of the import (as glTF-Blender-IO keeps ``io/`` apart from ``blender/``): everything here is numpy
and pycolmap, so training (``rerender dataset``) and scripts read reconstructions with exactly the add-on's rules,
and ``colmap_import.py`` only turns a :class:`ReconstructionData` into Blender objects.

Order of work, so a bad folder never costs time or leaves files behind: find the model, walk every binary file
against its declared counts (``colmap_checks.py``) before pycolmap touches it, confine image names to the workspace,
check cameras, and only then undistort (the one step that writes, into a folder the caller names) or read points.
Every error is a :class:`ColmapImportError` whose message says what is wrong and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ._bridge import UNKNOWN, PinholeCamera
from .colmap_checks import REEXPORT, ColmapImportError, check_binary_model, check_image_name

MODEL_FILES = ("cameras", "images", "points3D")
LABELS_FILE = Path("rerender") / "point_labels.npz"
FUSED_PLY = Path("dense") / "fused.ply"
UNDISTORTED = Path("rerender") / "undistorted"  # where the add-on's import undistorts a workspace's photos
AUTO_VIEW_DISTANCE = 25.0  # auto scale: the median camera-to-scene distance becomes this many Blender units
PINHOLE_MODELS = {"SIMPLE_PINHOLE", "PINHOLE"}
_UNDISTORT_STAMP = "rerender_undistorted.json"

Progress = Callable[[float, str], None]
PhotoCamera = PinholeCamera  # the reader's cameras are the shared PINHOLE type, named by their image


@dataclass
class ColmapModel:
    """A checked, readable model: where it is, its pycolmap reconstruction and its PINHOLE cameras by name."""

    model_dir: Path
    workspace: Path | None
    reconstruction: object  # pycolmap.Reconstruction
    cameras: list[PinholeCamera]  # registered photos, sorted by image id
    undistorted: bool = False  # True when this is the undistorted copy of a distorted model


@dataclass
class ReconstructionData:
    """Everything an import needs, read and checked, before Blender is touched."""

    model_dir: Path
    workspace: Path | None
    cameras: list[PinholeCamera]
    xyz: np.ndarray  # N x 3 float64, COLMAP world
    rgb8: np.ndarray  # N x 3 uint8 sRGB
    labels: np.ndarray  # N uint8, 255 unknown
    source: str  # "sparse" or "dense"
    point_ids: np.ndarray | None = None  # N int64 COLMAP point3D ids (sparse), None for dense points
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- finding the model

def _model_files(folder: Path) -> dict[str, Path] | None:
    """cameras/images/points3D files of one format in ``folder``, or None when the folder holds no model."""
    for ext in (".bin", ".txt"):
        found = {n: folder / f"{n}{ext}" for n in MODEL_FILES}
        if all(p.is_file() for p in found.values()):
            return found
    return None


def find_model(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model folder, workspace folder or None) for a workspace, a ``sparse`` folder or a model folder."""
    path = Path(path).expanduser()
    if path.is_file():  # a file inside the model folder was picked in the file browser
        path = path.parent
    if not path.is_dir():
        raise ColmapImportError(f"{path} does not exist or is not a folder; choose a COLMAP workspace "
                                "(with sparse/0) or a model folder (with cameras, images and points3D files)")
    candidates = [(path, None), (path / "sparse" / "0", path), (path / "sparse", path),
                  (path / "dense" / "sparse", path / "dense")]
    for folder, ws in candidates:
        if _model_files(folder) is not None:
            if ws is None:  # a bare model folder: the workspace is where images/ sits above it, if anywhere
                for up in (folder.parent, folder.parent.parent):
                    if (up / "images").is_dir():
                        ws = up
                        break
            return folder, ws
    # Say precisely what is missing where a model half exists, else that this is not a COLMAP folder at all.
    for folder, _ in candidates:
        present = [f.name for f in folder.glob("*") if f.stem in MODEL_FILES and f.suffix in (".bin", ".txt")]
        if present:
            missing = [f"{n}.bin/.txt" for n in MODEL_FILES if not any(p.startswith(n + ".") for p in present)]
            mixed = "" if missing else " (mixed .bin and .txt files: all three must have one format)"
            raise ColmapImportError(
                f"incomplete COLMAP model in {folder}: found {', '.join(sorted(present))}, missing "
                f"{', '.join(missing) or 'a consistent format'}{mixed}. Re-export the model from COLMAP "
                "(File > Export model) or re-run `rerender reconstruct`.")
    raise ColmapImportError(
        f"{path} is not a COLMAP reconstruction: no cameras/images/points3D (.bin or .txt) in it, in sparse/0, "
        "in sparse or in dense/sparse. Choose the workspace folder that COLMAP or `rerender reconstruct` wrote.")


# ------------------------------------------------------------------------------------------------ reading

def read_model(model_dir: str | os.PathLike):
    """The pycolmap reconstruction of ``model_dir``, after the binary pre-check; ColmapImportError when unreadable."""
    try:
        import pycolmap
    except ImportError as exc:
        raise ColmapImportError("pycolmap is not installed in this Python; install the add-on's wheels "
                                "(packaging/) or `pip install pycolmap`") from exc
    model_dir = Path(model_dir)
    files = _model_files(model_dir)
    if files is None:
        raise ColmapImportError(f"no cameras/images/points3D (.bin or .txt) in {model_dir}. " + REEXPORT)
    binary = files["cameras"].suffix == ".bin"
    if binary:
        check_binary_model(model_dir)
    try:
        rec = pycolmap.Reconstruction()
        (rec.read_binary if binary else rec.read_text)(str(model_dir))
    except (MemoryError, ValueError, RuntimeError, OSError, IndexError, KeyError) as exc:
        raise ColmapImportError(f"cannot read the COLMAP model in {model_dir}: the files are truncated or corrupt "
                                f"({type(exc).__name__}: {exc}). " + REEXPORT) from exc
    for image in rec.images.values():  # text models were not walked: confine their names too
        check_image_name(image.name)
    return rec


def distorted_cameras(rec) -> list[str]:
    """Descriptions of the cameras whose model has non-zero distortion (empty when all are pinholes)."""
    found = []
    for cid, c in rec.cameras.items():
        extra = [float(c.params[i]) for i in c.extra_params_idxs()]
        if c.model.name not in PINHOLE_MODELS and any(abs(v) > 1e-12 for v in extra):
            used = sum(1 for i in rec.images.values() if i.camera_id == cid)
            found.append(f"camera {cid} ({c.model.name}, used by {used} photos, distortion {extra})")
    return found


def photo_cameras(rec) -> list[PinholeCamera]:
    """The registered photos' PINHOLE cameras (sorted by image id); refuses distortion and bad intrinsics."""
    distorted = distorted_cameras(rec)
    if distorted:
        raise ColmapImportError(
            f"{distorted[0]} has lens distortion; Blender cameras are pinholes, so the photos must be undistorted "
            "first: import with undistort=True (the import operator's 'Undistort' option runs pycolmap for you when "
            "the workspace has its images/), use `rerender dataset` (it undistorts by itself), or run "
            "pycolmap.undistort_images(OUT, MODEL, IMAGES) and import OUT.")
    cams: list[PinholeCamera] = []
    for image_id in sorted(rec.reg_image_ids()):
        im = rec.image(image_id)
        c = im.camera
        fx, fy = float(c.focal_length_x), float(c.focal_length_y)
        if not (fx > 0 and fy > 0 and c.width > 0 and c.height > 0 and np.isfinite([fx, fy]).all()):
            raise ColmapImportError(f"camera {c.camera_id} has invalid intrinsics (f = {fx}, {fy}; size "
                                    f"{c.width} x {c.height}): the model is corrupt. " + REEXPORT)
        pose = im.cam_from_world()
        cams.append(PinholeCamera(np.array(pose.rotation.matrix(), np.float64),
                                  np.array(pose.translation, np.float64), fx, fy, float(c.principal_point_x),
                                  float(c.principal_point_y), int(c.width), int(c.height), im.name))
    if not cams:
        raise ColmapImportError("the COLMAP model has no registered photos: nothing to import. Run the "
                                "reconstruction again with more overlapping photos.")
    return cams


def load_model(path: str | os.PathLike, *, undistort_into: str | os.PathLike | None = None,
               progress: Progress | None = None) -> ColmapModel:
    """Find, check and read the model at ``path``; a distorted one is undistorted into ``undistort_into`` (the
    one step that writes), and refused when that is None."""
    report = progress or (lambda f, s: None)
    model_dir, workspace = find_model(path)
    report(0.02, f"reading {model_dir}")
    rec = read_model(model_dir)
    if distorted_cameras(rec) and undistort_into is not None:
        out = undistort_model(model_dir, workspace, Path(undistort_into), report)
        model_dir, workspace, rec = out / "sparse", out, read_model(out / "sparse")
        return ColmapModel(model_dir, workspace, rec, photo_cameras(rec), undistorted=True)
    return ColmapModel(model_dir, workspace, rec, photo_cameras(rec))


def undistort_model(model_dir: Path, workspace: Path | None, out: Path, report: Progress | None = None) -> Path:
    """Undistort the photos and the model into ``out`` (``out/images``, ``out/sparse``) with pycolmap; returns
    ``out``. A finished earlier run for the same model files is reused (undistorting a large set takes minutes)."""
    import pycolmap

    if workspace is None or not (workspace / "images").is_dir():
        raise ColmapImportError(f"cannot undistort {model_dir}: its photos (an images/ folder next to sparse/) "
                                "were not found; undistort with COLMAP yourself and import the result")
    stamp = {"model": str(Path(model_dir).resolve()),
             "files": sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in Path(model_dir).iterdir()
                             if p.is_file())}
    marker = out / _UNDISTORT_STAMP
    if marker.is_file() and _model_files(out / "sparse") is not None:
        try:
            if json.loads(marker.read_text()) == stamp:
                return out
        except ValueError:
            pass
    (report or (lambda f, s: None))(0.05, f"undistorting photos into {out}")
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    try:
        pycolmap.undistort_images(str(out), str(model_dir), str(workspace / "images"))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ColmapImportError(f"pycolmap could not undistort {model_dir} into {out} ({exc}); check that every "
                                f"photo the model names is in {workspace / 'images'}") from exc
    marker.write_text(json.dumps(stamp))
    return out


def _sparse_points(rec, report: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = rec.num_points3D()
    ids = np.empty(n, np.int64)
    xyz = np.empty((n, 3), np.float64)
    rgb = np.empty((n, 3), np.uint8)
    for i, (pid, p) in enumerate(rec.points3D.items()):
        ids[i] = pid
        xyz[i] = p.xyz
        rgb[i] = p.color
        if i % 200_000 == 199_999:
            report(0.1 + 0.3 * i / n, f"reading points {i + 1:,}/{n:,}")
    order = np.argsort(ids, kind="stable")  # a deterministic order: by COLMAP point3D id
    return ids[order], xyz[order], rgb[order]


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


_PLY_FIX = "re-run stereo fusion, or delete it to import the sparse points"


def _ply_layout(f, path: Path) -> tuple[str, int, list[tuple[str, str]]]:
    """(format, vertex count, vertex properties) from a PLY header; for binary files the count is checked against
    the bytes that follow, so nothing is ever allocated for vertices the file does not hold."""
    if f.readline().strip() != b"ply":
        raise ColmapImportError(f"{path} is not a PLY file (no 'ply' magic); delete it or re-run fusion")
    fmt, count, props, element = None, None, [], None
    while True:
        line = f.readline()
        if not line:
            raise ColmapImportError(f"{path}: the PLY header never ends (truncated file); {_PLY_FIX}")
        words = line.decode("ascii", "replace").split()
        if not words:
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
        elif words[0] == "element":
            element = words[1] if len(words) > 1 else ""
            if element == "vertex":
                count = int(words[2]) if words[2:3] and words[2].isdigit() else -1
            elif count is None:
                raise ColmapImportError(f"{path}: elements before 'vertex' are not supported; {_PLY_FIX}")
        elif words[0] == "property" and element == "vertex":
            if len(words) < 3 or words[1] not in _PLY_TYPES:
                raise ColmapImportError(f"{path}: vertex property {' '.join(words[1:])!r} is not supported; "
                                        f"{_PLY_FIX}")
            props.append((words[2], _PLY_TYPES[words[1]]))
        elif words[0] == "end_header":
            break
    if count is None or count < 0 or not {"x", "y", "z"} <= {p for p, _ in props}:
        raise ColmapImportError(f"{path}: no vertex element with a count and x, y, z; {_PLY_FIX}")
    if fmt != "ascii":
        order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
        if order is None:
            raise ColmapImportError(f"{path}: unknown PLY format {fmt!r}; {_PLY_FIX}")
        itemsize = np.dtype([(name, order + t) for name, t in props]).itemsize
        left = os.fstat(f.fileno()).st_size - f.tell()
        if count * itemsize > left:
            raise ColmapImportError(f"{path}: {left // itemsize:,} of {count:,} vertices (truncated file); "
                                    f"{_PLY_FIX}")
    return fmt, count, props


def check_ply(path: str | os.PathLike) -> int:
    """Check a PLY point cloud's header (and, for binary files, its size) without reading the points; returns the
    vertex count. ColmapImportError with the fix when it is unusable."""
    with open(path, "rb") as f:
        return _ply_layout(f, Path(path))[1]


def read_ply_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N x 3 float64) and colors (N x 3 uint8, white when absent) of a PLY point cloud such as COLMAP's
    ``fused.ply``. Binary little/big endian and ASCII; only the vertex element is read, in one numpy call, and
    never more than the file holds (a declared count beyond the file's size is refused before reading)."""
    path = Path(path)
    with open(path, "rb") as f:
        fmt, count, props = _ply_layout(f, path)
        if fmt == "ascii":
            table = np.loadtxt(f, max_rows=count, ndmin=2)
            if len(table) != count:
                raise ColmapImportError(f"{path}: {len(table)} of {count} vertices (truncated file); {_PLY_FIX}")
            cols = {name: table[:, i] for i, (name, _) in enumerate(props)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            data = np.fromfile(f, dtype=np.dtype([(name, order + t) for name, t in props]), count=count)
            cols = {name: data[name] for name, _ in props}
    xyz = np.stack([cols["x"], cols["y"], cols["z"]], 1).astype(np.float64)
    if {"red", "green", "blue"} <= cols.keys():
        rgb = np.stack([cols["red"], cols["green"], cols["blue"]], 1).astype(np.uint8)
    else:
        rgb = np.full((count, 3), 255, np.uint8)
    return xyz, rgb


def _labels_for(workspace: Path | None, source: str, ids: np.ndarray | None, n: int, warnings: list[str]
                ) -> np.ndarray:
    labels = np.full(n, UNKNOWN, np.uint8)
    if workspace is None or not (workspace / LABELS_FILE).is_file():
        return labels
    path = workspace / LABELS_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            if source == "dense":
                if "fused_label" not in z:
                    warnings.append(f"{path} has no 'fused_label': dense points imported without labels")
                    return labels
                fused = np.asarray(z["fused_label"]).astype(np.uint8)
                if len(fused) != n:
                    warnings.append(f"{path}: {len(fused)} fused labels for {n} dense points (stale file; rebuild "
                                    "it with `rerender dataset`): imported without labels")
                    return labels
                return fused
            pid, lab = np.asarray(z["point3D_id"], np.int64), np.asarray(z["label"]).astype(np.uint8)
    except (OSError, KeyError, ValueError) as exc:
        warnings.append(f"{path} is unreadable ({exc}): points imported without labels")
        return labels
    if len(pid) != len(lab):
        warnings.append(f"{path}: point3D_id and label differ in length: points imported without labels")
        return labels
    order = np.argsort(pid)
    pid, lab = pid[order], lab[order]
    pos = np.clip(np.searchsorted(pid, ids), 0, max(len(pid) - 1, 0))
    found = (pid[pos] == ids) if len(pid) else np.zeros(n, bool)
    labels[found] = lab[pos[found]]
    return labels


def read_reconstruction(path: str | os.PathLike, *, dense: bool | None = None, undistort: bool = False,
                        progress: Progress | None = None) -> ReconstructionData:
    """Read and validate a COLMAP workspace/model without touching Blender (usable from any script).

    ``undistort``: a distorted model is undistorted into ``WS/rerender/undistorted`` first (else it is refused).
    """
    report = progress or (lambda f, s: None)
    model_dir, workspace = find_model(path)
    # without a workspace (no images/ found) undistort_model refuses with the reason
    target = (workspace or model_dir) / UNDISTORTED if undistort else None
    model = load_model(path, undistort_into=target, progress=report)
    model_dir, workspace, rec, cameras = model.model_dir, model.workspace, model.reconstruction, model.cameras
    warnings: list[str] = []
    fused = workspace / FUSED_PLY if workspace is not None else None
    use_dense = (fused is not None and fused.is_file()) if dense is None else dense
    if use_dense:
        if fused is None or not fused.is_file():
            raise ColmapImportError(f"dense points requested but there is no {FUSED_PLY} in the workspace "
                                    f"({workspace}); run stereo fusion or import the sparse points")
        report(0.1, f"reading {fused}")
        xyz, rgb = read_ply_points(fused)
        ids, source = None, "dense"
    else:
        ids, xyz, rgb = _sparse_points(rec, report)
        source = "sparse"
    if len(xyz) == 0:
        raise ColmapImportError(f"the {source} point cloud of {model_dir} is empty: nothing to draw")
    if not np.isfinite(xyz).all():
        raise ColmapImportError(f"the {source} point cloud of {model_dir} has non-finite coordinates (corrupt)")
    labels = _labels_for(workspace, source, ids, len(xyz), warnings)
    return ReconstructionData(model_dir, workspace, cameras, xyz, rgb, labels, source, ids, warnings)


# ------------------------------------------------------------------------------------------------ alignment

def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a to unit vector b."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: turn 180 degrees about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0, 0]) if abs(a[0]) < 0.9 else np.cross(a, [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def alignment(cameras: list[PhotoCamera], xyz: np.ndarray, scale: float | None = None) -> np.ndarray:
    """4x4 world_from_colmap: photos' mean up -> +Z, mean view direction -> +Y, scene center at the origin, and
    (scale=None) the median camera-to-scene distance -> AUTO_VIEW_DISTANCE units."""
    ups = np.array([-c.R[1] for c in cameras])  # camera -y axis in world
    up = ups.mean(0)
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-6 else np.array([0.0, 0, 1])
    rot = _rotation_between(up, np.array([0.0, 0, 1]))
    fwd = rot @ np.array([c.R[2] for c in cameras]).mean(0)
    fwd[2] = 0
    if np.linalg.norm(fwd) > 1e-6:
        fwd /= np.linalg.norm(fwd)
        rot = _rotation_between(fwd, np.array([0.0, 1, 0])) @ rot
    sample = xyz[:: max(1, len(xyz) // 100_000)]
    center = np.median(sample, 0)
    if scale is None:
        dist = np.median([np.linalg.norm(c.center - center) for c in cameras])
        scale = AUTO_VIEW_DISTANCE / dist if dist > 1e-9 else 1.0
    m = np.eye(4)
    m[:3, :3] = scale * rot
    m[:3, 3] = -scale * rot @ center
    return m
