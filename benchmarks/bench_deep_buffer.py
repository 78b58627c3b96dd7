"""Benchmark: EEVEE deep-buffer time per frame (512x512 and 1920x1080, 200k and 2M points) and COLMAP import time
for 2M points (dense fused.ply) — on the real Blender through the bpy wheel.

    .venv/bin/python benchmarks/bench_deep_buffer.py [--points 200000 2000000] [--frames 2]

Prints a table and writes benchmarks/results/bench_deep_buffer.json. Ctrl+C stops it cleanly.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SIZES = ((512, 512), (1920, 1080))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--frames", type=int, default=2, help="timed frames per case (after one warm-up)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_deep_buffer.json")
    args = parser.parse_args(argv)

    import bpy

    from rerender.addon import colmap_import as ci
    from rerender.addon import deep_buffer as db
    from support_colmap import facade_points, write_fused_ply, write_tiny_workspace

    results = {"machine": platform.processor() or platform.machine(), "blender": bpy.app.version_string,
               "renderer": "EEVEE (Mesa llvmpipe, CPU)", "frames_per_case": args.frames, "cases": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.points:
                ws = write_tiny_workspace(Path(tmp) / f"ws{n}", n_points=200, with_images=False)
                xyz, rgb = facade_points(n - 1, seed=1)
                write_fused_ply(ws.workspace / "dense" / "fused.ply", xyz, rgb)
                bpy.ops.wm.read_factory_settings(use_empty=True)
                scene = bpy.context.scene
                t0 = time.perf_counter()
                imported = ci.import_reconstruction(ws.workspace, scene, load_images=False)
                import_s = time.perf_counter() - t0
                print(f"{n:>9,} points: import {import_s:.2f} s ({imported.source})", flush=True)
                cam = imported.cameras["a.jpg"]
                for w, h in SIZES:
                    db.render_deep_buffer(scene, cam, resolution=(w, h))  # warm-up (shader compilation)
                    times = []
                    for _ in tqdm(range(args.frames), desc=f"{n:,} pts {w}x{h}", leave=False):
                        t0 = time.perf_counter()
                        buf = db.render_deep_buffer(scene, cam, resolution=(w, h))
                        times.append(time.perf_counter() - t0)
                    case = {"points": n, "width": w, "height": h, "import_s": round(import_s, 3),
                            "frame_s_median": round(float(np.median(times)), 3),
                            "frame_s_all": [round(t, 3) for t in times], "coverage": round(buf.coverage(), 3)}
                    results["cases"].append(case)
                    print(f"{n:>9,} points {w:>4}x{h:<4}: {case['frame_s_median']:.2f} s/frame "
                          f"(coverage {case['coverage']:.2f})", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
