"""Photos → COLMAP workspace with pycolmap: features, matching, incremental mapping, undistortion to PINHOLE.

Output layout (docs/architecture.md): ``WS/images/`` (undistorted photos), ``WS/sparse/0/`` (PINHOLE model),
``WS/dense/fused.ply`` when dense reconstruction ran, plus ``WS/database.db``, ``WS/distorted/sparse/<k>/`` (the
mapper's raw models, kept for inspection) and ``WS/rerender/reconstruction.json`` (the summary below).

Why each choice:
- Every photo is checked with Pillow before COLMAP sees it, so a corrupt JPEG is reported by name and skipped
  instead of silently vanishing (COLMAP only logs it).
- Matching: exhaustive up to ``EXHAUSTIVE_LIMIT`` photos (O(n²) pairs, but the most robust); beyond that a
  vocabulary tree when one is given, spatial matching on GPS priors when asked.
- Undistortion is required: Blender renders ideal pinhole cameras, so distorted models never reach it.
- Dense (patch-match stereo + fusion) needs CUDA in COLMAP; without it the workspace keeps the sparse cloud and we
  say so, because the paper's deep buffers come from dense clouds and sparse ones render with big gaps.
- The C++ stages run in a worker thread with a ``CancellationToken``, so Ctrl+C stops them cleanly.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
EXHAUSTIVE_LIMIT = 200
MIN_PHOTOS = 3
MAPPING_ATTEMPTS = 3
MIN_PAIR_INLIERS = 15  # COLMAP's default for a verified two-view geometry


class ReconstructionError(RuntimeError):
    """Reconstruction cannot go on; the message says what was wrong and what to do."""


@dataclass
class ReconstructionSummary:
    photos_found: int
    photos_unreadable: list[dict] = field(default_factory=list)  # {"name", "reason"}
    registered: int = 0
    unregistered: list[str] = field(default_factory=list)
    points: int = 0
    mean_reprojection_error_px: float = float("nan")
    mean_track_length: float = float("nan")
    models_found: int = 0
    model_sizes: list[int] = field(default_factory=list)  # registered photos per model the mapper found, largest first
    matcher: str = ""
    camera_mode: str = "per_image"
    dense: bool = False
    dense_points: int = 0
    dense_note: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"registered {self.registered} of {self.photos_found - len(self.photos_unreadable)} readable photos"
                 f" ({len(self.photos_unreadable)} unreadable)",
                 f"{self.points} sparse points, mean reprojection error {self.mean_reprojection_error_px:.3f} px, "
                 f"mean track length {self.mean_track_length:.2f}"]
        if self.models_found > 1:
            lines += split_advice(self.model_sizes, self.matcher, self.camera_mode)
        if self.unregistered:
            lines.append(f"not registered: {', '.join(self.unregistered[:20])}"
                         + (" …" if len(self.unregistered) > 20 else ""))
        for bad in self.photos_unreadable[:20]:
            lines.append(f"unreadable: {bad['name']} ({bad['reason']})")
        lines.append(f"dense cloud: {self.dense_points} points" if self.dense else f"dense cloud: none — {self.dense_note}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def split_advice(model_sizes: list[int], matcher: str, camera_mode: str) -> list[str]:
    """What to say when the mapper split the photos into several models: their sizes and what to try."""
    sizes = ", ".join(str(n) for n in model_sizes)
    lines = [f"the mapper found {len(model_sizes)} separate models ({sizes} photos); kept the largest "
             f"({model_sizes[0]} photos), the others' photos are not in the workspace. To join them, try:",
             "  - more photos that overlap the gaps between the groups (views between them, at similar distance)"]
    if matcher != "exhaustive":
        lines.append(f"  - --matcher exhaustive (this run matched with {matcher}: some overlapping pairs were never "
                     f"compared)")
    other = "single" if camera_mode == "per_image" else "per_image"
    lines.append(f"  - --camera-mode {other} (" + ("if every photo comes from one camera at one zoom, a shared camera "
                                                   "is better constrained)" if other == "single" else
                                                   "photos from several cameras cannot share one camera)"))
    return lines


def match_statistics(db_path: Path) -> tuple[int, int]:
    """(photos with features, photo pairs with at least ``MIN_PAIR_INLIERS`` geometrically verified matches)."""
    import numpy as np

    db = pycolmap.Database.open(str(db_path))
    try:
        with_features = sum(1 for image in db.read_all_images() if db.num_keypoints_for_image(image.image_id) > 0)
        _, inliers = db.read_two_view_geometry_num_inliers()
        return with_features, int((np.asarray(inliers) >= MIN_PAIR_INLIERS).sum())
    finally:
        db.close()


def no_model_message(names: list[str], db: Path, camera_mode: str, matcher: str) -> str:
    """Why no photo registered, from the database: no features, no matching pairs, or a mapper that found pairs
    but could not start (with one shared camera, the usual cause is photos from several cameras)."""
    try:
        with_features, pairs = match_statistics(db)
    except Exception as exc:  # a broken database is reported, not masked
        return f"no photo could be registered ({len(names)} tried) and the feature database {db} is unreadable ({exc})"
    head = f"no photo could be registered ({len(names)} tried, {with_features} with features, {pairs} photo pairs " \
           f"with at least {MIN_PAIR_INLIERS} verified matches)"
    if with_features < 2:
        return f"{head}: SIFT found no features; are the photos blank, tiny or heavily compressed?"
    if pairs == 0:
        return (f"{head}: the photos share too few matching features. Use more photos with overlapping views of the "
                f"same place" + ("" if matcher == "exhaustive" else ", or --matcher exhaustive")
                + f"; the feature database {db} is kept")
    if camera_mode == "single":
        return (f"{head}: the photos do match, but the mapper could not build a model with ONE camera shared by all "
                f"photos (--camera-mode single): photos from different cameras or zoom settings cannot share one "
                f"focal length and distortion. Use --camera-mode per_image (the default for tourist photos)")
    return (f"{head}: the photos do match, but the mapper found no pair to start from (too little parallax or too "
            f"few inliers between any two photos). Add photos taken from different positions around the place")


def list_photos(photos: Path) -> tuple[list[str], list[dict]]:
    """(readable image names relative to ``photos``, [{"name", "reason"}] for files that cannot be decoded)."""
    if not photos.is_dir():
        raise ReconstructionError(f"{photos} is not a folder; pass the folder that holds the photos")
    candidates = sorted(p for p in photos.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not candidates:
        raise ReconstructionError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {photos}; "
                                  f"point `rerender reconstruct` at the folder with the photos")
    good, bad = [], []
    for p in candidates:
        name = p.relative_to(photos).as_posix()
        try:
            with Image.open(p) as im:
                im.load()  # decode fully: a truncated JPEG passes verify() but fails here
                if min(im.size) < 16:
                    raise ValueError(f"only {im.size[0]}x{im.size[1]} px")
            good.append(name)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            bad.append({"name": name, "reason": str(exc) or type(exc).__name__})
    return good, bad


def _run_cancellable(fn: Callable, *args, **kwargs):
    """Run a pycolmap stage in a thread; Ctrl+C cancels it through its CancellationToken and re-raises."""
    token = pycolmap.CancellationToken()
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args, cancellation_token=token, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except KeyboardInterrupt:
        token.cancel()
        thread.join(30)
        raise
    if "error" in result:
        raise result["error"]
    return result.get("value")


def is_degenerate(model) -> bool:
    """True for a model whose points collapsed onto one spot while its cameras are spread out.

    Seen on real tourist photos (pycolmap 4.2.1): a bad initial pair gives 1,000+ "points" within 1e-4 units of
    each other and a sub-pixel reprojection error; only the geometry reveals it.
    """
    xyz = np.array([p.xyz for p in model.points3D.values()])
    centers = np.array([model.image(i).projection_center() for i in model.reg_image_ids()])
    if len(xyz) < 2 or len(centers) < 2:
        return False
    point_extent = np.linalg.norm(np.percentile(xyz, 90, 0) - np.percentile(xyz, 10, 0))
    camera_extent = np.linalg.norm(centers.max(0) - centers.min(0))
    return point_extent < 1e-3 * max(camera_extent, 1e-12)


def choose_matcher(n_photos: int, requested: str, vocab_tree: Path | None) -> str:
    if requested != "auto":
        if requested == "vocabtree" and vocab_tree is None:
            raise ReconstructionError("--matcher vocabtree needs --vocab-tree FILE (COLMAP's vocabulary tree, "
                                      "e.g. vocab_tree_flickr100K_words256K.bin from colmap.github.io)")
        return requested
    if n_photos <= EXHAUSTIVE_LIMIT:
        return "exhaustive"
    if vocab_tree is not None:
        return "vocabtree"
    log.warning("%d photos and no --vocab-tree: falling back to exhaustive matching (%d pairs, slow)",
                n_photos, n_photos * (n_photos - 1) // 2)
    return "exhaustive"


def reconstruct(photos: str | Path, workspace: str | Path, *, matcher: str = "auto",
                vocab_tree: str | Path | None = None, camera_mode: str = "per_image",
                max_image_size: int = 3200, dense: str = "auto", progress: bool = True) -> ReconstructionSummary:
    """Run SfM on the photos in ``photos`` and write the COLMAP workspace ``workspace``.

    ``camera_mode``: "per_image" (tourist photos: every photo its own camera) or "single" (one camera for all).
    ``dense``: "auto" (run when pycolmap has CUDA), "off", or "on" (error without CUDA).
    Re-running on the same workspace reuses the feature database (extraction and matching skip done work).
    """
    from tqdm import tqdm

    photos, ws = Path(photos), Path(workspace)
    names, unreadable = list_photos(photos)
    summary = ReconstructionSummary(photos_found=len(names) + len(unreadable), photos_unreadable=unreadable)
    for bad in unreadable:
        log.warning("skipping unreadable photo %s: %s", bad["name"], bad["reason"])
    if len(names) < MIN_PHOTOS:
        raise ReconstructionError(f"only {len(names)} readable photos in {photos} "
                                  f"({len(unreadable)} unreadable); SfM needs at least {MIN_PHOTOS}")
    if dense == "on" and not pycolmap.has_cuda:
        raise ReconstructionError("--dense on needs a pycolmap built with CUDA (pip's pycolmap is CPU-only); "
                                  "use --dense off, or run COLMAP's patch_match_stereo yourself")
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "rerender").mkdir(exist_ok=True)
    db = ws / "database.db"
    vt = Path(vocab_tree) if vocab_tree else None
    method = choose_matcher(len(names), matcher, vt)
    stages = tqdm(total=5 if dense != "off" else 4, desc="reconstruct", unit="stage", disable=not progress)

    done_stages: set[str] = set()

    def stage(label: str, fn: Callable, *args, **kwargs):
        stages.set_postfix_str(label)
        t0 = time.perf_counter()
        out = _run_cancellable(fn, *args, **kwargs)
        summary.seconds[label] = round(summary.seconds.get(label, 0.0) + time.perf_counter() - t0, 2)
        if label not in done_stages:
            done_stages.add(label)
            stages.update(1)
        return out

    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_RADIAL"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    mode = pycolmap.CameraMode.PER_IMAGE if camera_mode == "per_image" else pycolmap.CameraMode.SINGLE
    stage("features", pycolmap.extract_features, db, photos, image_names=names, camera_mode=mode,
          reader_options=reader, extraction_options=extraction)
    if method == "exhaustive":
        stage("matching", pycolmap.match_exhaustive, db)
    elif method == "vocabtree":
        pairing = pycolmap.VocabTreePairingOptions()
        pairing.vocab_tree_path = str(vt)
        stage("matching", pycolmap.match_vocabtree, db, pairing_options=pairing)
    elif method == "spatial":
        stage("matching", pycolmap.match_spatial, db)
    elif method == "sequential":
        stage("matching", pycolmap.match_sequential, db)
    else:
        raise ReconstructionError(f"unknown matcher {method!r}; use auto, exhaustive, vocabtree, spatial or sequential")

    distorted = ws / "distorted" / "sparse"  # emptied before each mapping: no model of an earlier run mixes in
    models = {}
    for attempt in range(MAPPING_ATTEMPTS):
        if distorted.exists():
            shutil.rmtree(distorted)
        distorted.mkdir(parents=True)
        options = pycolmap.IncrementalPipelineOptions()
        options.random_seed = attempt  # a fixed seed per attempt: reruns are reproducible
        models = stage("mapping", pycolmap.incremental_mapping, db, photos, distorted, options) or {}
        bad = [k for k, m in models.items() if is_degenerate(m)]
        if not bad:
            break
        log.warning("mapping attempt %d gave a degenerate model (all points at one spot); retrying", attempt + 1)
        summary.warnings.append(f"mapping attempt {attempt + 1} was degenerate")
        if attempt == MAPPING_ATTEMPTS - 1:
            models = {k: m for k, m in models.items() if k not in bad}
    summary.models_found = len(models)
    if not models:
        summary.unregistered = names
        _write_summary(ws, summary)
        raise ReconstructionError(no_model_message(names, db, camera_mode, method))
    summary.model_sizes = sorted((m.num_reg_images() for m in models.values()), reverse=True)
    summary.matcher, summary.camera_mode = method, camera_mode
    best_id = max(models, key=lambda k: models[k].num_reg_images())
    model = models[best_id]
    registered = {model.image(i).name for i in model.reg_image_ids()}
    summary.unregistered = [n for n in names if n not in registered]

    undistort = ws / "undistort.tmp"
    if undistort.exists():
        shutil.rmtree(undistort)
    stage("undistortion", pycolmap.undistort_images, undistort, distorted / str(best_id), photos)
    _install_undistorted(undistort, ws)

    if dense != "off":
        if pycolmap.has_cuda:
            _dense(ws, summary, stage)
        else:
            summary.dense_note = ("pycolmap has no CUDA, so no dense cloud: the deep buffers will render the sparse "
                                  "SfM points (a few thousand), with gaps between splats; use larger splats "
                                  "(`rerender dataset --splat-px`) or run COLMAP's dense stereo on a CUDA machine "
                                  "and put its fused.ply at WS/dense/fused.ply")
            stages.update(1)
    else:
        summary.dense_note = "dense reconstruction switched off (--dense off)"
    stages.close()

    final = pycolmap.Reconstruction(str(ws / "sparse" / "0"))
    summary.registered = final.num_reg_images()
    summary.points = final.num_points3D()
    summary.mean_reprojection_error_px = float(final.compute_mean_reprojection_error())
    summary.mean_track_length = float(final.compute_mean_track_length())
    _write_summary(ws, summary)
    return summary


def _install_undistorted(undistort: Path, ws: Path) -> None:
    """Move COLMAP's undistorter output (images/, sparse/ flat, stereo/) into WS, the model under sparse/0."""
    for sub in ("images", "sparse", "stereo"):
        if (ws / sub).exists():
            shutil.rmtree(ws / sub)
    shutil.move(str(undistort / "images"), ws / "images")
    (ws / "sparse" / "0").mkdir(parents=True)
    for f in (undistort / "sparse").iterdir():
        shutil.move(str(f), ws / "sparse" / "0" / f.name)
    if (undistort / "stereo").exists():
        shutil.move(str(undistort / "stereo"), ws / "stereo")
    shutil.rmtree(undistort, ignore_errors=True)


def _dense(ws: Path, summary: ReconstructionSummary, stage: Callable) -> None:
    """Patch-match stereo + fusion into WS/dense/fused.ply (COLMAP expects sparse/ flat: link it for the run)."""
    flat = ws / "dense_work"
    flat.mkdir(exist_ok=True)
    for sub in ("images", "stereo"):
        if not (flat / sub).exists():
            (flat / sub).symlink_to(ws / sub, target_is_directory=True)
    if not (flat / "sparse").exists():
        (flat / "sparse").symlink_to(ws / "sparse" / "0", target_is_directory=True)
    stage("dense", pycolmap.patch_match_stereo, flat)
    (ws / "dense").mkdir(exist_ok=True)
    fused = pycolmap.stereo_fusion(str(ws / "dense" / "fused.ply"), str(flat), output_type="PLY")
    summary.dense = True
    summary.dense_points = int(fused.num_points3D()) if hasattr(fused, "num_points3D") else 0


def _write_summary(ws: Path, summary: ReconstructionSummary) -> None:
    data = asdict(summary)
    for k in ("mean_reprojection_error_px", "mean_track_length"):
        if not np.isfinite(data[k]):
            data[k] = None
    (ws / "rerender").mkdir(parents=True, exist_ok=True)
    (ws / "rerender" / "reconstruction.json").write_text(json.dumps(data, indent=2))
