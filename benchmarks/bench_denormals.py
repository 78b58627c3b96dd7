"""Subnormal floats on the CPU: the segmenter features' forward and forward + backward, and the labelling of a real
photo, kept vs flushed to zero.

    .venv/bin/python benchmarks/bench_denormals.py --segmenter-weights ../shared/models/espnet

Why it exists: the segmenter's trained weights (the fallback feature network of the perceptual loss and the style
distance, and the dataset's segmenter) produce subnormal activations and gradients, which x86 CPUs compute in slow
microcode; training/numerics.py flushes them in every training run and photo segmentation. One torch thread, the
quality benchmark's shapes (batch 8 of 96 x 96 crops) and one photo of the shared Sacre-Coeur collection segmented
as the dataset builder does (long side 512), the two modes alternated so a shared machine's noise falls on both
alike; prints the medians and their ratio and writes benchmarks/results/bench_denormals.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name: the subnormal penalty is the microarchitecture's (Intel's Xeons pay it, AMD's Zen not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segmenter-weights", required=True, help="ESPNet weights (file or folder)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--photo", type=Path, default=ROOT.parent / "shared" / "data" / "sacre_coeur" / "sacre_coeur_A.jpg",
                   help="a photo to segment (default: one of the shared Sacre-Coeur photos)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_denormals.json")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from rerender.training.features import load_features
    from rerender.training.segmentation import load_segmenter

    torch.set_num_threads(1)
    features = load_features("segmenter", segmenter_weights=args.segmenter_weights)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    segmenter = load_segmenter(args.segmenter_weights)
    try:
        photo = np.asarray(Image.open(args.photo).convert("RGB"))
    except OSError as exc:
        p.error(f"cannot read the photo to segment ({exc}); pass --photo PATH")

    def forward() -> None:
        with torch.no_grad():
            features(x)

    def forward_backward() -> None:
        xi = x.clone().requires_grad_(True)
        sum(f.square().mean() for f in features(xi)).backward()

    def segment() -> None:  # _predict: segment() itself always flushes
        segmenter._predict(photo)

    works = (("forward", forward), ("forward_backward", forward_backward), ("segment_photo", segment))
    times: dict[str, dict[str, list[float]]] = {w: {"kept": [], "flushed": []} for w, _ in works}
    for work, fn in works:
        for mode in ("kept", "flushed"):  # warm-up of both
            torch.set_flush_denormal(mode == "flushed")
            fn()
        for _ in range(args.repeats):
            for mode in ("kept", "flushed"):
                torch.set_flush_denormal(mode == "flushed")
                t = time.process_time()
                fn()
                times[work][mode].append(time.process_time() - t)
    torch.set_flush_denormal(False)
    result: dict = {"machine": cpu_model(), "torch": torch.__version__,
                    "features": features.weights_name, "batch": args.batch, "size": args.size,
                    "repeats": args.repeats, "photo": args.photo.name, "photo_size": list(photo.shape[1::-1])}
    for work, modes in times.items():
        kept, flushed = statistics.median(modes["kept"]), statistics.median(modes["flushed"])
        result[work] = {"kept_s": round(kept, 4), "flushed_s": round(flushed, 4), "speedup": round(kept / flushed, 2)}
        print(f"{work:17s} subnormals kept {kept * 1000:7.1f} ms   flushed {flushed * 1000:7.1f} ms   "
              f"{kept / flushed:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
