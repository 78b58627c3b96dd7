"""What the COLMAP binary pre-check (addon/colmap_checks.py) costs next to pycolmap's own read, on a large valid
model, and how fast it refuses damaged ones.

Run: ``.venv/bin/python benchmarks/bench_colmap_checks.py [--points 1000000] [--repeat 3]``. Prints medians and
writes benchmarks/results/bench_colmap_checks.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_model(folder: Path, n_points: int, seed: int = 0) -> None:
    """A valid binary model: 2 PINHOLE cameras and images that each observe every one of ``n_points`` points (so
    each point has a track of 2), plus rigs.bin and frames.bin. pycolmap writes cameras, rigs and frames; images and
    points are written by hand (adding a million observations through pycolmap's Python API takes minutes)."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    poses = {}
    for i in (1, 2):
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=640, height=480,
                                                        params=[500.0, 500.0, 320.0, 240.0], camera_id=i))
        poses[i] = pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([0.0, 0.0, float(i)]))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{i}.jpg", camera_id=i, image_id=i), poses[i])
    folder.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(folder))
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n_points + 1, dtype=np.uint64)
    observation = np.dtype([("xy", "<f8", 2), ("point3D_id", "<u8")])
    with open(folder / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", 2))
        for i in (1, 2):
            f.write(struct.pack("<I4d3dI", i, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, float(i), i) + f"{i}.jpg".encode() + b"\0")
            obs = np.zeros(n_points, observation)
            obs["xy"] = rng.uniform(0, 480, (n_points, 2))
            obs["point3D_id"] = ids
            f.write(struct.pack("<Q", n_points))
            obs.tofile(f)
    record = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("error", "<f8"), ("n", "<u8"),
                       ("track", "<u4", (2, 2))])
    points = np.zeros(n_points, record)
    points["id"] = ids
    points["xyz"] = rng.normal(size=(n_points, 3))
    points["n"] = 2
    points["track"][:, 0, 0], points["track"][:, 1, 0] = 1, 2  # (image id, index of its 2-D point)
    points["track"][:, 0, 1] = points["track"][:, 1, 1] = np.arange(n_points)
    with open(folder / "points3D.bin", "wb") as f:
        f.write(struct.pack("<Q", n_points))
        points.tofile(f)


def median_seconds(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import pycolmap

    from rerender.addon.colmap_checks import ColmapImportError, check_binary_model

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        write_model(model, args.points)
        size = (model / "points3D.bin").stat().st_size
        check_s = median_seconds(lambda: check_binary_model(model), args.repeat)
        read_s = median_seconds(lambda: pycolmap.Reconstruction().read_binary(str(model)), args.repeat)
        data = (model / "points3D.bin").read_bytes()
        refused = {}
        for name, damaged in (("truncated half", data[: len(data) // 2]),
                              ("truncated at 90 %", data[: len(data) * 9 // 10]),
                              ("declares 2**40 points", struct.pack("<Q", 2 ** 40) + data[8:])):
            (model / "points3D.bin").write_bytes(damaged)
            started = time.perf_counter()
            try:
                check_binary_model(model)
            except ColmapImportError:
                refused[name] = time.perf_counter() - started
            else:
                print(f"not refused: {name}", file=sys.stderr)
                return 1
    result = {"points": args.points, "track_length": 2, "points3D_bytes": size,
              "precheck_median_s": check_s, "pycolmap_read_median_s": read_s,
              "precheck_over_read": check_s / read_s, "refused_s": refused, "repeat": args.repeat}
    print(f"{args.points:,} points ({size / 2**20:.0f} MiB points3D.bin): pre-check {check_s:.3f} s, pycolmap read "
          f"{read_s:.3f} s (pre-check = {check_s / read_s:.0%} of the read); damaged files refused in "
          + ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in refused.items()))
    out = Path(__file__).resolve().parent / "results" / "bench_colmap_checks.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
