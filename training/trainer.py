"""Staged training (paper §3.2) and the ablation baselines, with exact resume and several processes.

Phases, run in order, each with its own step budget (TrainConfig.steps_*; the table is training/phases.py, the
step functions training/steps.py):
  staged  : appearance (stage 1: Ea by triplet loss) -> rerender (stage 2: R + D, Ea frozen)
            -> finetune (stage 3: R + D + Ea, Ea at a lower lr) -> semantic (S)
  i2i/sem : rerender (no latent; ``sem`` adds the photo's segmentation) -> semantic
  bicycle : bicycle (+Sem+BaseApp: R, Ea, D jointly, KL, latent regression, cross-cycle) -> semantic

Why one checkpoint for the whole run (networks, EMA copies, optimisers, data order, the random generator, phase and
step): resuming must give the very next step an uninterrupted run would have taken, bit for bit on a CPU. All
randomness (crops, triplet sampling, latent noise) comes from ``self.gen``, re-seeded from (seed, step, rank)
before every step, so it needs no state of its own.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rerender.backend.bundle import BundleConfig, build_networks
from rerender.backend.encoding import InputEncoding

from .config import TrainConfig
from .checkpoint_writer import save_in_background, wait_for_checkpoints
from .data import AlignedDataset, EpochSampler, DatasetError, collate
from .discriminator import MultiscaleDiscriminator
from .distributed import DistContext, all_reduce_mean, barrier, broadcast_parameters
from .features import feature_scale_for, layer_weights_for, load_features
from .loader import BatchIterator
from .numerics import subnormals_flushed
from .phases import DEFAULT_METHOD, METHOD_TABLE, TrainingError, phases_for, steps_field
from .phases import method as method_of
from .steps import PhaseSteps
from .vgg import VGG19Features

log = logging.getLogger(__name__)

#: method -> its phases in order (from training/phases.py)
PHASES: dict[str, tuple[str, ...]] = {name: m.phase_names for name, m in METHOD_TABLE.items()}
CHECKPOINT = "checkpoint.pt"


def bundle_config_for(method: str, config: TrainConfig, dataset: AlignedDataset, name: str) -> BundleConfig:
    """The backend's BundleConfig for a method: the ablation variants differ only in latent size and semantics."""
    m = method_of(method)
    net = dict(config.network)
    encoding = InputEncoding.for_dataset(dataset.manifest.get("depth_stats") or {"p01": 1.0, "p99": 100.0},
                                         dataset.classes, **net.pop("encoding", {}))
    latent = config.latent_size if m.latent else 0
    conditioning = net.pop("appearance_conditioning", config.appearance_conditioning) if latent else "concat"
    standardised = bool(latent and net.pop("latent_standardised", config.standardise_latent) and "appearance" in
                        m.phase_names)
    colour_statistics = bool(latent and net.pop("encoder_colour_statistics", config.encoder_colour_statistics))
    return BundleConfig(name=name, latent_size=latent, appearance_conditioning=conditioning,
                        latent_standardised=standardised, encoder_colour_statistics=colour_statistics,
                        use_semantics=m.semantics, classes=dataset.classes, encoding=encoding,
                        training_resolution=(config.load_size, config.load_size), **net)


class EMA:
    """Exponential moving average of a network's weights, with warm-up (decay min(d, (1+n)/(10+n)))."""

    def __init__(self, module: nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, s in zip(self.module.parameters(), source.parameters()):
            e.lerp_(s.detach(), 1 - d)
        for e, s in zip(self.module.buffers(), source.buffers()):
            e.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def adam(params, lr: float, config: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=config.betas)


class Trainer(PhaseSteps):
    """Owns the networks, optimisers, data order and log of one run folder ``out``."""

    def __init__(self, dataset_root: str | Path, out: str | Path, config: TrainConfig, *,
                 method: str = DEFAULT_METHOD,
                 stage: str = "all", resume: bool = False, ctx: DistContext | None = None,
                 vgg: VGG19Features | None = None, progress: bool = True):
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.config, self.method, self.out = config, method, Path(out)
        self.phases = phases_for(method, stage)  # TrainingError for an unknown method or stage
        self.progress = progress and self.ctx.is_main
        self.train_set = AlignedDataset(dataset_root, "train", config.load_size, cache=config.cache_views)
        self.val_set = AlignedDataset(dataset_root, "val", config.load_size, cache=config.cache_views)
        self.dataset_root = Path(dataset_root)
        self.bundle_config = bundle_config_for(method, config, self.train_set, name=self.out.name)
        mult = self.bundle_config.multiple
        if config.crop_size % mult or config.load_size % mult:
            raise TrainingError(f"crop_size {config.crop_size} and load_size {config.load_size} must be multiples of "
                                f"2**depth = {mult}; change them or the network depth")
        self.encoding = self.bundle_config.encoding
        torch.manual_seed(config.seed)
        r, e, s = build_networks(self.bundle_config)
        self.R, self.E, self.S = r.to(self.device), (e.to(self.device) if e is not None else None), s.to(self.device)
        in_d = 3 + self.encoding.channels(self.bundle_config.use_semantics)
        self.D = MultiscaleDiscriminator(in_d, config.d_channels, config.d_scales).to(self.device)
        self.ema_R = EMA(self.R, config.ema_decay)
        self.ema_E = EMA(self.E, config.ema_decay) if self.E is not None else None
        # the feature network of the perceptual loss and style distance (ImageNet VGG19, else the segmenter's
        # encoder, else a random VGG19: training/features.py); named in run.json, the log and the bundle
        self.vgg = (vgg or load_features(config.features, vgg_weights=config.vgg_weights,
                                         width_divisor=config.vgg_width_divisor,
                                         segmenter_weights=config.segmenter_weights)).to(self.device)
        self.feature_weights = layer_weights_for(self.vgg, config.vgg_layer_weights)
        self.feature_scale = feature_scale_for(self.vgg, config.vgg_feature_scale)
        self.opt: dict[str, torch.optim.Optimizer] = {
            "R": adam(self.R.parameters(), config.lr, config),
            "D": adam(self.D.parameters(), config.lr, config),
            "S": adam(self.S.parameters(), config.lr, config),
        }
        if self.E is not None:
            lr_e = config.lr_encoder_pretrain if "appearance" in PHASES[method] else config.lr
            self.opt["E"] = adam(self.E.parameters(), lr_e, config)
            self.opt["E_finetune"] = adam(self.E.parameters(), config.lr_encoder_finetune, config)
        broadcast_parameters([m for m in (self.R, self.E, self.S, self.D) if m is not None], self.ctx)
        self.gen = torch.Generator()  # re-seeded from (seed, step, rank) before every step: resume needs no state
        self.sampler = EpochSampler(len(self.train_set), config.batch_size, config.seed, self.ctx.rank,
                                    self.ctx.world_size)
        self.phase_index, self.phase_step, self.global_step = 0, 0, 0
        self.completed: list[str] = []
        self.style_distances: torch.Tensor | None = None
        self.amp = (config.mixed_precision and self.device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self.out / CHECKPOINT
        if resume:
            if not ckpt.is_file():
                raise TrainingError(f"--resume: {ckpt} does not exist; start the run without --resume")
            self.load_checkpoint(ckpt)
        elif ckpt.is_file() and stage == "all":
            raise TrainingError(f"{self.out} already holds a run ({ckpt}); pass --resume to continue it or choose "
                                f"another --out")
        elif ckpt.is_file():
            self.load_checkpoint(ckpt, networks_only=True)  # a single stage continues from the earlier stages
        self._check_prerequisites()
        if self.ctx.is_main:
            config.save(self.out / "train_config.json")
            (self.out / "run.json").write_text(json.dumps({
                "method": method, "stage": stage, "dataset": str(self.dataset_root.resolve()),
                "world_size": self.ctx.world_size, "vgg": self.vgg.weights_name,
                "features": self.vgg.weights_name,
                "appearance_conditioning": self.bundle_config.appearance_conditioning}, indent=2))
            log.warning("training %s with features: %s", method, self.vgg.weights_name)

    # ---- orchestration -------------------------------------------------------------------------------------------

    def _check_prerequisites(self) -> None:
        if self.phase_index >= len(self.phases):
            return
        m = method_of(self.method)
        first = m.phase(self.phases[self.phase_index])
        for need in first.needs:
            if need not in self.completed and need not in self.phases:
                raise TrainingError(f"stage {first.stage} needs the {need} phase done first: run `rerender train "
                                    f"--stage {m.phase(need).stage} --out {self.out}` first (or --stage all)")

    def steps_for(self, phase: str) -> int:
        return getattr(self.config, steps_field(self.method, phase))

    def run(self, max_steps: int | None = None) -> None:
        """Run the remaining phases (or ``max_steps`` more steps, for tests); checkpoint on interruption."""
        with subnormals_flushed():  # the segmenter features' subnormals: 1.7x a CPU step (training/numerics.py)
            self._run(max_steps)

    def _run(self, max_steps: int | None) -> None:
        from tqdm import tqdm
        data = BatchIterator(self.train_set, self.sampler, self.config.num_workers, device=self.device,
                             encoding=self.encoding, use_semantics=self.bundle_config.use_semantics)
        done = 0
        try:
            while self.phase_index < len(self.phases):
                phase = self.phases[self.phase_index]
                total = self.steps_for(phase)
                step_fn = self._step_function(phase)
                with tqdm(total=total, initial=self.phase_step, desc=f"{self.method}:{phase}",
                          disable=not self.progress, dynamic_ncols=True) as bar:
                    while self.phase_step < total:
                        if max_steps is not None and done >= max_steps:
                            return
                        batch = next(data)
                        self.gen.manual_seed(self.config.seed * 1_000_003 + self.global_step * 1009 + self.ctx.rank)
                        values = step_fn(batch)
                        self.phase_step += 1
                        self.global_step += 1
                        done += 1
                        self._after_step(phase, values, bar)
                self.completed.append(phase)
                self.phase_index += 1
                self.phase_step = 0
                self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        finally:
            data.close()
            wait_for_checkpoints()

    def _step_function(self, phase: str) -> Callable[[dict[str, Any]], dict[str, float]]:
        p = method_of(self.method).phase(phase)
        if p.setup:
            getattr(self, p.setup)()
        return getattr(self, p.step)

    def _after_step(self, phase: str, values: dict[str, float], bar) -> None:
        c = self.config
        if self.global_step % c.log_every == 0 or self.phase_step == self.steps_for(phase):
            values = {k: all_reduce_mean(v, self.ctx) for k, v in values.items()}
            if self.ctx.is_main:
                with open(self.out / "log.jsonl", "a") as f:
                    f.write(json.dumps({"phase": phase, "step": self.phase_step, "global_step": self.global_step,
                                        "time": time.time(), **values}) + "\n")
                bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        bar.update(1)
        if self.global_step % c.validate_every == 0 and self.ctx.is_main:
            self.save_validation_images(phase)
        if self.global_step % c.checkpoint_every == 0:
            self.save_checkpoint()

    # ---- validation ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def render_validation(self, count: int | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """EMA outputs (uint8) and photos for the first ``count`` validation views, at load_size, center."""
        count = min(count or self.config.num_val_images, len(self.val_set))
        batch = collate([self.val_set[i] for i in range(count)])
        photo, x, _ = self._inputs(batch)
        z = None
        if self.ema_E is not None:
            z = self.ema_E.module.latent(torch.cat([photo, x], dim=1))
        out = self.ema_R.module(x, z)
        return list(self.encoding.decode_rgb(out)), list(batch["photo"])

    def save_validation_images(self, phase: str) -> Path | None:
        from PIL import Image
        if not method_of(self.method).phase(phase).validates:
            return None
        outputs, photos = self.render_validation()
        rows = [np.concatenate([o, p], axis=1) for o, p in zip(outputs, photos)]
        folder = self.out / "validation"
        folder.mkdir(exist_ok=True)
        path = folder / f"{self.global_step:08d}_{phase}.png"
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)
        return path

    # ---- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        nets = {"R": self.R, "S": self.S, "D": self.D}
        if self.E is not None:
            nets["E"] = self.E
        return {
            "format": "rerender-train-checkpoint", "method": self.method, "phases": list(self.phases),
            "phase_index": self.phase_index, "phase_step": self.phase_step, "global_step": self.global_step,
            "completed": list(self.completed), "config": self.config.to_json(),
            "networks": {k: v.state_dict() for k, v in nets.items()},
            "ema": {"R": self.ema_R.state_dict(), **({"E": self.ema_E.state_dict()} if self.ema_E else {})},
            "optimizers": {k: v.state_dict() for k, v in self.opt.items()},
            "sampler": self.sampler.state_dict(),
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes ``checkpoint.pt`` atomically; the log is flushed up to this step."""
        if self.ctx.is_main:
            save_in_background(self.state_dict(), self.out / CHECKPOINT)
        barrier(self.ctx)

    def load_checkpoint(self, path: Path, networks_only: bool = False) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise TrainingError(f"{path}: unreadable checkpoint ({exc}); delete it to restart the run") from exc
        if state.get("format") != "rerender-train-checkpoint":
            raise TrainingError(f"{path} is not a rerender training checkpoint")
        if state["method"] != self.method:
            raise TrainingError(f"{path} is a {state['method']!r} run, not {self.method!r}; use --method "
                                f"{state['method']} or another --out")
        for k, module in {"R": self.R, "S": self.S, "D": self.D, "E": self.E}.items():
            if module is not None:
                module.load_state_dict(state["networks"][k])
        self.ema_R.load_state_dict(state["ema"]["R"])
        if self.ema_E is not None:
            self.ema_E.load_state_dict(state["ema"]["E"])
        self.completed = list(state["completed"])
        self.global_step = int(state["global_step"])  # a later stage continues the run's step count and log
        if networks_only:
            return
        if tuple(state["phases"]) != tuple(self.phases):
            raise TrainingError(f"{path} was written by a run with phases {state['phases']}, this one has "
                                f"{list(self.phases)}; resume with the same --stage")
        for k, opt in self.opt.items():
            opt.load_state_dict(state["optimizers"][k])
        self.sampler.load_state_dict(state["sampler"])
        self.phase_index, self.phase_step = int(state["phase_index"]), int(state["phase_step"])
        if self.ctx.is_main:
            _truncate_log(self.out / "log.jsonl", self.global_step)


def _truncate_log(path: Path, global_step: int) -> None:
    """Drop log lines past the checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line).get("global_step", 0) <= global_step]
    path.write_text("".join(line + "\n" for line in keep))


__all__ = ["CHECKPOINT", "EMA", "PHASES", "Trainer", "TrainingError", "bundle_config_for", "DatasetError"]
