"""Optional compression of array frames, for a backend on another machine where the network is the bottleneck.

Why optional and per frame: on one machine (ipc, loopback tcp) a 1080p request travels in a few milliseconds and
compressing it costs more than it saves; over 1 GbE the same ~8 MB take ~70 ms, and a deep buffer (empty pixels,
smooth depth, a few labels) shrinks well. A sender marks a compressed frame with ``"codec"`` in its array spec;
the declared dtype and shape still give the decompressed size, which the receiver checks against its limits
before decompressing and enforces while decompressing (a frame cannot inflate past what it declared).

zstd (the ``zstandard`` package) when installed, else zlib from the standard library (always there, also in
Blender's Python). Frames under :data:`MIN_BYTES` are sent as they are.
"""

from __future__ import annotations

import zlib
from typing import Any

try:
    import zstandard as _zstd
except ImportError:  # pragma: no cover - depends on the environment
    _zstd = None

MIN_BYTES = 64 * 1024
ZLIB_LEVEL = 1   # speed first: the point is to beat the network, not to archive
ZSTD_LEVEL = 1

CODECS: tuple[str, ...] = ("zstd", "zlib") if _zstd is not None else ("zlib",)


def choose_codec(preference: str | None) -> str | None:
    """None/"none" -> no compression; "auto" -> the best available; a codec name -> itself, if available."""
    if preference in (None, "none"):
        return None
    if preference == "auto":
        return CODECS[0]
    if preference not in ("zstd", "zlib"):
        raise ValueError(f"compression must be none, auto, zstd or zlib, got {preference!r}")
    if preference not in CODECS:
        raise ValueError(f"compression {preference!r} needs the 'zstandard' package (pip install zstandard); "
                         f"available here: {list(CODECS)}")
    return preference


def compress(codec: str, data: Any) -> bytes:
    """The compressed bytes of a C-contiguous buffer."""
    view = memoryview(data).cast("B")
    if codec == "zstd" and _zstd is not None:
        return _zstd.ZstdCompressor(level=ZSTD_LEVEL).compress(view)
    if codec == "zlib":
        return zlib.compress(view, ZLIB_LEVEL)
    raise ValueError(f"unknown codec {codec!r}")


def decompress(codec: str, data: Any, nbytes: int) -> bytes:
    """Decompress a frame that declares ``nbytes``; ValueError if it holds more, less, or is not that codec."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not supported by this peer (it supports {list(CODECS)})")
    try:
        if codec == "zstd":  # read at most one byte past the declared size: a bomb never inflates in memory
            reader = _zstd.ZstdDecompressor().stream_reader(memoryview(data).cast("B"))  # type: ignore
            parts, total = [], 0
            while total <= nbytes:
                chunk = reader.read(nbytes + 1 - total)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            out = b"".join(parts)
        else:
            d = zlib.decompressobj()
            out = d.decompress(data, nbytes)
            if d.unconsumed_tail or not d.eof:
                raise ValueError("more bytes than declared, or a truncated stream")
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"{codec} frame does not decompress to its declared {nbytes} bytes ({exc})") from None
    except Exception as exc:  # zstandard.ZstdError
        raise ValueError(f"{codec} frame does not decompress ({exc})") from None
    if len(out) != nbytes:
        raise ValueError(f"{codec} frame decompresses to {len(out)} bytes, declared {nbytes}")
    return out


__all__ = ["CODECS", "MIN_BYTES", "choose_codec", "compress", "decompress"]
