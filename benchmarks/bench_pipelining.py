"""Wall time of an animation render with and without pipelining, against a backend with a fixed delay.

Pipelining (addon/batch.py) rasterizes frame N+1's deep buffer with EEVEE while the backend works on frame N, so a
frame should cost about max(EEVEE, backend) instead of EEVEE + backend. This script measures it for real: the
Neural Rerender engine in bpy, a `rerender serve` subprocess with a tiny bundle and `--simulate-latency-ms`, an
N-frame animation of a moving camera and a keyed look, rendered once with `scene.rerender_batch.pipelining` off
and once on (off first, so the on run cannot profit from a warmer process).

    .venv/bin/python benchmarks/bench_pipelining.py [--frames 30] [--latency-ms 1000] [--size 128x96]

Prints the numbers and writes benchmarks/results/bench_pipelining.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "bench_pipelining.json"


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def start_backend(bundle: Path, address: str, latency_ms: float, log: Path):
    """`rerender serve` with the tiny bundle and a simulated GPU latency, started by the project's launcher."""
    from rerender.bridge.launcher import BackendLauncher, serve_command

    launcher = BackendLauncher(serve_command(address, bundle=bundle, device="cpu",
                                             extra_args=("--simulate-latency-ms", str(latency_ms))),
                               address, log_path=log, start_timeout=120)
    launcher.start()
    return launcher


def build_shot(frames: int, size: tuple[int, int], out_dir: Path):
    import bpy
    from rerender.addon import points, properties

    scene = bpy.data.scenes.new("bench shot")
    scene.render.engine = "RERENDER"
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.use_compositing = False
    scene.render.image_settings.file_format = "PNG"
    scene.frame_start, scene.frame_end = 1, frames
    rng = np.random.default_rng(0)
    n = 20000
    xyz = np.stack([rng.uniform(-3, 3, n), rng.uniform(4, 6, n), rng.uniform(-2, 2, n)], axis=1)
    points.create_point_cloud("bench cloud", xyz, rng.random((n, 3)).astype(np.float32), np.full(n, 2),
                              scene.collection)
    cam = bpy.data.objects.new("bench cam", bpy.data.cameras.new("bench cam"))
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.rerender.point_size_auto = False
    scene.rerender.point_size = 1.5
    for frame, x, look in ((1, -1.0, -1.0), (frames, 1.0, 1.0)):
        cam.location.x = x
        cam.keyframe_insert("location", index=0, frame=frame)
        properties.set_latent(scene, np.full(8, look))
        properties.key_latent(scene, frame)
    return scene


def render(scene, out_dir: Path, pipelining: bool) -> dict:
    import bpy
    from rerender.addon import batch

    scene.rerender_batch.pipelining = pipelining
    scene.render.filepath = str(out_dir / ("on_" if pipelining else "off_"))
    batch.pipeline.hits = batch.pipeline.misses = 0
    started = time.perf_counter()
    bpy.ops.render.render(scene=scene.name, animation=True)
    wall = time.perf_counter() - started
    written = len(list(out_dir.glob(("on_" if pipelining else "off_") + "*.png")))
    return {"wall_s": round(wall, 3), "s_per_frame": round(wall / (scene.frame_end - scene.frame_start + 1), 3),
            "frames_written": written, "prefetch_hits": batch.pipeline.hits,
            "frame_times_s": [round(t, 3) for t in batch.clock.frame_times]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--latency-ms", type=float, default=1000.0)
    parser.add_argument("--size", default="128x96", help="render size WxH (multiples of 4)")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    import bpy  # first: it puts Blender's own modules (addon_utils) on the path
    import addon_utils
    from rerender.backend.bundle import init_bundle

    with tempfile.TemporaryDirectory(prefix="bench-pipelining-") as tmp:
        tmp = Path(tmp)
        init_bundle(tmp / "bundle", base_channels=4, depth=2, max_channels=16, latent_size=8, encoder_channels=8,
                    encoder_blocks=1, training_resolution=(32, 32), name="bench-small")
        address = free_address()
        backend = start_backend(tmp / "bundle", address, args.latency_ms, tmp / "serve.log")
        try:
            addon_utils.enable("rerender.addon", default_set=True)
            prefs = bpy.context.preferences.addons["rerender.addon"].preferences
            prefs.address, prefs.timeout = address, 60.0
            scene = build_shot(args.frames, size, tmp)
            # warm-up: the first EEVEE render of a process costs about a second more
            scene.render.filepath = str(tmp / "warm.png")
            bpy.ops.render.render(scene=scene.name, write_still=True)
            off = render(scene, tmp, pipelining=False)
            on = render(scene, tmp, pipelining=True)
        finally:
            backend.stop(20)
    result = {
        "benchmark": "bench_pipelining", "frames": args.frames, "size": list(size),
        "backend_latency_ms": args.latency_ms, "points": 20000,
        "without_pipelining": off, "with_pipelining": on,
        "speedup": round(off["wall_s"] / on["wall_s"], 3),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, bpy {bpy.app.version_string}",
    }
    print(f"{args.frames} frames at {size[0]}x{size[1]}, backend latency {args.latency_ms:g} ms")
    print(f"  without pipelining: {off['wall_s']:.1f} s ({off['s_per_frame']:.2f} s/frame)")
    print(f"  with pipelining:    {on['wall_s']:.1f} s ({on['s_per_frame']:.2f} s/frame, "
          f"{on['prefetch_hits']} prefetched frames)")
    print(f"  speedup x{result['speedup']:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
