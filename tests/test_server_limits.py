"""Memory bounded by bytes, frames bounded by the device: a flood cannot grow the server beyond its stated budget,
unknown arrays are refused per op, and frames above the per-frame pixel limit are refused by the server and, when
the client knows the limits, before anything is sent."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from rerender.bridge import Client, DeepBuffer, protocol
from rerender.bridge.errors import FrameTooLarge, InvalidRequest
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

LATENT = 8
SIDE = 512     # flood frames: 1.75 MiB on the wire
QUEUED = 60
BUDGET_MB = 64
SLACK_MB = 128  # one message being received, interpreter and allocator pools (measured growth: 104-206 MiB)


def _rerender_frames(rid: int, side: int, extra: dict | None = None) -> list:
    buffer = DeepBuffer.empty(side, side)
    buffer.depth[: side // 2] = 4.0
    buffer.mask[: side // 2] = True
    arrays = {**protocol.buffer_to_wire(buffer), "latent": np.zeros(LATENT, np.float32), **(extra or {})}
    return protocol.encode_request("rerender", rid, {}, arrays)


def _dealer(address: str, **options) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


class _PeakRss:
    """Samples a process's VmRSS every 20 ms in a thread; ``peak`` is the largest seen."""

    def __init__(self, backend: BackendProcess) -> None:
        self.backend, self.peak, self._stop = backend, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.backend.rss_bytes())
            time.sleep(0.02)

    def __enter__(self) -> "_PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
def test_a_flood_of_large_queued_requests_and_unread_echoes_stays_within_the_budget(tmp_path):
    args = ("--memory-budget-mb", str(BUDGET_MB), "--max-queue", "1000", "--simulate-latency-ms", "400",
            "--max-batch", "1")
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=args,
                        log_path=tmp_path / "serve.log") as backend:
        assert backend.info.limits["memory_budget_bytes"] == BUDGET_MB * 2**20  # stated in hello
        per_pixel = backend.info.limits["bytes_per_pixel"]
        big_echo = {"payload": np.ones(4 * 2**20, np.float32)}  # 16 MiB
        with Client(backend.address, timeout=30) as client:  # warm up: one of each, so pools exist already
            client.echo(big_echo)
            next(client.pipeline([{"op": "rerender", "arrays": {
                **protocol.buffer_to_wire(DeepBuffer.empty(SIDE, SIDE)), "latent": np.zeros(LATENT, np.float32)}}]))
        before = backend.rss_bytes()
        queued = _dealer(backend.address, RCVTIMEO=60000)
        unread = _dealer(backend.address, RCVHWM=1, RCVBUF=4096)  # never reads: replies pile up in the server
        with _PeakRss(backend) as rss:
            for i in range(QUEUED):  # 1.75 MiB deep buffers behind a 400 ms forward pass: 105 MiB if all held
                queued.send_multipart(_rerender_frames(i, SIDE), copy=False)
            for i in range(40):  # 40 x 16 MiB echoes nobody reads: 640 MiB if all held
                unread.send_multipart(protocol.encode_request("echo", 100 + i, {}, big_echo), copy=False)
            for i in range(20):  # an unknown 8 MiB array on a model op is refused, not held
                queued.send_multipart(_rerender_frames(200 + i, 8, {"junk": np.zeros(2 * 2**20, np.float32)}),
                                      copy=False)
            codes: dict[str, int] = {}
            for _ in range(QUEUED + 20):
                header = msgpack.unpackb(queued.recv_multipart()[0], raw=False)
                key = "ok" if header["ok"] else header["error"]["code"]
                codes[key] = codes.get(key, 0) + 1
                if not header["ok"] and header["error"]["code"] == "overloaded":
                    assert header["error"]["retry_after_ms"] > 0
        growth = rss.peak - before
        unread.close(linger=0)
        queued.close(linger=0)
        with Client(backend.address, timeout=30) as client:
            stats = next(client.pipeline([{"op": "stats"}])).params
            image = client.rerender(DeepBuffer.empty(8, 8), np.zeros(LATENT, np.float32))
        assert image.shape == (8, 8, 3)
    compute = SIDE * SIDE * per_pixel  # the one frame being computed (--max-batch 1), as the server estimates it
    print(f"flood: RSS grew {growth / 2**20:.0f} MiB with a {BUDGET_MB} MiB budget + {compute / 2**20:.0f} MiB for "
          f"the frame being computed (745 MiB offered); "
          f"replies {codes}; budget peak {stats['memory']['peak_bytes'] / 2**20:.0f} MiB; "
          f"overloaded {stats['overloaded']}")
    assert codes.get("bad_params", 0) == 20  # every unknown-array request, refused per op
    assert codes.get("overloaded", 0) > 0 and codes.get("ok", 0) >= 1
    assert stats["overloaded"] > codes["overloaded"]  # the unread echoes were refused too
    assert stats["memory"]["peak_bytes"] <= BUDGET_MB * 2**20
    assert growth <= (BUDGET_MB + SLACK_MB) * 2**20 + compute, f"RSS grew {growth / 2**20:.0f} MiB"


def test_frames_above_the_pixel_limit_are_refused_by_the_server_and_by_a_client_that_knows_it(tmp_path):
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(),
                        extra_args=("--max-frame-mpx", "0.01"), log_path=tmp_path / "serve.log") as backend:
        limits = backend.info.limits
        assert limits["max_frame_pixels"] == 10_000 and limits["bytes_per_pixel"] > 0
        sock = _dealer(backend.address, RCVTIMEO=20000)
        try:
            sock.send_multipart(_rerender_frames(1, 128), copy=False)  # 16,384 px
            header = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
        finally:
            sock.close(linger=0)
        assert header["error"]["code"] == "too_large" and "10,000" in header["error"]["message"]
        with Client(backend.address, timeout=20) as client:
            client.hello()  # the client learns the limits ...
            with pytest.raises(FrameTooLarge, match="10,000"):  # ... and refuses before sending
                client.rerender(DeepBuffer.empty(128, 128), np.zeros(LATENT, np.float32))
            assert client.rerender(DeepBuffer.empty(64, 64), np.zeros(LATENT, np.float32)).shape == (64, 64, 3)
            with pytest.raises(InvalidRequest, match="does not read arrays"):
                next(client.pipeline([{"op": "segment", "arrays": {
                    **protocol.buffer_to_wire(DeepBuffer.empty(8, 8)), "latent": np.zeros(LATENT, np.float32)}}]))


def test_the_derived_pixel_limit_follows_the_device_memory(tmp_path):
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(),
                        log_path=tmp_path / "serve.log") as backend:
        limits = backend.info.limits
    per_pixel = limits["bytes_per_pixel"]
    assert 40 < per_pixel < 100_000
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    # never more than the host memory the derivation may use divided by the measured bytes per pixel
    assert limits["max_frame_pixels"] <= min(16384 ** 2, available // per_pixel)
    assert "frames up to" in backend.log()


def test_a_frame_above_the_wire_limit_is_refused_before_it_is_sent():
    """16384 x 6000 is a legal side but 295 MB of color: refused at once, naming the limit, nothing sent (no
    backend listens: a send would time out instead)."""
    color = np.zeros((16384, 6000, 3), np.uint8)  # calloc'd: costs no memory until touched
    with Client(free_tcp_address(), timeout=5) as client:
        started = time.monotonic()
        with pytest.raises(FrameTooLarge, match="256 MiB"):
            next(client.pipeline([{"op": "echo", "arrays": {"color": color}}]))
        assert time.monotonic() - started < 1.0


def test_compressed_requests_count_in_the_budget_at_their_decompressed_size(tmp_path):
    """16 MiB of zeros compress to 16 KiB: the budget must see the 16 MiB the server holds, not the 16 KiB."""
    import zlib

    args = ("--memory-budget-mb", "40", "--max-queue", "1000", "--max-batch", "1", "--simulate-latency-ms", "2000")
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=args,
                        log_path=tmp_path / "serve.log") as backend:
        sock = _dealer(backend.address, RCVTIMEO=30000)
        try:
            side = 2048  # 2048 x 2048 deep buffer: 28 MiB decompressed, a few KiB on the wire
            frames = _rerender_frames(0, side)
            header = msgpack.unpackb(bytes(memoryview(frames[0])), raw=False)
            packed = []
            for spec, frame in zip(header["arrays"], frames[1:]):
                spec["codec"] = "zlib"
                packed.append(zlib.compress(bytes(memoryview(frame)), 1))
            assert sum(map(len, packed)) < 2**20
            for i in range(4):
                header["id"] = i
                sock.send_multipart([msgpack.packb(header), *packed])
            codes = []
            for _ in range(4):
                reply = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
                codes.append("ok" if reply["ok"] else reply["error"]["code"])
        finally:
            sock.close(linger=0)
    assert codes.count("overloaded") >= 2, codes  # 28 MiB each against 40 MiB: one admitted at a time


def test_a_small_budget_lowers_the_decoded_size_limits_and_the_client_follows(tmp_path):
    with BackendProcess(None, free_tcp_address(), extra_args=("--memory-budget-mb", "8"),
                        log_path=tmp_path / "serve.log") as backend:
        assert backend.info.limits["max_array_bytes"] == 8 * 2**20
        with Client(backend.address, timeout=10) as client:
            client.hello()
            with pytest.raises(FrameTooLarge, match="at most 8 MiB"):  # refused here, before sending
                client.echo({"x": np.zeros(3 * 2**20, np.float32)})
            assert client.echo({"x": np.zeros(2**20, np.float32)})[1]["x"].shape == (2**20,)
