"""The backend dies during a pipelined run: the client reports it, reconnects, re-sends; nothing is silently lost."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from rerender.bridge import BackendUnavailable, Client, DeepBuffer
from support_backend import BackendProcess, free_tcp_address, ipc_address, make_small_bundle


def _frames(n: int) -> list[DeepBuffer]:
    frames = []
    for i in range(n):
        b = DeepBuffer.empty(8, 12)
        b.depth[: 1 + i % 8] = 2.0 + i % 8
        b.mask[: 1 + i % 8] = True
        frames.append(b)
    return frames


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_backend_killed_and_restarted_mid_run_every_frame_arrives(tmp_path, transport):
    bundle = make_small_bundle(tmp_path / "bundle")
    address = free_tcp_address() if transport == "tcp" else ipc_address(tmp_path)
    frames, latent = _frames(24), np.linspace(-1, 1, 8).astype(np.float32)
    events: list[tuple[str, dict]] = []
    with BackendProcess(bundle, address, log_path=tmp_path / "serve.log") as backend:
        with Client(address, timeout=60, on_event=lambda kind, info: events.append((kind, info))) as client:
            reference = [client.rerender(f, latent) for f in frames[:8]]  # frames repeat every 8
            restarter = None
            images = []
            for i, image in enumerate(client.rerender_many(frames, latent, in_flight=8)):
                images.append(image)
                if i == 3:  # 8 more frames are in flight now: kill the backend under them, start a new one
                    backend.kill()
                    restarter = threading.Thread(target=backend.start)
                    restarter.start()
            restarter.join(120)
        assert backend.starts == 2
    assert len(images) == 24 and all(im.shape == (8, 12, 3) for im in images)
    for i, image in enumerate(images):  # same inputs, same weights (also after the restart): the same images,
        assert np.abs(image.astype(int) - reference[i % 8]).max() <= 2, i  # each in its own place
    kinds = [kind for kind, _ in events]
    assert "disconnected" in kinds and "resent" in kinds
    lost = dict(events)["disconnected"]["in_flight"]
    assert lost and min(lost) >= 4  # the frames that were in flight when it died were re-sent, not dropped


def test_backend_that_does_not_come_back_is_reported_with_the_lost_frames(tmp_path):
    bundle = make_small_bundle(tmp_path / "bundle")
    address = free_tcp_address()
    frames, latent = _frames(16), np.zeros(8, np.float32)
    with BackendProcess(bundle, address, log_path=tmp_path / "serve.log") as backend:
        with Client(address, timeout=2.0) as client:
            got = []
            started = None
            with pytest.raises(BackendUnavailable) as info:
                for i, image in enumerate(client.rerender_many(frames, latent, in_flight=8)):
                    got.append(image)
                    if i == 1:
                        backend.kill()
                        started = time.monotonic()
            waited = time.monotonic() - started
    assert len(got) >= 2
    assert info.value.pending and min(info.value.pending) == len(got)  # exactly the frames without a result
    assert set(info.value.pending) <= set(range(len(got), 16))
    assert waited < 15  # reported after about the timeout, not hanging
