"""Host-side time of a frame: the server's work around the network, and the Blender side's work around EEVEE.

What it measures, and why: a GPU runs the paper's network at 1080p in a few milliseconds, so the numpy work around
it decided the frame rate. Each section times the code as it was (kept below as ``numpy_*``: the replaced
implementation, to measure against) and the code as it is now, interleaved in one process, on synthetic buffers
(70 % covered):
  * server: wire arrays -> network input -> (network) -> reply pixels. "before" = buffer_from_wire + numpy
    encode_buffers + replicate pad + decode_rgb; "after" = ModelRuntime.rerender_wire's decode + encode + output
    stages (the network's forward is excluded from both: a tiny network runs, its time is not counted), with the
    threads ``--threads`` gives torch;
  * blender: the backend's uint8 image and the deep buffer -> the five render passes Blender gets (image_to_linear
    + pass_pixels before; addon.pixels now, in row bands on bridge.buffers' thread pool), and buffer_to_wire (as it
    was: mask frame, float32 clipping before the cast; now: no redundant mask, row bands, one cast per band);
  * training: main-thread time per step at batch 8, 512² views, while a step of ``--step-ms`` (a stand-in for the
    GPU's work, during which loading can proceed) runs: before = the 2-thread pool loading on demand + numpy
    encoding twice + photo conversion; after = training.loader (2 worker processes, prefetch) + device_inputs.

Run: .venv/bin/python benchmarks/bench_host.py [--quick] [--sizes 512 1080] [--threads 1] [--out PATH]
(``RERENDER_BAND_THREADS=1`` runs the row bands of the Blender side and of the server's encode in one thread, for
comparison.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rerender.backend.bundle import Bundle, BundleConfig, build_networks
from rerender.backend.encoding import InputEncoding
from rerender.backend.runtime import ModelRuntime
from rerender.bridge import protocol as P
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.colors import linear_to_srgb, srgb8_to_linear

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"512": (512, 512), "1080": (1080, 1920)}
TINY = dict(base_channels=4, depth=3, max_channels=8, encoder_channels=4, encoder_blocks=1, latent_size=8)


def synthetic_buffer(h: int, w: int, seed: int = 0) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.7
    return DeepBuffer(np.where(mask[..., None], rng.random((h, w, 3)), 0).astype(np.float16),
                      np.where(mask, rng.uniform(1, 80, (h, w)), np.inf).astype(np.float32),
                      np.where(mask, rng.integers(0, 19, (h, w)), UNKNOWN).astype(np.uint8), mask)


# ---- the replaced numpy implementations (what "before" measures) ------------------------------------------------
def numpy_encode_buffers(enc: InputEncoding, buffers: list[DeepBuffer]) -> torch.Tensor:
    mask = np.stack([b.mask for b in buffers])
    color = linear_to_srgb(np.stack([b.color for b in buffers])) * 2.0 - 1.0
    color[~mask] = -1.0
    d = np.stack([b.depth for b in buffers]).astype(np.float32)
    valid = np.isfinite(d) & (d > 0) & mask
    safe = np.where(valid, d, enc.far)
    t = (1.0 / safe - 1.0 / enc.far) / (1.0 / enc.near - 1.0 / enc.far)
    depth = np.where(valid, np.clip(t, 0.0, 1.0) * 2.0 - 1.0, enc.empty_depth).astype(np.float32)
    labels = enc._label_lut()[np.stack([b.label for b in buffers])].transpose(0, 3, 1, 2)
    parts = [color.transpose(0, 3, 1, 2), depth[:, None], labels, np.where(mask, 1.0, -1.0).astype(np.float32)[:, None]]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32))


def numpy_decode_rgb(t: torch.Tensor) -> np.ndarray:
    a = np.nan_to_num(t.detach().to("cpu", torch.float32).numpy(), nan=-1.0)
    return np.rint((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def old_server_host(rt: ModelRuntime, wire: dict, y: torch.Tensor) -> np.ndarray:
    """The host work of a request as the server did it (the forward itself left out: ``y`` stands for it)."""
    buffer = P.buffer_from_wire(wire)
    x = numpy_encode_buffers(rt.encoding, [buffer])
    h, w = x.shape[-2:]
    m = rt.multiple
    x = F.pad(x, (0, (-w) % m, 0, (-h) % m), mode="replicate")
    return numpy_decode_rgb(y[:, :, :h, :w])


def deep_buffer_path_host(rt: ModelRuntime, wire: dict, y: torch.Tensor) -> np.ndarray:
    """The host work of ``ModelRuntime.rerender`` on ``buffer_from_wire``'s DeepBuffer (the tables, but float16
    linear color and float32 depth rebuilt on the host first): what a server gets without ``rerender_wire``."""
    from rerender.backend.encoding import buffer_tensors
    buffer = P.buffer_from_wire(wire)
    arrays = buffer_tensors([buffer])
    rt.encoding.check_labels(arrays["label"])
    rt.encoding.encode_wire(arrays, multiple=rt.multiple)
    h, w = buffer.shape
    return rt.encoding.decode_output(y[:, :, :h, :w]).numpy()


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def bench_server(sizes: list[str], repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = BundleConfig(name="bench-host", **TINY)
    rt = ModelRuntime(Bundle(cfg, *build_networks(cfg)), "cpu")
    out = {}
    for name in sizes:
        h, w = SIZES[name]
        buffer = synthetic_buffer(h, w)
        wire_old = P.buffer_to_wire(buffer)  # with the mask frame, as clients sent it
        wire_new = P.buffer_to_wire(buffer, send_mask=None)
        z = np.zeros((1, cfg.latent_size), np.float32)
        y = torch.zeros((1, 3, h + (-h) % rt.multiple, w + (-w) % rt.multiple))
        before, after, stages = [], [], {s: [] for s in ("decode", "encode", "forward", "output")}
        via_buffers = []
        for i in range(repeats + 2):
            a = time.perf_counter()
            old_server_host(rt, wire_old, y)
            t_old = (time.perf_counter() - a) * 1000
            a = time.perf_counter()
            deep_buffer_path_host(rt, wire_new, y)
            t_buf = (time.perf_counter() - a) * 1000
            result = rt.rerender_wire([wire_new], z)
            if i >= 2:  # warm-up: tables, reused buffers
                before.append(t_old)
                via_buffers.append(t_buf)
                t = result.timings_ms
                after.append(t["decode"] + t["encode"] + t["output"])
                for s in stages:
                    stages[s].append(t[s])
        out[name] = {"before_ms": median_ms(before), "after_ms": median_ms(after),
                     "via_deep_buffer_ms": median_ms(via_buffers),
                     "speedup": round(median_ms(before) / median_ms(after), 1),
                     "after_stages_ms": {s: median_ms(v) for s, v in stages.items()},
                     "note": "forward is a tiny network's, not counted in before/after"}
        print(f"server host {name}: before {out[name]['before_ms']:.1f} ms, after {out[name]['after_ms']:.1f} ms "
              f"(through a DeepBuffer {out[name]['via_deep_buffer_ms']:.1f} ms) "
              f"(x{out[name]['speedup']}) stages {out[name]['after_stages_ms']}")
    return out


def bench_blender(sizes: list[str], repeats: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from addon import pixels  # numpy only: importable without Blender

    out = {}
    for name in sizes:
        h, w = SIZES[name]
        buffer = synthetic_buffer(h, w)
        image = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
        writer = pixels.PassWriter()
        runs = {"before": lambda: numpy_pass_pixels(buffer, srgb8_to_linear(image)),
                "after": lambda: writer.passes(buffer, image, transparent=False),
                "to_wire_before": lambda: numpy_buffer_to_wire(buffer),
                "to_wire_after": lambda: P.buffer_to_wire(buffer, send_mask=None)}
        samples = {k: [] for k in runs}
        for i in range(repeats + 2):
            for k, fn in runs.items():
                a = time.perf_counter()
                fn()
                if i >= 2:
                    samples[k].append((time.perf_counter() - a) * 1000)
        med = {k: median_ms(v) for k, v in samples.items()}
        out[name] = {"passes_before_ms": med["before"], "passes_after_ms": med["after"],
                     "to_wire_before_ms": med["to_wire_before"], "to_wire_after_ms": med["to_wire_after"],
                     "total_before_ms": round(med["before"] + med["to_wire_before"], 3),
                     "total_after_ms": round(med["after"] + med["to_wire_after"], 3)}
        print(f"blender host {name}: passes {med['before']:.1f} -> {med['after']:.1f} ms, buffer_to_wire "
              f"{med['to_wire_before']:.1f} -> {med['to_wire_after']:.1f} ms")
    return out


def numpy_buffer_to_wire(buffer: DeepBuffer) -> dict[str, np.ndarray]:
    """buffer_to_wire as it was: the mask frame always, depth clipped in float32 before the float16 cast."""
    d = buffer.depth
    depth = np.where(np.isfinite(d), np.clip(d, -P.FLOAT16_MAX, P.FLOAT16_MAX), d).astype(np.float16)
    return {"color": P.color_to_wire(buffer.color), "depth": depth, "label": np.ascontiguousarray(buffer.label),
            "mask": buffer.mask.view(np.uint8)}


def numpy_pass_pixels(buffer: DeepBuffer, rgb_linear: np.ndarray) -> dict[str, np.ndarray]:
    """The add-on's pass assembly as it was (five float32 arrays, each flipped and copied)."""
    h, w = buffer.shape
    mask = buffer.mask.astype(np.float32)
    alpha = np.ones((h, w), np.float32)
    depth = np.where(buffer.mask & np.isfinite(buffer.depth), buffer.depth, 1.0e10).astype(np.float32)
    passes = {"Combined": np.concatenate([rgb_linear.astype(np.float32), alpha[..., None]], axis=2),
              "Depth": depth[..., None], "Albedo": buffer.color.astype(np.float32),
              "Label": buffer.label.astype(np.float32)[..., None], "Mask": mask[..., None]}
    return {n: np.ascontiguousarray(a[::-1]) for n, a in passes.items()}


def bench_training(steps: int, step_ms: float, workers: int) -> dict:
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support_dataset import make_dataset
    from rerender.training.data import AlignedDataset, EpochSampler, batch_buffers, collate, load_view, square_view
    from rerender.training.loader import BatchIterator, device_inputs

    root = make_dataset(Path(tempfile.mkdtemp(prefix="bench_host")) / "D", n_train=16, n_val=1, height=512, width=512)
    dataset = AlignedDataset(root, "train", 512)
    encoding = InputEncoding.for_classes(dataset.classes)
    pool = ThreadPoolExecutor(workers)

    def old_item(i: int) -> dict:
        v = square_view(load_view(dataset.records[i]), 512)
        b = v.buffer
        return {"index": i, "name": v.name, "photo": v.photo, "color": b.color, "depth": b.depth, "label": b.label,
                "mask": b.mask, "segmentation": v.segmentation}

    def old_inputs(batch: dict) -> None:
        buffers = batch_buffers(batch)
        seg = [DeepBuffer(b.color, b.depth, s, b.mask) for b, s in zip(buffers, batch["segmentation"])]
        numpy_encode_buffers(encoding, seg)
        numpy_encode_buffers(encoding, buffers)  # the trainer encoded S's input a second time
        torch.from_numpy(np.ascontiguousarray(batch["photo"])).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def measure(next_batch, inputs) -> dict:
        main, waits = [], []
        for i in range(steps + 1):
            a = time.perf_counter()
            batch = next_batch()
            b = time.perf_counter()
            inputs(batch)
            c = time.perf_counter()
            time.sleep(step_ms / 1000)  # the device's step: loading in workers goes on meanwhile
            if i:
                main.append((c - a) * 1000)
                waits.append((b - a) * 1000)
        work = [m - w for m, w in zip(main, waits)]
        return {"main_thread_ms_per_step": median_ms(main), "waiting_for_data_ms_per_step": median_ms(waits),
                "main_thread_work_ms_per_step": median_ms(work)}

    old_sampler = EpochSampler(len(dataset), 8, seed=0)
    before = measure(lambda: collate(list(pool.map(old_item, old_sampler.next_batch()))), old_inputs)
    after = {}
    for variant, worker_encoding in (("workers_encode", encoding), ("main_thread_encodes", None)):
        loader = BatchIterator(dataset, EpochSampler(len(dataset), 8, seed=0), workers, device="cpu",
                               encoding=worker_encoding, use_semantics=True)
        try:
            after[variant] = measure(lambda: next(loader), lambda b: device_inputs(b, encoding, "cpu", True))
        finally:
            loader.close()
    pool.shutdown()
    out = {"batch": 8, "size": 512, "workers": workers, "simulated_step_ms": step_ms, "steps": steps,
           "before": before, "after": after}
    print(f"training host per step: before {before}, after {after}")
    return out


def bench_compression(repeats: int) -> dict:
    """Request frames of a 1080p deep buffer through each codec: size, compress and decompress time, and the
    time 1 GbE would need for the bytes (computed at 117 MB/s, not measured: no second machine here)."""
    from rerender.bridge import compression
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support_dataset import render_view

    landmark = render_view(1080, 1920, shift=0, light=0, person=True, rng=np.random.default_rng(0))[1]
    out = {}
    for kind, buffer in (("random points (worst case)", synthetic_buffer(1080, 1920)),
                         ("procedural landmark", landmark)):
        wire = P.buffer_to_wire(buffer, send_mask=None)
        raw = sum(a.nbytes for a in wire.values())
        rows = {"none": {"bytes": raw, "one_gbe_ms": round(raw / 117e3, 1)}}
        codecs = {"zlib": (lambda a: compression.compress("zlib", a),
                           lambda p, n: compression.decompress("zlib", p, n))}
        try:  # not a bridge codec (the bridge keeps to the standard library): measured for comparison
            import zstandard
            codecs["zstd (not on the wire)"] = (lambda a: zstandard.ZstdCompressor(level=1).compress(a.tobytes()),
                                                lambda p, n: zstandard.ZstdDecompressor().decompress(p))
        except ImportError:
            pass
        for codec, (pack, unpack) in codecs.items():
            packed = [pack(a) for a in wire.values()]
            comp = [median_ms([_ms(lambda: [pack(a) for a in wire.values()]) for _ in range(repeats)])]
            dec = median_ms([_ms(lambda: [unpack(p, a.nbytes) for p, a in zip(packed, wire.values())])
                             for _ in range(repeats)])
            size = sum(len(p) for p in packed)
            rows[codec] = {"bytes": size, "ratio": round(raw / size, 2), "compress_ms": comp[0],
                           "decompress_ms": dec, "one_gbe_ms": round(size / 117e3, 1),
                           "one_gbe_total_ms": round(size / 117e3 + comp[0] + dec, 1)}
        out[kind] = rows
        print(f"compression 1080p, {kind}: {rows}")
    return out


def _ms(fn) -> float:
    a = time.perf_counter()
    fn()
    return (time.perf_counter() - a) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats (a smoke run)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--sections", nargs="+", default=["server", "blender", "training", "compression"],
                        choices=["server", "blender", "training", "compression"])
    parser.add_argument("--step-ms", type=float, default=300.0, help="training: the stand-in device step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: what one worker thread gets)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_host.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 15
    result = {"benchmark": "bench_host", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "numpy": np.__version__, "torch_threads": args.threads},
              "repeats": repeats}
    from rerender.bridge.allocator import keep_frame_buffers
    result["malloc"] = keep_frame_buffers()  # as the server and client do at start
    if "server" in args.sections:
        result["server"] = bench_server(args.sizes, repeats)
    if "blender" in args.sections:
        result["blender"] = bench_blender(args.sizes, repeats)
    if "compression" in args.sections:
        result["compression"] = bench_compression(3 if args.quick else 7)
    if "training" in args.sections:
        result["training"] = bench_training(4 if args.quick else 12, args.step_ms, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
