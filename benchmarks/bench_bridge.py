"""Bridge round-trip overhead: the protocol's `echo` op vs a raw ZeroMQ echo of the same bytes.

What it measures, and why: the bridge adds a msgpack header, validation and request-id matching on top of
ZeroMQ. DESIGN §5 claims raw frames make that cheap; this prints (and writes to benchmarks/results/bench_bridge.json)
  * deep buffers at 512x512 and 1920x1080 (wire form: uint8 sRGB color, float16 depth, uint8 label, uint8 mask)
    over tcp and ipc: median/p90 round trip of `Client.echo` (a real `rerender serve --transport-only` process)
    and of a raw DEALER/ROUTER echo process sending the same frames; overhead = bridge - raw;
  * the client-side cost of turning a DeepBuffer into wire arrays (`buffer_to_wire`);
  * round-trip time vs payload size (1 KiB .. 16 MiB) for both.

Run: .venv/bin/python benchmarks/bench_bridge.py [--quick] [--out PATH]
Both servers are separate processes, as in real use (Blender and the backend never share a process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from tqdm import tqdm

from rerender.bridge import BackendUnavailable, Client, DeepBuffer
from rerender.bridge.protocol import buffer_to_wire

RESULTS = Path(__file__).resolve().parent / "results"
_SERVE = "import sys; from rerender import main; sys.exit(main())"


def raw_echo_server(address: str) -> None:
    """ROUTER that sends every multipart message straight back (no header, no validation): the floor."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    while True:
        frames = sock.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"quit":
            break
        sock.send_multipart(frames, copy=False)
    sock.close(linger=0)
    ctx.term()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _addresses(folder: Path) -> dict[str, tuple[str, str]]:
    return {"tcp": (f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"),
            "ipc": (f"ipc://{folder}/bridge.sock", f"ipc://{folder}/raw.sock")}


def _start_bridge(address: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, "serve", "--transport-only", "--address", address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    with Client(address, timeout=1) as client:
        while True:
            try:
                client.hello()
                return proc
            except BackendUnavailable:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError(f"rerender serve did not start on {address}")


def _start_raw(address: str) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_bridge as b; " \
           f"b.raw_echo_server({address!r})"
    proc = subprocess.Popen([sys.executable, "-c", code])
    time.sleep(0.5)
    return proc


def _stop_raw(address: str, proc: subprocess.Popen) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(address)
    sock.send(b"quit")
    sock.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(samples)), "p90_ms": float(np.percentile(samples, 90)),
            "min_ms": float(np.min(samples)), "n": len(samples)}


def _time(fn, iterations: int) -> dict[str, float]:
    return _time_pair(fn, None, iterations)[0]


def _time_pair(fn_a, fn_b, iterations: int) -> tuple[dict[str, float], dict[str, float] | None]:
    """Median/p90 of each; a and b alternate so that load from other processes hits both alike (this machine is
    shared: interleaving keeps the *difference* meaningful even when absolute times wander)."""
    fns = [f for f in (fn_a, fn_b) if f is not None]
    for _ in range(min(3, iterations)):  # warm-up: connections, allocator
        for f in fns:
            f()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(iterations):
        for f, out in zip(fns, samples):
            t = time.perf_counter()
            f()
            out.append((time.perf_counter() - t) * 1000)
    stats = [_stats(s) for s in samples]
    return stats[0], (stats[1] if len(stats) > 1 else None)


def _raw_roundtrip(sock: zmq.Socket, frames: list) -> None:
    sock.send_multipart(frames, copy=False)
    back = sock.recv_multipart(copy=False)
    assert len(back) == len(frames)


def deep_buffer(h: int, w: int) -> DeepBuffer:
    rng = np.random.default_rng(0)
    mask = rng.random((h, w)) > 0.3
    color = np.where(mask[..., None], rng.random((h, w, 3)), 0).astype(np.float16)
    depth = np.where(mask, rng.uniform(1, 100, (h, w)), np.inf).astype(np.float32)
    label = np.where(mask, rng.integers(0, 19, (h, w)), 255).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_bridge.json")
    args = parser.parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    sizes = {"512x512": (512, 512), "1920x1080": (1080, 1920)}
    payload_bytes = [1024, 64 * 1024, 1024**2, 4 * 1024**2, 16 * 1024**2]
    result: dict = {"benchmark": "bench_bridge", "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "zmq": zmq.zmq_version(), "pyzmq": zmq.__version__},
                    "quick": args.quick, "deep_buffers": {}, "to_wire_ms": {}, "payload_sweep": {}}
    for name, (h, w) in sizes.items():
        buf = deep_buffer(h, w)
        result["to_wire_ms"][name] = _time(lambda b=buf: buffer_to_wire(b), max(3, int(20 * scale)))
    with tempfile.TemporaryDirectory(prefix="rrbench") as folder:
        for transport, (bridge_addr, raw_addr) in _addresses(Path(folder)).items():
            bridge_proc, raw_proc = _start_bridge(bridge_addr), _start_raw(raw_addr)
            try:
                client = Client(bridge_addr, timeout=30)
                raw = zmq.Context.instance().socket(zmq.DEALER)
                raw.setsockopt(zmq.LINGER, 0)
                raw.connect(raw_addr)
                for name, (h, w) in tqdm(sizes.items(), desc=f"deep buffers over {transport}"):
                    arrays = buffer_to_wire(deep_buffer(h, w))
                    n = max(5, int((60 if h < 1000 else 30) * scale))
                    nbytes = sum(a.nbytes for a in arrays.values())
                    bridge, floor = _time_pair(lambda a=arrays: client.echo(a),
                                               lambda a=list(arrays.values()): _raw_roundtrip(raw, a), n)
                    result["deep_buffers"][f"{transport} {name}"] = {
                        "payload_bytes": nbytes, "bridge_echo": bridge, "raw_zmq_echo": floor,
                        "overhead_ms": bridge["median_ms"] - floor["median_ms"]}
                for nbytes in tqdm(payload_bytes, desc=f"payload sweep over {transport}"):
                    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
                    n = max(5, int((50 if nbytes < 2**20 else 15) * scale))
                    bridge, floor = _time_pair(lambda p=payload: client.echo({"p": p}),
                                               lambda p=payload: _raw_roundtrip(raw, [p]), n)
                    result["payload_sweep"].setdefault(transport, []).append({
                        "payload_bytes": nbytes, "bridge_median_ms": bridge["median_ms"],
                        "raw_median_ms": floor["median_ms"], "overhead_ms": bridge["median_ms"] - floor["median_ms"]})
                client.close()
                raw.close(linger=0)
            finally:
                bridge_proc.terminate()
                bridge_proc.wait(10)
                _stop_raw(raw_addr, raw_proc)
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def _print(result: dict) -> None:
    print(f"{'case':<22}{'MB':>8}{'bridge ms':>12}{'raw ms':>10}{'overhead':>10}")
    for case, r in result["deep_buffers"].items():
        print(f"{case:<22}{r['payload_bytes'] / 1e6:>8.2f}{r['bridge_echo']['median_ms']:>12.2f}"
              f"{r['raw_zmq_echo']['median_ms']:>10.2f}{r['overhead_ms']:>10.2f}")
    for name, r in result["to_wire_ms"].items():
        print(f"buffer_to_wire {name}: {r['median_ms']:.2f} ms")
    for transport, rows in result["payload_sweep"].items():
        for r in rows:
            print(f"{transport} {r['payload_bytes']:>9} B: bridge {r['bridge_median_ms']:.3f} ms, "
                  f"raw {r['raw_median_ms']:.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
