"""Training throughput: optimiser steps per second of stage 2 / stage 3 / the semantic phase at 256² crops,
batch 8, the default (paper-sized) networks and the full VGG19, on a generated 512² dataset.

    python benchmarks/bench_train.py [--device auto|cpu|cuda] [--steps 20] [--warmup 3] [--phases rerender,finetune]
    python benchmarks/bench_train.py --style-photos 1000 [--style-size 128] [--phases none]

``--style-photos N`` also times stage 1's style distances of N photos (features of every photo, then the N x N
Gram distance matrix by matrix products) with the segmenter-encoder features (random VGG19 if no ESPNet weights).

Prints one line per phase and writes benchmarks/results/bench_train.json. VGG weights are random here (no
ImageNet file needed): the cost of a step does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the procedural dataset writer lives with the tests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--phases", default="rerender,finetune,semantic")
    parser.add_argument("--style-photos", type=int, default=0, help="also time stage 1's style distances of N photos")
    parser.add_argument("--style-size", type=int, default=128)
    parser.add_argument("--segmenter-weights", default=None, help="ESPNet weights for the style benchmark")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_train.json")
    args = parser.parse_args()
    os.environ.setdefault("RERENDER_VGG_DOWNLOAD", "0")

    import warnings

    import torch

    from rerender.training.config import TrainConfig
    from rerender.training.distributed import init_from_env
    from rerender.training.trainer import Trainer
    from support_dataset import make_dataset

    warnings.simplefilter("ignore", RuntimeWarning)  # the random-VGG warning: expected here
    ctx = init_from_env(args.device)
    results = []
    style = bench_style_distances(args.style_photos, args.style_size, args.segmenter_weights) \
        if args.style_photos else None
    if args.phases == "none":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"style_distances": style}, indent=2) + "\n")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_dataset(Path(tmp) / "D", n_train=max(8, args.batch_size), n_val=1, height=2 * args.crop,
                               width=2 * args.crop)
        config = TrainConfig(load_size=2 * args.crop, crop_size=args.crop, batch_size=args.batch_size,
                             num_workers=2, cache_views=True, checkpoint_every=10**9, validate_every=10**9,
                             log_every=10**9)
        trainer = Trainer(dataset, Path(tmp) / "run", config, ctx=ctx, progress=False)
        for phase in args.phases.split(","):
            trainer.phase_index, trainer.phase_step = trainer.phases.index(phase), 0
            trainer.run(max_steps=args.warmup)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            trainer.phase_step = 0
            t0 = time.perf_counter()
            trainer.run(max_steps=args.steps)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            row = {"phase": phase, "steps": args.steps, "seconds": dt, "steps_per_s": args.steps / dt,
                   "images_per_s": args.steps * args.batch_size / dt}
            results.append(row)
            print(f"{phase:10s} {row['steps_per_s']:.3f} steps/s  {row['images_per_s']:.1f} images/s "
                  f"({args.steps} steps, batch {args.batch_size}, {args.crop}² crops, {ctx.device})", flush=True)
        info = {"device": str(ctx.device), "gpu": torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda"
                else platform.processor() or platform.machine(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "bf16_autocast": trainer.amp, "batch_size": args.batch_size,
                "crop": args.crop, "network": "paper defaults (U-Net 32..512, depth 6; encoder 64, 3 blocks; "
                "D 3 scales x 64; VGG19 full)", "results": results, "style_distances": style}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


def bench_style_distances(n: int, size: int, segmenter_weights: str | None) -> dict:
    """Seconds for stage 1's style distances of ``n`` random photos: features + Gram matrices, then N x N."""
    import torch

    from rerender.training import losses
    from rerender.training.features import load_features

    features = load_features("auto", width_divisor=4, segmenter_weights=segmenter_weights, download=False)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    grams: list[list[torch.Tensor]] = []
    for start in range(0, n, 16):
        photos = torch.rand(min(16, n - start), 3, size, size, generator=gen) * 2 - 1
        grams.append(losses.style_grams(features, photos))
    stacked = [torch.cat([g[j] for g in grams]) for j in range(len(grams[0]))]
    t1 = time.perf_counter()
    distances = losses.pairwise_style_distances(stacked)
    t2 = time.perf_counter()
    row = {"photos": n, "style_size": size, "features": features.weights_name, "feature_seconds": t1 - t0,
           "distance_seconds": t2 - t1, "total_seconds": t2 - t0, "matrix": list(distances.shape)}
    print(f"style distances: {n} photos at {size}², features {t1 - t0:.1f} s + {n}x{n} distances {t2 - t1:.1f} s "
          f"= {t2 - t0:.1f} s ({features.weights_name.split(' ')[0]})", flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
