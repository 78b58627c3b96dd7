"""Ground-truth evaluation on a generated collection: appearance transfer and the transient test (docs/evaluation.md).

Real photo collections cannot answer "what would view A look like under the light of photo B?" — a generated one
can: its generator re-renders any camera under any photo's appearance, with or without the people in it
(``rerender.training.synthetic.render_view``). Two measurements follow:

* **appearance transfer** (b): rerender held-out view A from its deep buffer with the latent the bundle's encoder
  gives photo B, and compare with the true render of A under B's appearance. The control is the same rerender with
  the latent of a random *other* photo C: if the encoder carries appearance, B's latent must beat C's.
* **transient test** (c): rerender A once with the label pass of its photo (people and cars labelled) and once
  with the labels of the true transient-free render; inside the pixels the transients covered, the people-free
  output must be closer to the true people-free render than the output that was told to draw people.

Reconstruction metrics as in the paper's Table 1 (a) are ``rerender.training.evaluate``; this module adds (b), (c).
The true renders come from the generator's *true* cameras while the dataset's buffers come from the SfM cameras
(after undistortion and resizing), so a few pixels of misalignment put a floor under every error here; the
comparisons (B's latent vs C's, people-free vs with-people labels) share that floor.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rerender.backend.runtime import ModelRuntime
from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import ClassTable

from . import metrics
from .data import ViewRecord, class_table, load_view, read_manifest

TruthRenderer = Callable[[str, str, bool, int, int], tuple[np.ndarray, np.ndarray]]
"""truth(camera photo name, appearance photo name, with transients, width, height) -> (photo, labels)."""


class GroundTruthEvalError(ValueError):
    """The dataset and the collection do not fit together for a ground-truth evaluation."""


@dataclass
class GroundTruthReport:
    transfer: list[dict[str, Any]] = field(default_factory=list)
    transient: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.transfer:
            out["appearance_transfer"] = {
                "pairs": len(self.transfer),
                **{f"{k}_{w}": float(np.mean([r[w][k] for r in self.transfer]))
                   for w in ("latent_of_b", "latent_of_random") for k in ("psnr", "l1", "ssim")},
                "b_beats_random": float(np.mean([r["latent_of_b"]["psnr"] > r["latent_of_random"]["psnr"]
                                                 for r in self.transfer])),
            }
        if self.transient:
            out["transient"] = {
                "views": len(self.transient),
                "l1_in_transient_region_labels_without_people":
                    float(np.mean([r["l1_without"] for r in self.transient])),
                "l1_in_transient_region_labels_with_people": float(np.mean([r["l1_with"] for r in self.transient])),
                "without_beats_with": float(np.mean([r["l1_without"] < r["l1_with"] for r in self.transient])),
            }
        return out

    def to_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "appearance_transfer": self.transfer, "transient": self.transient}

    def markdown(self) -> str:
        s = self.summary()
        lines = []
        if "appearance_transfer" in s:
            t = s["appearance_transfer"]
            lines += ["| Appearance transfer (view A, look of photo B) | pairs | PSNR ↑ | L1 ↓ | SSIM ↑ |",
                      "|---|---|---|---|---|",
                      f"| latent encoded from photo B | {t['pairs']} | {t['psnr_latent_of_b']:.2f} | "
                      f"{t['l1_latent_of_b']:.2f} | {t['ssim_latent_of_b']:.4f} |",
                      f"| latent of a random other photo | {t['pairs']} | {t['psnr_latent_of_random']:.2f} | "
                      f"{t['l1_latent_of_random']:.2f} | {t['ssim_latent_of_random']:.4f} |",
                      f"\nB's latent beats the random one in {100 * t['b_beats_random']:.0f} % of pairs.\n"]
        if "transient" in s:
            t = s["transient"]
            lines += ["| Transient test (L1 in the people/car pixels vs the true people-free render) "
                      "| views | L1 ↓ |",
                      "|---|---|---|",
                      f"| label pass without people | {t['views']} | "
                      f"{t['l1_in_transient_region_labels_without_people']:.2f} |",
                      f"| label pass with people | {t['views']} | "
                      f"{t['l1_in_transient_region_labels_with_people']:.2f} |",
                      f"\nThe people-free labels win in {100 * t['without_beats_with']:.0f} % of views.\n"]
        return "\n".join(lines) if lines else "No ground-truth evaluation could be run (see the JSON for why).\n"


def _scores(output: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"psnr": metrics.psnr(output, truth), "l1": metrics.l1_255(output, truth),
            "ssim": metrics.ssim(output, truth)}


def _stem(name: str) -> str:
    return Path(name).stem


def _relabelled(buffer: DeepBuffer, labels: np.ndarray) -> DeepBuffer:
    return DeepBuffer(buffer.color, buffer.depth, labels, buffer.mask)


def synthetic_truth(collection: Path | str) -> TruthRenderer:
    """A TruthRenderer backed by the generator (bpy), rendering at the requested size; repeated requests are cached."""
    from .synthetic import load_collection, render_view

    info = load_collection(Path(collection))

    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def truth(camera: str, appearance: str, transients: bool, width: int, height: int):
        key = (camera, appearance, transients, width, height)
        if key not in cache:  # rendered at the view's size (intrinsics rescaled): no resampling, fewer pixels
            cache[key] = render_view(info, camera, appearance, transients=transients, width=width, height=height)
        return cache[key]

    return truth


def ground_truth_eval(runtime: ModelRuntime, dataset_root: Path | str, truth: TruthRenderer, *,
                      pairs: int = 4, seed: int = 0, progress: bool = True,
                      sheet_rows: list[tuple[str, list[np.ndarray]]] | None = None) -> GroundTruthReport:
    """Appearance transfer on ``pairs`` held-out views and the transient test on those of them with transients.

    ``truth`` renders the generated scene (``synthetic_truth(collection)``); photo names are the dataset's view
    stems, which ``rerender demo`` keeps equal to the generator's photo names. ``sheet_rows``, when given, receives
    (title, tiles) rows for the demo's contact sheet.
    """
    from tqdm import tqdm

    manifest, records = read_manifest(dataset_root)
    classes: ClassTable = class_table(manifest)
    if runtime.bundle.encoder is None:
        raise GroundTruthEvalError("the bundle has no appearance encoder (latent size 0): appearance transfer "
                                   "needs the staged model, not a baseline without appearance")
    val = [r for r in records if r.split == "val"]
    if not val:
        raise GroundTruthEvalError(f"{dataset_root}: no held-out (val) views; rebuild the dataset with --val-count")
    if len(records) < 3:
        raise GroundTruthEvalError(f"{dataset_root}: {len(records)} views; appearance transfer needs at least 3 "
                                   f"(view A, look B, a random other look C)")
    rng = random.Random(seed)
    transient_ids = np.array(classes.transient_ids, np.uint8)
    report = GroundTruthReport()
    by_name = {r.name: r for r in records}
    latents: dict[str, np.ndarray] = {}

    def latent_of(rec: ViewRecord) -> np.ndarray:
        if rec.name not in latents:
            v = load_view(rec)
            latents[rec.name] = runtime.encode([v.photo], [_relabelled(v.buffer, v.segmentation)])[0]
        return latents[rec.name]

    chosen = [val[i % len(val)] for i in range(max(1, pairs))]  # more pairs than views: new looks B, C
    seen: set[str] = set()
    for a_rec in tqdm(chosen, desc="ground-truth eval", unit="view", disable=not progress):
        a = load_view(a_rec)
        others = [n for n in by_name if n != a_rec.name]
        b_name = rng.choice(others)
        c_name = rng.choice([n for n in others if n != b_name])
        W, H = a_rec.width, a_rec.height
        clean_photo, clean_labels = truth(_stem(a_rec.name), _stem(a_rec.name), False, W, H)
        # (b) appearance transfer: A's geometry, B's look; labels of the people-free truth (the truth has none)
        transfer_truth, _ = truth(_stem(a_rec.name), _stem(b_name), False, W, H)
        clean_buffer = _relabelled(a.buffer, clean_labels)
        z = np.stack([latent_of(by_name[b_name]), latent_of(by_name[c_name])])
        out_b, out_c = runtime.rerender([clean_buffer, clean_buffer], z)
        report.transfer.append({"view": a_rec.name, "appearance_from": b_name, "random_other": c_name,
                                "latent_of_b": _scores(out_b, transfer_truth),
                                "latent_of_random": _scores(out_c, transfer_truth)})
        # (c) transients: the photo's own look; labels with vs without its people and cars
        region = np.isin(a.segmentation, transient_ids)
        z_a = latent_of(a_rec)[None].repeat(2, axis=0)
        out_without, out_with = runtime.rerender([clean_buffer, _relabelled(a.buffer, a.segmentation)], z_a)
        if region.sum() >= 4 and a_rec.name not in seen:
            diff = lambda o: float(np.abs(o[region].astype(np.float32)  # noqa: E731
                                          - clean_photo[region].astype(np.float32)).mean())
            report.transient.append({"view": a_rec.name, "transient_pixels": int(region.sum()),
                                     "l1_without": diff(out_without), "l1_with": diff(out_with)})
        first_time = a_rec.name not in seen
        seen.add(a_rec.name)
        if sheet_rows is not None and first_time:
            from rerender.bridge.colors import linear_to_srgb8
            sheet_rows.append((a_rec.name, [linear_to_srgb8(a.buffer.color.astype(np.float32)), out_with, a.photo,
                                            out_b, transfer_truth, out_without, clean_photo]))
    return report


SHEET_HEADERS = ("deep buffer", "output (own look)", "photo", "output (look of B)", "truth (look of B)",
                 "output (no people)", "truth (no people)")


def write_report(report: GroundTruthReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ground_truth_eval.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (out / "ground_truth_eval.md").write_text(report.markdown())


__all__ = ["GroundTruthEvalError", "GroundTruthReport", "SHEET_HEADERS", "TruthRenderer", "ground_truth_eval",
           "synthetic_truth", "write_report"]
