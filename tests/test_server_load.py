"""Many clients against one backend: a momentarily full queue slows batch renders down but never aborts them.

The client retries ``overloaded`` replies after the server's retry-after (with backoff and jitter) and halves its
pipelining window on each refusal; every frame must arrive, in order, equal to the frame rendered alone.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rerender.bridge import BackendBusy, Client, DeepBuffer
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

LATENT = 8


def _frames(client_no: int, n: int) -> list[DeepBuffer]:
    frames = []
    for i in range(n):
        b = DeepBuffer.empty(16, 16)
        rows = 1 + (client_no + i) % 15
        b.depth[:rows] = 2.0 + client_no
        b.mask[:rows] = True
        frames.append(b)
    return frames


def _render_concurrently(address: str, clients: int, frames: int, in_flight: int, **client_args):
    results: dict[int, list[np.ndarray]] = {}
    retries: dict[int, int] = {}
    failures: list[BaseException] = []
    latent = np.linspace(-1, 1, LATENT).astype(np.float32)

    def run(c: int) -> None:
        try:
            with Client(address, timeout=60, **client_args) as client:
                results[c] = list(client.rerender_many(_frames(c, frames), latent, in_flight=in_flight))
                retries[c] = client.overload_retries
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results, retries, failures


@pytest.mark.slow
@pytest.mark.parametrize("max_queue, clients, in_flight", [(64, 8, 9), (4, 4, 8)])
def test_every_batch_render_completes_against_a_full_queue(tmp_path, max_queue, clients, in_flight):
    args = ("--max-queue", str(max_queue), "--simulate-latency-ms", "40")
    frames = 27
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=args,
                        log_path=tmp_path / "serve.log") as backend:
        results, retries, failures = _render_concurrently(backend.address, clients, frames, in_flight)
        with Client(backend.address, timeout=20) as client:
            reference = {c: [client.rerender(b, np.linspace(-1, 1, LATENT).astype(np.float32))
                             for b in _frames(c, frames)] for c in range(clients)}
            stats = next(client.pipeline([{"op": "stats"}])).params
    assert not failures, failures
    assert sorted(results) == list(range(clients))
    for c, images in results.items():
        assert len(images) == frames
        for k, image in enumerate(images):  # each frame in its place (batched CPU math may differ by 2/255)
            assert np.abs(image.astype(int) - reference[c][k]).max() <= 2, (c, k)
    print(f"queue {max_queue}, {clients} clients x {in_flight} in flight: {sum(retries.values())} overloaded "
          f"retries, server refused {stats['overloaded']}, largest batch {stats['largest_batch']}")
    assert sum(retries.values()) == stats["overloaded"]  # every refusal was retried, none given up
    if max_queue == 4:
        assert stats["overloaded"] > 0  # the retry path really ran


def test_a_backend_that_stays_full_raises_backend_busy_after_the_patience(tmp_path):
    args = ("--max-queue", "1", "--max-batch", "1", "--simulate-latency-ms", "1500")
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(), extra_args=args,
                        log_path=tmp_path / "serve.log") as backend:
        with Client(backend.address, timeout=30, overload_patience=0.3) as client:
            with pytest.raises(BackendBusy) as info:
                list(client.rerender_many(_frames(0, 6), np.zeros(LATENT, np.float32), in_flight=6))
    assert info.value.code == "overloaded" and info.value.retry_after and info.value.retry_after > 0
