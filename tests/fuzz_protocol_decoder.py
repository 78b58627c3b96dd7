"""Coverage-guided fuzzing of the bridge's protocol decoder with atheris (libFuzzer for Python).

Run by tests/test_bridge_protocol_fuzz.py for a bounded time in CI; by hand::

    .venv/bin/python tests/fuzz_protocol_decoder.py -max_total_time=300 /tmp/new-corpus tests/fuzz_corpus/protocol

(libFuzzer writes new inputs into the first folder; the repository's seeds stay untouched.)

An input is a multipart message in a small framing: byte 0 = number of frames - 1 (mod 8), then per frame a
2-byte little-endian length and that many bytes (cut short at the end of the input). Every input is decoded as
a request and as a reply, and what decodes goes on through the deep-buffer and latent checks. Anything but a
ProtocolError escaping them is a bug: libFuzzer stops and saves the input. ``--write-seeds DIR`` writes the seed
corpus (valid messages of every op, and the shapes that once crashed the server).
"""

from __future__ import annotations

import struct
import sys

import atheris

with atheris.instrument_imports(include=["rerender.bridge", "msgpack"]):
    import msgpack
    import numpy as np

    from rerender.bridge import protocol
    from rerender.bridge.errors import ProtocolError

LIMITS = protocol.Limits(max_array_bytes=1 << 20, max_message_bytes=4 << 20, max_header_bytes=16 << 10)


def split(data: bytes) -> list[bytes]:
    if not data:
        return []
    count, pos, frames = data[0] % 8 + 1, 1, []
    for _ in range(count):
        if pos + 2 > len(data):
            break
        (length,) = struct.unpack_from("<H", data, pos)
        pos += 2
        frames.append(data[pos:pos + length])
        pos += length
    return frames


def join(frames: list[bytes]) -> bytes:
    return bytes([len(frames) - 1]) + b"".join(struct.pack("<H", len(f)) + f for f in frames)


def one_input(data: bytes) -> None:
    frames = split(data)
    for reply in (False, True):
        try:
            message = protocol.decode(frames, LIMITS, reply=reply)
        except ProtocolError:
            continue
        for array in message.arrays.values():  # what decodes is what was declared, within the limits
            assert array.nbytes <= LIMITS.max_array_bytes
        for check in (protocol.buffer_from_wire, getattr(protocol, "check_wire_buffer", None)):
            if check is None:
                continue
            try:
                check(message.arrays)
            except ProtocolError:
                pass
        if "latent" in message.arrays:
            try:
                protocol.check_latent(message.arrays["latent"], 8)
            except ProtocolError:
                pass


def seeds() -> dict[str, bytes]:
    from rerender.bridge import DeepBuffer

    buffer = DeepBuffer.empty(4, 4)
    buffer.depth[:2] = 2.0
    buffer.mask[:2] = True
    wire = protocol.buffer_to_wire(buffer)
    latent = np.zeros(8, np.float32)

    def frames(op: str, params: dict, arrays: dict) -> bytes:
        return join([bytes(memoryview(f)) for f in protocol.encode_request(op, 7, params, arrays)])

    def declared(shape: list[int], data: bytes = b"") -> bytes:
        header = {"op": "echo", "v": 1, "id": 3, "params": {},
                  "arrays": [{"name": "a", "dtype": "uint8", "shape": shape}]}
        return join([msgpack.packb(header), data])

    out = {
        "hello": frames("hello", {}, {}),
        "echo": frames("echo", {"k": [1, "x"]}, {"a": np.arange(6, dtype=np.float32)}),
        "rerender": frames("rerender", {"output": "float16"}, {**wire, "latent": latent}),
        "encode": frames("encode", {}, {**wire, "photo": np.zeros((4, 4, 3), np.uint8)}),
        "segment": frames("segment", {}, dict(wire)),
        "reply_error": join([bytes(memoryview(f)) for f in protocol.encode_error("rerender", 9, "overloaded",
                                                                                 "busy", retry_after_ms=40)]),
        "zero_dim_huge": declared([2**31, 2**31, 2**31, 0]),
        "zero_dim": declared([0, 5]),
        "bool_frame": join([msgpack.packb({"op": "echo", "v": 1, "id": 1, "params": {},
                                           "arrays": [{"name": "b", "dtype": "bool", "shape": [3]}]}), b"\0\1\2"]),
    }
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        from pathlib import Path

        folder = Path(sys.argv[2])
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (folder / f"{name}.bin").write_bytes(data)
        sys.exit(0)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
