"""Optional compression of array frames, for a backend on another machine where the network is the bottleneck.

Why optional and per frame: on one machine (ipc, loopback tcp) a 1080p request travels in a few milliseconds and
compressing it costs more than it saves; over 1 GbE the same ~8 MB take ~70 ms, and a deep buffer (empty pixels,
smooth depth, a few labels) shrinks well. A sender marks a compressed frame with ``"codec"`` in its array spec;
the declared dtype and shape still give the decompressed size, which the receiver checks against its limits
before decompressing and enforces while decompressing (a frame cannot inflate past what it declared).

zlib from the standard library, the one codec every peer has (the bridge is vendored into Blender, whose Python
has no zstandard; the bridge imports only numpy, pyzmq and msgpack). zstd would compress a 1080p request 5-10x
faster (benchmarks/bench_host.py measures both); the wire already names the codec per frame, so adding one later
is a compatible change. Frames under :data:`MIN_BYTES` are sent as they are.
"""

from __future__ import annotations

import zlib
from typing import Any

MIN_BYTES = 64 * 1024
ZLIB_LEVEL = 1   # speed first: the point is to beat the network, not to archive

CODECS: tuple[str, ...] = ("zlib",)


def choose_codec(preference: str | None) -> str | None:
    """None/"none" -> no compression; "auto" -> the best available; a codec name -> itself."""
    if preference in (None, "none"):
        return None
    if preference == "auto":
        return CODECS[0]
    if preference not in CODECS:
        raise ValueError(f"compression must be none, auto or one of {list(CODECS)}, got {preference!r}")
    return preference


def compress(codec: str, data: Any) -> bytes:
    """The compressed bytes of a C-contiguous buffer."""
    if codec != "zlib":
        raise ValueError(f"unknown codec {codec!r}")
    return zlib.compress(memoryview(data).cast("B"), ZLIB_LEVEL)


def decompress(codec: str, data: Any, nbytes: int) -> bytes:
    """Decompress a frame that declares ``nbytes``; ValueError if it holds more, less, or is not that codec."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not supported by this peer (it supports {list(CODECS)})")
    try:
        d = zlib.decompressobj()
        out = d.decompress(data, nbytes)  # at most nbytes come out, whatever the frame holds
        if d.unconsumed_tail or not d.eof:
            raise ValueError("more bytes than declared, or a truncated stream")
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"{codec} frame does not decompress to its declared {nbytes} bytes ({exc})") from None
    if len(out) != nbytes:
        raise ValueError(f"{codec} frame decompresses to {len(out)} bytes, declared {nbytes}")
    return out


__all__ = ["CODECS", "MIN_BYTES", "choose_codec", "compress", "decompress"]
