"""File > Import > COLMAP reconstruction: a COLMAP workspace or model folder becomes a Blender scene.

What it makes (DESIGN §1, docs/addon-rasterizer.md):
- a collection named after the workspace holding an empty, the *reconstruction root*, which carries the up axis,
  centering and scale; under it
- the point cloud (sparse ``points3D`` or, when present, the dense ``dense/fused.ply``): linear colors and semantic
  labels (``rerender/point_labels.npz``) as point attributes, drawn as constant-size splats (see points.py);
- a hidden child collection with one camera per registered photo, exact PINHOLE intrinsics (principal point,
  non-square pixels) and the photo as its background image.

Why the root empty: COLMAP's world frame has an arbitrary up axis and scale. Putting the alignment on one parent
keeps every camera and point in raw COLMAP coordinates relative to it, so (R, t) from COLMAP or a dataset manifest
apply to imported cameras unchanged (cameras.set_camera_from_colmap).

Everything is read and validated before the first Blender datablock is created, and a failure while creating
removes what was made, so a bad folder never leaves half an import behind.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty

from . import points as pts
from ._bridge import UNKNOWN, srgb8_to_linear
from .cameras import set_camera_from_colmap

log = logging.getLogger(__name__)

MODEL_FILES = ("cameras", "images", "points3D")
LABELS_FILE = Path("rerender") / "point_labels.npz"
FUSED_PLY = Path("dense") / "fused.ply"
AUTO_VIEW_DISTANCE = 25.0  # auto scale: the median camera-to-scene distance becomes this many Blender units
PINHOLE_MODELS = {"SIMPLE_PINHOLE", "PINHOLE"}

Progress = Callable[[float, str], None]


class ColmapImportError(ValueError):
    """The folder is not an importable COLMAP reconstruction; the message says what is wrong and what to do."""


@dataclass
class PhotoCamera:
    """One registered photo's PINHOLE camera in COLMAP conventions."""

    name: str
    R: np.ndarray
    t: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass
class ReconstructionData:
    """Everything an import needs, read and checked, before Blender is touched."""

    model_dir: Path
    workspace: Path | None
    cameras: list[PhotoCamera]
    xyz: np.ndarray  # N x 3 float64, COLMAP world
    rgb8: np.ndarray  # N x 3 uint8 sRGB
    labels: np.ndarray  # N uint8, 255 unknown
    source: str  # "sparse" or "dense"
    point_ids: np.ndarray | None = None  # N int64 COLMAP point3D ids (sparse), None for dense points
    warnings: list[str] = field(default_factory=list)


@dataclass
class ImportedScene:
    """What :func:`import_reconstruction` created."""

    points: object  # the point-cloud bpy object
    cameras: dict[str, object]  # image name -> camera object
    collection: object  # the collection holding everything
    resolution: tuple[int, int]  # (W, H), the most common photo size
    root: object = None  # the empty carrying up axis, centering and scale
    camera_collection: object = None
    source: str = "sparse"
    num_points: int = 0
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

def _walk_records(path: Path, fixed: int, item_size: int, named: bool = False) -> None:
    """Walk a COLMAP binary file of variable-length records without building them, so a truncated or corrupt file
    is refused before pycolmap trusts its counts (a garbage track length makes pycolmap allocate for minutes).

    File: uint64 record count, then records of ``fixed`` bytes [+ a NUL-terminated name], a uint64 item count
    and that many ``item_size``-byte items.
    """
    buf = path.read_bytes()
    size = len(buf)
    if size < 8:
        raise ColmapImportError(f"{path} is truncated ({size} bytes): re-export the model from COLMAP")
    unpack = struct.Struct("<Q").unpack_from
    (count,) = unpack(buf, 0)
    off = 8
    for i in range(count):
        pos = off + fixed
        if named:
            nul = buf.find(b"\0", pos)
            pos = size + 1 if nul < 0 else nul + 1
        if pos + 8 > size:
            raise ColmapImportError(f"{path} is truncated or corrupt: record {i + 1} of {count:,} runs past the "
                                    f"end of the file ({size:,} bytes). Re-export the model from COLMAP.")
        (n,) = unpack(buf, pos)
        off = pos + 8 + n * item_size
        if off > size:
            raise ColmapImportError(f"{path} is truncated or corrupt: record {i + 1} of {count:,} declares {n:,} "
                                    f"entries that run past the end of the file ({size:,} bytes). Re-export the "
                                    "model from COLMAP.")
    if off != size:
        raise ColmapImportError(f"{path} is corrupt: {size - off:,} bytes follow its {count:,} records. "
                                "Re-export the model from COLMAP.")


def _check_binary_files(files: dict[str, Path]) -> None:
    # images.bin record: id u32, qvec 4 f64, tvec 3 f64, camera id u32 (64 bytes), name NUL, n u64, n x 24 bytes
    _walk_records(files["images"], fixed=64, item_size=24, named=True)
    # points3D.bin record: id u64, xyz 3 f64, rgb 3 u8, error f64 (43 bytes), track length u64, n x 8 bytes
    _walk_records(files["points3D"], fixed=43, item_size=8)


def _binary_size_problem(files: dict[str, Path], rec) -> str | None:
    """cameras.bin's exact size against what was parsed (pycolmap reads a truncated one as zero parameters)."""
    expected = 8 + sum(24 + 8 * len(c.params) for c in rec.cameras.values())
    actual = files["cameras"].stat().st_size
    if actual != expected:
        return f"{files['cameras']} has {actual} bytes but its {len(rec.cameras)} cameras need {expected}"
    return None


def _load_reconstruction(model_dir: Path):
    try:
        import pycolmap
    except ImportError as exc:
        raise ColmapImportError("pycolmap is not installed in Blender's Python; install the add-on's wheels "
                                "(packaging/) or `pip install pycolmap`") from exc
    files = _model_files(model_dir)
    if files["cameras"].suffix == ".bin":
        _check_binary_files(files)
    try:
        rec = pycolmap.Reconstruction()
        if files["cameras"].suffix == ".bin":
            rec.read_binary(str(model_dir))
        else:
            rec.read_text(str(model_dir))
    except (MemoryError, ValueError, RuntimeError, OSError, IndexError) as exc:
        raise ColmapImportError(f"cannot read the COLMAP model in {model_dir}: the files are truncated or corrupt "
                                f"({type(exc).__name__}: {exc}). Re-export it from COLMAP.") from exc
    if files["cameras"].suffix == ".bin":
        problem = _binary_size_problem(files, rec)
        if problem:
            raise ColmapImportError(f"truncated or corrupt COLMAP model: {problem}. Re-export it from COLMAP.")
    return rec


def _photo_cameras(rec, undistorted_ok: bool) -> list[PhotoCamera]:
    cams: list[PhotoCamera] = []
    for image_id in sorted(rec.reg_image_ids()):
        im = rec.image(image_id)
        c = im.camera
        model = c.model.name
        extra = [float(c.params[i]) for i in c.extra_params_idxs()]
        if model not in PINHOLE_MODELS and any(abs(v) > 1e-12 for v in extra) and not undistorted_ok:
            used = sum(1 for i in rec.images.values() if i.camera_id == c.camera_id)
            raise ColmapImportError(
                f"camera {c.camera_id} ({model}, used by {used} photos) has lens distortion {extra}; Blender "
                "cameras are pinholes, so the photos must be undistorted first: run `rerender reconstruct` (it "
                "undistorts), or pycolmap.undistort_images(OUT, MODEL, IMAGES) and import OUT, or import with "
                "undistort=True (the add-on runs that for you when the workspace has its images/).")
        fx, fy = float(c.focal_length_x), float(c.focal_length_y)
        if not (fx > 0 and fy > 0 and c.width > 0 and c.height > 0 and np.isfinite([fx, fy]).all()):
            raise ColmapImportError(f"camera {c.camera_id} has invalid intrinsics (f = {fx}, {fy}; size "
                                    f"{c.width} x {c.height}): the model is corrupt. Re-export it from COLMAP.")
        pose = im.cam_from_world()
        R = np.array(pose.rotation.matrix(), np.float64)
        t = np.array(pose.translation, np.float64)
        cams.append(PhotoCamera(im.name, R, t, fx, fy, float(c.principal_point_x), float(c.principal_point_y),
                                int(c.width), int(c.height)))
    if not cams:
        raise ColmapImportError("the COLMAP model has no registered photos: nothing to import. Run the "
                                "reconstruction again with more overlapping photos.")
    return cams


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


def read_ply_points(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Positions (N x 3 float64) and colors (N x 3 uint8, white when absent) of a PLY point cloud such as COLMAP's
    ``fused.ply``. Binary little/big endian and ASCII; only the vertex element is read, in one numpy call."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ColmapImportError(f"{path} is not a PLY file (no 'ply' magic); delete it or re-run fusion")
        fmt, count, props, element, before = None, None, [], None, 0
        while True:
            line = f.readline()
            if not line:
                raise ColmapImportError(f"{path}: the PLY header never ends (truncated file)")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                element = words[1]
                if element == "vertex":
                    count = int(words[2])
                elif count is None:
                    raise ColmapImportError(f"{path}: elements before 'vertex' are not supported")
            elif words[0] == "property" and element == "vertex":
                if words[1] == "list":
                    raise ColmapImportError(f"{path}: list properties on vertices are not supported")
                props.append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == "end_header":
                break
        if count is None or not {"x", "y", "z"} <= {p for p, _ in props}:
            raise ColmapImportError(f"{path}: no vertex element with x, y, z")
        if fmt == "ascii":
            table = np.loadtxt(f, max_rows=count, ndmin=2)
            if len(table) != count:
                raise ColmapImportError(f"{path}: {len(table)} of {count} vertices (truncated file)")
            cols = {name: table[:, i] for i, (name, _) in enumerate(props)}
        else:
            order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
            if order is None:
                raise ColmapImportError(f"{path}: unknown PLY format {fmt!r}")
            dtype = np.dtype([(name, order + t) for name, t in props])
            data = np.fromfile(f, dtype=dtype, count=count)
            if len(data) != count:
                raise ColmapImportError(f"{path}: {len(data):,} of {count:,} vertices (truncated file); re-run "
                                        "stereo fusion or delete it to import the sparse points")
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
    """Read and validate a COLMAP workspace/model without touching Blender (usable from any script)."""
    report = progress or (lambda f, s: None)
    model_dir, workspace = find_model(path)
    report(0.02, f"reading {model_dir}")
    rec = _load_reconstruction(model_dir)
    warnings: list[str] = []
    needs_undistort = any(rec.camera(cid).model.name not in PINHOLE_MODELS
                          and any(abs(float(rec.camera(cid).params[i])) > 1e-12
                                  for i in rec.camera(cid).extra_params_idxs()) for cid in rec.cameras)
    if needs_undistort and undistort:
        model_dir, workspace, rec = _undistort(model_dir, workspace, report)
    cameras = _photo_cameras(rec, undistorted_ok=False)
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


def _undistort(model_dir: Path, workspace: Path | None, report: Progress):
    import pycolmap

    if workspace is None or not (workspace / "images").is_dir():
        raise ColmapImportError(f"cannot undistort {model_dir}: its photos (an images/ folder next to sparse/) "
                                "were not found; undistort with COLMAP yourself and import the result")
    out = workspace / "rerender" / "undistorted"
    report(0.05, f"undistorting photos into {out}")
    out.mkdir(parents=True, exist_ok=True)
    pycolmap.undistort_images(str(out), str(model_dir), str(workspace / "images"))
    return out / "sparse", out, _load_reconstruction(out / "sparse")


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


# ------------------------------------------------------------------------------------------------ Blender side

def import_reconstruction(path: str | os.PathLike, scene=None, *, name: str | None = None,
                          progress: Progress | None = None, load_images: bool = True, dense: bool | None = None,
                          undistort: bool = False, scale: float | None = None) -> ImportedScene:
    """Import a COLMAP workspace or model folder (binary or text) into ``scene`` (default: the context's).

    dense       True: ``dense/fused.ply`` (error if missing); False: sparse points; None: dense when present.
    undistort   distorted camera models are undistorted through pycolmap first (else they are refused).
    scale       Blender units per COLMAP unit; None picks one so photos sit ~25 units from the scene.
    progress    called as progress(fraction, message).
    Raises ColmapImportError (nothing created) when the folder is not a valid reconstruction.
    """
    report = progress or (lambda f, s: None)
    data = read_reconstruction(path, dense=dense, undistort=undistort, progress=report)
    scene = scene or bpy.context.scene
    name = name or (data.workspace or data.model_dir).resolve().name or "COLMAP"
    created: list = []  # (collection of bpy.data, datablock), removed again on failure
    try:
        result = _build(scene, name, data, load_images, scale, report, created)
    except BaseException:
        for coll, block in reversed(created):
            try:
                coll.remove(block)
            except (ReferenceError, RuntimeError):
                pass
        raise
    for w in data.warnings:
        log.warning(w)
    report(1.0, f"imported {result.num_points:,} {data.source} points and {len(result.cameras)} cameras")
    return result


def _build(scene, name: str, data: ReconstructionData, load_images: bool, scale: float | None,
           report: Progress, created: list) -> ImportedScene:
    import mathutils

    world_from_colmap = alignment(data.cameras, data.xyz, scale)
    s = float(np.cbrt(abs(np.linalg.det(world_from_colmap[:3, :3]))))

    top = bpy.data.collections.new(name)
    created.append((bpy.data.collections, top))
    scene.collection.children.link(top)
    photos = bpy.data.collections.new(f"{name} photos")
    created.append((bpy.data.collections, photos))
    top.children.link(photos)
    photos.hide_render = True

    root = bpy.data.objects.new(f"{name} root", None)
    created.append((bpy.data.objects, root))
    root.empty_display_type = "ARROWS"
    root.matrix_world = mathutils.Matrix(world_from_colmap.tolist())
    root["rerender_colmap_model"] = str(data.model_dir)
    top.objects.link(root)

    report(0.45, f"creating {len(data.xyz):,} points")
    colors = srgb8_to_linear(data.rgb8)

    def point_progress(f: float, msg: str) -> None:
        report(0.45 + 0.3 * f, msg)

    cloud = pts.create_point_cloud(f"{name} points", data.xyz, colors, data.labels, top,
                                  point_ids=data.point_ids, progress=point_progress)
    created.append((bpy.data.meshes, cloud.data))
    created.append((bpy.data.objects, cloud))
    cloud.parent = root
    cloud["rerender_source"] = data.source

    center = np.median(data.xyz[:: max(1, len(data.xyz) // 100_000)], 0)
    far = max(np.linalg.norm(c.center - center) for c in data.cameras) + np.ptp(data.xyz, 0).max()
    cameras: dict[str, object] = {}
    folder = data.workspace / "images" if data.workspace is not None else None
    for i, pc in enumerate(data.cameras):
        cam_data = bpy.data.cameras.new(pc.name)
        created.append((bpy.data.cameras, cam_data))
        obj = bpy.data.objects.new(pc.name, cam_data)
        created.append((bpy.data.objects, obj))
        photos.objects.link(obj)
        obj.parent = root
        set_camera_from_colmap(obj, pc.R, pc.t, pc.fx, pc.fy, pc.cx, pc.cy, pc.width, pc.height)
        cam_data.clip_start = max(1e-4, 1e-3 * far * s)
        cam_data.clip_end = 4.0 * far * s
        cam_data.display_size = 0.05 * AUTO_VIEW_DISTANCE / s
        obj["rerender_image"] = pc.name
        if load_images and folder is not None and (folder / pc.name).is_file():
            img = bpy.data.images.load(str(folder / pc.name), check_existing=True)
            if img.users == 0:
                created.append((bpy.data.images, img))
            bg = cam_data.background_images.new()
            bg.image = img
            bg.alpha = 0.6
            cam_data.show_background_images = True
        cameras[pc.name] = obj
        if i % 50 == 0:
            report(0.75 + 0.2 * i / len(data.cameras), f"camera {i + 1}/{len(data.cameras)}")

    for layer in scene.view_layers:
        lc = _find_layer_collection(layer.layer_collection, photos)
        if lc is not None:
            lc.hide_viewport = True
    (w, h), _ = Counter((c.width, c.height) for c in data.cameras).most_common(1)[0]
    first = next(c for c in data.cameras if (c.width, c.height) == (w, h))
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = w, h, 100
    ycor = first.fx / first.fy
    r.pixel_aspect_x, r.pixel_aspect_y = (1.0, ycor) if ycor >= 1 else (1.0 / ycor, 1.0)
    if scene.camera is None:
        scene.camera = cameras[first.name]
    return ImportedScene(points=cloud, cameras=cameras, collection=top, resolution=(w, h), root=root,
                         camera_collection=photos, source=data.source, num_points=len(data.xyz),
                         warnings=list(data.warnings))


def _find_layer_collection(layer_collection, collection):
    if layer_collection.collection == collection:
        return layer_collection
    for child in layer_collection.children:
        found = _find_layer_collection(child, collection)
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------------------------------------ operator + menu

class RERENDER_OT_import_colmap(bpy.types.Operator):
    """Import a COLMAP reconstruction: point cloud, one camera per photo, scene resolution"""

    bl_idname = "rerender.import_colmap"
    bl_label = "Import COLMAP Reconstruction"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(name="Folder", subtype="DIR_PATH",
                              description="COLMAP workspace (with sparse/0) or model folder")
    filter_folder: BoolProperty(default=True, options={"HIDDEN"})
    points: EnumProperty(name="Points", default="AUTO", items=(
        ("AUTO", "Auto", "dense/fused.ply when present, else the sparse points"),
        ("DENSE", "Dense", "dense/fused.ply"),
        ("SPARSE", "Sparse", "the sparse SfM points")))
    load_images: BoolProperty(name="Photos as Backgrounds", default=True,
                              description="show each photo behind its camera")
    undistort: BoolProperty(name="Undistort", default=False,
                            description="undistort distorted camera models through pycolmap first")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        wm = context.window_manager
        wm.progress_begin(0, 100)

        def progress(fraction: float, message: str) -> None:
            wm.progress_update(int(100 * fraction))
            log.info("COLMAP import: %s", message)

        dense = {"AUTO": None, "DENSE": True, "SPARSE": False}[self.points]
        try:
            result = import_reconstruction(self.directory, context.scene, progress=progress,
                                           load_images=self.load_images, dense=dense, undistort=self.undistort)
        except ColmapImportError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            wm.progress_end()
        for w in result.warnings:
            self.report({"WARNING"}, w)
        self.report({"INFO"}, f"imported {result.num_points:,} {result.source} points and "
                              f"{len(result.cameras)} cameras at {result.resolution[0]} x {result.resolution[1]}")
        return {"FINISHED"}


def menu_func_import(self, context) -> None:
    """File > Import menu entry."""
    self.layout.operator(RERENDER_OT_import_colmap.bl_idname, text="COLMAP Reconstruction (Rerender)")


CLASSES = (RERENDER_OT_import_colmap,)


def register() -> None:
    """Register the import operator and its File > Import entry (called by the add-on's register())."""
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.TOPBAR_MT_file_import.append(menu_func_import)


def unregister() -> None:
    bpy.types.TOPBAR_MT_file_import.remove(menu_func_import)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
