"""Rerender (and encode) latency/throughput of the default-size (paper) networks through ModelRuntime.

Untrained weights: timing does not depend on the weights' values. Prints a table and writes
benchmarks/results/bench_rerender[_<device>].json.

    .venv/bin/python benchmarks/bench_rerender.py                 # CPU, 256^2 and 512^2, batch 1 and 2
    .venv/bin/python benchmarks/bench_rerender.py --device cuda --sizes 256 512 1024 --batches 1 8
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rerender.backend.bundle import Bundle, BundleConfig, build_networks
from rerender.backend.networks import EqualizedConv2d, EqualizedLinear
from rerender.backend.runtime import ModelRuntime
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN

RESULTS = Path(__file__).resolve().parent / "results"


def synthetic_buffer(h: int, w: int, seed: int) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.7
    return DeepBuffer(np.where(mask[..., None], rng.random((h, w, 3)), 0).astype(np.float16),
                      np.where(mask, rng.uniform(1, 80, (h, w)), np.inf).astype(np.float32),
                      np.where(mask, rng.integers(0, 19, (h, w)), UNKNOWN).astype(np.uint8), mask)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn, device: str, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def conv_gflops(module: torch.nn.Module, *inputs: torch.Tensor) -> float:
    """Multiply-adds x 2 of every convolution and linear map for these inputs, counted on the meta device (free)."""
    meta = copy.deepcopy(module).to("meta")
    total = 0

    def hook(layer, args, out):
        nonlocal total
        w = layer.weight
        total += 2 * out.numel() * (w[0].numel())

    for layer in meta.modules():
        if isinstance(layer, (EqualizedConv2d, EqualizedLinear)):
            layer.register_forward_hook(hook)
    with torch.no_grad():
        meta(*(t.to("meta") for t in inputs))
    return total / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square frame sides")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="batch sizes")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    ap.add_argument("--no-encoder", action="store_true", help="skip the appearance encoder")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: results/bench_rerender[_dev].json)")
    args = ap.parse_args()

    torch.manual_seed(0)
    config = BundleConfig(name="bench (untrained, paper sizes)")
    bundle = Bundle(config, *build_networks(config))
    rt = ModelRuntime(bundle, device=args.device, batch_size=max(args.batches))
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in bundle.modules().items()}
    cases = [(op, s, b) for op in (["rerender"] + ([] if args.no_encoder else ["encode"]))
             for s in args.sizes for b in args.batches]
    rows = []
    for op, size, batch in tqdm(cases, desc="bench", unit="case"):
        bufs = [synthetic_buffer(size, size, i) for i in range(batch)]
        channels = config.encoding.channels(config.use_semantics)
        if op == "rerender":
            gflops = conv_gflops(bundle.rerenderer, torch.zeros(1, channels, size, size),
                                 torch.zeros(1, config.latent_size))
            z = np.random.default_rng(0).standard_normal((batch, config.latent_size)).astype(np.float32)
            fn = lambda: rt.rerender(bufs, z)  # noqa: E731
        else:
            gflops = conv_gflops(bundle.encoder, torch.zeros(1, 3 + channels, size, size))
            photos = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(batch)]
            fn = lambda: rt.encode(photos, bufs)  # noqa: E731
        times = time_call(fn, rt.device, args.repeats, args.warmup)
        med = statistics.median(times)
        rows.append({"op": op, "size": size, "batch": batch, "median_s": med, "min_s": min(times),
                     "times_s": times, "ms_per_frame": 1000 * med / batch,
                     "gflop_per_frame": gflops, "gflop_per_s": gflops * batch / med, "frames_per_s": batch / med})
        tqdm.write(f"{op:9s} {size:5d}^2 batch {batch:2d}: {1000 * med:9.1f} ms/call  "
                   f"{1000 * med / batch:9.1f} ms/frame  {batch / med:7.2f} frames/s")
    result = {
        "benchmark": "bench_rerender", "device": rt.device,
        "device_name": torch.cuda.get_device_name(0) if rt.device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "autocast": str(rt.autocast_dtype) if rt.autocast_dtype else None,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "parameters": params, "note": "end to end through ModelRuntime: numpy DeepBuffer encoding, host<->device "
        "copies, padding, network, decode to uint8; untrained paper-size weights", "results": rows,
    }
    suffix = "" if rt.device == "cpu" else "_" + rt.device.split(":")[0]
    out = args.out or RESULTS / f"bench_rerender{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
