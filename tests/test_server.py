"""`rerender serve` on a real (tiny, freshly initialised) model bundle, driven by the real client."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rerender.bridge import Client, DeepBuffer, InvalidRequest, protocol, srgb8_to_linear
from support_backend import BackendProcess, free_tcp_address, ipc_address, make_small_bundle

LATENT = 8


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_small_bundle(tmp_path_factory.mktemp("bundle") / "small")


@pytest.fixture(scope="module")
def backend(bundle, tmp_path_factory):
    with BackendProcess(bundle, free_tcp_address(), log_path=tmp_path_factory.mktemp("log") / "serve.log") as proc:
        yield proc


def _buffer(h: int, w: int, seed: int) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) > 0.4
    color = np.where(mask[..., None], srgb8_to_linear(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), 0)
    depth = np.where(mask, rng.uniform(1, 50, (h, w)), np.inf)
    label = np.where(mask, rng.integers(0, 19, (h, w)), 255)
    return DeepBuffer(color.astype(np.float16), depth.astype(np.float32), label.astype(np.uint8), mask)


def _latent(seed: int) -> np.ndarray:
    return (np.random.default_rng(1000 + seed).standard_normal(LATENT) * 3).astype(np.float32)


def test_hello_reports_protocol_latent_size_device_and_model(backend):
    with Client(backend.address, timeout=20) as client:
        info = client.hello()
    assert info.protocol == protocol.PROTOCOL_VERSION
    assert info.latent_size == LATENT and info.device == "cpu" and info.model == "test-small"
    assert "rerender" in info.ops and info.precision == "fp32"
    assert "listening on tcp://127.0.0.1:" in backend.log() and "device cpu" in backend.log()


def test_rerender_round_trip_over_tcp_gives_the_requested_size_and_dtype(backend):
    buffer = _buffer(16, 20, 0)  # 20 is not a multiple of the U-Net's 4: the runtime pads and crops
    with Client(backend.address, timeout=20) as client:
        image = client.rerender(buffer, _latent(0))
        half = client.rerender(buffer, _latent(0), output="float16")
    assert image.dtype == np.uint8 and image.shape == (16, 20, 3)
    assert half.dtype == np.float16 and half.shape == (16, 20, 3)
    assert 0 <= float(half.min()) and float(half.max()) <= 1
    assert np.abs(half.astype(np.float32) * 255 - image).max() <= 1.0


def test_rerender_round_trip_over_ipc(bundle, tmp_path):
    with BackendProcess(bundle, ipc_address(tmp_path), log_path=tmp_path / "serve.log") as proc:
        with Client(proc.address, timeout=20) as client:
            assert client.hello().latent_size == LATENT
            image = client.rerender(_buffer(12, 16, 1), _latent(1))
    assert image.dtype == np.uint8 and image.shape == (12, 16, 3)


def test_encode_segment_and_appearances(backend):
    buffer = _buffer(16, 16, 2)
    photo = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    with Client(backend.address, timeout=20) as client:
        latent = client.encode(photo, buffer)
        labels = client.segment(buffer)
        gallery = client.appearances()
    assert latent.dtype == np.float32 and latent.shape == (LATENT,) and np.isfinite(latent).all()
    assert labels.dtype == np.uint8 and labels.shape == (16, 16) and labels.max() < 19
    assert len(gallery) >= 1 and len({g.name for g in gallery}) == len(gallery)
    for g in gallery:
        assert g.latent.shape == (LATENT,) and g.thumbnail.dtype == np.uint8 and g.thumbnail.shape[2] == 3


def test_invalid_model_requests_get_typed_errors_and_the_server_goes_on(backend):
    buffer = _buffer(8, 8, 3)
    with Client(backend.address, timeout=20) as client:
        with pytest.raises(InvalidRequest, match="NaN") as info:
            client.rerender(buffer, np.full(LATENT, np.nan, np.float32))
        assert info.value.code == "bad_params"
        with pytest.raises(InvalidRequest, match="latent size is 8"):
            client.rerender(buffer, np.zeros(3, np.float32))
        with pytest.raises(InvalidRequest, match="photo is"):
            client.encode(np.zeros((4, 4, 3), np.uint8), buffer)
        with pytest.raises(InvalidRequest, match="'output'"):
            client.rerender(buffer, _latent(0), output="png")
        assert client.rerender(buffer, _latent(0)).shape == (8, 8, 3)


def test_eight_in_flight_from_three_clients_every_reply_matches_its_request(backend):
    """Each client renders its own frame size with its own latents, pipelined 8 deep, all at once; every image
    must equal the one its (buffer, latent) gives alone — so no reply was swapped, lost or mixed in a batch."""
    sizes = {0: (16, 16), 1: (16, 24), 2: (24, 16)}
    cases = {c: [(_buffer(*sizes[c], seed=10 * c + k), _latent(10 * c + k)) for k in range(4)] for c in sizes}
    with Client(backend.address, timeout=30) as client:
        reference = {c: [client.rerender(b, z) for b, z in cases[c]] for c in cases}
    frames_per_client = 16
    results: dict[int, list[np.ndarray]] = {}
    failures: list[BaseException] = []

    def run(c: int) -> None:
        try:
            order = [k % 4 for k in range(frames_per_client)]
            with Client(backend.address, timeout=60) as client:
                images = client.rerender_many((cases[c][k][0] for k in order), (cases[c][k][1] for k in order),
                                              in_flight=8)
                results[c] = list(zip(order, images))
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not failures, failures
    for c, got in results.items():
        assert len(got) == frames_per_client
        for k, image in got:
            assert image.shape == (*sizes[c], 3)
            # batched CPU convolutions may round differently from single ones: allow 2/255
            assert np.abs(image.astype(int) - reference[c][k]).max() <= 2, (c, k)
    with Client(backend.address, timeout=20) as client:
        stats = client.hello().stats
    assert stats["largest_batch"] > 1  # requests that arrived together were computed as one micro-batch
