"""The add-on's numpy EXR reader without Blender: hand-made files (uncompressed and ZIP, half and float channels,
single- and multi-part) read back exactly, and what it cannot read is refused with a message saying why.
(tests/test_blender_versions.py compares it with OpenImageIO on files Blender wrote.)"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from rerender.addon.exr_read import ExrFormatError, read_exr_first_part, read_exr_parts

COMPRESSION = {"NONE": 0, "ZIP": 3, "PIZ": 4}
PIXEL_TYPE = {np.dtype("<f2"): 1, np.dtype("<f4"): 2}


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _zip_filters(raw: bytes) -> bytes:
    """OpenEXR's encoder side: even/odd byte split, then the delta predictor (the reader undoes both)."""
    a = np.frombuffer(raw, np.uint8)
    t = np.concatenate([a[0::2], a[1::2]]).astype(np.int64)
    d = t.copy()
    d[1:] = (t[1:] - t[:-1] + 128 + 256) & 0xFF
    return d.astype(np.uint8).tobytes()


def _header(channels: dict[str, np.ndarray], codec: str, part_name: str | None, chunks: int) -> bytes:
    h, w = next(iter(channels.values())).shape
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", PIXEL_TYPE[a.dtype], 0, 1, 1)
                      for n, a in sorted(channels.items())) + b"\0"
    out = _attr("channels", "chlist", chlist) + _attr("compression", "compression", bytes([COMPRESSION[codec]]))
    out += _attr("dataWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1))
    out += _attr("displayWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1))
    out += _attr("lineOrder", "lineOrder", b"\0")
    if part_name is not None:
        out += _attr("name", "string", part_name.encode()) + _attr("type", "string", b"scanlineimage")
        out += _attr("chunkCount", "int", struct.pack("<i", chunks))
    return out + b"\0"


def _chunks(channels: dict[str, np.ndarray], codec: str) -> list[tuple[int, bytes]]:
    h = next(iter(channels.values())).shape[0]
    per = 16 if codec == "ZIP" else 1
    out = []
    for y in range(0, h, per):
        raw = b"".join(channels[n][row].tobytes() for row in range(y, min(h, y + per)) for n in sorted(channels))
        out.append((y, zlib.compress(_zip_filters(raw)) if codec == "ZIP" else raw))
    return out


def write_exr(path, parts: list[dict[str, np.ndarray]], codec: str = "NONE") -> None:
    """A scanline EXR as Blender writes them: one part, or several (multi-part) with a name each."""
    multipart = len(parts) > 1
    chunk_lists = [_chunks(p, codec) for p in parts]
    head = struct.pack("<ii", 20000630, 2 | (0x1000 if multipart else 0))
    for i, (p, chunks) in enumerate(zip(parts, chunk_lists)):
        head += _header(p, codec, f"part{i}" if multipart else None, len(chunks))
    if multipart:
        head += b"\0"
    tables_size = 8 * sum(len(c) for c in chunk_lists)
    pos = len(head) + tables_size
    tables, body = b"", b""
    for i, chunks in enumerate(chunk_lists):
        for y, data in chunks:
            block = (struct.pack("<i", i) if multipart else b"") + struct.pack("<ii", y, len(data)) + data
            tables += struct.pack("<Q", pos)
            body += block
            pos += len(block)
    path.write_bytes(head + tables + body)


def _image(h: int, w: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"R": rng.random((h, w)).astype("<f2"), "G": rng.random((h, w)).astype("<f2"),
            "B": rng.random((h, w)).astype("<f2"), "A": (rng.random((h, w)) > 0.5).astype("<f2"),
            "Z": rng.uniform(1, 100, (h, w)).astype("<f4")}


@pytest.mark.parametrize("codec", ["NONE", "ZIP"])
def test_single_part_reads_back_exactly_with_rgba_first(tmp_path, codec):
    channels = _image(37, 23, 0)  # 37 rows: ZIP's 16-line chunks end in a short one
    write_exr(tmp_path / "a.exr", [channels], codec)
    (part,) = read_exr_parts(tmp_path / "a.exr")
    assert part.channels == ["A", "B", "G", "R", "Z"]  # stored in name order
    for c, name in enumerate(part.channels):
        np.testing.assert_array_equal(part.pixels[..., c], channels[name].astype(np.float32))
    first = read_exr_first_part(tmp_path / "a.exr")  # OpenImageIO's order: R G B A, then the rest
    np.testing.assert_array_equal(first[..., 0], channels["R"].astype(np.float32))
    np.testing.assert_array_equal(first[..., 3], channels["A"].astype(np.float32))
    np.testing.assert_array_equal(first[..., 4], channels["Z"])


def test_multi_part_gives_every_part_in_order(tmp_path):
    a, b = _image(8, 5, 1), {"V": np.arange(20, dtype="<f4").reshape(4, 5)}
    write_exr(tmp_path / "m.exr", [a, b], "ZIP")
    parts = read_exr_parts(tmp_path / "m.exr")
    assert [p.name for p in parts] == ["part0", "part1"]
    assert parts[1].channels == ["V"] and parts[1].pixels.shape == (4, 5, 1)
    np.testing.assert_array_equal(parts[1].pixels[..., 0], b["V"])
    np.testing.assert_array_equal(parts[0].pixels[..., parts[0].channels.index("Z")], a["Z"])


def test_what_it_cannot_read_is_refused_with_the_reason(tmp_path):
    (tmp_path / "x.exr").write_bytes(b"not an exr at all")
    with pytest.raises(ExrFormatError, match="not an OpenEXR file"):
        read_exr_parts(tmp_path / "x.exr")
    write_exr(tmp_path / "ok.exr", [_image(4, 4, 2)])
    data = bytearray((tmp_path / "ok.exr").read_bytes())
    at = data.index(b"compression\0compression\0") + len(b"compression\0compression\0") + 4
    data[at] = COMPRESSION["PIZ"]
    (tmp_path / "piz.exr").write_bytes(bytes(data))
    with pytest.raises(ExrFormatError, match="PIZ compression is not supported"):
        read_exr_parts(tmp_path / "piz.exr")
    (tmp_path / "short.exr").write_bytes((tmp_path / "ok.exr").read_bytes()[:-10])
    with pytest.raises(ExrFormatError, match="truncated or damaged"):
        read_exr_parts(tmp_path / "short.exr")
