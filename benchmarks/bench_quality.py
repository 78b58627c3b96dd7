"""Image quality and appearance control, measured on a generated collection with ground truth.

    .venv/bin/python benchmarks/bench_quality.py --out results/bench_quality            # 25 min of training
    .venv/bin/python benchmarks/bench_quality.py --out /tmp/bq --budget-minutes 4 --rows film-seg,i2i

What it does (numbers of one run are comparable with each other):
1. data: a generated landmark collection (fixed seed, every appearance kind: day, sunset, overcast, night), the
   true cameras' triangulation (training/demo/known_poses.py, so no SfM time is spent), the aligned dataset with the
   generator's segmentation, kept in DATA (reused when it exists);
2. trains every compared configuration ("row") with the same budget of *process CPU time* (``time.process_time``,
   one torch thread): ``--budget-minutes`` of wall clock on this machine, ``--jobs`` rows at a time in their own
   processes, is ``budget x jobs / rows`` CPU-seconds per row, and other jobs on a shared machine slow a row's
   wall clock; heavy ones (a test run with Blender beside it) also cut its steps per CPU-second by up to half,
   so compare the step counts of rows that did not run side by side. A staged row splits its budget over stage 1 / 2 / 3 (``--split``); the
   semantic predictor is not trained (every evaluation below uses the true segmentation as the label pass);
3. evaluates every row on the held-out views against the truth the generator renders:
   - appearance transfer: view A under photo B's look (B of another kind than A where possible) vs the true render
     of A under B's appearance, with B's latent, a random other photo's latent and the mean latent; gain = B - random;
   - the half-image protocol of NeRF-W: the latent from the left half of the held-out photo (encoder, then
     ``backend.latent_fit`` for ``--fit-steps``), metrics on the right half; I2I (no latent) beside it; and the
     paper's whole-image Table 1 (own latent from the whole photo) next to it;
   - latent nearest neighbour: each photo's latent, its nearest other latent, same appearance kind or not;
   - a picture sheet: held-out views under one photo of each appearance kind, the truth above every row's output.
Writes OUT/bench_quality.json, OUT/bench_quality.md and OUT/bench_quality_sheet.png; per-row logs in OUT/logs.
A row alone (``--rows film-seg --no-merge``) keeps its result in OUT/parts; ``--merge-only`` reports from there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("day", "sunset", "overcast", "night")


@dataclass
class Row:
    """One compared configuration: a training method and the TrainConfig fields that differ from the base."""

    name: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = ""


ROWS = {
    "film-seg": Row("film-seg", "staged", {"appearance_conditioning": "film", "features": "segmenter"},
                    "staged, FiLM, segmenter-encoder features"),
    "concat-seg": Row("concat-seg", "staged", {"appearance_conditioning": "concat", "features": "segmenter"},
                      "staged, bottleneck concat, segmenter-encoder features"),
    "film-randvgg": Row("film-randvgg", "staged", {"appearance_conditioning": "film", "features": "vgg19"},
                        "staged, FiLM, random-weight VGG19 features"),
    "i2i": Row("i2i", "i2i", {"features": "segmenter"}, "I2I (no latent, no labels), segmenter-encoder features"),
}
DEFAULT_ROWS = "film-seg,concat-seg,film-randvgg,i2i"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_quality")
    p.add_argument("--data", type=Path, default=None, help="collection + dataset folder (default OUT/data); reused")
    p.add_argument("--photos", type=int, default=48)
    p.add_argument("--val", type=int, default=8, help="held-out views")
    p.add_argument("--quality", default="preview", choices=("preview", "final"),
                   help="generator render quality of the photos (known poses need no SfM-grade photos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, from {', '.join(ROWS)}")
    p.add_argument("--budget-minutes", type=float, default=25.0,
                   help="wall-clock minutes of training for all rows on this machine, --jobs rows at a time; each "
                        "row gets budget x jobs / rows of process CPU time")
    p.add_argument("--jobs", type=int, default=2,
                   help="rows trained at once, in separate processes of one torch thread (default 2: this "
                        "2-core CPU); 1 trains them one after another in this process")
    p.add_argument("--split", default="0.1,0.5,0.4", help="share of a staged row's budget in stage 1, 2, 3")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig field for all rows")
    p.add_argument("--fit-steps", type=int, default=200, help="latent fitting steps of the half-image protocol")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: CPU time then counts work, not threads spinning on a shared machine)")
    p.add_argument("--no-merge", action="store_true",
                   help="train and evaluate --rows, keep their results in OUT/parts, write no report (run rows in "
                        "parallel processes, then once with --merge-only)")
    p.add_argument("--merge-only", action="store_true", help="report, tables and sheet from OUT/parts")
    p.add_argument("--budget-rows", type=int, default=0,
                   help="rows the budget is divided by (default: the number of --rows; set it when running rows "
                        "in separate processes so each gets its share)")
    p.add_argument("--truth-only", action="store_true",
                   help="prepare the data and render every ground-truth view the evaluation needs, then stop "
                        "(run it beside a training run: the renders are cached in DATA/truth_cache)")
    p.add_argument("--segmenter-weights", default=None, help="ESPNet weights (file or folder); default: cache")
    return p.parse_args(argv)


# ---- data ---------------------------------------------------------------------------------------------------------

def prepare_data(data: Path, photos: int, val: int, quality: str, seed: int) -> dict:
    from rerender.training.demo import Demo, DemoOptions, preset

    p = preset("small", photos=photos, val_count=val, poses="known", quality=quality)
    t0 = time.perf_counter()
    Demo(DemoOptions(out=data, preset=p, seed=seed, progress=False), echo=lambda s: print(s, flush=True)).run(
        ("collection", "reconstruct", "dataset"))
    return {"photos": photos, "val": val, "quality": quality, "seed": seed, "poses": "known (true cameras)",
            "seconds": round(time.perf_counter() - t0, 1), "buffer_size": p.buffer_size}


def base_config(args: argparse.Namespace):
    from rerender.training.config import SHORT_BUDGET, short_budget_triplets

    values: dict[str, Any] = dict(SHORT_BUDGET)
    # Triplets: the nearest photo is the positive, a negative is drawn from the 25 farthest of the 40 training photos
    # (hard: the one whose latent is nearest); the demo uses the same rule.
    values.update(short_budget_triplets(args.photos - args.val))
    values.update(
        load_size=128, crop_size=96, batch_size=4, num_workers=0, cache_views=True, style_size=128,
        steps_stage1=10 ** 6, steps_stage2=10 ** 6, steps_stage3=10 ** 6, steps_semantic=0, steps_baseline=10 ** 6,
        checkpoint_every=10 ** 9, validate_every=10 ** 9, log_every=25,
        d_scales=2, d_channels=16, vgg_width_divisor=4,
        segmenter_weights=args.segmenter_weights, seed=args.seed,
        network={"base_channels": 16, "depth": 4, "max_channels": 128, "encoder_channels": 16, "encoder_blocks": 3})
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


# ---- training under a CPU-time budget -----------------------------------------------------------------------------

PHASE_FIELD = {"appearance": "steps_stage1", "rerender": "steps_stage2", "finetune": "steps_stage3"}


def _nn_cell(nn: dict) -> str:
    """"43/48 (89.6 %)": the count, so a rounded percentage never reads as a target met that was missed."""
    hits = round(nn["accuracy"] * nn["photos"])
    return f"{hits}/{nn['photos']} ({100 * nn['accuracy']:.1f} %)"


def nearest_is_same_kind(latents: np.ndarray, kinds: list[str]) -> list[bool]:
    """For each latent (a row), whether its nearest other latent (Euclidean) has the same appearance kind."""
    z = np.asarray(latents, dtype=np.float64)
    d = ((z[:, None] - z[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return [kinds[i] == kinds[j] for i, j in enumerate(d.argmin(1))]


def _training_latent_nn(trainer: Any, kind: Callable[[str], str]) -> float:
    """Nearest-neighbour accuracy on appearance kind of the training photos' latents, as the encoder is now."""
    hits = nearest_is_same_kind(trainer._latents_of_all_photos().cpu().numpy(),
                                [kind(n) for n in trainer.train_set.names])
    return float(np.mean(hits))


def train_row(row: Row, data: Path, run_dir: Path, values: dict, budget_s: float, split: list[float],
              kind: Callable[[str], str] | None = None) -> dict:
    """Train ``row`` for ``budget_s`` seconds of process CPU time; returns the facts and the exported bundle path.

    With ``kind`` (a photo's true appearance kind), a staged row also records the nearest-neighbour accuracy of the
    training photos' latents at the end of each phase (outside the budget: it shows which stage makes or loses the
    clusters of looks)."""
    import shutil

    from rerender.training.config import TrainConfig
    from rerender.training.export import export_bundle
    from rerender.training.trainer import Trainer

    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(**{**values, **row.overrides})
    if row.method != "staged":
        config.steps_baseline = 10 ** 6
    start = time.process_time()
    wall = time.perf_counter()
    trainer = Trainer(data / "dataset", run_dir, config, method=row.method, progress=False)
    phases = [p for p in trainer.phases if p != "semantic"]
    shares = dict(zip(("appearance", "rerender", "finetune"), split)) if row.method == "staged" else \
        {phases[0]: 1.0}
    steps: dict[str, int] = {}
    cpu: dict[str, float] = {}
    nn_after: dict[str, float] = {}
    spent_before = time.process_time() - start  # building the trainer (features, dataset) counts to the row
    for phase in phases:
        t_phase = time.process_time()
        limit = budget_s * shares[phase] - (spent_before if phase == phases[0] else 0.0)
        while time.process_time() - t_phase < limit:
            trainer.run(max_steps=5)
        field_name = PHASE_FIELD[phase] if row.method == "staged" else "steps_baseline"
        setattr(trainer.config, field_name, trainer.phase_step)
        steps[phase] = trainer.phase_step
        cpu[phase] = round(time.process_time() - t_phase, 1)
        trainer.run(max_steps=0)  # closes the phase
        if kind is not None and trainer.E is not None:
            t_skip = time.process_time()
            nn_after[phase] = _training_latent_nn(trainer, kind)
            start += time.process_time() - t_skip  # not part of the row's training time
    trainer.run()  # the semantic phase has 0 steps: completes at once
    bundle = export_bundle(trainer, run_dir / "bundle")
    return {"row": row.name, "label": row.label, "method": row.method, "steps": steps, "cpu_seconds": cpu,
            "cpu_seconds_total": round(time.process_time() - start, 1),
            "wall_seconds": round(time.perf_counter() - wall, 1), "features": trainer.vgg.weights_name,
            "appearance_conditioning": bundle.config.appearance_conditioning, "bundle": str(run_dir / "bundle"),
            "training_latent_nn_after": nn_after}


# ---- evaluation ---------------------------------------------------------------------------------------------------

class Truth:
    """The generator's renders of view A under photo B's appearance (people-free), cached on disk in DATA."""

    def __init__(self, data: Path):
        from rerender.training.synthetic import load_collection

        self.collection = data / "collection"
        self.info = load_collection(self.collection)
        self.cache = data / "truth_cache"
        self.cache.mkdir(exist_ok=True)
        self.renders = 0

    def kind(self, name: str) -> str:
        return self.info.appearances[Path(name).stem].kind

    def __call__(self, camera: str, look: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        from rerender.training.synthetic import render_view

        path = self.cache / f"{Path(camera).stem}__{Path(look).stem}_{width}x{height}.npz"
        if path.is_file():
            with np.load(path) as z:
                return z["photo"], z["labels"]
        photo, labels = render_view(self.info, Path(camera).stem, Path(look).stem, transients=False, width=width,
                                    height=height)
        tmp = path.with_name(path.stem + ".part.npz")
        np.savez_compressed(tmp, photo=photo, labels=labels)
        tmp.replace(path)  # atomic: a second process (--truth-only) may render the same view
        self.renders += 1
        return photo, labels


def _size(data: Path, name: str) -> tuple[int, int]:
    from rerender.training.data import read_manifest

    rec = next(r for r in read_manifest(data / "dataset")[1] if r.name == name)
    return rec.width, rec.height


def _scores(out: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from rerender.training import metrics

    return {"psnr": metrics.psnr(out, truth), "l1": metrics.l1_255(out, truth), "ssim": metrics.ssim(out, truth)}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def _relabelled(buffer, labels):
    from rerender.bridge.buffers import DeepBuffer

    return DeepBuffer(buffer.color, buffer.depth, labels, buffer.mask)


def _columns(buffer, a: int, b: int):
    from rerender.bridge.buffers import DeepBuffer

    return DeepBuffer(buffer.color[:, a:b], buffer.depth[:, a:b], buffer.label[:, a:b], buffer.mask[:, a:b])


@dataclass
class Plan:
    """What every row is evaluated on (the same for all rows): views, transfer pairs, sheet looks."""

    val: list
    train: list
    pairs: list[tuple[str, str, str]]
    sheet_views: list[str]
    sheet_looks: list[str]


def make_plan(data: Path, truth: Truth, seed: int) -> Plan:
    from rerender.training.data import read_manifest

    _, records = read_manifest(data / "dataset")
    val = [r for r in records if r.split == "val"]
    train = [r for r in records if r.split == "train"]
    rng = random.Random(seed)
    by_kind = {k: [r.name for r in train if truth.kind(r.name) == k] for k in KINDS}
    pairs = []
    for i, a in enumerate(val):
        wanted = [k for k in KINDS if k != truth.kind(a.name) and by_kind[k]]
        kind = wanted[i % len(wanted)]
        b = rng.choice(by_kind[kind])
        c = rng.choice([r.name for r in train if r.name != b])
        pairs.append((a.name, b, c))
    looks = [by_kind[k][0] for k in KINDS if by_kind[k]]
    return Plan(val, train, pairs, [val[0].name, val[min(1, len(val) - 1)].name], looks)


def evaluate_row(bundle_dir: Path, data: Path, truth: Truth, plan: Plan, fit_steps: int) -> tuple[dict, dict]:
    """All measurements of one trained row; returns (numbers, pictures for the sheet)."""
    import torch

    from rerender.backend.latent_fit import fit_latent
    from rerender.backend.runtime import ModelRuntime
    from rerender.training.data import load_view

    runtime = ModelRuntime(bundle_dir, "cpu")
    has_latent = runtime.bundle.encoder is not None
    views = {r.name: load_view(r) for r in plan.val + plan.train}
    latents: dict[str, np.ndarray] = {}
    if has_latent:
        names = list(views)
        z = runtime.encode([views[n].photo for n in names],
                           [_relabelled(views[n].buffer, views[n].segmentation) for n in names])
        latents = dict(zip(names, z))
    result: dict[str, Any] = {}
    pictures: dict[str, np.ndarray] = {}
    # whole-image Table 1 (own latent from the whole photo) and the half-image protocol
    whole, half_enc, half_fit, fit_gain = [], [], [], []
    for rec in plan.val:
        v = views[rec.name]
        buf = _relabelled(v.buffer, v.segmentation)
        W = v.photo.shape[1]
        mid = W // 2
        z_own = latents[rec.name][None] if has_latent else None
        whole.append(_scores(runtime.rerender([buf], z_own)[0], v.photo))
        if has_latent:
            left_photo, left_buf = np.ascontiguousarray(v.photo[:, :mid]), _columns(buf, 0, mid)
            z_left = runtime.encode([left_photo], [left_buf])
            fit = fit_latent(runtime, left_photo, left_buf, steps=fit_steps, init=z_left[0])
            fit_gain.append(fit.initial_loss - fit.final_loss)
            out_enc, out_fit = runtime.rerender([buf, buf], np.stack([z_left[0], fit.latent]))
            half_enc.append(_scores(out_enc[:, mid:], v.photo[:, mid:]))
            half_fit.append(_scores(out_fit[:, mid:], v.photo[:, mid:]))
        else:
            out = runtime.rerender([buf], None)[0]
            half_enc.append(_scores(out[:, mid:], v.photo[:, mid:]))
    result["table1_whole_image"] = _mean(whole)
    result["half_image_encoder"] = _mean(half_enc)
    if half_fit:
        result["half_image_fitted"] = _mean(half_fit)
        result["fit_loss_drop_mean"] = float(np.mean(fit_gain))
    if not has_latent:
        return result, pictures
    # appearance transfer
    mean_latent = np.mean([latents[r.name] for r in plan.train], axis=0)
    by_b, by_c, by_mean, per_pair = [], [], [], []
    for a, b, c in plan.pairs:
        v = views[a]
        H, W = v.photo.shape[:2]
        target, labels = truth(a, b, W, H)
        buf = _relabelled(v.buffer, labels)
        out = runtime.rerender([buf] * 3, np.stack([latents[b], latents[c], mean_latent]))
        s = [_scores(o, target) for o in out]
        by_b.append(s[0]), by_c.append(s[1]), by_mean.append(s[2])
        per_pair.append({"view": a, "look_of": b, "kind_of_look": truth.kind(b), "random_other": c,
                         "latent_of_b": s[0], "latent_of_random": s[1], "mean_latent": s[2]})
    result["transfer"] = {"pairs": len(per_pair), "latent_of_b": _mean(by_b), "latent_of_random": _mean(by_c),
                          "mean_latent": _mean(by_mean),
                          "gain_db_b_over_random": _mean(by_b)["psnr"] - _mean(by_c)["psnr"],
                          "b_beats_random": float(np.mean([x["psnr"] > y["psnr"] for x, y in zip(by_b, by_c)])),
                          "per_pair": per_pair}
    # nearest neighbour of each photo's latent, against the true appearance kind
    names = list(latents)
    kinds = [truth.kind(n) for n in names]
    z = np.stack([latents[n] for n in names])
    hits = nearest_is_same_kind(z, kinds)
    result["latent_nn"] = {"photos": len(names), "accuracy": float(np.mean(hits)),
                           "per_kind": {k: float(np.mean([h for h, kk in zip(hits, kinds) if kk == k]))
                                        for k in KINDS if k in kinds},
                           "chance_majority": float(max(kinds.count(k) for k in set(kinds)) / len(kinds))}
    # Beside it, a diagnostic (not the headline): the same test in the coordinates R reads the latent in, when R
    # standardises it; and the latents themselves, so other distances can be tried on a finished run.
    rerenderer = runtime.bundle.rerenderer
    if rerenderer.latent_standardised:
        with torch.no_grad():
            in_r = rerenderer.standardised(torch.from_numpy(z)).numpy()  # the runtime is on the CPU
        result["latent_nn"]["accuracy_in_r_coordinates"] = float(np.mean(nearest_is_same_kind(in_r, kinds)))
    result["latents"] = {n: [float(x) for x in latents[n]] for n in names}
    result["kinds"] = dict(zip(names, kinds))
    # the sheet: held-out views under one photo of each kind
    for a in plan.sheet_views:
        v = views[a]
        H, W = v.photo.shape[:2]
        for look in plan.sheet_looks:
            target, labels = truth(a, look, W, H)
            pictures[f"{a}|{look}"] = runtime.rerender([_relabelled(v.buffer, labels)], latents[look][None])[0]
    return result, pictures


def write_sheet(path: Path, plan: Plan, truth: Truth, rows: list[Row], pictures: dict[str, dict]) -> None:
    from rerender.training.demo.media import contact_sheet

    headers, lines, labels = [], [], []
    for a in plan.sheet_views:
        truths = []
        for look in plan.sheet_looks:
            v_shape = next(iter(pictures.values()))[f"{a}|{look}"].shape
            truths.append(truth(a, look, v_shape[1], v_shape[0])[0])
        lines.append(truths)
        labels.append(f"{Path(a).stem} truth")
        for row in rows:
            if row.name in pictures and pictures[row.name]:
                lines.append([pictures[row.name][f"{a}|{look}"] for look in plan.sheet_looks])
                labels.append(f"{Path(a).stem} {row.name}")
    headers = [f"look of {Path(look).stem} ({truth.kind(look)})" for look in plan.sheet_looks]
    contact_sheet(lines, headers, path, height=120, row_labels=labels)


# ---- report -------------------------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    rows = report["rows"]
    out = [f"Budget: {report['budget_cpu_seconds_per_row']:.0f} s of process CPU time per row "
           f"({report['budget_minutes']} min in all); {report['data']['photos']} photos, "
           f"{report['data']['val']} held out.", ""]
    out += ["| row | steps (stage 1 / 2 / 3) | transfer B dB | random dB | mean dB | gain dB | NN acc | "
            "half-image PSNR (enc / fitted) | whole-image PSNR |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        t = m.get("transfer")
        steps = " / ".join(str(v) for v in r["train"]["steps"].values())
        half = f"{m['half_image_encoder']['psnr']:.2f}"
        if "half_image_fitted" in m:
            half += f" / {m['half_image_fitted']['psnr']:.2f}"
        if t:
            out.append(f"| {r['train']['label']} | {steps} | {t['latent_of_b']['psnr']:.2f} | "
                       f"{t['latent_of_random']['psnr']:.2f} | {t['mean_latent']['psnr']:.2f} | "
                       f"{t['gain_db_b_over_random']:+.2f} | {_nn_cell(m['latent_nn'])} | {half} | "
                       f"{m['table1_whole_image']['psnr']:.2f} |")
        else:
            out.append(f"| {r['train']['label']} | {steps} | – | – | – | – | – | {half} | "
                       f"{m['table1_whole_image']['psnr']:.2f} |")
    return "\n".join(out) + "\n"


def run_rows_in_parallel(argv: list[str], rows: list[Row], out: Path, jobs: int) -> int:
    """Train and evaluate every row in its own process (this script with ``--no-merge``), ``jobs`` at a time.

    Why processes and not threads: each row then has its own ``time.process_time`` budget and one torch thread,
    so two rows on two cores get the same work as one row would alone. Logs go to OUT/logs/ROW.log.
    """
    import subprocess

    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending, running, failed = list(rows), [], []
    while pending or running:
        while pending and len(running) < jobs:
            row = pending.pop(0)
            log = open(out / "logs" / f"{row.name}.log", "w")
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--rows", row.name, "--no-merge",
                   "--budget-rows", str(len(rows))]
            print(f"started {row.name} (log {log.name})", flush=True)
            running.append((row, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2.0)
        for item in list(running):
            row, proc, log = item
            if proc.poll() is not None:
                running.remove(item)
                log.close()
                print(f"finished {row.name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(row.name)
    if failed:
        print(f"rows failed: {', '.join(failed)} (see {out / 'logs'})", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = [ROWS[n] for n in args.rows.split(",") if n]
    split = [float(v) for v in args.split.split(",")]
    out = args.out
    (out / "parts").mkdir(parents=True, exist_ok=True)
    data = args.data or out / "data"
    t_all = time.perf_counter()
    data_facts = prepare_data(data, args.photos, args.val, args.quality, args.seed)
    truth = Truth(data)
    plan = make_plan(data, truth, args.seed)
    if args.truth_only:
        for a, b, _ in plan.pairs:
            truth(a, b, *_size(data, a))
        for a in plan.sheet_views:
            for look in plan.sheet_looks:
                truth(a, look, *_size(data, a))
        print(f"{truth.renders} ground-truth views rendered into {truth.cache}")
        return 0
    values = base_config(args)
    budget = args.budget_minutes * 60.0 * max(1, args.jobs) / (args.budget_rows or len(rows))
    if not args.merge_only and not args.no_merge and args.jobs > 1 and len(rows) > 1:
        if run_rows_in_parallel(argv if argv is not None else sys.argv[1:], rows, out, args.jobs) != 0:
            return 1
    elif not args.merge_only:
        for row in rows:
            print(f"training {row.name} ({row.label}) for {budget:.0f} CPU s ...", flush=True)
            facts = train_row(row, data, out / "runs" / row.name, values, budget, split, truth.kind)
            print(f"  steps {facts['steps']}, {facts['wall_seconds']:.0f} s wall; evaluating ...", flush=True)
            t0 = time.perf_counter()
            numbers, pics = evaluate_row(Path(facts["bundle"]), data, truth, plan, args.fit_steps)
            part = {"train": facts, "metrics": numbers, "eval_wall_seconds": round(time.perf_counter() - t0, 1),
                    "budget_cpu_seconds": budget}
            (out / "parts" / f"{row.name}.json").write_text(json.dumps(part, indent=2) + "\n")
            np.savez_compressed(out / "parts" / f"{row.name}_pictures.npz", **pics)
            t = numbers.get("transfer")
            if t:
                print(f"  transfer gain {t['gain_db_b_over_random']:+.2f} dB, NN {numbers['latent_nn']['accuracy']:.2f}"
                      f", half-image {numbers['half_image_fitted']['psnr']:.2f} dB", flush=True)
            else:
                print(f"  half-image {numbers['half_image_encoder']['psnr']:.2f} dB", flush=True)
        if args.no_merge:
            return 0
    report: dict[str, Any] = {"budget_minutes": args.budget_minutes, "budget_cpu_seconds_per_row": budget,
                              "budget_kind": "process CPU time (time.process_time), the same for every row",
                              "split_stage_1_2_3": split, "data": data_facts, "train_config": values,
                              "fit_steps": args.fit_steps, "threads": args.threads,
                              "pairs": plan.pairs, "rows": []}
    pictures: dict[str, dict] = {}
    for row in rows:
        part_path = out / "parts" / f"{row.name}.json"
        if not part_path.is_file():
            print(f"no result for row {row.name} in {part_path}; run it first", file=sys.stderr)
            return 1
        report["rows"].append(json.loads(part_path.read_text()))
        with np.load(out / "parts" / f"{row.name}_pictures.npz") as z:
            pictures[row.name] = {k: z[k] for k in z.files}
    if any(pictures.values()):
        write_sheet(out / "bench_quality_sheet.png", plan, truth, rows, pictures)
    # a --merge-only re-report keeps the wall time of the run that trained the rows, when there is one
    previous = out / "bench_quality.json"
    if args.merge_only and previous.is_file():
        report["wall_seconds"] = json.loads(previous.read_text()).get("wall_seconds")
    else:
        report["wall_seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "bench_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "bench_quality.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
