"""The device-side encoding (lookup tables in torch) against the numpy definition it replaced, bit for bit.

``reference_*`` below is the numpy implementation the backend used before the tables (kept here, verbatim in its
arithmetic, as the definition of the channels); every encoded number must match it exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rerender.backend.bundle import init_bundle
from rerender.backend.encoding import InputEncoding
from rerender.backend.runtime import ModelRuntime
from rerender.backend import tensor_encoding
from rerender.backend.tensor_encoding import TensorEncoder, encoder_for
from rerender.bridge import protocol as P
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import UNKNOWN
from rerender.bridge.colors import linear_to_srgb

SMALL = dict(base_channels=8, depth=3, max_channels=16, latent_size=4, encoder_channels=8, encoder_blocks=2)


def reference_encode(enc: InputEncoding, buffers, with_labels=True, labels=None) -> np.ndarray:
    """The numpy encoding of DeepBuffers as it was (np.power sRGB, masked writes, strided concatenate)."""
    mask = np.stack([b.mask for b in buffers])
    with np.errstate(invalid="ignore"):
        color = linear_to_srgb(np.stack([b.color for b in buffers])) * 2.0 - 1.0
    color[~mask] = -1.0
    parts = [color.transpose(0, 3, 1, 2), reference_depth(enc, np.stack([b.depth for b in buffers]), mask)[:, None]]
    if with_labels:
        lab = np.stack([b.label for b in buffers]) if labels is None else np.asarray(labels)
        parts.append(enc._label_lut()[lab].transpose(0, 3, 1, 2))
    if enc.mask_channel:
        parts.append(np.where(mask, 1.0, -1.0).astype(np.float32)[:, None])
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


def reference_depth(enc: InputEncoding, depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    d = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0) & mask
    safe = np.where(valid, d, enc.far)
    if enc.depth_mode == "inverse":
        t = (1.0 / safe - 1.0 / enc.far) / (1.0 / enc.near - 1.0 / enc.far)
    else:
        t = (enc.far - safe) / (enc.far - enc.near)
    return np.where(valid, np.clip(t, 0.0, 1.0) * 2.0 - 1.0, enc.empty_depth).astype(np.float32)


def reference_decode_rgb(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float32), nan=-1.0)
    return np.rint((np.clip(a, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def hard_buffer(h: int, w: int, seed: int, classes: int = 19) -> DeepBuffer:
    """Random points plus the corner cases: depth 0, negative, tiny, beyond float16, +inf under a drawn mask,
    colors above 1, negative, NaN and subnormal."""
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < 0.7
    color = np.where(mask[..., None], rng.random((h, w, 3)) * 1.2 - 0.1, 0).astype(np.float16)
    color[0, :4, 0] = [np.nan, 6e-8, 65504, -0.0]
    depth = np.where(mask, rng.uniform(0.2, 150, (h, w)), np.inf).astype(np.float32)
    depth[1, :6] = [0.0, -2.0, 1e-30, 1e5, np.inf, 1.0]
    mask[1, :6] = True
    label = np.where(mask, rng.integers(0, classes, (h, w)), UNKNOWN).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask)


def bits(x) -> np.ndarray:
    return np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x).view(np.uint32)


ENCODINGS = [InputEncoding(near=1.5, far=90.0), InputEncoding(depth_mode="linear", near=0.5, far=200.0),
             InputEncoding(label_mode="onehot", palette=[(i, 2 * i, 3 * i) for i in range(7)], mask_channel=False)]


@pytest.mark.parametrize("enc", ENCODINGS, ids=["inverse", "linear", "onehot"])
def test_deep_buffers_encode_bit_identically(enc: InputEncoding):
    classes = enc.num_classes
    buffers = [hard_buffer(37, 53, s, classes) for s in (1, 2)]
    assert np.array_equal(bits(enc.encode_buffers(buffers)), bits(reference_encode(enc, buffers)))
    assert np.array_equal(bits(enc.encode_buffers(buffers, with_labels=False)),
                          bits(reference_encode(enc, buffers, with_labels=False)))
    seg = np.random.default_rng(3).integers(0, classes, (2, 37, 53)).astype(np.uint8)
    assert np.array_equal(bits(enc.encode_buffers(buffers, labels=seg)),
                          bits(reference_encode(enc, buffers, labels=seg)))


@pytest.mark.parametrize("depth_dtype", ["float16", "float32"])
def test_wire_arrays_encode_like_the_buffer_they_decode_to(depth_dtype: str):
    """What the server did (buffer_from_wire, then numpy encoding) is what the device path gives from the wire
    arrays as received, with and without the mask frame, padded by replication to the U-Net's multiple."""
    enc = ENCODINGS[0]
    buffer = hard_buffer(45, 70, 4)
    wire = P.buffer_to_wire(buffer, depth_dtype, send_mask=True)
    ref = reference_encode(enc, [P.buffer_from_wire(wire)])
    as_tensors = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in wire.items()}
    got = enc.encode_wire(as_tensors, multiple=16)
    assert got.shape == (1, 8, 48, 80)
    padded = torch.nn.functional.pad(torch.from_numpy(ref), (0, 10, 0, 3), mode="replicate")
    assert np.array_equal(bits(got), bits(padded))
    # without the mask a pixel is drawn where depth is finite: for a contract buffer that is the same input
    clean = DeepBuffer(buffer.color, np.where(buffer.mask, buffer.depth, np.inf).astype(np.float32),
                       buffer.label, buffer.mask & np.isfinite(buffer.depth))
    wire = P.buffer_to_wire(clean, depth_dtype, send_mask=None)
    assert "mask" not in wire
    got = enc.encode_wire({k: torch.from_numpy(v)[None] for k, v in wire.items()})
    assert np.array_equal(bits(got), bits(reference_encode(enc, [P.buffer_from_wire(wire)])))
    assert np.array_equal(P.buffer_from_wire(wire).mask, clean.mask)


def test_photos_and_output_decoding_are_exact():
    enc = ENCODINGS[0]
    photos = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    ref = (photos.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
    assert np.array_equal(bits(enc.encode_photos(photos)), bits(np.ascontiguousarray(ref)))
    y = torch.from_numpy(np.random.default_rng(1).normal(0, 0.8, (2, 3, 9, 11)).astype(np.float32))
    y[0, 0, 0, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0, -0.0])
    y[0, 0, 1, :4] = torch.tensor([-1 + 0.5 / 127.5, -1 + 1.5 / 127.5, 0.0, 1.0])  # ties go to even, as np.rint
    assert np.array_equal(enc.decode_output(y, "uint8").numpy(), reference_decode_rgb(y.numpy()))
    assert np.array_equal(enc.decode_rgb(y), reference_decode_rgb(y.numpy()))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> ModelRuntime:
    return ModelRuntime(init_bundle(tmp_path_factory.mktemp("enc") / "b", **SMALL, num_classes=6, seed=5),
                        device="cpu", batch_size=2)


def test_rerender_wire_matches_the_deep_buffer_path_and_reports_stages(runtime: ModelRuntime):
    buffers = [hard_buffer(21, 30, s, 6) for s in (5, 6, 7)]
    wires = [P.buffer_to_wire(b) for b in buffers]
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    result = runtime.rerender_wire(wires, z)
    expected = runtime.rerender([P.buffer_from_wire(w) for w in wires], z)
    assert result.images.shape == (3, 21, 30, 3) and np.array_equal(result.images, expected)
    assert set(result.timings_ms) == {"decode", "encode", "forward", "output"}
    assert all(v >= 0 for v in result.timings_ms.values()) and result.timings_ms["forward"] > 0
    filled = runtime.rerender_wire(wires[:1], z[:1], fill_labels=True)
    ref_buffer = runtime.fill_labels([P.buffer_from_wire(wires[0])])[0]
    assert np.array_equal(filled.labels[0], ref_buffer.label)
    assert np.array_equal(filled.images, runtime.rerender([ref_buffer], z[:1]))
    bad = dict(wires[0], label=np.full((21, 30), 9, np.uint8))
    with pytest.raises(ValueError, match=r"label ids \[9\]"):
        runtime.rerender_wire([bad], z[:1])
    nan = dict(wires[0], depth=np.full((21, 30), np.nan, np.float16))
    with pytest.raises(ValueError, match="NaN"):
        runtime.rerender_wire([nan], z[:1])


def test_float16_output_is_the_networks_own_not_the_8_bit_image(runtime: ModelRuntime):
    buffer = hard_buffer(24, 40, 8, 6)
    z = np.random.default_rng(2).standard_normal((1, 4)).astype(np.float32)
    f16 = runtime.rerender_wire([P.buffer_to_wire(buffer)], z, output="float16").images
    u8 = runtime.rerender_wire([P.buffer_to_wire(buffer)], z).images
    assert f16.dtype == np.float16 and u8.dtype == np.uint8
    as_u8 = (u8.astype(np.float32) / 255.0).astype(np.float16)
    assert np.abs(f16.astype(np.float32) - as_u8.astype(np.float32)).max() > 1e-3  # not quantised to 8 bits
    x = runtime.encoding.encode_buffers([P.buffer_from_wire(P.buffer_to_wire(buffer))])
    x, h, w = runtime._pad(x)
    with torch.no_grad():
        y = runtime.bundle.rerenderer(x, torch.from_numpy(z))[:, :, :h, :w]
    net = ((y + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    err = np.abs(f16.astype(np.float32) - net)
    assert err.max() <= np.spacing(np.float16(1.0)) / 2 + 1e-7  # within float16 rounding of the network's value
    assert np.array_equal(reference_decode_rgb(y.numpy()), u8)


@pytest.mark.parametrize("enc", ENCODINGS, ids=["inverse", "linear", "onehot"])
def test_wire_frames_in_row_bands_encode_exactly(enc: InputEncoding, monkeypatch):
    """The wire path's pair gathers in row bands (row padding copied from the last row; a mask frame with bytes
    other than 0/1, which mean drawn) against the numpy definition, with the bands on one thread and on three, in
    and out of torch's inference mode (the server's; it is thread-local)."""
    monkeypatch.setattr(tensor_encoding, "BAND_PIXELS", 16 * 64)  # bands of 16 rows: 7 of them
    buffer = hard_buffer(101, 64, 9, enc.num_classes)
    for send_mask, threads, inference in ((True, "1", False), (None, "3", True), (True, "3", True)):
        monkeypatch.setenv("RERENDER_BAND_THREADS", threads)
        wire = P.buffer_to_wire(buffer, send_mask=send_mask)
        if send_mask:
            wire["mask"] = wire["mask"] * np.uint8(7)  # any non-zero byte is a drawn pixel
        ref = reference_encode(enc, [P.buffer_from_wire(wire)])
        with torch.inference_mode(inference):
            got = enc.encode_wire({k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in wire.items()},
                                  multiple=16)
        padded = torch.nn.functional.pad(torch.from_numpy(ref), (0, 0, 0, 11), mode="replicate")
        assert got.shape == padded.shape and np.array_equal(bits(got), bits(padded))
    odd = hard_buffer(40, 37, 3, enc.num_classes)  # odd width: the one-pixel-at-a-time path
    wire = P.buffer_to_wire(odd)
    got = enc.encode_wire({k: torch.from_numpy(v)[None] for k, v in wire.items()})
    assert np.array_equal(bits(got), bits(reference_encode(enc, [P.buffer_from_wire(wire)])))


def test_output_quantisation_in_bands_is_exact_for_every_rounding_case(monkeypatch):
    """to_uint8 (the float's low byte after adding 2**23) against np.rint's reference on a padded, cropped
    output in several row bands: ties, values just around them, outside [-1, 1], infinities, NaNs of any payload."""
    monkeypatch.setattr(tensor_encoding, "BAND_PIXELS", 10 * 40)
    rng = np.random.default_rng(4)
    y = rng.normal(0, 0.9, (2, 3, 70, 48)).astype(np.float32)
    ties = (np.arange(256, dtype=np.float32) - 0.5) / np.float32(127.5) - np.float32(1.0)
    near = np.concatenate([ties, np.nextafter(ties, np.float32(2)), np.nextafter(ties, np.float32(-2))])
    y.reshape(-1)[: near.size] = near
    y[1, 2, 5, :6] = [np.nan, np.inf, -np.inf, 1e30, -1e30, -0.0]
    y[1, 1, 7, :3] = np.array([0x7F800001, 0xFFC0ABCD, 0x7FFFFFFF], np.uint32).view(np.float32)
    want = reference_decode_rgb(y[:, :, :64, :40])
    got = TensorEncoder.to_uint8(torch.from_numpy(y.copy())[:, :, :64, :40], in_place=True)
    assert np.array_equal(got.numpy(), want)
    assert np.array_equal(TensorEncoder.to_uint8(torch.from_numpy(y)).numpy(), reference_decode_rgb(y))


def test_label_check_is_exact_at_the_edges():
    enc = encoder_for(InputEncoding(label_mode="onehot", palette=[(i, i, 2 * i) for i in range(7)]), "cpu")
    enc.check_labels(torch.tensor([[0, 6, 255]], dtype=torch.uint8))
    enc.check_labels(torch.zeros((0, 4), dtype=torch.uint8))
    for bad in (7, 254):
        with pytest.raises(ValueError, match=rf"label ids \[{bad}\]"):
            enc.check_labels(torch.tensor([[0, bad, 255]], dtype=torch.uint8))
