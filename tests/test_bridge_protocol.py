"""The wire format without sockets: encoding, hostile-header validation, deep buffers on the wire."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest

from rerender.bridge import DeepBuffer, ProtocolError, linear_to_srgb8, srgb8_to_linear
from rerender.bridge import errors, protocol
from rerender.bridge.protocol import (
    FLOAT16_MAX, PROTOCOL_VERSION, Limits, buffer_from_wire, buffer_to_wire, check_latent, decode, encode_error,
    encode_reply, encode_request,
)


def _frames_bytes(frames):
    return [bytes(memoryview(f)) if not isinstance(f, bytes) else f for f in frames]


def _header(frames):
    return msgpack.unpackb(frames[0], raw=False)


def test_request_round_trip_keeps_arrays_bit_exact():
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([[1, 0], [0, 1]], bool),
              "c": np.full((2, 3, 3), 200, np.uint8), "d": np.array([np.inf, -1.5, 0], np.float16)}
    frames = _frames_bytes(encode_request("echo", 42, {"k": [1, "x"]}, arrays))
    header = _header(frames)
    assert header["v"] == PROTOCOL_VERSION and header["id"] == 42 and header["op"] == "echo"
    assert [a["dtype"] for a in header["arrays"]] == ["float32", "bool", "uint8", "float16"]
    message = decode(frames)
    assert message.op == "echo" and message.id == 42 and message.params == {"k": [1, "x"]}
    for name, a in arrays.items():
        got = message.arrays[name]
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
        assert not got.flags.writeable  # a view of the received frame, not a copy


def test_big_endian_and_non_contiguous_arrays_are_normalised():
    a = np.arange(20, dtype=">f4").reshape(4, 5)[:, ::2]
    message = decode(_frames_bytes(encode_request("echo", 1, {}, {"a": a})))
    assert np.array_equal(message.arrays["a"], a.astype("<f4"))


def test_encoding_refuses_dtypes_the_wire_does_not_carry():
    with pytest.raises(TypeError, match="int64"):
        encode_request("echo", 1, {}, {"a": np.arange(3)})
    with pytest.raises(TypeError, match="object"):
        encode_request("echo", 1, {}, {"a": np.array([object()])})


def test_error_reply_round_trip():
    message = decode(_frames_bytes(encode_error("rerender", 7, errors.CODE_BAD_PARAMS, "latent is NaN")), reply=True)
    assert not message.ok and message.id == 7 and message.error_code == "bad_params"
    assert message.error_message == "latent is NaN"
    ok = decode(_frames_bytes(encode_reply("hello", 3, {"protocol": 1})), reply=True)
    assert ok.ok and ok.params == {"protocol": 1}


def _request_with(header_changes=None, specs=None, data_frames=None):
    header = {"op": "echo", "v": PROTOCOL_VERSION, "id": 5, "params": {}, "arrays": []}
    header.update(header_changes or {})
    if specs is not None:
        header["arrays"] = specs
    return [msgpack.packb(header, use_bin_type=True), *(data_frames or [])]


@pytest.mark.parametrize("frames, code", [
    ([], "malformed"),
    ([b"\xc1"], "malformed"),                                  # never-used msgpack byte
    ([b"\x92\x01"], "malformed"),                              # truncated msgpack array
    ([pickle.dumps({"op": "echo"})], "malformed"),             # a pickle is not a header (and is never unpickled)
    ([msgpack.packb([1, 2, 3])], "malformed"),                 # not a map
    ([b"x" * (64 * 1024 + 1)], "too_large"),                   # header over the limit, rejected before parsing
    (_request_with({"v": 99}), "version_mismatch"),
    (_request_with({"v": "1"}), "malformed"),
    (_request_with({"id": -1}), "malformed"),
    (_request_with({"id": True}), "malformed"),
    (_request_with({"op": 5}), "malformed"),
    (_request_with({"params": [1]}), "malformed"),
    (_request_with(specs=[{"name": "a", "dtype": "object", "shape": [1]}], data_frames=[b"x" * 8]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "float32", "shape": [2**40, 2**40]}], data_frames=[b""]),
     "too_large"),
    (_request_with(specs=[{"name": "a", "dtype": "float32", "shape": [4]}], data_frames=[b"x" * 15]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "uint8", "shape": [4]}], data_frames=[]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "uint8", "shape": [-4]}], data_frames=[b""]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "uint8", "shape": "4"}], data_frames=[b"abcd"]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "bool", "shape": [2]}], data_frames=[b"\x00\x07"]), "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "uint8", "shape": [1]}] * 2, data_frames=[b"a", b"b"]),
     "bad_array"),
    (_request_with(specs=[{"name": "a", "dtype": "uint8", "shape": [1] * 5}], data_frames=[b"a"]), "bad_array"),
])
def test_hostile_messages_raise_protocol_errors_with_codes(frames, code):
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.code == code
    assert info.value.code in errors.ALL_CODES


def test_error_keeps_request_id_when_the_header_was_readable():
    with pytest.raises(ProtocolError) as info:
        decode(_request_with({"id": 77}, specs=[{"name": "a", "dtype": "complex64", "shape": [1]}],
                             data_frames=[b"12345678"]))
    assert info.value.request_id == 77 and info.value.op == "echo"


def test_declared_total_size_is_limited_before_any_frame_is_read():
    limits = Limits(max_array_bytes=100, max_message_bytes=150)
    specs = [{"name": n, "dtype": "uint8", "shape": [100]} for n in "ab"]
    with pytest.raises(ProtocolError) as info:
        decode(_request_with(specs=specs, data_frames=[b"", b""]), limits)
    assert info.value.code == "too_large" and "150" in info.value.message


def _random_buffer(h=6, w=10, seed=0):
    rng = np.random.default_rng(seed)
    srgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.random((h, w)) > 0.3
    color = np.where(mask[..., None], srgb8_to_linear(srgb), 0).astype(np.float16)
    depth = np.where(mask, rng.uniform(0.5, 80, (h, w)), np.inf).astype(np.float32)
    label = np.where(mask, rng.integers(0, 19, (h, w)), 255).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask), srgb


def test_deep_buffer_survives_the_wire():
    buffer, srgb = _random_buffer()
    wire = buffer_to_wire(buffer)
    assert {k: v.dtype.name for k, v in wire.items()} == {"color": "uint8", "depth": "float16", "label": "uint8",
                                                          "mask": "uint8"}
    assert np.array_equal(wire["color"], linear_to_srgb8(buffer.color))  # the table equals bridge.colors
    assert np.array_equal(wire["color"][buffer.mask], srgb[buffer.mask])  # 8-bit photo colors come back exactly
    back = buffer_from_wire(decode(_frames_bytes(encode_request("rerender", 1, {}, wire))).arrays)
    assert np.array_equal(back.mask, buffer.mask) and np.array_equal(back.label, buffer.label)
    assert np.array_equal(linear_to_srgb8(back.color), linear_to_srgb8(buffer.color))
    assert np.array_equal(np.isinf(back.depth), ~buffer.mask)
    np.testing.assert_allclose(back.depth[buffer.mask], buffer.depth[buffer.mask], rtol=1e-3)


def test_far_depths_are_clipped_not_turned_into_empty_pixels():
    buffer = DeepBuffer.empty(1, 3)
    buffer.depth[0] = [1e6, 70000.0, np.inf]
    wire = buffer_to_wire(buffer)["depth"]
    assert wire[0, 0] == wire[0, 1] == FLOAT16_MAX and np.isinf(wire[0, 2])
    exact = buffer_to_wire(buffer, depth_dtype="float32")["depth"]
    assert exact.dtype == np.float32 and exact[0, 0] == 1e6


def test_bad_buffers_and_latents_are_rejected_with_reasons():
    wire = buffer_to_wire(_random_buffer()[0])
    with pytest.raises(ProtocolError, match="missing"):
        buffer_from_wire({k: v for k, v in wire.items() if k != "label"})
    with pytest.raises(ProtocolError, match="'depth' must be"):
        buffer_from_wire({**wire, "depth": wire["depth"][:, :3]})
    nan_depth = wire["depth"].copy()
    nan_depth[0, 0] = np.nan
    with pytest.raises(ProtocolError, match="NaN"):
        buffer_from_wire({**wire, "depth": nan_depth})
    with pytest.raises(ProtocolError, match="NaN"):
        check_latent(np.array([0, np.nan], np.float32), 2)
    with pytest.raises(ProtocolError, match="latent size is 8"):
        check_latent(np.zeros(3, np.float32), 8)
    assert check_latent(np.zeros(8, np.float32), 8).shape == (8,)


def test_every_error_code_maps_to_a_typed_exception():
    for code in errors.ALL_CODES:
        exc = errors.remote_error(code, "msg", 3, "rerender")
        assert isinstance(exc, errors.RemoteError) and exc.code == code and code in str(exc)
    assert isinstance(errors.remote_error("version_mismatch", ""), errors.ProtocolMismatch)
    assert isinstance(errors.remote_error("no_model", ""), errors.ModelUnavailable)
    assert type(errors.remote_error("from_the_future", "")) is errors.RemoteError


def test_bridge_imports_neither_torch_nor_bpy():
    import subprocess
    import sys

    code = ("import sys, rerender.bridge; bad = [m for m in ('torch', 'bpy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert protocol.__name__ == "rerender.bridge.protocol"


def test_deep_buffers_beyond_the_served_size_are_refused_before_conversion():
    h, w = 1, 20000
    wire = {"color": np.zeros((h, w, 3), np.uint8), "depth": np.zeros((h, w), np.float16),
            "label": np.zeros((h, w), np.uint8), "mask": np.zeros((h, w), np.uint8)}
    with pytest.raises(ProtocolError) as info:
        buffer_from_wire(wire)
    assert info.value.code == "too_large" and "16384" in info.value.message


@pytest.mark.parametrize("reply", [False, True])
def test_zero_dimensions_do_not_hide_an_impossible_extent(reply):
    """[2**31, 2**31, 2**31, 0] declares 0 bytes (so an empty frame matches it) but numpy cannot build it: the
    declaration is refused with a code on both sides of the wire, never a plain ValueError."""
    header = {"op": "echo", "v": PROTOCOL_VERSION, "id": 4, "ok": True, "params": {},
              "arrays": [{"name": "a", "dtype": "uint8", "shape": [2**31, 2**31, 2**31, 0]}]}
    with pytest.raises(ProtocolError) as info:
        decode([msgpack.packb(header), b""], reply=reply)
    assert info.value.code == "too_large" and info.value.request_id == 4
    header["arrays"][0]["shape"] = [0, 5, 7]  # an honest empty array still decodes
    assert decode([msgpack.packb(header), b""], reply=reply).arrays["a"].shape == (0, 5, 7)


def test_overloaded_error_replies_carry_a_retry_after():
    message = decode(_frames_bytes(encode_error("rerender", 3, "overloaded", "busy", retry_after_ms=75)), reply=True)
    assert message.error_code == "overloaded" and message.retry_after_ms == 75.0
    exc = errors.remote_error("overloaded", "busy", 3, "rerender", retry_after=0.075)
    assert isinstance(exc, errors.BackendBusy) and exc.retry_after == 0.075


def test_request_sizes_are_checked_before_sending():
    protocol.check_request_size({"color": np.zeros((8, 8, 3), np.uint8)}, max_frame_pixels=64)
    with pytest.raises(ProtocolError, match="65 px|at most 64 px"):
        protocol.check_request_size({"color": np.zeros((5, 13, 3), np.uint8)}, max_frame_pixels=64)
    with pytest.raises(ProtocolError, match="16384"):
        protocol.check_request_size({"color": np.zeros((1, 16385, 3), np.uint8)})
    with pytest.raises(ProtocolError, match="arrays in one request"):
        protocol.check_request_size({f"a{i}": np.zeros(1, np.uint8) for i in range(17)})


@pytest.mark.parametrize("threads", ["1", "2"])
def test_wire_conversions_in_row_bands_equal_numpy_over_every_float16_code(threads: str, monkeypatch):
    """color_to_wire and depth_to_wire work in row bands on a thread pool: every float16 color code goes through
    the table exactly, and depth is numpy's float32 -> float16 cast (ties to even, subnormals, infinities, NaN
    payloads) with finite values beyond 65504 clipped, on frames of many bands and a 1-d one."""
    monkeypatch.setenv("RERENDER_BAND_THREADS", threads)
    codes = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(-1, 64, 1).repeat(3, axis=2)  # 1024 rows
    want = linear_to_srgb8(np.nan_to_num(codes.astype(np.float32), nan=0.0))
    assert np.array_equal(protocol.color_to_wire(codes), want)
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32).astype(np.int64)
    rng = np.random.default_rng(0)
    near = [((halves + k) & 0xFFFFFFFF).astype(np.uint32) for k in range(-2, 3)]  # every float16, its neighbours
    depth = np.concatenate(near + [rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)])
    depth = depth.view(np.float32)
    f16 = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    ties = ((f16[:-1] + f16[1:]) / 2).astype(np.float32)  # exactly between two float16: ties to even
    edges = np.array([65519.0, 65520.0, 1e30, -1e30, np.inf, -np.inf], np.float32)
    depth = np.concatenate([depth, ties, -ties, edges])
    depth = depth[: depth.size // 250 * 250]
    with np.errstate(over="ignore", invalid="ignore"):
        cast = depth.astype(np.float16)
    fix = np.isinf(cast) & ~np.isinf(depth)
    cast[fix] = np.copysign(np.float16(protocol.FLOAT16_MAX), depth[fix])
    for shape in ((-1, 250), (-1,)):
        got = protocol.depth_to_wire(depth.reshape(shape)).reshape(-1)
        assert np.array_equal(got.view(np.uint16), cast.view(np.uint16))
