"""Reconstruction with the generator's true cameras: pycolmap features, matching and triangulation, no pose search.

Why: incremental SfM needs enough overlapping photos to find an initial pair — measured on the generated landmark,
10 photos at 640×480 (random viewpoints on a ±65° arc) gave 6 verified pairs and no initial pair. A CI smoke run
cannot afford the ~40 photos SfM needs on a 2-core CPU, so the ``tiny`` preset keeps every pycolmap step that
produces the point cloud (SIFT, exhaustive matching, geometric verification, triangulation) and takes the poses
from the ground truth, as COLMAP's ``point_triangulator`` does for known poses. Everything downstream reads the
same workspace layout (``images/``, ``sparse/0`` PINHOLE) as after ``rerender reconstruct``. Real runs (``small``
and up) use full SfM; the demo's outputs say which was used.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np


def triangulate_known_poses(collection: Path, workspace: Path, *, max_image_size: int = 3200) -> dict:
    """Build ``workspace`` from the collection's photos and true PINHOLE cameras; returns summary facts."""
    import pycolmap

    from rerender.training.synthetic import load_collection

    collection, ws = Path(collection), Path(workspace)
    truth = {c.name: c for c in load_collection(collection).cameras}
    photos = collection / "images"
    names = sorted(p.name for p in photos.glob("*.jpg") if p.stem in truth)
    if len(names) < 2:
        raise ValueError(f"{photos}: {len(names)} photos of the collection found; triangulation needs at least 2")
    ws.mkdir(parents=True, exist_ok=True)
    db = ws / "database.db"
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if not db.exists():
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.max_image_size = max_image_size
        pycolmap.extract_features(db, photos, image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                                  reader_options=reader, extraction_options=extraction)
        seconds["features"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        pycolmap.match_exhaustive(db)
        seconds["matching"] = round(time.perf_counter() - t0, 2)
    rec = pycolmap.Reconstruction()
    with pycolmap.Database.open(str(db)) as d:
        for image in d.read_all_images():
            c = truth[Path(image.name).stem]
            cam = pycolmap.Camera(model="PINHOLE", width=c.width, height=c.height, params=[c.fx, c.fy, c.cx, c.cy],
                                  camera_id=image.camera_id)
            d.update_camera(cam)  # the true intrinsics, so triangulation and the model agree
            rec.add_camera_with_trivial_rig(cam)
            rec.add_image_with_trivial_frame(pycolmap.Image(name=image.name, camera_id=image.camera_id,
                                                            image_id=image.image_id),
                                             pycolmap.Rigid3d(pycolmap.Rotation3d(np.asarray(c.R)), np.asarray(c.t)))
    t0 = time.perf_counter()
    model_dir = ws / "sparse" / "0"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    result = pycolmap.triangulate_points(rec, db, photos, model_dir)
    seconds["triangulation"] = round(time.perf_counter() - t0, 2)
    images = ws / "images"
    images.mkdir(exist_ok=True)
    for name in names:
        if not (images / name).exists():
            shutil.copy2(photos / name, images / name)
    facts = {"poses": "ground truth (known-pose triangulation)", "registered": result.num_reg_images(),
             "photos": len(names), "points": result.num_points3D(),
             "mean_reprojection_error_px": float(result.compute_mean_reprojection_error()),
             "seconds_by_step": seconds}
    (ws / "rerender").mkdir(exist_ok=True)
    (ws / "rerender" / "reconstruction.json").write_text(json.dumps(facts, indent=2))
    return facts
