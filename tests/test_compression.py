"""Compressed array frames: exact round trips, bounded decompression, and a real served request."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from rerender.backend.bundle import init_bundle
from rerender.backend.runtime import ModelRuntime
from rerender.backend.server import Server
from rerender.bridge import Client, compression
from rerender.bridge.errors import ProtocolError
from rerender.bridge.protocol import buffer_to_wire, decode, encode_request
from rerender.bridge.buffers import DeepBuffer


def _bytes(frames) -> list[bytes]:
    return [f if isinstance(f, bytes) else np.ascontiguousarray(f).tobytes() for f in frames]


def buffer(h: int = 120, w: int = 160) -> DeepBuffer:
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (yy > h // 4) & (xx > w // 5)
    color = np.where(mask[..., None], np.stack([yy / h, xx / w, 0.5 + 0 * yy], -1), 0).astype(np.float16)
    depth = np.where(mask, 10.0 + yy / 10.0, np.inf).astype(np.float32)
    label = np.where(mask, (xx // 40) % 5, 255).astype(np.uint8)
    return DeepBuffer(color, depth, label, mask)


@pytest.mark.parametrize("codec", compression.CODECS)
def test_frames_round_trip_exactly_and_shrink(codec: str):
    wire = buffer_to_wire(buffer(240, 320), send_mask=None)  # frames above compression.MIN_BYTES
    plain = _bytes(encode_request("rerender", 1, {}, wire))
    packed = _bytes(encode_request("rerender", 1, {}, wire, codec=codec))
    assert sum(map(len, packed)) < 0.5 * sum(map(len, plain))
    back = decode(packed).arrays
    assert all(np.array_equal(back[k], wire[k]) and back[k].dtype == wire[k].dtype for k in wire)


def test_a_frame_cannot_inflate_past_its_declared_size():
    wire = {"big": np.zeros(200_000, np.uint8)}
    frames = _bytes(encode_request("echo", 1, {}, wire, codec="zlib"))
    bomb = zlib.compress(bytes(400_000), 1)  # twice what the header declares
    with pytest.raises(ProtocolError, match="declared") as info:
        decode([frames[0], bomb])
    assert info.value.code == "bad_array"
    with pytest.raises(ProtocolError, match="declared"):
        decode([frames[0], zlib.compress(bytes(100_000), 1)])  # too short
    spec_zstd = frames[0].replace(b"zlib", b"zstd")  # a codec this peer does not have
    with pytest.raises(ProtocolError, match="not supported") as info:
        decode([spec_zstd, frames[1]])
    assert info.value.code == "bad_array"
    with pytest.raises(ValueError, match="none, auto or one of"):
        compression.choose_codec("lz4")


def test_compressed_requests_are_served_like_plain_ones(tmp_path):
    bundle = init_bundle(tmp_path / "b", base_channels=8, depth=3, max_channels=16, latent_size=4,
                         encoder_channels=8, encoder_blocks=2, num_classes=6, seed=1)
    server = Server(ModelRuntime(bundle, "cpu"), f"ipc://{tmp_path}/rr.sock")
    thread = server.start_in_thread()
    try:
        z = np.linspace(-1, 1, 4).astype(np.float32)
        with Client(server.bound_address, timeout=60) as plain, \
                Client(server.bound_address, timeout=60, compression="auto") as packed:
            assert packed.compression == compression.CODECS[0]
            b = buffer(240, 320)  # frames above compression.MIN_BYTES: they travel compressed
            b = DeepBuffer(b.color, b.depth, np.where(b.mask, b.label % 6, 255).astype(np.uint8), b.mask)
            assert np.array_equal(packed.rerender(b, z), plain.rerender(b, z))
    finally:
        server.stop()
        thread.join(10)  # no server thread may outlive its test: later Blender tests share this process
