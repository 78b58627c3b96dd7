"""Hostile and malformed messages: each gets an error reply, the server survives, its memory stays bounded."""

from __future__ import annotations

import pickle

import msgpack
import numpy as np
import pytest
import zmq

from rerender.bridge import Client, DeepBuffer, errors, protocol
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

V = protocol.PROTOCOL_VERSION


def _header(**fields) -> bytes:
    base = {"op": "rerender", "v": V, "id": 1, "params": {}, "arrays": []}
    base.update(fields)
    return msgpack.packb(base, use_bin_type=True)


def _valid_rerender_frames(request_id: int, latent: np.ndarray, h: int = 8, w: int = 8) -> list:
    arrays = {**protocol.buffer_to_wire(DeepBuffer.empty(h, w)), "latent": latent}
    return protocol.encode_request("rerender", request_id, {}, arrays)


def hostile_messages(rng: np.random.Generator) -> list[tuple[str, list]]:
    """(what, frames) pairs; none of them is a valid request."""
    out: list[tuple[str, list]] = []
    for i in range(40):
        out.append(("random bytes", [rng.bytes(int(rng.integers(1, 300)))]))
    for i in range(20):
        out.append(("random multipart", [rng.bytes(int(rng.integers(1, 50))) for _ in range(int(rng.integers(2, 5)))]))
    for obj in ({"op": "hello", "v": V, "id": 1}, np.zeros(3), [1, 2], "hello", Exception("x")):
        out.append(("pickled object", [pickle.dumps(obj)]))
        out.append(("pickled array frame", [_header(op="echo", arrays=[{"name": "a", "dtype": "object",
                                                                         "shape": [1]}]), pickle.dumps(obj)]))
    wrong_types = [("op", 5), ("op", None), ("op", ["rerender"]), ("v", "1"), ("v", 1.0), ("v", None), ("id", "7"),
                   ("id", -3), ("id", -2**63), ("id", 1.5), ("params", [1]), ("params", "x"), ("arrays", {"a": 1}),
                   ("arrays", "color")]
    for key, value in wrong_types:
        out.append((f"wrong type for {key}", [_header(**{key: value})]))
    for v in (0, 2, 99, -1):
        out.append(("wrong version", [_header(v=v, op="hello")]))
    for op in ("", "shutdown", "exec", "__class__", "HELLO", "x" * 100):
        out.append(("unknown op", [_header(op=op)]))
    for shape in ([2**31, 2**31, 3], [10**12], [16384, 16384, 16384], [1, 1, 1, 1, 1], [-1, 5], [1.5], ["8"],
                  [True, 1]):
        out.append(("huge or wrong declared shape", [_header(op="echo", arrays=[{"name": "color", "dtype": "uint8",
                                                                                  "shape": shape}]), b"\0" * 8]))
    for dtype in ("float64", "int64", "object", "<U8", "V8", "complex64", "O", None, 4):
        out.append(("dtype not on the whitelist", [_header(op="echo", arrays=[{"name": "a", "dtype": dtype,
                                                                               "shape": [1]}]), b"\0" * 8]))
    for n in range(10):  # truncated / padded frames
        size = 8 * 8 * 3
        data = b"\1" * (size - 1 - n if n % 2 == 0 else size + 1 + n)
        out.append(("truncated or padded array", [_header(op="echo", arrays=[{"name": "c", "dtype": "uint8",
                                                                              "shape": [8, 8, 3]}]), data]))
    out.append(("missing frames", [_header(op="echo", arrays=[{"name": "c", "dtype": "uint8", "shape": [4]}])]))
    out.append(("extra frames", [_header(op="echo"), b"abcd", b"efgh"]))
    out.append(("too many arrays", [_header(op="echo", arrays=[{"name": f"a{i}", "dtype": "uint8", "shape": [1]}
                                                               for i in range(40)]), *[b"x"] * 40]))
    out.append(("header over the limit", [_header(op="echo", params={"pad": "x" * 70000})]))
    out.append(("deeply nested header", [b"\x91" * 5000 + b"\xc0"]))
    # NaN / inf / wrong latents and broken deep buffers (these reach the model-op checks)
    for i, latent in enumerate([np.full(8, np.nan, np.float32), np.full(8, np.inf, np.float32),
                                np.zeros(3, np.float32), np.zeros((2, 8), np.float32), np.zeros(8, np.float16),
                                np.zeros(0, np.float32)]):
        out.append(("bad latent", _valid_rerender_frames(1000 + i, latent)))
    good = {**protocol.buffer_to_wire(DeepBuffer.empty(8, 8)), "latent": np.zeros(8, np.float32)}
    for i, (name, bad) in enumerate([("depth", np.full((8, 8), np.nan, np.float16)), ("depth", np.zeros((8, 7), np.float16)),
                                     ("color", np.zeros((8, 8), np.uint8)), ("color", np.zeros((8, 8, 3), np.float32)),
                                     ("label", np.zeros((8, 8), np.float32)), ("mask", np.zeros((4, 8), np.uint8)),
                                     ("color", np.zeros((0, 8, 3), np.uint8))]):
        out.append((f"bad deep buffer {name}", protocol.encode_request("rerender", 2000 + i, {}, {**good, name: bad})))
    out.append(("missing deep buffer array", protocol.encode_request(
        "rerender", 3000, {}, {k: v for k, v in good.items() if k != "depth"})))
    out.append(("missing latent", protocol.encode_request(
        "rerender", 3001, {}, {k: v for k, v in good.items() if k != "latent"})))
    out.append(("unknown parameter", protocol.encode_request("rerender", 3002, {"quality": 11}, good)))
    out.append(("photo of the wrong size", protocol.encode_request(
        "encode", 3003, {}, {**good, "photo": np.zeros((4, 4, 3), np.uint8)})))
    while len(out) < 220:  # random mutations of a valid request header
        frames = _valid_rerender_frames(5000 + len(out), np.zeros(8, np.float32))
        header = bytearray(frames[0])
        for _ in range(int(rng.integers(1, 4))):
            header[int(rng.integers(0, len(header)))] = int(rng.integers(0, 256))
        mutated = [bytes(header), *frames[1:]]
        try:
            protocol.decode([bytes(memoryview(f)) for f in mutated])
            continue  # the mutation happened to leave a valid request: not hostile
        except errors.ProtocolError:
            out.append(("mutated header", mutated))
    return out


@pytest.mark.slow
def test_hostile_messages_each_get_an_error_reply_and_the_server_survives(tmp_path):
    bundle = make_small_bundle(tmp_path / "bundle")
    messages = hostile_messages(np.random.default_rng(0))
    assert len(messages) >= 200
    with BackendProcess(bundle, free_tcp_address(), log_path=tmp_path / "serve.log") as backend:
        rss_before = backend.rss_bytes()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 20000)
        sock.connect(backend.address)
        try:
            for what, frames in messages:
                sock.send_multipart(frames)
                try:
                    reply = sock.recv_multipart()
                except zmq.Again:
                    pytest.fail(f"no reply to a hostile message ({what})")
                header = msgpack.unpackb(reply[0], raw=False)
                assert header["ok"] is False, what
                assert header["error"]["code"] in errors.ALL_CODES, what
                assert header["error"]["message"], what
        finally:
            sock.close(linger=0)
        with Client(backend.address, timeout=20) as client:
            image = client.rerender(DeepBuffer.empty(8, 8), np.zeros(8, np.float32))
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8
        assert backend.process.poll() is None
        growth = backend.rss_bytes() - rss_before
        assert growth < 64 * 2**20, f"server memory grew by {growth / 2**20:.0f} MiB on hostile input"


def test_error_replies_carry_the_request_id_whenever_it_was_readable(tmp_path):
    with BackendProcess(None, free_tcp_address(), log_path=tmp_path / "serve.log") as backend:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 10000)
        sock.connect(backend.address)
        try:
            cases = {11: [_header(id=11, v=7)], 12: [_header(id=12, op="nope")],
                     13: [_header(id=13, op="echo", arrays=[{"name": "a", "dtype": "float32", "shape": [3]}]), b"x"]}
            codes = {}
            for request_id, frames in cases.items():
                sock.send_multipart(frames)
                header = msgpack.unpackb(sock.recv_multipart()[0], raw=False)
                assert header["id"] == request_id
                codes[request_id] = header["error"]["code"]
        finally:
            sock.close(linger=0)
    assert codes == {11: "version_mismatch", 12: "unknown_op", 13: "bad_array"}
