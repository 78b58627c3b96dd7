"""The one contact-sheet writer: rows of picture tiles pasted onto one canvas (Pillow only).

Two callers lay tiles out differently on purpose, with the same code: the evaluation's sheet
(``training.evaluate.contact_sheet``: tiles enlarged to a minimum side, each row's tiles side by side with no gap,
rows left-aligned on black) and the demo's labelled sheet (``training.demo.media.contact_sheet``: tiles fitted to
one height, columns aligned, gaps, a header line per column and a label per row on a dark background).

Layout: column ``c`` starts at ``left + pad + sum(widths before it) + c * pad``; row ``r`` at
``top + sum(heights above) + r * pad``; the canvas is ``(ncols + 1) * pad`` wider and ``(nrows + 1) * pad`` taller
than the tiles, plus ``left`` (the row labels) and ``top`` (the headers).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

HEADER_HEIGHT = 16


def enlarged(tile: np.ndarray, min_side: int) -> np.ndarray:
    """``tile`` enlarged (nearest neighbour: pixels stay pixels) so its shorter side is at least ``min_side``."""
    h, w = tile.shape[:2]
    s = max(1.0, min_side / min(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(tile).resize(size, Image.NEAREST)) if s > 1 else tile


def fitted(tile: np.ndarray, height: int) -> Image.Image:
    """``tile`` as RGB scaled to ``height`` (aspect kept; nearest neighbour up, Lanczos down)."""
    im = Image.fromarray(np.asarray(tile, np.uint8)).convert("RGB")
    w = max(1, round(im.width * height / im.height))
    return im.resize((w, height), Image.NEAREST if im.height < height else Image.LANCZOS)


def tile_sheet(rows: Sequence[Sequence[np.ndarray | Image.Image]], *, pad: int = 0,
               background: tuple[int, int, int] = (0, 0, 0), align_columns: bool = True,
               row_height: int | None = None, headers: Sequence[str] | None = None,
               row_labels: Sequence[str] | None = None) -> Image.Image:
    """Paste ``rows`` of tiles (uint8 arrays or images, as they are) onto one RGB canvas.

    ``align_columns``: every column as wide as its widest tile (needed for ``headers``); otherwise each row's tiles
    follow each other and the rows are padded on the right. ``row_height``: every row this tall (else its tallest
    tile). ``headers``: a text line above each column; ``row_labels``: a text left of each row."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    images = [[t if isinstance(t, Image.Image) else Image.fromarray(t) for t in row] for row in rows]
    heights = [row_height if row_height is not None else max(im.height for im in row) for row in images]
    ncols = max(len(r) for r in images)
    col_w = [max(r[c].width for r in images if c < len(r)) for c in range(ncols)]
    if align_columns:
        width = sum(col_w) + pad * (ncols - 1)
    else:
        if headers is not None:
            raise ValueError("headers need aligned columns")
        width = max(sum(im.width for im in r) + pad * (len(r) - 1) for r in images)
    top = 0 if headers is None else HEADER_HEIGHT
    left = 0 if row_labels is None else 8 * max(len(s) for s in row_labels) + 2 * pad
    sheet = Image.new("RGB", (left + width + 2 * pad, top + sum(heights) + (len(images) + 1) * pad), background)
    draw = ImageDraw.Draw(sheet)
    x = left + pad
    for c, name in enumerate((headers or [])[:ncols]):
        draw.text((x, 2), name, fill=(230, 230, 230))
        x += col_w[c] + pad
    y = top
    for r, row in enumerate(images):
        if row_labels is not None:
            draw.text((pad, y + heights[r] // 2 - 6), row_labels[r], fill=(200, 200, 200))
        x = left + pad
        for c, im in enumerate(row):
            sheet.paste(im, (x, y))
            x += (col_w[c] if align_columns else im.width) + pad
        y += heights[r] + pad
    return sheet


__all__ = ["enlarged", "fitted", "tile_sheet"]
