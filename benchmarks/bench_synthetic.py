"""Benchmark: seconds per synthetic photo (photo render + ground-truth render + fog + files) at 640×480.

Run: .venv/bin/python benchmarks/bench_synthetic.py [--count 6] [--size 640x480] [--quality final]
Writes benchmarks/results/bench_synthetic.json. The first photo of a process pays Blender's warm-up (shader
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--quality", default="final", choices=("final", "preview"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        info = generate_collection(Path(tmp), count=args.count, width=width, height=height, seed=args.seed,
                                   quality=args.quality, progress=timed_progress("  "))
        wall = time.perf_counter() - start
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
        "cpu_count": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "machine": platform.platform(),
    }
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_synthetic.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
