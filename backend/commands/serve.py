"""``rerender serve``: load a model bundle onto a device and answer the bridge protocol (docs/protocol.md).

The startup line names the address, the device, the precision and the model, so an artist reading the terminal
knows what Blender is talking to, and the limits in force (memory budget, largest frame, connections).
``serve -v`` logs every request's stage timings (receive, queue, decode, encode, forward, output, send); the
global ``-vv`` adds debug lines (rejections with their codes). SIGINT and SIGTERM stop it cleanly: the batch on
the device finishes, queued and arriving requests are answered ``shutting_down``, replies are written out.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from rerender.backend import remote_access
from rerender.bridge.protocol import DEFAULT_ADDRESS

log = logging.getLogger("rerender.serve")


def configure(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--bundle", type=Path, help="model bundle directory (from `rerender train` or `rerender bundle init`)")
    model.add_argument("--transport-only", action="store_true",
                       help="serve no model: only hello and echo (for measuring the bridge)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"ZeroMQ address to bind: tcp://HOST:PORT or ipc:///path (default {DEFAULT_ADDRESS})")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="compute device; auto = cuda when available")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast precision on CUDA (auto = bf16 where supported, else fp16); CPU is fp32")
    parser.add_argument("--max-batch", type=int, default=8, help="largest micro-batch of same-size frames")
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="how long an idle device waits for more same-size requests to batch with the first "
                             "(default 0: requests that arrive while the device is busy are batched anyway)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="queued model requests beyond this are answered `overloaded`")
    parser.add_argument("--memory-budget-mb", type=float, default=None, metavar="MB",
                        help="bytes of queued requests and unread replies the server holds before answering "
                             "`overloaded` (default: a quarter of the available RAM, 256 MiB to 4 GiB)")
    parser.add_argument("--max-frame-mpx", type=float, default=None, metavar="MPX",
                        help="largest frame in megapixels (default: derived from the device's free memory and "
                             "the network's bytes per pixel; this can only lower it)")
    parser.add_argument("--max-connections", type=int, default=512,
                        help="connections held at once; beyond it the idlest are closed (never more than the "
                             "file descriptors allow)")
    parser.add_argument("--idle-timeout-s", type=float, default=600.0,
                        help="close a connection that sent no request for this long (clients reconnect by "
                             "themselves)")
    parser.add_argument("--heartbeat-s", type=float, default=10.0,
                        help="ZeroMQ heartbeat interval: a peer that stops answering for 3 intervals is dropped "
                             "(0 = off)")
    parser.add_argument("-v", "--timings", dest="log_timings", action="store_true",
                        help="log every request's stage timings in ms (receive, queue, decode, encode, forward, "
                             "output, send)")
    parser.add_argument("--simulate-latency-ms", type=float, default=0.0, metavar="MS",
                        help="testing/benchmark aid: make every forward pass take at least MS milliseconds, "
                             "as a slower GPU would (0 = off; never use it in production)")
    remote_access.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rerender.backend.server import Server
    from rerender.backend.server_limits import raise_fd_limit

    try:
        curve = remote_access.server_curve(args)  # before the model loads: a refused set-up fails in a second
    except remote_access.RemoteAccessRefused as exc:
        print(f"rerender serve: {exc}", file=sys.stderr)
        return 2
    runtime = None
    if args.bundle is not None:
        runtime = _load_runtime(args.bundle, args.device)
        if runtime is None:
            return 2
    raise_fd_limit()
    try:
        server = Server(runtime, args.address, max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000,
                        max_queue=args.max_queue, precision=args.precision,
                        simulate_latency_s=args.simulate_latency_ms / 1000, curve=curve,
                        memory_budget_bytes=int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None,
                        max_frame_pixels=int(args.max_frame_mpx * 1e6) if args.max_frame_mpx else None,
                        max_connections=args.max_connections, idle_timeout_s=args.idle_timeout_s,
                        heartbeat_s=args.heartbeat_s, log_timings=args.log_timings)
        server.bind()
    except (OSError, ValueError) as exc:
        print(f"rerender serve: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    log.info("rerender serve: %s", server.describe())
    remote_access.announce(args, curve)
    server.serve_forever()
    log.info("rerender serve: stopped after %d replies", server.requests_served)
    return 0


def _load_runtime(bundle_path: Path, device: str):
    """Bundle -> ModelRuntime on the chosen device, or None after printing what is wrong and what to do."""
    if not bundle_path.is_dir():
        print(f"rerender serve: no model bundle at {bundle_path} (expected a directory with config.json and "
              f"weights.safetensors; make one with `rerender train` or `rerender bundle init`)", file=sys.stderr)
        return None
    import torch

    from rerender.backend.bundle import Bundle, BundleError
    from rerender.backend.runtime import ModelRuntime

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        print("rerender serve: --device cuda was asked for but torch sees no CUDA GPU; use --device cpu "
              "(slow) or install a CUDA build of torch", file=sys.stderr)
        return None
    try:
        bundle = Bundle.load(bundle_path)
    except BundleError as exc:
        print(f"rerender serve: {exc}", file=sys.stderr)
        return None
    return ModelRuntime(bundle, device)
