"""The demo's pictures: an animated GIF of the rendered camera path and a labelled contact sheet (Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def write_gif(frames: Sequence[np.ndarray], path: Path, *, fps: float = 8.0) -> Path:
    """uint8 H×W×3 frames -> looping GIF. Every frame is stored whole (no inter-frame optimisation), so a reader
    sees exactly ``len(frames)`` frames — the demo's test counts them."""
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    images = [Image.fromarray(np.asarray(f, np.uint8)).convert("RGB") for f in frames]
    # one palette for the whole clip, from a strip of (up to 16) frames: per-frame palettes flicker, and a palette
    # from one frame maps the others' colours onto it (Pillow then drops frames that became identical)
    picks = images[:: max(1, len(images) // 16)]
    strip = Image.new("RGB", (sum(im.width for im in picks), max(im.height for im in picks)))
    x = 0
    for im in picks:
        strip.paste(im, (x, 0))
        x += im.width
    palette = strip.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    quantised = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    quantised[0].save(path, save_all=True, append_images=quantised[1:], duration=int(round(1000 / fps)), loop=0,
                      optimize=False, disposal=1)
    return path


def _fit(tile: np.ndarray, height: int) -> Image.Image:
    im = Image.fromarray(np.asarray(tile, np.uint8)).convert("RGB")
    w = max(1, round(im.width * height / im.height))
    return im.resize((w, height), Image.NEAREST if im.height < height else Image.LANCZOS)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], headers: Sequence[str], path: Path, *,
                  height: int = 160, row_labels: Sequence[str] | None = None) -> Path:
    """A grid of equal-height tiles with a header line per column (e.g. deep buffer | output | photo)."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    pad, header_h = 4, 16
    label_w = 0 if row_labels is None else 8 * max(len(s) for s in row_labels) + 2 * pad
    tiled = [[_fit(t, height) for t in row] for row in rows]
    col_w = [max(r[c].width for r in tiled if c < len(r)) for c in range(max(len(r) for r in tiled))]
    W = label_w + sum(col_w) + pad * (len(col_w) + 1)
    H = header_h + len(tiled) * (height + pad) + pad
    sheet = Image.new("RGB", (W, H), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    x = label_w + pad
    for c, name in enumerate(headers[: len(col_w)]):
        draw.text((x, 2), name, fill=(230, 230, 230))
        x += col_w[c] + pad
    for r, row in enumerate(tiled):
        y = header_h + r * (height + pad)
        if row_labels is not None:
            draw.text((pad, y + height // 2 - 6), row_labels[r], fill=(200, 200, 200))
        x = label_w + pad
        for c, im in enumerate(row):
            sheet.paste(im, (x, y))
            x += col_w[c] + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
