"""ModelRuntime on small real bundles: padding to any frame size, latent validation, encode, segment, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rerender.backend.bundle import Bundle, init_bundle
from rerender.backend.runtime import ModelRuntime
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.colors import srgb8_to_linear

SMALL = dict(base_channels=8, depth=3, max_channels=16, latent_size=4, encoder_channels=8, encoder_blocks=2)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Bundle:
    return init_bundle(tmp_path_factory.mktemp("rt") / "b", **SMALL, num_classes=6, seed=5)


@pytest.fixture(scope="module")
def runtime(bundle: Bundle) -> ModelRuntime:
    return ModelRuntime(bundle, device="cpu", batch_size=2)


def buffer(h: int, w: int, seed: int = 0) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.6
    return DeepBuffer(
        color=np.where(mask[..., None], rng.random((h, w, 3)), 0).astype(np.float16),
        depth=np.where(mask, rng.uniform(1, 80, (h, w)), np.inf).astype(np.float32),
        label=np.where(mask, rng.integers(0, 6, (h, w)), UNKNOWN).astype(np.uint8),
        mask=mask,
    )


def test_odd_frame_sizes_are_padded_and_cropped_back(runtime: ModelRuntime, bundle: Bundle):
    buf = buffer(13, 21)
    z = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    out = runtime.rerender([buf], z)
    assert out.shape == (1, 13, 21, 3) and out.dtype == np.uint8
    # the same as running the network by hand on the border-replicated 16 x 24 input and cropping
    x = bundle.config.encoding.encode_buffers([buf])
    x = torch.nn.functional.pad(x, (0, 3, 0, 3), mode="replicate")
    with torch.no_grad():
        y = bundle.rerenderer(x, torch.from_numpy(z))[:, :, :13, :21]
    np.testing.assert_array_equal(out, bundle.config.encoding.decode_rgb(y))
    as_float = runtime.rerender([buf], z, output="float16")
    assert as_float.dtype == np.float16 and as_float.shape == (1, 13, 21, 3)
    assert 0 <= as_float.min() and as_float.max() <= 1
    assert np.abs(as_float.astype(np.float32) * 255 - out).max() <= 0.6
    with pytest.raises(ValueError, match="output must be"):
        runtime.rerender([buf], z, output="float32")


def test_latent_changes_the_frame_and_batches_match_single_frames(runtime: ModelRuntime):
    bufs = [buffer(16, 16, seed=s) for s in range(3)]
    z = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32) * 2
    batched = runtime.rerender(bufs, z)  # batch_size 2: chunks of 2 + 1
    singles = np.concatenate([runtime.rerender([b], z[i:i + 1]) for i, b in enumerate(bufs)])
    assert np.abs(batched.astype(int) - singles.astype(int)).max() <= 1  # float reassociation at most 1 level
    other = runtime.rerender(bufs[:1], -z[:1])
    assert np.abs(other.astype(int) - batched[:1].astype(int)).mean() > 1.0


def test_latent_validation(runtime: ModelRuntime):
    bufs = [buffer(8, 8)] * 2
    with pytest.raises(ValueError, match="latents must be 2 x 4"):
        runtime.rerender(bufs, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="latents must be 2 x 4"):
        runtime.rerender(bufs, np.zeros((1, 4), np.float32))
    bad = np.zeros((2, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        runtime.rerender(bufs, bad)
    with pytest.raises(ValueError, match="needs latents"):
        runtime.rerender(bufs, None)
    with pytest.raises(ValueError, match="one size"):
        runtime.rerender([buffer(8, 8), buffer(8, 16)], np.zeros((2, 4), np.float32))


def test_encode_real_photo_returns_the_encoder_mean(runtime: ModelRuntime, bundle: Bundle, shared_dir: Path):
    paths = sorted((shared_dir / "data" / "sacre_coeur").glob("*.jpg"))[:2]
    photos = []
    for p in paths:
        with Image.open(p) as im:
            photos.append(np.asarray(im.convert("RGB").resize((32, 24))))
    bufs = []
    for ph in photos:  # a fully covered buffer whose points carry the photo's colors
        bufs.append(DeepBuffer(srgb8_to_linear(ph).astype(np.float16), np.full(ph.shape[:2], 10.0, np.float32),
                               np.full(ph.shape[:2], 2, np.uint8), np.ones(ph.shape[:2], bool)))
    z = runtime.encode(photos, bufs)
    assert z.shape == (2, 4) and z.dtype == np.float32 and np.all(np.isfinite(z))
    assert not np.allclose(z[0], z[1])  # two different photos
    enc = bundle.config.encoding
    x = torch.cat([enc.encode_photos(photos), enc.encode_buffers(bufs)], dim=1)
    with torch.no_grad():
        mean, _ = bundle.encoder(x)
    np.testing.assert_allclose(z, mean.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="differ in size"):
        runtime.encode(photos[:1], [buffer(24, 30)])
    with pytest.raises(ValueError, match="one deep buffer per photo"):
        runtime.encode(photos, bufs[:1])


def test_segment_is_the_argmax_of_the_semantic_network(runtime: ModelRuntime, bundle: Bundle):
    buf = buffer(10, 12, seed=4)
    labels = runtime.segment([buf])
    assert labels.shape == (1, 10, 12) and labels.dtype == np.uint8 and labels.max() < 6
    x = torch.nn.functional.pad(bundle.config.encoding.encode_buffers([buf], with_labels=False), (0, 4, 0, 6),
                                mode="replicate")
    with torch.no_grad():
        expected = bundle.semantic(x)[:, :, :10, :12].argmax(1).numpy()
    np.testing.assert_array_equal(labels, expected)


def test_info_and_appearances(runtime: ModelRuntime):
    info = runtime.info()
    assert info["device"] == "cpu" and info["latent_size"] == 4 and info["format_version"] == 1
    assert len(info["classes"]) == 6 and info["resolution"] == [512, 512] and info["multiple"] == 8
    gallery = runtime.appearances()
    assert [a.name for a in gallery] == ["noon", "golden hour", "overcast", "night"]
    frames = runtime.rerender([buffer(8, 8)] * 2, np.stack([gallery[0].latent, gallery[3].latent]))
    assert frames.shape == (2, 8, 8, 3)


def test_bundle_without_appearance_and_loading_by_path(tmp_path: Path):
    init_bundle(tmp_path / "i2i", **{**SMALL, "latent_size": 0}, seed=1)
    rt = ModelRuntime(tmp_path / "i2i", device="cpu")
    assert rt.latent_size == 0 and rt.appearances() == []
    assert rt.rerender([buffer(9, 9)], None).shape == (1, 9, 9, 3)
    with pytest.raises(ValueError, match="no appearance latent"):
        rt.rerender([buffer(9, 9)], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="no appearance encoder"):
        rt.encode([np.zeros((9, 9, 3), np.uint8)], [buffer(9, 9)])


def test_device_selection(bundle: Bundle):
    assert ModelRuntime(bundle, device="auto").device == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        ModelRuntime(bundle, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            ModelRuntime(bundle, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_matches_cpu(bundle: Bundle):
    bufs = [buffer(40, 56, seed=s) for s in range(2)]
    z = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    cpu = ModelRuntime(bundle, device="cpu").rerender(bufs, z)
    gpu_rt = ModelRuntime(bundle, device="cuda")
    assert gpu_rt.autocast_dtype in (torch.bfloat16, torch.float16)
    gpu = gpu_rt.rerender(bufs, z)
    ModelRuntime(bundle, device="cpu")  # move the shared modules back for the other tests
    assert np.abs(gpu.astype(int) - cpu.astype(int)).mean() < 3.0
