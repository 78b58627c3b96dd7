"""``rerender demo``: the whole pipeline on a generated landmark, exactly as for real photos, into one results folder.

Stages (each skipped when its output is already there, so an interrupted demo resumes where it stopped)::

    collection   synthetic tourist photos + ground truth        OUT/collection/
    reconstruct  pycolmap SfM on the photos alone               OUT/workspace/
    dataset      aligned dataset (segmentation, deep buffers)   OUT/dataset/
    train        staged training -> model bundle                OUT/run/, OUT/run/bundle/
    evaluate     Table 1 + ground-truth eval + contact sheets   OUT/evaluation/, OUT/contact_sheet.png
    shot         .blend: import, camera path, two keyed looks   OUT/rerender_demo.blend
    frames       the .blend rendered by the RERENDER engine through `rerender serve`   OUT/frames/
    media        GIF of the camera path, summary                OUT/camera_path.gif, OUT/demo.json, OUT/README.md

Why a generated collection: it exercises every real step (SfM never sees the true cameras) and it has what real
photos lack — the true appearance of any view under any light, and the same view without its tourists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from .presets import DemoPreset

log = logging.getLogger(__name__)

STAGES = ("collection", "reconstruct", "dataset", "train", "evaluate", "shot", "frames", "media")
STAGES_BEFORE_TRAINING = STAGES[:STAGES.index("train")]


class DemoError(RuntimeError):
    """A demo stage failed; the message says which, why, and what to do."""


@dataclass
class DemoOptions:
    out: Path
    preset: DemoPreset
    device: str = "cpu"           # training, evaluation and the backend: cpu | cuda | auto
    seed: int = 0
    segmenter: str = "truth"      # truth (the generator's exact labels) | espnet (the real segmenter)
    segmenter_weights: str | None = None
    baseline: bool = False        # also train the I2I baseline and compare (the larger evaluation)
    progress: bool = True
    redo: tuple[str, ...] = ()    # stages to run again even if done


@dataclass
class DemoResult:
    out: Path
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


class Demo:
    """Runs the stages in order; ``OUT/stages/<stage>.json`` marks a finished stage with its timing and facts."""

    def __init__(self, options: DemoOptions, echo: Callable[[str], None] = print):
        self.o = options
        self.out = Path(options.out)
        self.p = options.preset
        self.echo = echo
        self.result = DemoResult(self.out)
        self.collection = self.out / "collection"
        self.workspace = self.out / "workspace"
        self.dataset = self.out / "dataset"
        self.run_dir = self.out / "run"
        self.bundle = self.run_dir / "bundle"
        self.evaluation = self.out / "evaluation"
        self.blend = self.out / "rerender_demo.blend"
        self.frames_dir = self.out / "frames"
        self.gif = self.out / "camera_path.gif"
        self.sheet = self.out / "contact_sheet.png"

    # ---- bookkeeping ---------------------------------------------------------------------------------------------

    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def done(self, stage: str) -> dict | None:
        m = self._marker(stage)
        if stage in self.o.redo or not m.is_file():
            return None
        return json.loads(m.read_text())

    def _finish(self, stage: str, seconds: float, facts: dict) -> None:
        m = self._marker(stage)
        m.parent.mkdir(parents=True, exist_ok=True)
        tmp = m.with_suffix(".part")
        tmp.write_text(json.dumps({"seconds": round(seconds, 2), **facts}, indent=2))
        tmp.replace(m)

    def _check_settings(self) -> None:
        """Refuse a results folder whose photos (or labels) were made otherwise: mixing would be silently wrong."""
        settings = self.out / "settings.json"
        wanted = {"preset": self.p.to_json(), "seed": self.o.seed, "segmenter": self.o.segmenter}
        if settings.is_file():
            had = json.loads(settings.read_text())
            keys = ("photos", "photo_size", "quality", "poses")
            mine = json.loads(json.dumps(wanted))
            if had.get("seed") != mine["seed"] or had.get("segmenter") != mine["segmenter"] or \
                    any(had.get("preset", {}).get(k, mine["preset"][k]) != mine["preset"][k] for k in keys):
                raise DemoError(f"{self.out} holds a demo made with other settings ({settings}: photos, size, "
                                f"seed, poses or segmenter differ); choose another --out, or delete the folder")
        tmp = settings.with_name(f".settings.{os.getpid()}.part")
        tmp.write_text(json.dumps(wanted, indent=2))
        tmp.replace(settings)  # atomic: processes sharing a data folder (bench_quality's rows) read it meanwhile

    def run(self, stages: tuple[str, ...] = STAGES) -> DemoResult:
        """Run ``stages`` (all by default; the quality benchmark runs only the data stages) in pipeline order."""
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise DemoError(f"unknown demo stages {unknown}; choose from {', '.join(STAGES)}")
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        total = time.perf_counter()
        for i, stage in enumerate(STAGES, start=1):
            if stage not in stages:
                continue
            facts = self.done(stage)
            if facts is not None:
                self.echo(f"[{i}/{len(STAGES)}] {stage}: already done ({facts['seconds']:.0f} s earlier), skipped")
                self.result.skipped.append(stage)
                self.result.seconds[stage] = facts["seconds"]
                self.result.summary[stage] = facts
                continue
            self.echo(f"[{i}/{len(STAGES)}] {stage} ...")
            t0 = time.perf_counter()
            facts = getattr(self, f"stage_{stage}")()
            dt = time.perf_counter() - t0
            self._finish(stage, dt, facts)
            self.result.seconds[stage] = round(dt, 2)
            self.result.summary[stage] = {"seconds": round(dt, 2), **facts}
            self.echo(f"[{i}/{len(STAGES)}] {stage}: done in {dt:.1f} s")
        self.echo(f"demo finished in {time.perf_counter() - total:.0f} s this run; results in {self.out}")
        return self.result

    # ---- stages ----------------------------------------------------------------------------------------------------

    def stage_collection(self) -> dict:
        from tqdm import tqdm

        from rerender.training.synthetic import generate_collection

        W, H = self.p.photo_size
        with tqdm(total=self.p.photos, desc="photos", unit="photo", disable=not self.o.progress) as bar:
            def progress(done: int, total: int, name: str, seconds: float) -> None:
                bar.set_postfix_str(f"{name} {seconds:.1f} s")
                bar.n = done
                bar.refresh()

            try:
                info = generate_collection(self.collection, count=self.p.photos, width=W, height=H,
                                           seed=self.o.seed, quality=self.p.quality, progress=progress)
            except FileExistsError as exc:
                raise DemoError(f"collection: {exc} (it was made by another version or with other settings); "
                                f"delete {self.collection} or choose another --out") from exc
        kinds: dict[str, int] = {}
        for a in info.appearances.values():
            kinds[a.kind] = kinds.get(a.kind, 0) + 1
        return {"photos": len(info.cameras), "size": [W, H], "appearances": kinds,
                "photos_with_transients": sum(1 for t in info.transients.values() if t)}

    def stage_reconstruct(self) -> dict:
        from rerender.training.reconstruct import ReconstructionError, reconstruct

        if self.p.poses == "known":
            from .known_poses import triangulate_known_poses

            facts = triangulate_known_poses(self.collection, self.workspace)
            self.echo(f"known-pose triangulation: {facts['points']} points from {facts['photos']} photos "
                      f"({facts['mean_reprojection_error_px']:.2f} px)")
            if facts["points"] < 3:
                raise DemoError(f"reconstruct: only {facts['points']} points triangulated; use more photos")
            return facts
        try:
            summary = reconstruct(self.collection / "images", self.workspace, matcher="exhaustive",
                                  dense="auto" if self.o.device != "cpu" else "off", progress=self.o.progress)
        except ReconstructionError as exc:
            raise DemoError(f"reconstruct: {exc}. The generated photos may be too few or too small for SfM; try a "
                            f"larger --size preset or more --photos") from exc
        self.echo(summary.to_text())
        if summary.registered < 3:
            raise DemoError(f"reconstruct: SfM registered only {summary.registered} of {summary.photos_found} photos; "
                            f"use more or larger photos (--photos, --size small)")
        accuracy = camera_accuracy(self.workspace, self.collection)
        if "median_center_error_m" in accuracy:
            self.echo(f"SfM cameras vs the true ones: median centre error {accuracy['median_center_error_m']:.2f} m "
                      f"({100 * accuracy['median_center_error_of_spread']:.1f} % of the camera spread)")
        return {"registered": summary.registered, "photos": summary.photos_found, "points": summary.points,
                "mean_reprojection_error_px": summary.mean_reprojection_error_px, "seconds_by_step": summary.seconds,
                "camera_accuracy": accuracy, "poses": "SfM (pycolmap incremental mapping)"}

    def splat_px(self) -> float:
        """Sparse SfM clouds need splats a few pixels wide; the size scales with the buffer."""
        return max(1.5, self.p.buffer_size / 48.0)

    def stage_dataset(self) -> dict:
        from rerender.training.dataset_builder import DatasetError, DatasetOptions, build_dataset

        opt = DatasetOptions(max_size=self.p.buffer_size, min_size=16, min_coverage=self.p.min_coverage,
                             val_count=self.p.val_count, seed=self.o.seed, splat_px=self.splat_px(),
                             segmenter_weights=self.o.segmenter_weights)
        if self.o.segmenter == "truth":
            prefill_true_segmentation(self.workspace, self.dataset, self.collection, opt.max_size)
        try:
            report = build_dataset(self.workspace, self.dataset, opt, progress=self.o.progress)
        except DatasetError as exc:
            raise DemoError(f"dataset: {exc}") from exc
        self.echo(report.to_text())
        if report.train < 2 or report.val < 1:
            raise DemoError(f"dataset: {report.train} training and {report.val} held-out views are too few; use "
                            f"more photos (--photos) or a larger --size")
        return {"train": report.train, "val": report.val, "dropped": len(report.dropped),
                "segmentation": "generator ground truth" if self.o.segmenter == "truth" else "ESPNet (Cityscapes)",
                "splat_px": self.splat_px()}

    def train_config(self):
        from rerender.training.config import SHORT_BUDGET, TrainConfig, short_budget_triplets

        s1, s2, s3, sem = self.p.steps
        log_every = max(1, min(50, s2 // 10))
        if self.p.short_budget:
            train_photos = int(self.result.summary.get("dataset", {}).get("train") or self.p.photos)
            losses = {**SHORT_BUDGET, **short_budget_triplets(train_photos)}
        else:
            big = self.p.photos >= 60  # the paper's triplet neighbourhoods (5 near, 13 far) need a large collection
            losses = dict(triplet_k_near=5 if big else 2, triplet_k_far=13 if big else 4)
        return TrainConfig(**losses,
            load_size=self.p.load_size, crop_size=self.p.crop_size, batch_size=self.p.batch_size, num_workers=0,
            cache_views=True, steps_stage1=s1, steps_stage2=s2, steps_stage3=s3, steps_semantic=sem,
            steps_baseline=s1 + s2 + s3, checkpoint_every=max(10, (s1 + s2 + s3) // 10), validate_every=10 ** 9,
            log_every=log_every, num_val_images=2,
            style_size=min(256, self.p.load_size), network=dict(self.p.network),
            vgg_width_divisor=self.p.vgg_width_divisor, features="auto",
            segmenter_weights=self.o.segmenter_weights,
            d_scales=2 if self.p.load_size <= 128 else 3,
            d_channels=16 if self.p.load_size <= 128 else 64, seed=self.o.seed)

    def _train(self, method: str, run_dir: Path) -> dict:
        from rerender.training.data import DatasetError
        from rerender.training.distributed import DistContext
        from rerender.training.export import export_bundle
        from rerender.training.trainer import Trainer, TrainingError

        import torch

        device = self.o.device if self.o.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            trainer = Trainer(self.dataset, run_dir, self.train_config(), method=method,
                              resume=(run_dir / "checkpoint.pt").is_file(),
                              ctx=DistContext(device=torch.device(device)),
                              progress=self.o.progress)
            if self.p.train_seconds > 0:
                from rerender.training.budget import run_within

                seconds = self.p.train_budget(sum(self.result.seconds.get(s, 0.0) for s in STAGES_BEFORE_TRAINING))
                self.echo(f"training for {seconds:.0f} s of wall clock")
                run_within(trainer, time.monotonic() + seconds, progress=self.o.progress)
            else:
                trainer.run()
        except (DatasetError, TrainingError) as exc:
            raise DemoError(f"train ({method}): {exc}") from exc
        bundle = export_bundle(trainer, run_dir / "bundle")
        return {"method": method, "steps": trainer.global_step, "phases": list(trainer.completed),
                "gallery": len(bundle.gallery), "vgg": trainer.vgg.weights_name, "device": device}

    def _start_over(self, stage: str, *paths: Path) -> None:
        """--redo STAGE means from scratch: remove what would otherwise be resumed (checkpoint, frames on disk)."""
        if stage in self.o.redo:
            for path in paths:
                if path.is_dir():
                    shutil.rmtree(path)

    def stage_train(self) -> dict:
        self._start_over("train", self.run_dir, self.out / "run_i2i")
        facts = self._train("staged", self.run_dir)
        if self.o.baseline:
            facts["baseline"] = self._train("i2i", self.out / "run_i2i")
        return facts

    def _vgg(self):
        from rerender.training.vgg import load_vgg19

        return load_vgg19(width_divisor=self.p.vgg_width_divisor)

    def stage_evaluate(self) -> dict:
        from rerender.backend.runtime import ModelRuntime
        from rerender.training.evaluate import evaluate, table1_markdown
        from rerender.training.gt_eval import SHEET_HEADERS, ground_truth_eval, synthetic_truth, write_report

        from .media import contact_sheet

        device = self.o.device
        vgg = self._vgg()
        table = evaluate(self.bundle, self.dataset, self.evaluation / "staged", device=device, vgg=vgg,
                         progress=self.o.progress)
        facts: dict[str, Any] = {"table1": {"staged": table.mean}, "vgg_weights": table.vgg_weights}
        table_rows = [("+Sem+StagedApp (staged)", table)]
        if self.o.baseline and (self.out / "run_i2i" / "bundle").is_dir():
            base = evaluate(self.out / "run_i2i" / "bundle", self.dataset, self.evaluation / "i2i", device=device,
                            vgg=vgg, progress=self.o.progress)
            facts["table1"]["i2i"] = base.mean
            table_rows.append(("I2I (no appearance, no semantics)", base))
        lines = ["## Reconstruction of held-out photos (the paper's Table 1)", "", table1_markdown(table_rows)]
        runtime = ModelRuntime(self.bundle, device)
        rows: list = []
        report = ground_truth_eval(runtime, self.dataset, synthetic_truth(self.collection),
                                   pairs=self.p.eval_pairs, seed=self.o.seed, progress=self.o.progress,
                                   sheet_rows=rows)
        write_report(report, self.evaluation)
        facts["ground_truth"] = report.summary()
        lines += ["## Ground truth of the generated collection", "", report.markdown()]
        (self.evaluation / "evaluation.md").write_text("\n".join(lines) + "\n")
        (self.evaluation / "evaluation.json").write_text(json.dumps(facts, indent=2) + "\n")
        contact_sheet([tiles[:3] for _, tiles in rows], SHEET_HEADERS[:3], self.sheet,
                      row_labels=[Path(n).stem for n, _ in rows])
        contact_sheet([tiles for _, tiles in rows], SHEET_HEADERS, self.evaluation / "ground_truth_sheet.png",
                      row_labels=[Path(n).stem for n, _ in rows])
        return facts

    def stage_shot(self) -> dict:
        from rerender.backend.bundle import Bundle

        from .shot import build_shot, pick_looks

        bundle = Bundle.load(self.bundle)
        looks = pick_looks(bundle.gallery, self.p.frames, self._gallery_outputs(bundle))
        manifest = json.loads((self.dataset / "manifest.json").read_text())
        W, H = self.p.frame_size
        splat = self.splat_px() * max(W, H) / self.p.buffer_size
        return build_shot(self.workspace, manifest, looks, frames=self.p.frames, size=(W, H), splat_px=splat,
                          blend_path=self.blend, bundle_path=self.bundle)

    def _gallery_outputs(self, bundle) -> list[np.ndarray] | None:
        """The first held-out view rerendered under every gallery look (what pick_looks compares)."""
        from rerender.backend.runtime import ModelRuntime
        from rerender.bridge.buffers import DeepBuffer
        from rerender.training.data import load_view, read_manifest

        if not bundle.gallery or bundle.encoder is None:
            return None
        _, records = read_manifest(self.dataset)
        view = load_view(next(r for r in records if r.split == "val"))
        buffer = DeepBuffer(view.buffer.color, view.buffer.depth, view.segmentation, view.buffer.mask)
        runtime = ModelRuntime(bundle, "cpu")
        z = np.stack([a.latent for a in bundle.gallery])
        return list(runtime.rerender([buffer] * len(z), z))

    def stage_frames(self) -> dict:
        from tqdm import tqdm

        from .backend_process import ServeProcess
        from .shot import render_frames

        self._start_over("frames", self.frames_dir)
        with ServeProcess(self.bundle, device=self.o.device, log_path=self.out / "logs" / "serve.log") as serve:
            self.echo(f"backend: {serve.address} on {serve.info.device}, model {serve.info.model or '?'}")
            with tqdm(total=self.p.frames, desc="frames", unit="frame", disable=not self.o.progress) as bar:
                def progress(done: int, total: int, seconds: float) -> None:
                    bar.n = done
                    bar.refresh()

                t0 = time.perf_counter()
                paths = render_frames(self.blend, self.frames_dir, serve.address, progress=progress)
                dt = time.perf_counter() - t0
        return {"frames": len(paths), "seconds_per_frame": round(dt / max(1, len(paths)), 3),
                "backend_address": serve.address}

    def stage_media(self) -> dict:
        from .media import write_gif
        from .shot import colour_difference

        frames = sorted(self.frames_dir.glob("frame_*.png"))
        if len(frames) != self.p.frames:
            raise DemoError(f"media: {len(frames)} frames in {self.frames_dir}, expected {self.p.frames}; rerun "
                            f"with --redo frames")
        images = [np.asarray(Image.open(p).convert("RGB")) for p in frames]
        write_gif(images, self.gif, fps=8)
        facts = {"gif_frames": len(images), "end_frames": colour_difference(images[0], images[-1])}
        shot = json.loads(self._marker("shot").read_text()) if self._marker("shot").is_file() else {}
        names = [look.get("name") for look in shot.get("looks", []) if isinstance(look, dict)]
        photos = [self.collection / "images" / name for name in names if name]
        if len(photos) == 2 and all(p.is_file() for p in photos):
            facts["source_photos"] = {"names": names, **colour_difference(
                *(np.asarray(Image.open(p).convert("RGB")) for p in photos))}
        summary = {stage: json.loads(self._marker(stage).read_text()) for stage in STAGES[:-1]
                   if self._marker(stage).is_file()}
        demo = {"preset": self.p.to_json(), "device": self.o.device, "segmenter": self.o.segmenter,
                "stages": summary, "outputs": {
                    "contact_sheet": self.sheet.name, "gif": self.gif.name, "blend": self.blend.name,
                    "evaluation": str(self.evaluation.relative_to(self.out) / "evaluation.md"),
                    "bundle": str(self.bundle.relative_to(self.out))}}
        (self.out / "demo.json").write_text(json.dumps(demo, indent=2) + "\n")
        (self.out / "README.md").write_text(results_readme(self, summary))
        self.echo(f"look change over the GIF: {facts['end_frames']}; source photos: {facts.get('source_photos')}")
        return facts


def results_readme(demo: Demo, summary: dict) -> str:
    ev = (demo.evaluation / "evaluation.md").read_text() if (demo.evaluation / "evaluation.md").is_file() else ""
    times = "\n".join(f"| {s} | {summary[s]['seconds']:.0f} |" for s in STAGES[:-1] if s in summary)
    seg = summary.get("dataset", {}).get("segmentation", "?")
    return f"""# Rerender demo results ({demo.p.name})

![contact sheet](contact_sheet.png)

![camera path](camera_path.gif)

- `contact_sheet.png`: held-out views — deep buffer | network output | photo.
- `evaluation/ground_truth_sheet.png`: also the view under another photo's look vs its truth, and without people.
- `camera_path.gif`: {demo.p.frames} frames rendered by the Neural Rerender engine in Blender through `rerender serve`,
  the look crossfading between two keyed gallery appearances.
- `rerender_demo.blend`: the shot. To render it yourself: `rerender serve --bundle {demo.bundle}`, then open the
  file in Blender with the Rerender add-on enabled and press F12 (or `blender -b rerender_demo.blend -a`).
- Photos were segmented with: {seg}.

## Evaluation

{ev}

## Stage timings (seconds)

| stage | s |
|---|---|
{times}
"""


def prefill_true_segmentation(workspace: Path, dataset: Path, collection: Path, max_size: int) -> int:
    """Put the generator's exact segmentations where the dataset builder caches its segmenter's output.

    Why this is an adapter and not a Segmenter: ``Segmenter.segment(photo)`` sees pixels, not the photo's name, so a
    ground-truth segmenter would have to recognise photos by content. The builder skips photos whose cached
    segmentation exists (``D/work/segmentation/<stem>.png`` at the buffer size), so we write the truth there.
    The workspace's photos are undistorted SfM images; the truth is resized (nearest) to them, which is exact up
    to the few pixels the undistortion crops.
    """
    from rerender.training.dataset_builder import buffer_size, load_workspace, view_stem

    _, views = load_workspace(workspace)
    folder = dataset / "work" / "segmentation"
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for v in views:
        target = folder / f"{view_stem(v.name)}.png"
        if target.exists():
            continue
        truth = collection / "ground_truth" / "segmentation" / f"{Path(v.name).stem}.png"
        if not truth.is_file():
            raise DemoError(f"dataset: no ground-truth segmentation {truth} for photo {v.name}")
        w, h = buffer_size(v.camera.width, v.camera.height, max_size)
        Image.open(truth).resize((w, h), Image.NEAREST).save(target)
        written += 1
    return written


def camera_accuracy(workspace: Path, collection: Path) -> dict[str, float]:
    """How far SfM's cameras are from the generator's, after the best similarity transform (Umeyama).

    Why: a low reprojection error does not prove a right reconstruction — a landmark with repeated parts can fold
    the camera arc onto itself at 0.2 px (reconstruction-facts.md). Only the true cameras tell.
    """
    import pycolmap

    from rerender.training.synthetic import load_collection

    rec = pycolmap.Reconstruction(str(workspace / "sparse" / "0"))
    truth = {c.name: c for c in load_collection(collection).cameras}
    est, true = [], []
    for image in rec.images.values():
        name = Path(image.name).stem
        if name in truth:
            est.append(np.asarray(image.projection_center(), np.float64))
            true.append(truth[name].center)
    if len(est) < 3:
        return {"cameras_compared": len(est)}
    from rerender.bridge.cameras import similarity_residuals

    src, dst = np.array(est), np.array(true)
    err = similarity_residuals(src, dst)
    spread = float(np.linalg.norm(dst - dst.mean(0), axis=1).mean())
    return {"cameras_compared": len(est), "median_center_error_m": float(np.median(err)),
            "median_center_error_of_spread": float(np.median(err) / max(spread, 1e-9))}
