"""What CURVE encryption costs per frame: `Client.echo` of deep buffers against two real transport-only
`rerender serve` processes on loopback tcp, one plain and one with CURVE keys (bridge/security.py).

Echo sends the frame to the backend and back, so each sample encrypts and decrypts the payload twice per side.
Samples of the two servers are interleaved (plain, curve, plain, ...) so machine load hits both alike.

Run: .venv/bin/python benchmarks/bench_curve.py [--quick] [--out PATH]
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
import zmq

from rerender.bridge import Client, DeepBuffer, security
from rerender.bridge.launcher import BackendLauncher, serve_command
from rerender.bridge.protocol import buffer_to_wire

RESULTS = Path(__file__).resolve().parent / "results" / "bench_curve.json"


def _free_address() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _deep_buffer(h: int, w: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    buffer = DeepBuffer.empty(h, w)
    buffer.mask[:] = rng.random((h, w)) > 0.3
    buffer.depth[buffer.mask] = rng.uniform(1, 80, int(buffer.mask.sum()))
    buffer.color[buffer.mask] = rng.random((int(buffer.mask.sum()), 3))
    return buffer_to_wire(buffer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, smaller frames")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sizes = {"512x512": (512, 512)} if args.quick else {"512x512": (512, 512), "1080p": (1080, 1920)}
    samples = 8 if args.quick else 30
    result = {"benchmark": "bench_curve", "machine": {"platform": platform.platform(), "zmq": zmq.zmq_version(),
                                                      "pyzmq": zmq.__version__},
              "samples": samples, "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-curve-") as folder:
        keys = Path(folder)
        security.create_key_pair(keys, "server")
        security.create_key_pair(keys / "clients", "bench")
        curve = security.ClientCurve.from_files(keys / "server.key", keys / "clients" / "bench.key_secret")
        plain_addr, curve_addr = _free_address(), _free_address()
        plain = BackendLauncher(serve_command(plain_addr), plain_addr, log_path=keys / "plain.log")
        keyed = BackendLauncher(serve_command(curve_addr, extra_args=(
            "--server-key", str(keys / "server.key_secret"), "--client-keys", str(keys / "clients"))),
            curve_addr, log_path=keys / "curve.log", security=curve)
        with plain, keyed, Client(plain_addr, timeout=60) as a, Client(curve_addr, timeout=60, security=curve) as b:
            for name, (h, w) in sizes.items():
                arrays = _deep_buffer(h, w)
                a.echo(arrays), b.echo(arrays)  # warm-up: connection and first large allocations
                times: dict[str, list[float]] = {"plain": [], "curve": []}
                for _ in range(samples):
                    for label, client in (("plain", a), ("curve", b)):
                        started = time.perf_counter()
                        client.echo(arrays)
                        times[label].append((time.perf_counter() - started) * 1000)
                nbytes = sum(x.nbytes for x in arrays.values())
                medians = {k: statistics.median(v) for k, v in times.items()}
                result["sizes"][name] = {
                    "payload_bytes": nbytes, "plain_median_ms": medians["plain"], "curve_median_ms": medians["curve"],
                    "ratio": medians["curve"] / medians["plain"],
                    "curve_extra_ms": medians["curve"] - medians["plain"]}
                print(f"{name}: {nbytes / 2**20:.1f} MiB echo, plain {medians['plain']:.2f} ms, "
                      f"curve {medians['curve']:.2f} ms (x{medians['curve'] / medians['plain']:.2f}, "
                      f"+{medians['curve'] - medians['plain']:.2f} ms)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
