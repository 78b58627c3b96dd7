"""Time per view of the dataset builder's two costly steps, deep buffer (EEVEE) and segmentation (ESPNet, CPU),
at 512 px and 1024 px long side.

Usage: python benchmarks/bench_dataset.py [--workspace WS] [--views 3]
Without --workspace it reconstructs the Sacré-Cœur photos of ../shared/data into a temporary workspace first.
Writes benchmarks/results/bench_dataset.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--weights", type=Path, default=SHARED / "models" / "espnet")
    ap.add_argument("--views", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    args = ap.parse_args()

    import bpy

    from rerender.addon.colmap_import import import_reconstruction
    from rerender.addon.deep_buffer import render_deep_buffer
    from rerender.training.dataset_builder import buffer_size, load_workspace
    from rerender.training.reconstruct import reconstruct
    from rerender.training.segmentation.espnet_segmenter import EspnetSegmenter

    ws = args.workspace
    if ws is None:
        ws = Path(tempfile.mkdtemp(prefix="bench-ws-"))
        reconstruct(SHARED / "data" / "sacre_coeur", ws, progress=False)
    rec, views = load_workspace(ws)
    views = views[: args.views]
    scene = bpy.data.scenes.new("bench")
    imported = import_reconstruction(ws, scene, load_images=False)
    render_deep_buffer(scene, imported.cameras[views[0].name], resolution=(64, 48))  # first render warms EEVEE up

    results = {"workspace": str(ws), "points": rec.num_points3D(), "views": [v.name for v in views],
               "machine": platform.processor() or platform.machine(), "sizes": {}}
    for size in args.sizes:
        segmenter = EspnetSegmenter(args.weights, max_side=size)
        t_buf, t_seg, coverage = [], [], []
        for v in views:
            w, h = buffer_size(v.camera.width, v.camera.height, size)
            t0 = time.perf_counter()
            buf = render_deep_buffer(scene, imported.cameras[v.name], resolution=(w, h), splat_px=3.0)
            t_buf.append(time.perf_counter() - t0)
            coverage.append(buf.coverage())
            photo = np.asarray(Image.open(ws / "images" / v.name).convert("RGB").resize((w, h)))
            t0 = time.perf_counter()
            segmenter.segment(photo)
            t_seg.append(time.perf_counter() - t0)
        results["sizes"][str(size)] = {
            "deep_buffer_s_per_view": statistics.median(t_buf), "segmentation_s_per_view": statistics.median(t_seg),
            "total_s_per_view": statistics.median(t_buf) + statistics.median(t_seg),
            "mean_coverage": float(np.mean(coverage)),
        }
        r = results["sizes"][str(size)]
        print(f"{size:5d} px: deep buffer {r['deep_buffer_s_per_view']:.2f} s/view, segmentation "
              f"{r['segmentation_s_per_view']:.2f} s/view, total {r['total_s_per_view']:.2f} s/view "
              f"(median of {len(views)}; coverage {r['mean_coverage']:.1%} at splat 3 px)")
    out = ROOT / "benchmarks" / "results" / "bench_dataset.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
