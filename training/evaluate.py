"""``rerender evaluate``: the paper's Table 1 on held-out photos, as JSON, a Markdown table and a contact sheet.

As in the paper (§4, "Reconstruction metrics"), each validation photo is rerendered from its own deep buffer with
its ground-truth segmentation as the label input and its own appearance latent (the bundle's encoder applied to the
photo and its buffer). Views are evaluated at their stored size through the backend's ModelRuntime, the same code
that serves Blender, so what is measured is what is shipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rerender.backend.bundle import Bundle
from rerender.backend.runtime import ModelRuntime
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.colors import linear_to_srgb8

from . import metrics
from .data import DatasetError, load_view, read_manifest
from .phases import METHOD_TABLE
from .sheets import enlarged, tile_sheet
from .vgg import VGG19Features, load_vgg19

COLUMNS = ("vgg", "l1", "psnr", "ssim")
#: fewer held-out views than this and the table gets a caveat: differences are within noise
MIN_CONCLUSIVE_VIEWS = 10
#: the shorter side of a contact-sheet tile (small views are enlarged, nearest-neighbour, to be legible)
TILE_MIN_SIDE = 256
#: the paper's names of the methods (Table 1 rows)
METHOD_NAMES = {name: m.title for name, m in METHOD_TABLE.items()}


@dataclass
class EvalResult:
    per_view: list[dict[str, Any]]
    mean: dict[str, float]
    vgg_weights: str
    bundle: str
    dataset: str
    method: str = ""  # the bundle's training method (its notes), names the table row

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "dataset": self.dataset, "method": self.method,
                "vgg_weights": self.vgg_weights, "count": len(self.per_view), "mean": self.mean,
                "views": self.per_view}

    @property
    def label(self) -> str:
        """The row name: the paper's name of the bundle's method, else the bundle folder's name."""
        return METHOD_NAMES.get(self.method, self.method) or Path(self.bundle).name

    def markdown(self, label: str | None = None) -> str:
        """The paper's Table 1 columns (VGG, L1, PSNR) plus SSIM, for this bundle."""
        return table1_markdown([(label or self.label, self)])


def _vgg_cell(result: EvalResult) -> str:
    if result.vgg_weights.startswith("imagenet"):
        return f"{result.mean['vgg']:.4f}"
    if result.vgg_weights.startswith("random"):
        return "n/a †"  # distances in a random network's feature space measure nothing
    return f"{result.mean['vgg']:.4f} ‡"


def table1_markdown(rows: list[tuple[str, EvalResult]]) -> str:
    """One Table 1 (VGG, L1, PSNR, SSIM) with a row per model, so methods compare side by side.

    The VGG column holds numbers only with ImageNet VGG19 weights; without them it is marked (random weights: no
    number at all; other trained features: the number with a mark), and a caveat follows when fewer than
    ``MIN_CONCLUSIVE_VIEWS`` views were held out."""
    lines = ["| Model | Views | VGG ↓ | L1 ↓ | PSNR ↑ | SSIM ↑ |", "|---|---|---|---|---|---|"]
    for label, result in rows:
        m = result.mean
        lines.append(f"| {label} | {len(result.per_view)} | {_vgg_cell(result)} | {m['l1']:.2f} | {m['psnr']:.2f} | "
                     f"{m['ssim']:.4f} |")
    notes = []
    weights = sorted({result.vgg_weights for _, result in rows})
    if any(w.startswith("random") for w in weights):
        notes.append("† no ImageNet VGG19 weights were found, so no VGG distance is reported (a randomly initialised "
                     "network's distances mean nothing); pass `--vgg-weights vgg19-dcbb9e9d.pth`. The table is "
                     "not comparable to the paper.")
    notes += [f"‡ VGG column computed with {w}: not comparable to the paper." for w in weights
              if not w.startswith(("imagenet", "random"))]
    fewest = min((len(result.per_view) for _, result in rows), default=0)
    if fewest < MIN_CONCLUSIVE_VIEWS:
        notes.append(f"Caveat: only {fewest} held-out view{'s' if fewest != 1 else ''}; with fewer than "
                     f"{MIN_CONCLUSIVE_VIEWS} the means are noisy and small differences between rows are not "
                     f"evidence (hold out more: `rerender dataset --val-count {MIN_CONCLUSIVE_VIEWS}`).")
    return "\n".join(lines) + "".join(f"\n\n{n}" for n in notes) + "\n"


def _with_labels(buffer: DeepBuffer, segmentation: np.ndarray) -> DeepBuffer:
    return DeepBuffer(buffer.color, buffer.depth, segmentation, buffer.mask)


def _palette_image(labels: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[labels]


def contact_sheet(rows: list[tuple[np.ndarray, ...]], min_side: int = TILE_MIN_SIDE) -> np.ndarray:
    """Rows of tiles (buffer | segmentation | output | photo); tiles whose shorter side is below ``min_side`` are
    enlarged (nearest neighbour: pixels stay pixels) so that it is ``min_side``. Each row's tiles side by side, rows
    padded with black on the right (training/sheets.py)."""
    return np.asarray(tile_sheet([[enlarged(t, min_side) for t in tiles] for tiles in rows], align_columns=False))


def evaluate(bundle_path: str | Path, dataset_root: str | Path, out_dir: str | Path, *, device: str = "auto",
             vgg: VGG19Features | None = None, vgg_weights: str | None = None, limit: int | None = None,
             progress: bool = True) -> EvalResult:
    """Evaluate a bundle on the dataset's validation split; writes metrics.json, metrics.md, contact_sheet.png."""
    from tqdm import tqdm
    bundle = Bundle.load(bundle_path)
    runtime = ModelRuntime(bundle, device)
    _, records = read_manifest(dataset_root)
    val = [r for r in records if r.split == "val"][:limit]
    if not val:
        raise DatasetError(f"{Path(dataset_root) / 'manifest.json'}: no validation views to evaluate on; rebuild "
                           f"the dataset with a 'val' split")
    vgg = vgg or load_vgg19(vgg_weights)
    palette = [tuple(c.color) for c in bundle.config.classes]
    per_view, sheet = [], []
    for rec in tqdm(val, desc="evaluating", disable=not progress):
        view = load_view(rec)
        buffer = _with_labels(view.buffer, view.segmentation)
        latent = runtime.encode([view.photo], [buffer]) if bundle.encoder is not None else None
        output = runtime.rerender([buffer], latent)[0]
        row = {"name": rec.name, "vgg": metrics.vgg_distance(vgg, output, view.photo),
               "l1": metrics.l1_255(output, view.photo), "psnr": metrics.psnr(output, view.photo),
               "ssim": metrics.ssim(output, view.photo)}
        per_view.append(row)
        color = linear_to_srgb8(view.buffer.color.astype(np.float32))
        sheet.append((color, _palette_image(view.segmentation, palette), output, view.photo))
    mean = {k: float(np.mean([r[k] for r in per_view])) for k in COLUMNS}
    result = EvalResult(per_view, mean, vgg.weights_name, str(bundle_path), str(dataset_root),
                        method=str(bundle.config.notes.get("method", "")))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "metrics.md").write_text(result.markdown())
    Image.fromarray(contact_sheet(sheet)).save(out / "contact_sheet.png")
    return result


__all__ = ["COLUMNS", "EvalResult", "contact_sheet", "evaluate"]
