"""Bridge round-trip overhead: the protocol's `echo` op vs a raw ZeroMQ echo of the same bytes.

What it measures, and why: the bridge adds a msgpack header, validation and request-id matching on top of
ZeroMQ. docs/design.md §5 claims raw frames make that cheap; this prints (and writes to
benchmarks/results/bench_bridge.json)
  * deep buffers at 512x512 and 1920x1080 (wire form: uint8 sRGB color, float16 depth, uint8 label, uint8 mask)
    over tcp and ipc: median/p90 round trip of `Client.echo` (a real `rerender serve --transport-only` process)
    and of a raw DEALER/ROUTER echo process sending the same frames; overhead = bridge - raw;
  * the same echo against a second server started with ``RERENDER_KEEP_FRAME_BUFFERS=0`` (glibc's default malloc
    thresholds, as before bridge/allocator.py), and each server's minor page faults per message;
  * the client-side cost of turning a DeepBuffer into wire arrays (`buffer_to_wire`);
  * round-trip time vs payload size (1 KiB .. 16 MiB) for both;
  * CPU time per deep-buffer echo, of the server process (all its threads, ZeroMQ's I/O thread included) and of
    this client process, bridge vs raw: unlike the wall-clock round trip, CPU time hardly moves when another job
    shares the cores, so it shows what the protocol itself costs on a loaded machine (Linux /proc schedstat).

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

from rerender.bridge import Client, DeepBuffer
from rerender.bridge.launcher import BackendLauncher, serve_command
from rerender.bridge.protocol import buffer_to_wire

RESULTS = Path(__file__).resolve().parent / "results"


def raw_echo_server(address: str) -> None:
    """ROUTER that sends every multipart message straight back (no header, no validation): the floor. It gets
    the same malloc settings as the bridge's processes (bridge/allocator.py), so the two differ by the protocol."""
    from rerender.bridge.allocator import keep_frame_buffers

    keep_frame_buffers()
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


def _start_bridge(address: str, keep_frame_buffers: bool = True) -> BackendLauncher:
    """A transport-only `rerender serve`, started by the project's launcher (waits for its hello)."""
    env = dict(os.environ, RERENDER_KEEP_FRAME_BUFFERS="1" if keep_frame_buffers else "0")
    launcher = BackendLauncher(serve_command(address), address, start_timeout=60, env=env)
    launcher.start()
    return launcher


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
    stats = _time_many([f for f in (fn_a, fn_b) if f is not None], iterations)
    return stats[0], (stats[1] if len(stats) > 1 else None)


def _minor_faults(pid: int | None) -> int | None:
    """Minor page faults of a process so far (Linux /proc; None elsewhere)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def _cpu_ns(pid: int | str) -> int | None:
    """CPU time of every thread of a process so far, in ns (/proc/PID/task/*/schedstat; None where there is none)."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir())
    except (OSError, ValueError, IndexError):
        return None


def _cpu_per_call(fn, pid: int, iterations: int) -> dict[str, float] | None:
    """CPU ms per call of ``fn`` in the server process ``pid`` and in this process (calls in a row)."""
    fn()
    before = (_cpu_ns(pid), _cpu_ns("self"))
    for _ in range(iterations):
        fn()
    after = (_cpu_ns(pid), _cpu_ns("self"))
    if None in before or None in after:
        return None
    return {"server_cpu_ms": (after[0] - before[0]) / iterations / 1e6,
            "client_cpu_ms": (after[1] - before[1]) / iterations / 1e6}


def _time_many(fns: list, iterations: int) -> list[dict[str, float]]:
    """Median/p90 of each; the functions alternate so that load from other processes hits them alike (this machine
    is shared: interleaving keeps the *differences* meaningful even when absolute times wander)."""
    for _ in range(min(3, iterations)):  # warm-up: connections, allocator
        for f in fns:
            f()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(iterations):
        for f, out in zip(fns, samples):
            t = time.perf_counter()
            f()
            out.append((time.perf_counter() - t) * 1000)
    return [_stats(s) for s in samples]


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
            untuned_addr = bridge_addr.replace("bridge.sock", "untuned.sock") if transport == "ipc" \
                else f"tcp://127.0.0.1:{_free_port()}"
            bridge_proc, raw_proc = _start_bridge(bridge_addr), _start_raw(raw_addr)
            untuned_proc = _start_bridge(untuned_addr, keep_frame_buffers=False)
            try:
                client = Client(bridge_addr, timeout=30)
                untuned = Client(untuned_addr, timeout=30)
                raw = zmq.Context.instance().socket(zmq.DEALER)
                raw.setsockopt(zmq.LINGER, 0)
                raw.connect(raw_addr)
                for name, (h, w) in tqdm(sizes.items(), desc=f"deep buffers over {transport}"):
                    arrays = buffer_to_wire(deep_buffer(h, w))
                    n = max(5, int((100 if h < 1000 else 60) * scale))
                    nbytes = sum(a.nbytes for a in arrays.values())
                    # Two comparisons, each alternating only its own pair: an echo through the default-malloc
                    # server (thousands of page faults, memory unmapped and mapped again) just before the tuned
                    # bridge's would slow the bridge's and not the raw echo's.
                    bridge, floor = _time_pair(lambda a=arrays: client.echo(a),
                                               lambda a=list(arrays.values()): _raw_roundtrip(raw, a), n)
                    faults = [_minor_faults(p.pid) for p in (bridge_proc, untuned_proc)]
                    _, before = _time_pair(lambda a=arrays: client.echo(a), lambda a=arrays: untuned.echo(a), n)
                    calls = n + min(3, n)
                    faults = [None if f is None or _minor_faults(p.pid) is None else
                              round((_minor_faults(p.pid) - f) / calls) for f, p in
                              zip(faults, (bridge_proc, untuned_proc))]
                    cpu_bridge = _cpu_per_call(lambda a=arrays: client.echo(a), bridge_proc.pid, n)
                    cpu_raw = _cpu_per_call(lambda a=list(arrays.values()): _raw_roundtrip(raw, a), raw_proc.pid, n)
                    result["deep_buffers"][f"{transport} {name}"] = {
                        "cpu_per_echo_bridge": cpu_bridge, "cpu_per_echo_raw": cpu_raw,
                        "payload_bytes": nbytes, "bridge_echo": bridge, "raw_zmq_echo": floor,
                        "overhead_ms": bridge["median_ms"] - floor["median_ms"],
                        "ratio_to_raw": bridge["median_ms"] / floor["median_ms"],
                        "bridge_echo_default_malloc": before,
                        "ratio_to_raw_default_malloc": before["median_ms"] / floor["median_ms"],
                        "server_minor_faults_per_echo": faults[0],
                        "server_minor_faults_per_echo_default_malloc": faults[1]}
                for nbytes in tqdm(payload_bytes, desc=f"payload sweep over {transport}"):
                    payload = np.random.default_rng(1).integers(0, 256, nbytes, dtype=np.uint8)
                    n = max(5, int((50 if nbytes < 2**20 else 15) * scale))
                    bridge, floor = _time_pair(lambda p=payload: client.echo({"p": p}),
                                               lambda p=payload: _raw_roundtrip(raw, [p]), n)
                    result["payload_sweep"].setdefault(transport, []).append({
                        "payload_bytes": nbytes, "bridge_median_ms": bridge["median_ms"],
                        "raw_median_ms": floor["median_ms"], "overhead_ms": bridge["median_ms"] - floor["median_ms"]})
                client.close()
                untuned.close()
                raw.close(linger=0)
            finally:
                bridge_proc.stop(10)
                untuned_proc.stop(10)
                _stop_raw(raw_addr, raw_proc)
    _print(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


def _print(result: dict) -> None:
    print(f"{'case':<22}{'MB':>8}{'bridge ms':>12}{'raw ms':>10}{'ratio':>8}{'default malloc':>16}{'ratio':>8}"
          f"{'faults':>8}{'(default)':>10}")
    for case, r in result["deep_buffers"].items():
        print(f"{case:<22}{r['payload_bytes'] / 1e6:>8.2f}{r['bridge_echo']['median_ms']:>12.2f}"
              f"{r['raw_zmq_echo']['median_ms']:>10.2f}{r['ratio_to_raw']:>8.2f}"
              f"{r['bridge_echo_default_malloc']['median_ms']:>16.2f}{r['ratio_to_raw_default_malloc']:>8.2f}"
              f"{str(r['server_minor_faults_per_echo']):>8}{str(r['server_minor_faults_per_echo_default_malloc']):>10}")
    for case, r in result["deep_buffers"].items():
        b, raw = r["cpu_per_echo_bridge"], r["cpu_per_echo_raw"]
        if b and raw:
            print(f"{case}: CPU per echo, server {b['server_cpu_ms']:.2f} ms (raw {raw['server_cpu_ms']:.2f}), "
                  f"client {b['client_cpu_ms']:.2f} ms (raw {raw['client_cpu_ms']:.2f})")
    for name, r in result["to_wire_ms"].items():
        print(f"buffer_to_wire {name}: {r['median_ms']:.2f} ms")
    for transport, rows in result["payload_sweep"].items():
        for r in rows:
            print(f"{transport} {r['payload_bytes']:>9} B: bridge {r['bridge_median_ms']:.3f} ms, "
                  f"raw {r['raw_median_ms']:.3f} ms")


if __name__ == "__main__":
    sys.exit(main())
