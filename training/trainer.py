"""Staged training (paper §3.2) and the ablation baselines, with exact resume and several processes.

Phases, run in order, each with its own step budget (TrainConfig.steps_*):
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
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from rerender.backend.bundle import BundleConfig, build_networks
from rerender.backend.encoding import InputEncoding

from . import losses
from .config import METHODS, TrainConfig
from .checkpoint_writer import save_in_background, wait_for_checkpoints
from .data import AlignedDataset, EpochSampler, DatasetError, collate, photos_tensor
from .discriminator import MultiscaleDiscriminator
from .distributed import DistContext, all_reduce_gradients, all_reduce_mean, barrier, broadcast_parameters
from .features import feature_scale_for, layer_weights_for, load_features
from .loader import BatchIterator, device_inputs
from .vgg import VGG19Features

log = logging.getLogger(__name__)

PHASES: dict[str, tuple[str, ...]] = {
    "staged": ("appearance", "rerender", "finetune", "semantic"),
    "i2i": ("rerender", "semantic"),
    "sem": ("rerender", "semantic"),
    "bicycle": ("bicycle", "semantic"),
}
STAGE_PHASES = {"1": ("appearance",), "2": ("rerender",), "3": ("finetune",), "semantic": ("semantic",)}
CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def bundle_config_for(method: str, config: TrainConfig, dataset: AlignedDataset, name: str) -> BundleConfig:
    """The backend's BundleConfig for a method: the ablation variants differ only in latent size and semantics."""
    if method not in METHODS:
        raise TrainingError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    net = dict(config.network)
    encoding = InputEncoding.for_dataset(dataset.manifest.get("depth_stats") or {"p01": 1.0, "p99": 100.0},
                                         dataset.classes, **net.pop("encoding", {}))
    latent = 0 if method in ("i2i", "sem") else config.latent_size
    conditioning = net.pop("appearance_conditioning", config.appearance_conditioning) if latent else "concat"
    return BundleConfig(name=name, latent_size=latent, appearance_conditioning=conditioning,
                        use_semantics=method != "i2i", classes=dataset.classes, encoding=encoding,
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


class Trainer:
    """Owns the networks, optimisers, data order and log of one run folder ``out``."""

    def __init__(self, dataset_root: str | Path, out: str | Path, config: TrainConfig, *, method: str = "staged",
                 stage: str = "all", resume: bool = False, ctx: DistContext | None = None,
                 vgg: VGG19Features | None = None, progress: bool = True):
        self.ctx = ctx or DistContext()
        self.device = self.ctx.device
        self.config, self.method, self.out = config, method, Path(out)
        if method not in PHASES:
            raise TrainingError(f"unknown method {method!r}; use one of {', '.join(PHASES)}")
        if stage != "all" and method != "staged" and stage in ("1", "2", "3"):
            raise TrainingError(f"--stage {stage} belongs to the staged method; {method} runs with --stage all")
        self.phases = PHASES[method] if stage == "all" else STAGE_PHASES.get(stage, ())
        if not self.phases:
            raise TrainingError(f"unknown stage {stage!r}; use all, 1, 2, 3 or semantic")
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
            lr_e = config.lr_encoder_pretrain if method == "staged" else config.lr
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
        first = self.phases[self.phase_index] if self.phase_index < len(self.phases) else None
        if first in ("rerender", "finetune") and self.method == "staged" and "appearance" not in self.completed \
                and "appearance" not in self.phases:
            raise TrainingError(f"stage 2/3 needs the pretrained appearance encoder: run `rerender train --stage 1 "
                                f"--out {self.out}` first (or --stage all)")

    def steps_for(self, phase: str) -> int:
        c = self.config
        return {"appearance": c.steps_stage1, "rerender": c.steps_stage2 if self.method == "staged"
                else c.steps_baseline, "finetune": c.steps_stage3, "bicycle": c.steps_baseline,
                "semantic": c.steps_semantic}[phase]

    def run(self, max_steps: int | None = None) -> None:
        """Run the remaining phases (or ``max_steps`` more steps, for tests); checkpoint on interruption."""
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
        if phase == "appearance":
            self._prepare_style_distances()
        return {"appearance": self.step_appearance, "rerender": lambda b: self.step_rerender(b, finetune=False),
                "finetune": lambda b: self.step_rerender(b, finetune=True), "bicycle": self.step_bicycle,
                "semantic": self.step_semantic}[phase]

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

    # ---- tensors -------------------------------------------------------------------------------------------------

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(photos N x 3, R's input N x C with the photo's segmentation as labels, S's input) at load_size."""
        return device_inputs(batch, self.encoding, self.device, self.bundle_config.use_semantics)

    def _crop_windows(self, n: int) -> list[tuple[int, int]]:
        span = self.config.load_size - self.config.crop_size + 1
        offs = torch.randint(0, span, (n, 2), generator=self.gen)
        return [(int(a), int(b)) for a, b in offs]

    def _crop(self, t: torch.Tensor, windows: list[tuple[int, int]]) -> torch.Tensor:
        s = self.config.crop_size
        return torch.stack([t[i, :, y:y + s, x:x + s] for i, (y, x) in enumerate(windows)])

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp) if self.device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)

    def _encode(self, encoder: nn.Module, photo: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder(torch.cat([photo, x], dim=1))

    def _update(self, loss: torch.Tensor, names: tuple[str, ...], modules: tuple[nn.Module, ...]) -> None:
        for n in names:
            self.opt[n].zero_grad(set_to_none=True)
        loss.backward()
        all_reduce_gradients(modules, self.ctx)
        for n in names:
            self.opt[n].step()

    def _gan_d_step(self, real: list[tuple[torch.Tensor, torch.Tensor]],
                    fake: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        self.D.requires_grad_(True)
        with self._autocast():
            loss = sum(losses.lsgan_d_loss(self.D(ri, rc), self.D(fi.detach(), fc))
                       for (ri, rc), (fi, fc) in zip(real, fake))
        self._update(loss, ("D",), (self.D,))
        self.D.requires_grad_(False)
        return float(loss.detach())

    def _reconstruction(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        vgg = losses.perceptual_loss(self.vgg, out, target, self.feature_weights, self.feature_scale)
        l1 = losses.l1_loss(out, target)
        return c.w_vgg * vgg + c.w_l1 * l1, {"vgg": float(vgg.detach()), "l1": float(l1.detach())}

    # ---- phases --------------------------------------------------------------------------------------------------

    def _prepare_style_distances(self) -> None:
        """Style (Gram) distances between all training photos, computed once and cached in the run folder."""
        if self.style_distances is not None:
            return
        path = self.out / "style_distances.pt"
        names = self.train_set.names
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            if cached["names"] == names and cached["style_size"] == self.config.style_size \
                    and cached.get("features") == self.vgg.weights_name:
                self.style_distances = cached["distances"]
                return
        from tqdm import tqdm
        size = min(self.config.style_size, self.config.load_size)
        start = (self.config.load_size - size) // 2
        grams: list[list[torch.Tensor]] = []
        n, chunk = len(self.train_set), 16
        for i in tqdm(range(0, n, chunk), desc="style distances", disable=not self.progress, leave=False):
            photos = np.stack([self.train_set[j]["photo"][start:start + size, start:start + size]
                               for j in range(i, min(n, i + chunk))])
            grams.append([g.cpu() for g in losses.style_grams(self.vgg, photos_tensor(photos).to(self.device))])
        stacked = [torch.cat([g[j] for g in grams]) for j in range(len(grams[0]))]
        self.style_distances = losses.pairwise_style_distances(stacked)
        if self.ctx.is_main:
            _atomic_save({"names": names, "style_size": self.config.style_size, "features": self.vgg.weights_name,
                          "distances": self.style_distances}, path)

    def triplets(self, anchors: list[int]) -> tuple[list[int], list[int]]:
        """For each anchor: a positive among its k nearest, a negative among its k farthest (style distance)."""
        d = self.style_distances
        assert d is not None
        n = d.shape[0]
        if n < 3:
            raise TrainingError(f"appearance pretraining needs at least 3 training photos, the dataset has {n}")
        k_near = max(1, min(self.config.triplet_k_near, n - 2))
        k_far = max(1, min(self.config.triplet_k_far, n - 1 - k_near))
        pos, neg = [], []
        for a in anchors:
            row = d[a].clone()
            row[a] = float("inf")
            order = torch.argsort(row, stable=True).tolist()  # nearest first, the anchor itself last
            near, far = order[:k_near], order[:-1][-k_far:]
            pos.append(near[int(torch.randint(len(near), (1,), generator=self.gen))])
            neg.append(far[int(torch.randint(len(far), (1,), generator=self.gen))])
        return pos, neg

    def step_appearance(self, batch: dict[str, Any]) -> dict[str, float]:
        """Stage 1: Ea alone, triplet loss on latents; positives/negatives chosen by the cached style distance."""
        assert self.E is not None
        pos, neg = self.triplets([int(i) for i in batch["index"]])
        others = collate([self.train_set[i] for i in pos + neg])
        self.E.train()
        photo, x, _ = self._inputs(batch)
        photo_o, x_o, _ = self._inputs(others)
        n = len(pos)
        with self._autocast():
            za = self._encode(self.E, photo, x)[0]
            zo = self._encode(self.E, photo_o, x_o)[0]
            loss = losses.triplet_loss(za, zo[:n], zo[n:], self.config.triplet_margin,
                                       relative=self.config.triplet_relative_margin)
        self._update(loss, ("E",), (self.E,))
        self.ema_E.update(self.E)
        return {"triplet": float(loss.detach())}

    def step_rerender(self, batch: dict[str, Any], finetune: bool) -> dict[str, float]:
        """Stage 2 (Ea frozen) / stage 3 (Ea finetuned) / the I2I and +Sem baselines (no Ea): R and D on crops."""
        c = self.config
        photo, x, _ = self._inputs(batch)
        windows = self._crop_windows(photo.shape[0])
        x_crop, y_crop = self._crop(x, windows), self._crop(photo, windows)
        self.R.train()
        train_e = finetune and self.E is not None
        with self._autocast():
            z = None
            if self.E is not None:
                self.E.train(train_e)
                self.E.requires_grad_(train_e)
                with torch.set_grad_enabled(train_e):
                    z = self.E.latent(torch.cat([photo, x], dim=1))
            out = self.R(x_crop, z)
        use_gan = c.w_gan > 0  # w_gan 0: pure reconstruction (tests, ablations) without the discriminator's cost
        d_loss = self._gan_d_step([(y_crop, x_crop)], [(out, x_crop)]) if use_gan else 0.0
        with self._autocast():
            g_gan = losses.lsgan_g_loss(self.D(out, x_crop)) if use_gan else out.new_zeros(())
            rec, parts = self._reconstruction(out, y_crop)
            g_loss = c.w_gan * g_gan + rec
        names, modules = ("R",), (self.R,)
        if train_e:
            names, modules = ("R", "E_finetune"), (self.R, self.E)
        self._update(g_loss, names, modules)
        self.ema_R.update(self.R)
        if train_e:
            self.ema_E.update(self.E)
        return {"g": float(g_loss.detach()), "g_gan": float(g_gan.detach()), "d": d_loss, **parts}

    def step_bicycle(self, batch: dict[str, Any]) -> dict[str, float]:
        """+Sem+BaseApp: BicycleGAN (cVAE-GAN + cLR-GAN) with Ea seeing photo + buffer and a cross-cycle term.

        Pairs each item with the next one in the batch as the second view (I2, B2). Ea sees whole images for the
        posterior; the latent regression and cross-cycle encode crops, since R produces crops.
        """
        c = self.config
        assert self.E is not None
        photo, x, _ = self._inputs(batch)
        n = photo.shape[0]
        windows = self._crop_windows(n)
        x1, y1 = self._crop(x, windows), self._crop(photo, windows)
        perm = [(i + 1) % n for i in range(n)]
        x2, y2 = x1[perm], y1[perm]
        self.R.train(), self.E.train()
        self.E.requires_grad_(True)
        with self._autocast():
            mu, logvar = self._encode(self.E, photo, x)
            eps = torch.randn(mu.shape, generator=self.gen).to(mu.device, mu.dtype)
            z1 = mu + eps * torch.exp(0.5 * logvar)
            recon = self.R(x1, z1)  # cVAE-GAN
            z_rand = torch.randn(mu.shape, generator=self.gen).to(mu.device, mu.dtype)
            fake_rand = self.R(x1, z_rand)  # cLR-GAN
            transfer = self.R(x2, z1)  # appearance of view 1 on view 2
        d_loss = self._gan_d_step([(y1, x1), (y1, x1), (y2, x2)],
                                  [(recon, x1), (fake_rand, x1), (transfer, x2)])
        with self._autocast():
            g_gan = (losses.lsgan_g_loss(self.D(recon, x1)) + losses.lsgan_g_loss(self.D(fake_rand, x1))
                     + losses.lsgan_g_loss(self.D(transfer, x2)))
            rec, parts = self._reconstruction(recon, y1)
            kl = losses.kl_divergence(mu.float(), logvar.float())
            z_cycle = self.E.latent(torch.cat([transfer, x2], dim=1))
            cross = self.R(x1, z_cycle)
            cross_rec, _ = self._reconstruction(cross, y1)
            g_loss = c.w_gan * g_gan + rec + c.w_kl * kl + c.w_cross_cycle * cross_rec
        self._update(g_loss, ("R", "E"), (self.R, self.E))
        # latent regression (cLR-GAN): only R is pushed to make z recoverable, as in BicycleGAN
        with self._autocast():
            self.E.requires_grad_(False)
            z_back = self.E.latent(torch.cat([self.R(x1, z_rand), x1], dim=1))
            latent_loss = c.w_latent * (z_back.float() - z_rand.float()).abs().mean()
        self._update(latent_loss, ("R",), (self.R,))
        self.E.requires_grad_(True)
        self.ema_R.update(self.R)
        self.ema_E.update(self.E)
        return {"g": float(g_loss.detach()), "g_gan": float(g_gan.detach()), "d": d_loss, "kl": float(kl.detach()),
                "cross": float(cross_rec.detach()), "latent": float(latent_loss.detach()), **parts}

    def step_semantic(self, batch: dict[str, Any]) -> dict[str, float]:
        """S(B) -> the photo's labels, cross entropy masked on transient classes and unknown pixels."""
        _, _, x_plain = self._inputs(batch)
        labels = torch.from_numpy(np.ascontiguousarray(batch["segmentation"])).long()[:, None].float()
        windows = self._crop_windows(x_plain.shape[0])
        x_crop = self._crop(x_plain, windows)
        y_crop = self._crop(labels.to(self.device), windows)[:, 0].long()
        self.S.train()
        ignore = (*self.train_set.classes.transient_ids, 255)
        with self._autocast():
            loss = losses.masked_cross_entropy(self.S(x_crop), y_crop, ignore)
        self._update(loss, ("S",), (self.S,))
        return {"semantic_ce": float(loss.detach())}

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
        if phase == "appearance":
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


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _truncate_log(path: Path, global_step: int) -> None:
    """Drop log lines past the checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and json.loads(line).get("global_step", 0) <= global_step]
    path.write_text("".join(line + "\n" for line in keep))


__all__ = ["CHECKPOINT", "EMA", "PHASES", "Trainer", "TrainingError", "bundle_config_for", "DatasetError"]
