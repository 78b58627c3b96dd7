"""Benchmark: seconds per synthetic photo (photo render + ground-truth render + fog + files) at 640×480.

Run: .venv/bin/python benchmarks/bench_synthetic.py [--count 6] [--size 640x480] [--quality final] [--sfm] [--keep DIR]
Writes benchmarks/results/bench_synthetic.json. With --sfm it also runs pycolmap (SIFT, exhaustive matching,
incremental mapping) on the photos and reports how many registered and how far the reconstructed camera centers
are from the truth after a similarity alignment (the check that catches mirror-folded reconstructions). The first photo of a process pays Blender's warm-up (shader
compilation); it is reported separately and left out of the median.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from rerender.training.synthetic import generate_collection
from rerender.training.synthetic.collection import timed_progress

RESULTS = Path(__file__).resolve().parent / "results"


def reconstruct_and_compare(info, work: Path) -> dict:
    import numpy as np
    import pycolmap

    from rerender.training.synthetic.geometry import similarity_residuals

    db, sparse = work / "sfm.db", work / "sparse"
    sparse.mkdir(exist_ok=True)
    start = time.perf_counter()
    pycolmap.extract_features(db, info.root / "images")
    pycolmap.match_exhaustive(db)
    models = pycolmap.incremental_mapping(db, info.root / "images", sparse)
    seconds = time.perf_counter() - start
    if not models:
        return {"registered": 0, "of": len(info.cameras), "seconds": seconds}
    model = max(models.values(), key=lambda m: m.num_reg_images())
    estimated, true = [], []
    for image in model.images.values():
        if image.has_pose:
            estimated.append(image.projection_center())
            true.append(info.camera(Path(image.name).stem).center)
    result = {"registered": model.num_reg_images(), "of": len(info.cameras), "points": model.num_points3D(),
              "seconds": seconds}
    if len(true) >= 3:
        true = np.array(true)
        residuals = similarity_residuals(np.array(estimated), true)
        spread = float(np.linalg.norm(true - true.mean(0), axis=1).mean())
        result.update(median_center_error_m=float(np.median(residuals)), max_center_error_m=float(residuals.max()),
                      camera_spread_m=spread, median_error_of_spread=float(np.median(residuals)) / spread)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--quality", default="final", choices=("final", "preview"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sfm", action="store_true", help="also reconstruct with pycolmap and compare poses")
    parser.add_argument("--keep", type=Path, help="write the collection here instead of a temporary folder")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        info = generate_collection(root, count=args.count, width=width, height=height, seed=args.seed,
                                   quality=args.quality, progress=timed_progress("  "), overwrite=True)
        wall = time.perf_counter() - start
        sfm = reconstruct_and_compare(info, Path(tmp)) if args.sfm else None
    times = info.seconds_per_photo
    by_kind: dict[str, list[float]] = {}
    for name, seconds in zip(info.names, times):
        by_kind.setdefault(info.appearances[name].kind, []).append(seconds)
    result = {
        "benchmark": "bench_synthetic", "width": width, "height": height, "quality": args.quality,
        "count": args.count, "first_photo_s": times[0],
        "median_s_per_photo": statistics.median(times[1:] or times),
        "mean_s_per_photo": statistics.mean(times), "wall_s": wall,
        "median_s_by_kind": {k: statistics.median(v) for k, v in by_kind.items()},
        "sfm": sfm, "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "machine": platform.platform(),
    }
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_synthetic.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
