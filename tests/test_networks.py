"""Networks (R, Ea, S), their shared layers, and the InputEncoding that feeds them. Small sizes, real torch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rerender.backend.bundle import BundleConfig, class_table
from rerender.backend.encoding import InputEncoding
from rerender.backend.networks import (AppearanceEncoder, EqualizedConv2d, EqualizedLinear, PixelNorm, Rerenderer,
                                       SemanticPredictor, channel_schedule)
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import DEFAULT_CLASSES, UNKNOWN
from rerender.bridge.colors import srgb8_to_linear


def small_config(**overrides) -> BundleConfig:
    sizes = dict(base_channels=8, depth=3, max_channels=32, latent_size=4, encoder_channels=8, encoder_blocks=2)
    sizes.update(overrides)
    return BundleConfig(**sizes)


def random_buffer(h: int, w: int, seed: int = 0, coverage: float = 0.7) -> DeepBuffer:
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < coverage
    color = np.where(mask[..., None], srgb8_to_linear(rng.integers(0, 256, (h, w, 3))), 0).astype(np.float16)
    depth = np.where(mask, rng.uniform(1.0, 50.0, (h, w)), np.inf).astype(np.float32)
    label = np.where(mask, rng.integers(0, 19, (h, w)), UNKNOWN).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask)


# ---- layers -----------------------------------------------------------------------------------------------------

def test_equalized_conv_applies_he_scale_at_run_time():
    torch.manual_seed(0)
    conv = EqualizedConv2d(16, 32, 3)
    assert conv.scale == pytest.approx(math.sqrt(2.0 / (16 * 9)))
    # stored weights are N(0, 1); the He constant is applied in forward, not baked into the parameter
    assert conv.weight.std().item() == pytest.approx(1.0, abs=0.1)
    x = torch.randn(2, 16, 8, 8)
    expected = torch.nn.functional.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    # the gradient reaching the stored weight carries the scale: that is what equalizes Adam's step per layer
    conv(x).sum().backward()
    eff = (conv.weight.detach() * conv.scale).requires_grad_()
    torch.nn.functional.conv2d(x, eff, conv.bias.detach(), padding=1).sum().backward()
    torch.testing.assert_close(conv.weight.grad, eff.grad * conv.scale)


def test_equalized_layers_preserve_signal_variance():
    torch.manual_seed(0)
    x = torch.randn(8, 256, 16, 16)
    y = EqualizedConv2d(256, 256, 3, gain=1.0)(x)[:, :, 1:-1, 1:-1]  # interior: no zero padding
    assert y.var().item() == pytest.approx(1.0, rel=0.15)
    lin = EqualizedLinear(512, 256, gain=2.0)(torch.randn(64, 512))
    assert lin.var().item() == pytest.approx(2.0, rel=0.15)


def test_pixel_norm_gives_unit_rms_per_pixel_and_is_scale_invariant():
    x = torch.randn(3, 12, 5, 7) * torch.rand(3, 1, 5, 7) * 100
    y = PixelNorm()(x)
    rms = y.pow(2).mean(dim=1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(PixelNorm()(x * 7.0), y, rtol=1e-4, atol=1e-5)


# ---- rerenderer -------------------------------------------------------------------------------------------------

def test_default_rerenderer_matches_the_authors_architecture():
    config = BundleConfig()
    schedule = channel_schedule(config.base_channels, config.depth, config.max_channels)
    assert schedule == [32, 64, 128, 256, 512, 512, 512]
    r = Rerenderer(config)
    assert r.in_channels == 8  # authors' 7 + our mask
    assert r.multiple == 64  # bottleneck at 1/64
    first_decoder_conv = r.up[0][0][0]
    assert first_decoder_conv.weight.shape[1] == 512 + 8 + 512  # bottleneck + tiled latent (520) + skip
    assert r.to_output.weight.shape[:2] == (3, 32)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in r.modules())


def test_rerenderer_shapes_and_size_check():
    config = small_config()
    r = Rerenderer(config).eval()
    x = torch.randn(2, config.encoding.channels(True), 16, 24)
    y = r(x, torch.randn(2, 4))
    assert y.shape == (2, 3, 16, 24)
    with pytest.raises(ValueError, match="multiples of 2\\*\\*depth = 8"):
        r(torch.randn(1, 8, 12, 16), torch.randn(1, 4))
    with pytest.raises(ValueError, match="latent must be 2 x 4"):
        r(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match="pass an N x 4"):
        r(x, None)
    with pytest.raises(ValueError, match="N x 8 x H x W"):
        r(torch.randn(1, 7, 16, 16), torch.randn(1, 4))


def test_latent_changes_the_output():
    torch.manual_seed(1)
    r = Rerenderer(small_config()).eval()
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        a, b = r(x, torch.zeros(1, 4)), r(x, torch.full((1, 4), 2.0))
    assert (a - b).abs().mean().item() > 1e-2


def test_variants_without_latent_and_without_semantics():
    no_latent = Rerenderer(small_config(latent_size=0))
    assert no_latent.latent_size == 0
    assert no_latent(torch.randn(1, 8, 8, 8)).shape == (1, 3, 8, 8)
    assert no_latent(torch.randn(1, 8, 8, 8), torch.zeros(1, 0)).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="without an appearance latent"):
        no_latent(torch.randn(1, 8, 8, 8), torch.zeros(1, 4))
    no_sem = Rerenderer(small_config(use_semantics=False))
    assert no_sem.in_channels == 5  # color 3, depth 1, mask 1
    assert no_sem(torch.randn(1, 5, 8, 8), torch.zeros(1, 4)).shape == (1, 3, 8, 8)
    onehot = Rerenderer(small_config(encoding=InputEncoding.for_classes(DEFAULT_CLASSES, label_mode="onehot")))
    assert onehot.in_channels == 4 + 19 + 1


def test_rerenderer_learns_a_target_with_adam():
    """A few real optimiser steps with the authors' Adam settings reduce an L1 loss: gradients flow end to end."""
    torch.manual_seed(0)
    r = Rerenderer(small_config())
    x, z = torch.randn(2, 8, 8, 8), torch.randn(2, 4)
    target = torch.rand(2, 3, 8, 8) * 2 - 1
    opt = torch.optim.Adam(r.parameters(), lr=1e-3, betas=(0.0, 0.99))
    losses = []
    for _ in range(20):
        loss = (r(x, z) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# ---- encoder and semantic predictor --------------------------------------------------------------------------------

def test_appearance_encoder_heads_and_inference_latent():
    torch.manual_seed(0)
    config = small_config()
    enc = AppearanceEncoder(config).eval()
    assert enc.in_channels == 3 + 8
    x = torch.randn(3, 11, 24, 40)  # any size: global average pool
    mean, logvar = enc(x)
    assert mean.shape == logvar.shape == (3, 4)
    torch.testing.assert_close(enc.latent(x), mean)
    assert not torch.allclose(mean[0], mean[1])  # different photos, different latents
    with pytest.raises(ValueError, match="photo 3 \\+ buffer 8"):
        enc(torch.randn(1, 8, 24, 24))
    with pytest.raises(ValueError, match="at least 8 px"):
        enc(torch.randn(1, 11, 4, 4))
    with pytest.raises(ValueError, match="latent_size >= 1"):
        AppearanceEncoder(small_config(latent_size=0))


def test_default_encoder_widths_are_the_authors():
    enc = AppearanceEncoder(BundleConfig())
    assert enc.stem.weight.shape[:2] == (64, 11)
    assert [b.shortcut[1].weight.shape[0] for b in enc.blocks] == [128, 192, 256]
    assert enc.mean.weight.shape == (8, 256)


def test_semantic_predictor_outputs_class_logits_without_label_input():
    config = small_config(classes=class_table(7), encoding=None)
    s = SemanticPredictor(config).eval()
    assert s.in_channels == 5  # no label channels: labels are what it predicts
    assert s.latent_size == 0
    assert s(torch.randn(2, 5, 16, 8)).shape == (2, 7, 16, 8)


# ---- input encoding ------------------------------------------------------------------------------------------------

def test_colors_from_8bit_photos_survive_encoding_exactly(shared_dir):
    photo = next(iter(sorted((shared_dir / "data" / "sacre_coeur").glob("*.jpg"))))
    with Image.open(photo) as im:
        rgb = np.asarray(im.convert("RGB").resize((40, 30)))
    linear16 = srgb8_to_linear(rgb).astype(np.float16)  # what the point cloud / EEVEE pass holds
    mask = np.ones(rgb.shape[:2], bool)
    buf = DeepBuffer(linear16, np.full(mask.shape, 5.0, np.float32), np.zeros(mask.shape, np.uint8), mask)
    enc = InputEncoding()
    x = enc.encode_buffers([buf])
    back = np.rint((x[0, :3].numpy().transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(back, rgb)
    # all 256 levels, not just those in one photo
    levels = np.arange(256, dtype=np.uint8)[None, :, None].repeat(3, axis=2)
    buf = DeepBuffer(srgb8_to_linear(levels).astype(np.float16), np.ones((1, 256), np.float32),
                     np.zeros((1, 256), np.uint8), np.ones((1, 256), bool))
    np.testing.assert_array_equal(enc.decode_rgb(enc.encode_buffers([buf])[:, :3]), levels[None])


def test_empty_pixels_are_distinguishable_from_black_points():
    enc = InputEncoding()
    buf = DeepBuffer.empty(1, 2)
    buf.mask[0, 0] = True  # a black point at 5 units, labelled "road"
    buf.depth[0, 0] = 5.0
    buf.label[0, 0] = 0
    x = enc.encode_buffers([buf])[0, :, 0]
    black_point, empty = x[:, 0], x[:, 1]
    assert torch.equal(black_point[:3], empty[:3])  # same color: black
    assert black_point[-1] == 1.0 and empty[-1] == -1.0  # the mask tells them apart
    assert empty[3] == enc.empty_depth
    assert not torch.equal(black_point[4:7], empty[4:7])  # unknown label has its own color


def test_depth_encoding_is_monotonic_and_bounded():
    for mode in ("inverse", "linear"):
        enc = InputEncoding(depth_mode=mode, near=2.0, far=50.0)
        d = np.array([[0.5, 2.0, 5.0, 20.0, 50.0, 1e6, np.inf]], np.float32)
        v = enc.encode_depth(d)[0]
        assert v[1] == pytest.approx(1.0) and v[4] == pytest.approx(-1.0)
        assert v[0] == 1.0 and v[5] == -1.0  # clipped outside [near, far]
        assert np.all(np.diff(v[:6]) <= 0) and np.all(np.diff(v[1:5]) < 0)
        assert v[6] == enc.empty_depth
    inv = InputEncoding(near=2.0, far=50.0).encode_depth(np.array([[4.0]], np.float32))[0, 0]
    assert inv == pytest.approx(2 * (1 / 4 - 1 / 50) / (1 / 2 - 1 / 50) - 1)


def test_label_encodings_color_and_onehot():
    labels = np.array([[[0, 10, UNKNOWN]]], np.uint8)
    color = InputEncoding().encode_labels(labels)[0, :, 0].numpy()  # 3 x 3
    np.testing.assert_allclose((color.T + 1) * 127.5, [DEFAULT_CLASSES[0].color, DEFAULT_CLASSES[10].color, (0, 0, 0)],
                               atol=1e-4)
    onehot = InputEncoding(label_mode="onehot").encode_labels(labels)[0, :, 0].numpy()  # 19 x 3
    assert onehot.shape == (19, 3)
    assert onehot[0, 0] == 1 and onehot[10, 1] == 1 and onehot.sum(axis=0).tolist() == [-17, -17, -19]
    with pytest.raises(ValueError, match="label ids \\[40\\] are outside"):
        InputEncoding().encode_labels(np.array([[[40]]], np.uint8))


def test_training_can_replace_buffer_labels_with_a_segmentation():
    enc = InputEncoding()
    buf = random_buffer(4, 4)
    seg = np.full((1, 4, 4), 2, np.uint8)
    x = enc.encode_buffers([buf], labels=seg)
    torch.testing.assert_close(x[:, 4:7], enc.encode_labels(seg))
    torch.testing.assert_close(x[:, :4], enc.encode_buffers([buf])[:, :4])


def test_encoding_json_round_trip_and_bad_parameters():
    enc = InputEncoding.for_dataset({"p01": 3.5, "p50": 10, "p99": 80.0}, class_table(5), label_mode="onehot")
    again = InputEncoding.from_json(json.loads(json.dumps(enc.to_json())))
    assert again == enc and again.near == 3.5 and again.far == 80.0 and again.channels(True) == 4 + 5 + 1
    with pytest.raises(ValueError, match="0 < near < far"):
        InputEncoding(near=10, far=5)
    with pytest.raises(ValueError, match="depth_mode"):
        InputEncoding(depth_mode="log")
    with pytest.raises(ValueError, match="also a class color"):
        InputEncoding(unknown_color=DEFAULT_CLASSES[2].color)
    with pytest.raises(ValueError, match="newer rerender"):
        InputEncoding.from_json({**enc.to_json(), "gamma": 2})


def test_photo_encoding_round_trips_and_validates():
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    t = InputEncoding.encode_photos(InputEncoding(), photos)
    assert t.shape == (2, 3, 5, 7) and t.min() >= -1 and t.max() <= 1
    np.testing.assert_array_equal(InputEncoding.decode_rgb(t), photos)
    np.testing.assert_array_equal(InputEncoding().decode_rgb(torch.full((1, 3, 1, 1), 5.0)), [[[[255] * 3]]])
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        InputEncoding().encode_photos([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ValueError, match="one size"):
        InputEncoding().encode_photos([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)])
    with pytest.raises(ValueError, match="one size"):
        InputEncoding().encode_buffers([random_buffer(4, 4), random_buffer(4, 6)])
