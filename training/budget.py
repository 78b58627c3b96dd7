"""Training that fits the machine: ``rerender train --time 15m`` picks sizes and step counts, and keeps the deadline.

Why measure instead of guess: one optimiser step of the paper's settings takes ~50 s on a laptop CPU and a fraction
of a second on a data-centre GPU; no table of devices stays right. So the planner times a few real steps of each
candidate size on this device (smallest first, a bigger one only if it can still afford a useful number of steps),
keeps the largest that affords them, splits the budget over the phases in the demo's proportions (stage 1 : 2 : 3 :
semantic ≈ 1 : 5 : 2 : 1), and says what it chose and why.

Why watch the clock anyway: step times change under load (another process on a shared machine doubles them), so
``run_within`` trains in short chunks and, after each, rescales the remaining phases' step counts to the time that
is actually left. The run always ends with every phase done (shortened if need be), a checkpoint and time to export.

With explicit settings, ``estimate_seconds`` gives the ETA that ``rerender train`` prints (a warning when it exceeds
a few hours).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SHORT_BUDGET, ConfigError, TrainConfig
from .phases import DEFAULT_METHOD
from .phases import method as method_of
from .phases import steps_field

log = logging.getLogger(__name__)

#: ETA above which explicit settings get a warning
WARN_SECONDS = 3 * 3600
#: fewer rerender steps than this and a bigger network is not worth it
MIN_RERENDER_STEPS = 300
#: the most a run may grow its planned step counts when the machine turns out faster than the probes said
MAX_GROWTH = 100.0
#: share of the training time of each phase (the demo's small preset: 60 : 300 : 100 : 60)
PHASE_SHARES = {"appearance": 0.11, "rerender": 0.58, "finetune": 0.19, "semantic": 0.12}


@dataclass(frozen=True)
class Tier:
    """A network/resolution size: how much picture quality per second of compute."""

    name: str
    load_size: int
    crop_size: int
    batch_size: int
    network: dict
    vgg_width_divisor: int  # 1 = the real VGG19 (ImageNet weights when present)
    d_scales: int
    d_channels: int

    def config(self, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = dict(
            load_size=self.load_size, crop_size=self.crop_size, batch_size=self.batch_size, num_workers=0,
            cache_views=True, network=dict(self.network), vgg_width_divisor=self.vgg_width_divisor,
            style_size=min(256, self.load_size), d_scales=self.d_scales, d_channels=self.d_channels,
            validate_every=10 ** 9, num_val_images=2)
        if self.vgg_width_divisor > 1:  # the CPU tiers: minutes of training
            values.update(SHORT_BUDGET)
        values.update(overrides)
        return TrainConfig(**values)


TIERS: tuple[Tier, ...] = (
    Tier("tiny", 64, 32, 2, {"base_channels": 8, "depth": 3, "max_channels": 32, "encoder_channels": 8,
                             "encoder_blocks": 2}, 8, 2, 8),
    Tier("small", 128, 64, 4, {"base_channels": 16, "depth": 4, "max_channels": 128, "encoder_channels": 16,
                               "encoder_blocks": 3}, 4, 2, 16),
    Tier("medium", 256, 128, 4, {"base_channels": 32, "depth": 5, "max_channels": 256, "encoder_channels": 32,
                                 "encoder_blocks": 3}, 1, 3, 32),
    Tier("paper", 512, 256, 8, {}, 1, 3, 64),
)


@dataclass
class Plan:
    tier: Tier
    config: TrainConfig
    seconds_per_step: dict[str, float]
    train_seconds: float
    why: str

    def to_text(self) -> str:
        c = self.config
        steps = f"{c.steps_stage1}/{c.steps_stage2}/{c.steps_stage3}/{c.steps_semantic}"
        return (f"time budget: {self.why}\n  chose '{self.tier.name}': load {c.load_size} px, crops {c.crop_size} px, "
                f"batch {c.batch_size}, network {self.tier.network or 'paper defaults'}; steps {steps} (stage "
                f"1/2/3/semantic; baselines {c.steps_baseline}); about {format_seconds(self.train_seconds)} of "
                f"training")


def parse_duration(text: str) -> float:
    """'15m', '90s', '1h30m', '2h', '45' (minutes) → seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t) * 60
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", t)
    if not parts or "".join(f"{a}{b}" for a, b in parts) != t.replace(" ", ""):
        raise ValueError(f"--time {text!r}: use e.g. 15m, 90s, 1h30m")
    return sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts)


def process_age() -> float:
    """Seconds since this process started (Python's and torch's imports count against a time budget too)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        import os

        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: count from the command's start
        return 0.0


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


# --- measuring ----------------------------------------------------------------------------------------------------

_FEATURES: dict[tuple, Any] = {}


def features_for(config: TrainConfig):
    """The perceptual feature network for ``config``, built once per process: the probes and the run share it (it
    is frozen), so its loading and its warnings happen once."""
    from .features import load_features

    key = (config.features, config.vgg_weights, config.vgg_width_divisor, config.segmenter_weights)
    if key not in _FEATURES:
        _FEATURES[key] = load_features(config.features, vgg_weights=config.vgg_weights,
                                       width_divisor=config.vgg_width_divisor,
                                       segmenter_weights=config.segmenter_weights)
    return _FEATURES[key]


def measure_steps(dataset: str | Path, config: TrainConfig, method: str, ctx=None, repeats: int = 2) -> dict[str, float]:
    """Seconds per optimiser step of the dominant phases, timed on a throw-away trainer (two warm-up steps each)."""
    import torch

    from .data import BatchIterator
    from .trainer import Trainer

    with tempfile.TemporaryDirectory(prefix="rerender-probe-") as tmp:
        trainer = Trainer(dataset, Path(tmp) / "probe", config, method=method, ctx=ctx, progress=False,
                          vgg=features_for(config))
        data = BatchIterator(trainer.train_set, trainer.sampler, 0)
        m = method_of(method)
        steps = {p: getattr(trainer, m.phase(p).step) for p in m.probe}
        out = {}
        try:
            for phase, fn in steps.items():
                for _ in range(2):  # warm-up: allocation, oneDNN/cuDNN kernel selection (the first steps of a
                    fn(next(data))  # process measured 5x slower than later ones on this CPU)
                times = []
                for _ in range(repeats):
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    fn(next(data))
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                out[phase] = min(times)  # the machine's speed; load spikes are the deadline watcher's business
        finally:
            data.close()
    # the phases not timed, relative to the one that was: stage 1 trains only the encoder on whole photos (no
    # discriminator), stage 3 adds the encoder's backward pass to stage 2
    base = out.get("rerender", out.get("bicycle"))
    out.setdefault("appearance", 0.5 * base)
    out.setdefault("finetune", 1.3 * base)
    out.setdefault("semantic", 0.3 * base)
    return out


def phases_of(method: str) -> tuple[str, ...]:
    return method_of(method).phase_names


def estimate_seconds(config: TrainConfig, per_step: dict[str, float], method: str) -> float:
    """Seconds for all phases of ``method`` with ``config``'s step counts at ``per_step`` seconds per step."""
    total = 0.0
    for phase in phases_of(method):
        total += getattr(config, steps_field(method, phase)) * per_step.get(phase, per_step.get("rerender", 0.0))
    return total


def _steps_for_budget(per_step: dict[str, float], seconds: float, method: str) -> dict[str, int]:
    phases = phases_of(method)
    share = {p: PHASE_SHARES.get(p, 1.0) for p in phases}
    norm = sum(share.values())
    return {p: max(1, int(seconds * share[p] / norm / per_step[p])) for p in phases}


def _apply_steps(config: TrainConfig, steps: dict[str, int], method: str) -> TrainConfig:
    values = {}
    for phase, n in steps.items():
        values[steps_field(method, phase)] = n
    if "steps_baseline" not in values:  # the staged method: the baselines' count is set too (shown in the plan)
        values.setdefault("steps_baseline", sum(steps.values()))
    total = sum(steps.values())
    values.update(checkpoint_every=max(10, total // 20), log_every=max(1, min(50, total // 50)))
    return dataclasses.replace(config, **values)


def plan_for_budget(dataset: str | Path, seconds: float, *, method: str = DEFAULT_METHOD, ctx=None,
                    overrides: dict[str, Any] | None = None, max_load: int | None = None) -> Plan:
    """Measure the tiers smallest first and keep the largest that affords ``MIN_RERENDER_STEPS`` in the budget.

    ``seconds`` is the whole budget; a share is kept for probing, start-up and the export. ``overrides`` are the
    user's explicit ``--set`` values: they win over every tier."""
    from .vgg import hub_checkpoint_path

    start = time.monotonic()
    overrides = dict(overrides or {})
    train_seconds = seconds * 0.88 - 10  # less the probes (<= 8 %, subtracted below), checkpoints and the export
    if train_seconds <= 0:
        raise ConfigError(f"--time {format_seconds(seconds)} leaves no time to train; give at least 1m")
    have_imagenet = bool(overrides.get("vgg_weights")) or hub_checkpoint_path().is_file()
    chosen, reasons = None, []
    for tier in TIERS:
        if max_load is not None and tier.load_size > max_load and chosen is not None:
            reasons.append(f"'{tier.name}' ({tier.load_size} px) is larger than the views")
            break
        if tier.vgg_width_divisor == 1 and not have_imagenet and chosen is not None:
            reasons.append(f"'{tier.name}' needs ImageNet VGG19 weights (none found)")
            break
        if chosen is not None:  # a bigger tier costs >= 4x per step: probe it only if it could still fit
            guess = chosen[1]["rerender" if "rerender" in chosen[1] else "bicycle"] * 4
            if guess * MIN_RERENDER_STEPS > train_seconds * 0.6:
                reasons.append(f"'{tier.name}' would cost about {guess:.2f} s/step, too few steps")
                break
            if time.monotonic() - start > seconds * 0.08:
                reasons.append("probing time used up")
                break
        config = tier.config(**overrides)
        per_step = measure_steps(dataset, config, method, ctx)
        main = per_step["rerender" if "rerender" in per_step else "bicycle"]
        affordable = train_seconds * PHASE_SHARES["rerender"] / main
        reasons.append(f"'{tier.name}' {main:.2f} s/step ({int(affordable)} stage-2 steps)")
        if chosen is None or affordable >= MIN_RERENDER_STEPS:
            chosen = (tier, per_step)
        if affordable < MIN_RERENDER_STEPS:
            break
    tier, per_step = chosen
    train_seconds -= time.monotonic() - start  # the probes came out of the budget
    steps = _steps_for_budget(per_step, max(1.0, train_seconds), method)
    config = _apply_steps(tier.config(**overrides), steps, method)
    return Plan(tier, config, per_step, estimate_seconds(config, per_step, method),
                f"measured on this device: {'; '.join(reasons)}")


# --- keeping the deadline -----------------------------------------------------------------------------------------

def run_within(trainer, deadline: float, per_step: dict[str, float] | None = None, *, reserve: float = 10.0,
               chunk_seconds: float = 8.0, progress: bool = True) -> None:
    """Train until every phase is done, shortening the remaining phases so training ends ``reserve`` seconds
    before ``deadline`` (``time.monotonic()``); checkpoints at the end (and on Ctrl+C / SIGTERM).

    ``per_step``: the planner's seconds per step of each phase (their ratios matter: stage 3 costs more than stage
    1); this run's measured speed scales them, so a machine that got slower under load is noticed within a chunk."""
    from tqdm import tqdm

    relative = per_step or {}
    planned_steps = {p: trainer.steps_for(p) for p in trainer.phases}
    slowdown: dict[str, float] = {}  # per phase: measured / planned seconds per step, smoothed
    total_seconds = max(1.0, deadline - reserve - time.monotonic())
    with tqdm(total=round(total_seconds), unit="s", desc="training (time budget)", disable=not progress,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}") as bar:
        started = time.monotonic()
        while trainer.phase_index < len(trainer.phases):
            try:  # the trainer checkpoints an interruption inside run(); this covers the bookkeeping around it
                phase = trainer.phases[trainer.phase_index]
                planned = relative.get(phase, 1.0)
                known = slowdown.get(phase)
                if slowdown:  # phases not timed yet are assumed as slow (relative to plan) as the slowest so far
                    worst = max(slowdown.values())
                    _fit_remaining(trainer, deadline - reserve - time.monotonic(), planned_steps,
                                   {p: relative.get(p, 1.0) * slowdown.get(p, worst) for p in trainer.phases})
                # a phase's first step pays its set-up (stage 1's style distances): run it alone, do not time it;
                # then two timed steps before the chunks grow to ``chunk_seconds``
                first = trainer.phase_step == 0
                # chunks shrink near the deadline, so a load spike mid-chunk cannot overshoot it by much
                chunk = min(chunk_seconds, max(0.0, deadline - reserve - time.monotonic()) / 4)
                n = 1 if first else (2 if known is None else max(1, int(chunk / (planned * known))))
                n = min(n, max(1, trainer.steps_for(phase) - trainer.phase_step))  # one phase per chunk
                before, t0 = trainer.global_step, time.monotonic()
            except KeyboardInterrupt:
                trainer.save_checkpoint()
                raise
            trainer.run(max_steps=n)
            try:
                done = trainer.global_step - before
                if done and not first and trainer.phases[min(trainer.phase_index, len(trainer.phases) - 1)] == phase:
                    ratio = (time.monotonic() - t0) / done / planned
                    slowdown[phase] = ratio if known is None else 0.5 * known + 0.5 * ratio
                bar.n = min(bar.total, round(time.monotonic() - started))
                bar.set_postfix_str(f"{phase} step {trainer.global_step}")
            except KeyboardInterrupt:
                trainer.save_checkpoint()
                raise
    trainer.save_checkpoint()


def _fit_remaining(trainer, seconds_left: float, planned_steps: dict[str, int],
                   seconds_per_step: dict[str, float]) -> None:
    """Set the step counts of the current and later phases to the plan's scaled by one factor, the largest that
    fits ``seconds_left``.

    Why one factor over the whole plan (and not over what is left of each phase): the plan's proportions between
    the phases are the point of it. Scaling only the remainder would end a phase that has already run past its
    planned count, because a faster machine grew it earlier, at once, and give its time to the next phase.
    """
    phases = trainer.phases[trainer.phase_index:]
    current, later = phases[0], phases[1:]
    done = trainer.phase_step

    def steps_at(scale: float) -> dict[str, int]:
        # every phase keeps at least one step (a bundle needs each network trained a little); the current one may
        # end now once it has run a step: a phase that became current out of time still gets its one
        out = {current: max(done, 1, math.floor(planned_steps[current] * scale))}
        out.update({p: max(1, math.floor(planned_steps[p] * scale)) for p in later})
        return out

    def seconds_at(scale: float) -> float:
        steps = steps_at(scale)
        # a later phase's first step pays its set-up as well: about one more step
        return ((steps[current] - done) * seconds_per_step[current]
                + sum((steps[p] + 1) * seconds_per_step[p] for p in later))

    # a machine faster than the probes measured (they ran under a passing load, say) may use up to MAX_GROWTH x the
    # plan; a slower one gets fewer steps. seconds_at grows with the scale: bisect for the largest that fits.
    lo, hi = 0.0, MAX_GROWTH
    if seconds_at(hi) <= seconds_left:
        lo = hi
    else:
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if seconds_at(mid) <= seconds_left else (lo, mid)
    values = {steps_field(trainer.method, p): n for p, n in steps_at(lo).items()}
    if any(getattr(trainer.config, k) != v for k, v in values.items()):
        trainer.config = dataclasses.replace(trainer.config, **values)
        log.debug("time budget: remaining steps set to %s", values)
