"""COLMAP workspace → aligned training dataset (docs/architecture.md "Aligned dataset D/", docs/dataset.md).

For every registered photo: the photo resized to the buffer size, its segmentation and its deep buffer rendered by
THE rasterizer (``rerender.addon.deep_buffer.render_deep_buffer``, the same code the render engine uses at shot
time). Views are dropped, with the reason recorded, when the photo cannot be read, is too small, or its buffer is
too sparse (the paper: at most 15 % non-empty pixels).

Phases (each resumable — a rerun skips what is on disk):
  1. segment every registered photo at its buffer size     → D/work/segmentation/<stem>.png
  2. vote point labels from those segmentations            → WS/rerender/point_labels.npz
  3. load the cloud (with labels) and cameras into Blender, render each view's deep buffer
                                                            → D/views/<stem>/{photo.png, segmentation.png, buffer.npz}
                                                              and D/work/views/<stem>.json (kept/dropped, stats)
  4. split train/validation (fixed seed) and write          → D/manifest.json
Labels must exist before rendering because the buffer's ``label`` pass is rasterized from per-point labels.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .class_shares import class_counts, remap_lut, shares, shares_text, transient_warnings
from .native_output import native_output_to, quiet_import_bpy
from .point_labels import LabelledView, label_dense_points, label_sparse_points, read_point_labels, write_point_labels
from .workspace import DatasetError, WorkspaceView, load_workspace, open_workspace  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FORMAT, VERSION = "rerender-dataset", 1
PAPER_VAL_COUNT = 100
DEPTH_SAMPLES_PER_VIEW = 4000


@dataclass
class DatasetOptions:
    max_size: int = 1024        # long side of buffers and photos (photos are never upsampled)
    min_size: int = 450         # drop photos whose shorter side is below this (after undistortion)
    min_coverage: float = 0.15  # drop views with at most this fraction of non-empty buffer pixels (the paper)
    val_count: int | None = None  # default: 100 as in the paper, 10 % (at least 1) for small sets
    seed: int = 0
    splat_px: float | None = None  # None: the rasterizer's density-based estimate
    segmenter_weights: str | None = None
    segmenter_checkpoint: str = "auto"  # auto: ADE20K where its weights are, else ESPNet
    segmenter_sha256: str | None = None  # "ENC,DEC": lets the ADE20K weights be downloaded and checked
    remap: dict[str, str] = field(default_factory=dict)  # class name -> class name, applied to every segmentation
    quiet: bool = True  # Blender's native output (per-file "Saved:" lines, EGL noise) goes to D/work/native.log


@dataclass
class DatasetReport:
    kept: list[str] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    train: int = 0
    val: int = 0
    depth_stats: dict = field(default_factory=dict)
    manifest: Path | None = None
    segmenter: str = ""
    pixel_shares: dict[str, float] = field(default_factory=dict)  # class name -> share of labelled photo pixels
    point_shares: dict[str, float] = field(default_factory=dict)  # class name -> share of labelled 3D points
    warnings: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"{len(self.kept)} views kept ({self.train} train, {self.val} validation), "
                 f"{len(self.dropped)} dropped"]
        lines += [f"  dropped {d['name']}: {d['reason']}" for d in self.dropped]
        if self.depth_stats:
            lines.append("depth p01/p50/p99: " + "/".join(f"{self.depth_stats[k]:.3g}" for k in ("p01", "p50", "p99")))
        if self.segmenter:
            lines.append(f"segmenter: {self.segmenter}")
        if self.pixel_shares or self.point_shares:
            lines.append("classes (share of photo pixels / of 3D points): "
                         + shares_text(self.pixel_shares, self.point_shares))
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)


def view_stem(image_name: str) -> str:
    """A folder name for an image name that may contain subfolders ("a/b.jpg" → "a__b")."""
    return Path(image_name).with_suffix("").as_posix().replace("/", "__")


def buffer_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(w, h) of the buffer: the photo's size, long side capped at ``max_size``, aspect kept."""
    s = min(1.0, max_size / max(width, height))
    return max(1, round(width * s)), max(1, round(height * s))


def default_val_count(n_views: int) -> int:
    """The paper keeps 100 validation photos; small sets keep 10 % (at least one when there are two or more)."""
    if n_views < 2:
        return 0
    return min(PAPER_VAL_COUNT, max(1, n_views // 10))


def split_views(names: list[str], val_count: int, seed: int) -> dict[str, str]:
    """name → "train" | "val"; depends only on the sorted names and the seed, so reruns agree."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[i] for i in order[:val_count]}
    return {n: ("val" if n in val else "train") for n in names}


def depth_stats(samples: list[np.ndarray]) -> dict[str, float]:
    finite = np.concatenate([s for s in samples if len(s)]) if any(len(s) for s in samples) else np.zeros(0)
    if not len(finite):
        return {}
    p01, p50, p99 = np.percentile(finite, [1, 50, 99])
    return {"p01": float(p01), "p50": float(p50), "p99": float(p99)}


# --- building --------------------------------------------------------------------------------------------------

def _read_photo(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _resize(photo: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (photo.shape[1], photo.shape[0]) == size:
        return photo
    return np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))


def _save_png(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".part.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def _write_json(data, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def build_dataset(workspace: str | Path, out: str | Path, options: DatasetOptions | None = None, *,
                  segmenter=None, progress: bool = True) -> DatasetReport:
    """Build (or resume building) the aligned dataset of ``workspace`` in ``out``; see the module docstring."""
    from tqdm import tqdm

    opt = options or DatasetOptions()
    ws, out = Path(workspace), Path(out)
    ws, rec, views = open_workspace(ws, undistort_into=out / "undistorted")
    work = out / "work"
    (work / "segmentation").mkdir(parents=True, exist_ok=True)
    (work / "views").mkdir(parents=True, exist_ok=True)
    (out / "views").mkdir(parents=True, exist_ok=True)
    native_log = work / "native.log" if opt.quiet else None
    record = _read_segmenter_record(work)
    if segmenter is not None:
        _check_same_segmenter(record, segmenter.name, work)
    if record is not None:
        remap_lut(opt.remap, record[1])  # a misspelt --remap fails now, not after the segmentation
    relabelled = _remap_changed(work, opt.remap)

    # phase 1: unreadable / too small photos, segmentation -------------------------------------------------------
    early_drop: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    todo = [v for v in views if not (work / "views" / f"{view_stem(v.name)}.json").exists()]
    for v in tqdm(views, desc="segment", unit="photo", disable=not progress):
        stem = view_stem(v.name)
        sizes[v.name] = buffer_size(v.camera.width, v.camera.height, opt.max_size)
        if min(v.camera.width, v.camera.height) < opt.min_size:
            early_drop[v.name] = (f"too small: {v.camera.width}x{v.camera.height} px, the shorter side is below {opt.min_size} px "
                                  f"(--min-size)")
            continue
        seg_path = work / "segmentation" / f"{stem}.png"
        if seg_path.exists():
            continue
        try:
            photo = _read_photo(ws / "images" / v.name)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            early_drop[v.name] = f"unreadable photo {ws / 'images' / v.name}: {exc}"
            log.warning("%s", early_drop[v.name])
            continue
        if segmenter is None:
            from .segmentation import load_segmenter

            segmenter = load_segmenter(opt.segmenter_weights, checkpoint=opt.segmenter_checkpoint,
                                       sha256=opt.segmenter_sha256)
            _check_same_segmenter(record, segmenter.name, work)
        if record is None:
            record = (segmenter.name, segmenter.classes)
            _write_json({"name": segmenter.name, "classes": segmenter.classes.to_json()}, work / "segmenter.json")
        _save_png(segmenter.segment(_resize(photo, sizes[v.name])), seg_path)

    if record is None and segmenter is not None:
        record = (segmenter.name, segmenter.classes)
    if record is None:
        from rerender.bridge.classes import DEFAULT_CLASSES

        record = ("none recorded (segmentations put in work/segmentation by another tool; Cityscapes table "
                  "assumed)", DEFAULT_CLASSES)
    segmenter_name, classes = record
    lut = remap_lut(opt.remap, classes)

    def segmentation_of(name: str) -> np.ndarray | None:
        p = work / "segmentation" / f"{view_stem(name)}.png"
        return lut[np.asarray(Image.open(p))] if p.exists() else None

    # phase 2: point labels ------------------------------------------------------------------------------------
    if todo or relabelled or not (ws / "rerender" / "point_labels.npz").exists():
        point_ids, labels = label_sparse_points(rec, segmentation_of, len(classes))
        fused_labels = None
        fused = ws / "dense" / "fused.ply"
        if fused.exists():
            labelled = []
            for v in views:
                seg = segmentation_of(v.name)
                if seg is not None:
                    labelled.append(LabelledView(v.camera, seg))
            from rerender.addon.colmap_reader import read_ply_points  # the add-on's reader: one PLY parser

            fused_labels = label_dense_points(read_ply_points(fused)[0].astype(np.float64), labelled, len(classes))
        write_point_labels(ws, point_ids, labels, fused_labels)

    # phase 3: deep buffers ------------------------------------------------------------------------------------
    scale_file = work / "scene_scale.json"
    for v in todo:  # views dropped before rendering need no Blender at all
        if v.name in early_drop:
            _build_view(v, ws, out, opt, None, {}, sizes[v.name], early_drop[v.name], segmentation_of)
    to_render = [v for v in todo if v.name not in early_drop]
    if to_render:
        quiet_import_bpy(native_log)
        # Blender prints a "Saved:" line per pass file (fd 1) and EGL errors at its first render (fd 2)
        with native_output_to(native_log, (1, 2)) as terminal:
            scene, cameras = _load_into_blender(ws, rec, views)
            _write_json({"scene_scale": scene.get("rerender_import_scale")}, scale_file)
            try:
                for v in tqdm(to_render, desc="deep buffers", unit="view", disable=not progress, file=terminal):
                    _build_view(v, ws, out, opt, scene, cameras, sizes[v.name], None, segmentation_of)
            finally:
                _remove_scene(scene)
    scene_scale = json.loads(scale_file.read_text()).get("scene_scale") if scale_file.exists() else None

    # phase 4: split + manifest --------------------------------------------------------------------------------
    pixel_counts = class_counts(segmentation_of(v.name) for v in views)
    point_counts = class_counts([read_point_labels(ws)["label"]])
    report_classes = {"segmenter": segmenter_name, "pixel_shares": shares(pixel_counts, classes),
                      "point_shares": shares(point_counts, classes)}
    report_classes["warnings"] = transient_warnings(report_classes["point_shares"], classes)
    return write_manifest(ws, out, views, opt, classes, scene_scale, report_classes)


def _read_segmenter_record(work: Path):
    """(name, ClassTable) of the segmenter whose files are in work/segmentation, or None before the first one."""
    from rerender.bridge.classes import ClassTable

    p = work / "segmenter.json"
    if not p.exists():
        return None
    data = json.loads(p.read_text())
    return data["name"], ClassTable.from_json(data["classes"])


def _check_same_segmenter(record, name: str, work: Path) -> None:
    if record is not None and record[0] != name:
        raise DatasetError(f"the segmentations in {work / 'segmentation'} were made by {record[0]}, not {name}; "
                           f"delete {work / 'segmentation'} and {work / 'segmenter.json'} to segment again, or "
                           f"build into a new --out")


def _remap_changed(work: Path, remap: dict[str, str]) -> bool:
    """Record the remap; if it differs from the last build's, every view is labelled and rendered again."""
    p = work / "remap.json"
    before = json.loads(p.read_text()) if p.exists() else {}
    if before == dict(remap):
        return False
    for record in (work / "views").glob("*.json"):
        record.unlink()
    _write_json(dict(remap), p)
    return True


def _remove_scene(scene) -> None:
    """Delete the temporary scene and what the import created, so a long-lived Blender session stays clean."""
    import bpy

    for coll in list(scene.collection.children_recursive):
        for obj in list(coll.objects):
            bpy.data.objects.remove(obj)
        bpy.data.collections.remove(coll)
    bpy.data.scenes.remove(scene)


def _build_view(v: WorkspaceView, ws: Path, out: Path, opt: DatasetOptions, scene, cameras: dict,
                size: tuple[int, int], drop_reason: str | None, segmentation_of) -> None:
    from rerender.addon.deep_buffer import render_deep_buffer

    stem = view_stem(v.name)
    meta = {"name": v.name, "width": size[0], "height": size[1]}
    seg = segmentation_of(v.name) if drop_reason is None else None
    if drop_reason is None and seg is None:
        drop_reason = "no segmentation (the photo could not be read)"
    if drop_reason is None:
        camera = cameras.get(v.name)
        if camera is None:
            drop_reason = "no Blender camera was imported for this photo"
        else:
            buf = render_deep_buffer(scene, camera, resolution=size, splat_px=opt.splat_px)
            coverage = buf.coverage()
            meta["coverage"] = coverage
            if coverage <= opt.min_coverage:
                drop_reason = (f"too sparse: {coverage:.1%} of the buffer's pixels have points "
                               f"(needs more than {opt.min_coverage:.0%}, --min-coverage)")
            else:
                try:
                    photo = _resize(_read_photo(ws / "images" / v.name), size)
                except (OSError, UnidentifiedImageError, ValueError) as exc:
                    drop_reason = f"unreadable photo: {exc}"
                else:
                    vdir = out / "views" / stem
                    vdir.mkdir(parents=True, exist_ok=True)
                    _save_png(photo, vdir / "photo.png")
                    _save_png(seg, vdir / "segmentation.png")
                    buf.save_npz(vdir / "buffer.npz")
                    finite = buf.depth[np.isfinite(buf.depth)]
                    if len(finite) > DEPTH_SAMPLES_PER_VIEW:
                        finite = np.random.default_rng(0).choice(finite, DEPTH_SAMPLES_PER_VIEW, replace=False)
                    meta["depth_samples"] = [float(x) for x in finite]
    meta["status"] = "dropped" if drop_reason else "kept"
    if drop_reason:
        meta["reason"] = drop_reason
    _write_json(meta, out / "work" / "views" / f"{stem}.json")


def _load_into_blender(ws: Path, rec, views: list[WorkspaceView]):
    """(scene, {image name: camera object}) via the add-on's COLMAP import (labels included)."""
    import bpy

    from rerender.addon.colmap_import import import_reconstruction

    scene = bpy.data.scenes.new("rerender dataset")
    try:
        imported = import_reconstruction(ws, scene, load_images=False)
    except BaseException:
        bpy.data.scenes.remove(scene)
        raise
    # depths are in Blender units of the imported scene: record the import's scale
    scene["rerender_import_scale"] = float(imported.root.scale[0])
    return scene, dict(imported.cameras)


def write_manifest(ws: Path, out: Path, views: list[WorkspaceView], opt: DatasetOptions, classes,
                   scene_scale: float | None = None, class_report: dict | None = None) -> DatasetReport:
    """Split the kept views and write D/manifest.json from the per-view records in D/work/views/.

    ``class_report``: segmenter name, class shares and warnings (``DatasetReport`` fields of the same names)."""
    report = DatasetReport(**(class_report or {}))
    records, samples = {}, []
    for v in views:
        p = out / "work" / "views" / f"{view_stem(v.name)}.json"
        if not p.exists():
            raise DatasetError(f"view {v.name} has no record in {p.parent}; rerun `rerender dataset` to finish")
        rec = json.loads(p.read_text())
        records[v.name] = rec
        if rec["status"] == "kept":
            report.kept.append(v.name)
            samples.append(np.asarray(rec.get("depth_samples", []), np.float64))
        else:
            report.dropped.append({"name": v.name, "reason": rec["reason"]})
    val_count = opt.val_count if opt.val_count is not None else default_val_count(len(report.kept))
    if val_count > max(0, len(report.kept) - 1):  # keep at least one training view; never fail after the work
        log.warning("validation count %d lowered to %d: only %d views were kept", val_count,
                    max(0, len(report.kept) - 1), len(report.kept))
        val_count = max(0, len(report.kept) - 1)
    split = split_views(report.kept, val_count, opt.seed)
    entries = []
    for v in views:
        if v.name not in split:
            continue
        rec = records[v.name]
        c = v.camera
        sx, sy = rec["width"] / c.width, rec["height"] / c.height
        entries.append({
            "name": v.name, "stem": view_stem(v.name), "split": split[v.name],
            "width": rec["width"], "height": rec["height"], "coverage": rec["coverage"],
            "camera": {"model": "PINHOLE", "params": [c.fx * sx, c.fy * sy, c.cx * sx, c.cy * sy],
                       "R": np.asarray(c.R).tolist(), "t": np.asarray(c.t).tolist(),
                       "photo_size": [c.width, c.height]},
        })
    report.train = sum(e["split"] == "train" for e in entries)
    report.val = len(entries) - report.train
    report.depth_stats = depth_stats(samples)
    manifest = {
        "format": FORMAT, "version": VERSION, "classes": classes.to_json(), "workspace": str(ws.resolve()),
        "views": entries, "dropped": report.dropped, "depth_stats": report.depth_stats,
        "depth_units": "Blender units of the imported scene (COLMAP units x scene_scale)",
        "scene_scale": scene_scale,
        "options": {"max_size": opt.max_size, "min_size": opt.min_size, "min_coverage": opt.min_coverage,
                    "seed": opt.seed, "splat_px": opt.splat_px, "segmenter": opt.segmenter_checkpoint,
                    "remap": dict(opt.remap)},
        "segmenter": report.segmenter,
        "class_shares": {"pixels": report.pixel_shares, "points": report.point_shares},
        "warnings": report.warnings,
    }
    report.manifest = out / "manifest.json"
    _write_json(manifest, report.manifest)
    if not entries:
        log.warning("no view was kept; see the dropped list in %s", report.manifest)
    return report


def angle_between(R1: np.ndarray, R2: np.ndarray) -> float:
    """Rotation angle (degrees) between two rotation matrices (used by tests and evaluation)."""
    c = (np.trace(np.asarray(R1).T @ np.asarray(R2)) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))
