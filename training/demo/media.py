"""The demo's pictures: an animated GIF of the rendered camera path and a labelled contact sheet (Pillow only)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from rerender.training.sheets import fitted, tile_sheet


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


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], headers: Sequence[str], path: Path, *,
                  height: int = 160, row_labels: Sequence[str] | None = None) -> Path:
    """A grid of equal-height tiles with a header line per column (e.g. deep buffer | output | photo), columns
    aligned, optional row labels (training/sheets.py)."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    sheet = tile_sheet([[fitted(t, height) for t in row] for row in rows], pad=4, background=(24, 24, 24),
                       row_height=height, headers=list(headers), row_labels=row_labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
