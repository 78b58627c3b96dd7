"""A seeded, bounded fuzz run against a real `rerender serve` with a model: >= 2,000 mutated messages over every op.

Every message must get exactly one reply, valid requests interleaved with them must all be answered correctly,
and afterwards the server must be alive with a healthy, never-restarted worker. The mutations include the class
that used to kill the server: an array declared [2**31, 2**31, 2**31, 0] with an empty frame (0 bytes, so it
passed the size check, and numpy's reshape raised a plain ValueError).
"""

from __future__ import annotations

import zlib

import msgpack
import numpy as np
import pytest
import zmq

from rerender.bridge import DeepBuffer, errors, protocol
from support_backend import BackendProcess, free_tcp_address, make_small_bundle

LATENT = 8
HOSTILE = 2000
BURST = 300


def _buffer(h: int = 8, w: int = 8) -> DeepBuffer:
    b = DeepBuffer.empty(h, w)
    b.depth[: h // 2] = 3.0
    b.mask[: h // 2] = True
    b.label[: h // 2] = 1
    return b


def valid_requests() -> dict[str, list]:
    """One valid request per op (header fields as a dict, arrays as a dict)."""
    wire = protocol.buffer_to_wire(_buffer())
    latent = np.linspace(-1, 1, LATENT).astype(np.float32)
    photo = np.full((8, 8, 3), 128, np.uint8)
    return {
        "hello": [{}, {}], "stats": [{}, {}], "appearances": [{}, {}],
        "echo": [{"note": "x"}, {"a": np.arange(6, dtype=np.float32)}],
        "rerender": [{"output": "uint8"}, {**wire, "latent": latent}],
        "encode": [{}, {**wire, "photo": photo}],
        "segment": [{}, dict(wire)],
    }


def _frames(op: str, rid: int, params: dict, arrays: dict) -> list[bytes]:
    return [bytes(memoryview(f)) for f in protocol.encode_request(op, rid, params, arrays)]


def pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(0, len(items)))]


def mutate(rng: np.random.Generator, base: dict[str, list], rid: int) -> list[bytes]:
    """One mutated message built from a valid request of a random op."""
    op = pick(rng, sorted(base))
    params, arrays = base[op]
    frames = _frames(op, rid, params, arrays)
    header = msgpack.unpackb(frames[0], raw=False)
    kind = int(rng.integers(0, 11))
    if kind == 0:  # flip bytes of the header
        raw = bytearray(frames[0])
        for _ in range(int(rng.integers(1, 5))):
            raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        return [bytes(raw), *frames[1:]]
    if kind == 1 and header["arrays"]:  # the zero-dimension class that crashed, on any declared array
        i = int(rng.integers(0, len(header["arrays"])))
        header["arrays"][i]["shape"] = [2**31, 2**31, 2**31, 0] if rng.random() < 0.5 else \
            [int(pick(rng, [0, 1, 2**31, 2**40, 2**62])) for _ in range(int(rng.integers(1, 5)))]
        frames[1 + i] = b""
    elif kind == 2 and header["arrays"]:  # other shape lies
        i = int(rng.integers(0, len(header["arrays"])))
        shape = list(header["arrays"][i]["shape"])
        j = int(rng.integers(0, len(shape))) if shape else 0
        if shape:
            shape[j] = int(pick(rng, [0, -1, shape[j] + 1, shape[j] * 2, 2**31, 10**12]))
        header["arrays"][i]["shape"] = shape if rng.random() < 0.8 else shape + [1, 1, 1]
    elif kind == 3 and header["arrays"]:  # dtypes
        i = int(rng.integers(0, len(header["arrays"])))
        header["arrays"][i]["dtype"] = str(pick(rng, ["float64", "int64", "object", "bool", "float16", "uint8",
                                                       "float32", "<U8", "V4"]))
    elif kind == 4:  # unknown arrays, duplicated names
        header["arrays"].append({"name": "color" if rng.random() < 0.3 else "extra", "dtype": "uint8",
                                 "shape": [1024]})
        frames.append(b"\0" * 1024)
    elif kind == 5:  # params
        header["params"] = pick(rng, [{"output": "png"}, {"fill_labels": 1}, {"quality": 9}, {"output": None},
                                      {"fill_labels": True}, [], "x", {"output": "float16"}])
    elif kind == 6:  # header fields
        key = str(pick(rng, ["op", "v", "id", "arrays", "params"]))
        header[key] = pick(rng, [None, -1, -2**63, "rerender", [1], {"a": 1}, 1.5, True])
        if key == "op" and rng.random() < 0.7:
            header["op"] = pick(rng, ["shutdown", "HELLO", "", "exec", "__class__", "rerender2"])
    elif kind == 7:  # frames dropped, added, truncated or padded
        if len(frames) > 1 and rng.random() < 0.5:
            i = int(rng.integers(1, len(frames)))
            frames[i] = frames[i][: max(0, len(frames[i]) - int(rng.integers(1, 8)))] if rng.random() < 0.5 \
                else frames[i] + b"\1" * int(rng.integers(1, 8))
        else:
            frames = frames[:-1] if len(frames) > 1 and rng.random() < 0.5 else frames + [b"junk"]
    elif kind == 8 and op in ("rerender", "encode", "segment"):  # bad contents in valid-looking arrays
        arrays = dict(arrays)
        choice = int(rng.integers(0, 4))
        if choice == 0:
            arrays["depth"] = np.full((8, 8), np.nan, np.float16)
        elif choice == 1:
            arrays["label"] = np.full((8, 8), 200, np.uint8)  # not a class of the bundle
        elif choice == 2 and "latent" in arrays:
            arrays["latent"] = np.full(LATENT, np.inf, np.float32)
        else:
            arrays["mask"] = np.full((8, 8), 7, np.uint8).view(np.bool_)
        return _frames(op, rid, params, arrays)
    elif kind == 9 and header["arrays"] and rng.random() < 0.6:  # compressed frames: garbage, bombs, codecs
        i = int(rng.integers(0, len(header["arrays"])))
        header["arrays"][i]["codec"] = pick(rng, ["zlib", "zlib", "zstd", "lz4", 5, None])
        frames[1 + i] = pick(rng, [zlib.compress(b"\0" * (8 << 20), 9), zlib.compress(frames[1 + i])[:-3],
                                   rng.bytes(64), b"", zlib.compress(frames[1 + i])])
    else:  # random bytes of a random length as a whole message
        return [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))]
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _reply(sock: zmq.Socket) -> dict:
    try:
        return msgpack.unpackb(sock.recv_multipart()[0], raw=False)
    except zmq.Again:
        pytest.fail("a message got no reply within 20 s")


@pytest.mark.slow
def test_two_thousand_mutated_messages_over_every_op(tmp_path):
    rng = np.random.default_rng(20261201)
    base = valid_requests()
    valid_rid = 10**9
    with BackendProcess(make_small_bundle(tmp_path / "bundle"), free_tcp_address(),
                        log_path=tmp_path / "serve.log") as backend:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 20000)
        sock.connect(backend.address)
        codes: dict[str, int] = {}
        valid_answered = 0
        try:
            # 1. one at a time: each message gets exactly one reply before the next is sent
            for n in range(HOSTILE - BURST):
                sock.send_multipart(mutate(rng, base, n))
                header = _reply(sock)
                key = "ok" if header.get("ok") else header["error"]["code"]
                assert key == "ok" or key in errors.ALL_CODES, header
                codes[key] = codes.get(key, 0) + 1
                if n % 10 == 0:  # a valid request between the hostile ones is answered, correctly
                    valid_rid += 1
                    sock.send_multipart(_frames("rerender", valid_rid, *base["rerender"]))
                    reply = sock.recv_multipart()
                    header = msgpack.unpackb(reply[0], raw=False)
                    assert header["ok"] and header["id"] == valid_rid, header
                    image = np.frombuffer(reply[1], np.uint8).reshape(header["arrays"][0]["shape"])
                    assert image.shape == (8, 8, 3)
                    valid_answered += 1
            # 2. a burst: all sent before any reply is read; one reply each, ids matched where readable
            ids = set()
            for n in range(BURST):
                rid = 5 * 10**8 + n
                sock.send_multipart(mutate(rng, base, rid))
                ids.add(rid)
            replies = [_reply(sock) for _ in range(BURST)]
            seen = [h["id"] for h in replies if h.get("id") in ids]
            assert len(seen) == len(set(seen))  # nobody answered twice
            for h in replies:
                key = "ok" if h.get("ok") else h["error"]["code"]
                codes[key] = codes.get(key, 0) + 1
            assert not sock.poll(1000), "a message got more than one reply"
            sock.send_multipart(_frames("stats", 1, {}, {}))
            stats = _reply(sock)["params"]
        finally:
            sock.close(linger=0)
        assert backend.process.poll() is None
        log = backend.log()
    assert sum(codes.values()) == HOSTILE
    assert valid_answered == (HOSTILE - BURST + 9) // 10
    assert stats["health"]["ok"] and stats["health"]["restarts"] == 0, stats["health"]
    assert "Traceback" not in log and "crashed" not in log
    # the mix really exercised the checks, not only the header parser
    for code in ("malformed", "bad_array", "too_large", "bad_params", "unknown_op"):
        assert codes.get(code, 0) >= 10, codes
    print(f"fuzz: {HOSTILE} hostile messages, {valid_answered} valid interleaved, replies by code {codes}")
