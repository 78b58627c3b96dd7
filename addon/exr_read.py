"""A pure-numpy OpenEXR reader for the files Blender writes for us: scanline images, single- or multi-part,
uncompressed, RLE, ZIPS or ZIP, half/float/uint channels.

Why it exists: the deep-buffer read-back and the tests read EXRs with the OpenImageIO module that ships inside
Blender, but not every Blender build carries it (the 4.2 bpy wheel does not). Our own pass files are uncompressed
and the render outputs Blender writes by default are ZIP, which is all this reader needs; anything else (PIZ, DWA,
tiled or deep images) raises :class:`ExrFormatError` saying so. File layout: the OpenEXR file-layout spec
(magic, version flags, attribute headers, chunk offset tables, per-scanline channel blocks in name order).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = 20000630
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_COMPRESSIONS = {0: "NONE", 1: "RLE", 2: "ZIPS", 3: "ZIP", 4: "PIZ", 5: "PXR24", 6: "B44", 7: "B44A", 8: "DWAA",
                 9: "DWAB"}
_LINES_PER_CHUNK = {"NONE": 1, "RLE": 1, "ZIPS": 1, "ZIP": 16}


class ExrFormatError(OSError):
    """The file is not an EXR this reader understands; the message says what it found."""


@dataclass
class ExrPart:
    """One part (sub-image) of an EXR: its channel names (sorted, as stored) and float32 pixels H x W x C."""

    name: str
    channels: list[str]
    pixels: np.ndarray = field(repr=False)
    attributes: dict = field(default_factory=dict, repr=False)


def _cstr(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _channels(value: bytes) -> list[tuple[str, int, int, int]]:
    out, pos = [], 0
    while pos < len(value) and value[pos] != 0:
        name, pos = _cstr(value, pos)
        ptype, _linear, xs, ys = struct.unpack_from("<iB3xii", value, pos)
        pos += 16
        out.append((name, ptype, xs, ys))
    return out


def _header(data: bytes, pos: int) -> tuple[dict, int]:
    attrs = {}
    while data[pos] != 0:
        name, pos = _cstr(data, pos)
        kind, pos = _cstr(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        value = data[pos:pos + size]
        pos += size
        if kind == "chlist":
            attrs[name] = _channels(value)
        elif kind == "compression":
            attrs[name] = _COMPRESSIONS.get(value[0], f"unknown ({value[0]})")
        elif kind == "box2i":
            attrs[name] = struct.unpack("<4i", value)
        elif kind == "int":
            attrs[name] = struct.unpack("<i", value)[0]
        elif kind == "string":
            attrs[name] = value.decode("utf-8", "replace")
        else:
            attrs[name] = value
    return attrs, pos + 1


def _undo_zip_filters(raw: bytes) -> bytes:
    """OpenEXR's ZIP/RLE pre-filters, reversed: a byte delta predictor, then the even/odd byte split."""
    t = np.frombuffer(raw, np.uint8)
    t = np.cumsum(t.astype(np.int64) - 128, dtype=np.int64) + 128  # t[i] = t[i-1] + d[i] - 128; t[0] = d[0]
    t = (t & 0xFF).astype(np.uint8)
    out = np.empty_like(t)
    half = (len(t) + 1) // 2
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


def _unrle(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while pos < len(data):
        count = struct.unpack_from("b", data, pos)[0]
        pos += 1
        if count < 0:
            out += data[pos:pos - count]
            pos -= count
        else:
            out += data[pos:pos + 1] * (count + 1)
            pos += 1
    return bytes(out)


def _decode_chunk(payload: bytes, compression: str, expected: int, where: str) -> bytes:
    if compression == "NONE" or len(payload) == expected:  # OpenEXR stores a chunk raw when packing did not help
        return payload
    if compression in ("ZIP", "ZIPS"):
        return _undo_zip_filters(zlib.decompress(payload))
    if compression == "RLE":
        return _undo_zip_filters(_unrle(payload))
    raise ExrFormatError(f"{where}: {compression} compression is not supported by the fallback EXR reader "
                         "(write EXRs with codec NONE or ZIP, or use a Blender build that ships OpenImageIO)")


def _read_part(data: bytes, attrs: dict, offsets: np.ndarray, part_index: int, multipart: bool,
               where: str) -> ExrPart:
    if attrs.get("type", "scanlineimage") not in ("scanlineimage",) or "tiles" in attrs:
        raise ExrFormatError(f"{where}: part {part_index} is a {attrs.get('type', 'tiled')} image; the fallback "
                             "reader reads scanline images only")
    compression = attrs.get("compression", "NONE")
    if compression not in _LINES_PER_CHUNK:
        raise ExrFormatError(f"{where}: {compression} compression is not supported by the fallback EXR reader "
                             "(write EXRs with codec NONE or ZIP, or use a Blender build that ships OpenImageIO)")
    channels = attrs["channels"]
    if any(xs != 1 or ys != 1 for _, _, xs, ys in channels):
        raise ExrFormatError(f"{where}: sub-sampled channels are not supported by the fallback EXR reader")
    x0, y0, x1, y1 = attrs["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    dtypes = [_PIXEL_DTYPES[p] for _, p, _, _ in channels]
    line_bytes = sum(width * d.itemsize for d in dtypes)
    per_chunk = _LINES_PER_CHUNK[compression]
    pixels = np.zeros((height, width, len(channels)), np.float32)
    for offset in offsets:
        pos = int(offset)
        if multipart:
            pos += 4  # the part number
        y, size = struct.unpack_from("<ii", data, pos)
        pos += 8
        row = y - y0
        lines = min(per_chunk, height - row)
        block = _decode_chunk(data[pos:pos + size], compression, lines * line_bytes, where)
        if len(block) != lines * line_bytes:
            raise ExrFormatError(f"{where}: a chunk at line {y} holds {len(block)} bytes, expected "
                                 f"{lines * line_bytes} (file truncated or damaged)")
        at = 0
        for line in range(lines):
            for c, dtype in enumerate(dtypes):
                n = width * dtype.itemsize
                pixels[row + line, :, c] = np.frombuffer(block, dtype, width, at)
                at += n
    return ExrPart(attrs.get("name", ""), [c[0] for c in channels], pixels, attrs)


def read_exr_parts(path: str | os.PathLike) -> list[ExrPart]:
    """Every part of an EXR file, in file order, as float32 arrays H x W x C with row 0 at the top."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _read_parts(data, where)
    except (struct.error, ValueError, IndexError, KeyError, zlib.error) as exc:
        raise ExrFormatError(f"{where} is truncated or damaged ({type(exc).__name__}: {exc})") from None


def _read_parts(data: bytes, where: str) -> list[ExrPart]:
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrFormatError(f"{where} is not an OpenEXR file")
    flags = struct.unpack_from("<i", data, 4)[0]
    if flags & (_TILED | _DEEP):
        raise ExrFormatError(f"{where} is a tiled or deep EXR; the fallback reader reads scanline images only")
    multipart = bool(flags & _MULTIPART)
    pos, headers = 8, []
    while True:
        attrs, pos = _header(data, pos)
        headers.append(attrs)
        if not multipart or data[pos] == 0:
            break
    if multipart:
        pos += 1  # the empty header that ends the list
    parts = []
    tables = []
    for attrs in headers:
        if "chunkCount" in attrs:
            count = attrs["chunkCount"]
        else:
            x0, y0, x1, y1 = attrs["dataWindow"]
            count = -(-(y1 - y0 + 1) // _LINES_PER_CHUNK.get(attrs.get("compression", "NONE"), 1))
        tables.append(np.frombuffer(data, "<u8", count, pos))
        pos += 8 * count
    for i, (attrs, offsets) in enumerate(zip(headers, tables)):
        parts.append(_read_part(data, attrs, offsets, i, multipart, where))
    return parts


def read_exr_first_part(path: str | os.PathLike) -> np.ndarray:
    """The first part's pixels with channels in OpenImageIO's order (R, G, B, A first, then the rest by name)."""
    part = read_exr_parts(path)[0]
    return part.pixels[..., channel_order(part.channels)]


def channel_order(names: list[str]) -> list[int]:
    """Indices that put RGBA (or a layer's .R .G .B .A) first, as OpenImageIO presents channels."""
    rank = {"R": 0, "G": 1, "B": 2, "A": 3}

    def key(i: int) -> tuple[str, int, str]:
        layer, _, base = names[i].rpartition(".")
        return (layer, rank.get(base, 4), names[i])

    return sorted(range(len(names)), key=key)
