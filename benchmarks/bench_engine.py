"""Per-frame cost of the Neural Rerender engine, step by step, against a real `rerender serve`.

Renders a short animation (moving camera) of a synthetic point wall through `bpy.ops.render.render(animation=True)`
at a few sizes, with the small test bundle on the CPU (the network cost here says nothing about a GPU; the
engine's own overhead — connect, deep buffer, passes — is what this measures). Prints a table and writes
benchmarks/results/bench_engine.json.

    .venv/bin/python benchmarks/bench_engine.py [--sizes 128x96,256x192] [--frames 3] [--points 50000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x96,256x192", help="comma-separated WxH (multiples of 4)")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--points", type=int, default=50_000)
    args = parser.parse_args()

    import bpy  # first: it puts Blender's script modules (addon_utils) on sys.path
    import addon_utils
    from support_backend import BackendProcess, free_tcp_address, make_small_bundle
    from tqdm import tqdm

    from rerender.addon import engine, points, properties

    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    bundle = make_small_bundle(work / "bundle")
    results = {"points": args.points, "frames": args.frames, "device": "cpu", "bundle": "test-small", "sizes": {}}
    with BackendProcess(bundle, free_tcp_address()) as backend:
        addon_utils.enable("rerender.addon", default_set=True)
        bpy.context.preferences.addons["rerender.addon"].preferences.address = backend.address
        scene = bpy.context.scene
        scene.render.engine = "RERENDER"
        scene.render.resolution_percentage = 100
        scene.render.use_compositing = False
        rng = np.random.default_rng(0)
        n = args.points
        xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 6, n), rng.uniform(-2, 2, n)], axis=1)
        points.create_point_cloud("bench cloud", xyz, rng.uniform(0, 1, (n, 3)), rng.integers(0, 19, n),
                                  scene.collection)
        cam = bpy.data.objects.new("bench cam", bpy.data.cameras.new("bench cam"))
        cam.rotation_euler = (math.pi / 2, 0, 0)
        scene.collection.objects.link(cam)
        scene.camera = cam
        cam.location.x = 0.0
        cam.keyframe_insert("location", index=0, frame=1)
        cam.location.x = 1.0
        cam.keyframe_insert("location", index=0, frame=args.frames)
        properties.set_latent(scene, np.zeros(8))
        scene.frame_start, scene.frame_end = 1, args.frames
        scene.render.image_settings.media_type = "MULTI_LAYER_IMAGE"
        bpy.ops.render.render(write_still=False)  # warm-up: first EEVEE render of a process costs ~1 s more
        for size in tqdm(args.sizes.split(","), desc="sizes"):
            w, h = (int(v) for v in size.split("x"))
            scene.render.resolution_x, scene.render.resolution_y = w, h
            per_frame = []
            for frame in range(1, args.frames + 1):
                scene.frame_set(frame)
                scene.render.filepath = str(work / f"{size}_{frame:04d}.exr")
                bpy.ops.render.render(write_still=True)
                per_frame.append(dict(engine.last_frame_timings))
            summary = {k: statistics.median(t[k] for t in per_frame) for k in per_frame[0]}
            results["sizes"][size] = {"median_s": summary, "frames": per_frame}
            print(f"{size:>9}: total {summary['total']:.3f} s  deep buffer {summary['deep_buffer']:.3f} s  "
                  f"backend {summary['backend']:.3f} s  passes {summary['write_passes'] * 1000:.1f} ms  "
                  f"connect {summary['connect'] * 1000:.1f} ms")
        addon_utils.disable("rerender.addon", default_set=True)
    out = ROOT / "benchmarks" / "results" / "bench_engine.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
