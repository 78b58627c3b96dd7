"""Training hyperparameters, with the paper's / the authors' code defaults (docs/training.md).

Why a dataclass stored next to every checkpoint: an exact resume needs the exact settings, and a reader of a
run folder must be able to see what produced it. Tests use :meth:`TrainConfig.tiny`, which keeps the schedule
logic but shrinks sizes and step counts so a CPU can run it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .phases import METHODS, STAGE_CHOICES  # noqa: F401  (re-exported: the names live in the phases table)

STAGES = STAGE_CHOICES

# VGG layers of the perceptual loss and the style (Gram) distance, and the perceptual weights of the authors' code.
FEATURE_CHOICES = ("auto", "vgg19", "segmenter")  # the same tuple as features.FEATURE_CHOICES (no torch import here)
VGG_LAYERS = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "conv5_2")
PAPER_VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class ConfigError(ValueError):
    """A training setting that cannot work (says which and what to use instead)."""


#: Settings for short training (minutes on a CPU, a few hundred to a few thousand steps), where the paper's losses
#: are measured to waste the budget (docs/evaluation.md has the A/B rows, each with the same CPU time):
#: no GAN (a third of every step, and a gradient R cannot use yet), a direct L1 term (the perceptual loss of a
#: shrunk or non-ImageNet feature network is weak), and stage 1 ranking photos by Gram plus colour-histogram
#: distance with hard negatives and a relative margin (the triplets keep teaching; colour is most of a look).
#: Used by the CPU demo presets, ``rerender train --time`` on shrunk feature networks and the quality benchmark.
SHORT_BUDGET: dict[str, Any] = dict(w_gan=0.0, w_l1=1.0, style_colour_weight=1.0, triplet_mining="hard",
                                    triplet_relative_margin=0.5)

#: Share of the other training photos that stage 1 draws its (hard) negatives from under ``SHORT_BUDGET``.
FAR_SHARE = 0.625


def short_budget_triplets(train_photos: int) -> dict[str, int]:
    """Stage 1's neighbourhoods for short training: the positive is the nearest photo, a negative comes from the
    farthest 62.5 % of the photos (25 of 40 on the quality benchmark).

    Why so wide: with a handful of farthest photos, a day photo's negatives are only night and sunset photos, never
    the overcast ones its latent must be told apart from, and the relative margin is met at once (measured in the
    demo with 4 of 32: the triplet loss was 0 at every logged step from the 45th on). docs/training.md has
    the stage-1 runs behind the numbers.
    """
    return {"triplet_k_near": 1, "triplet_k_far": max(1, round(FAR_SHARE * train_photos))}


@dataclass
class TrainConfig:
    # data
    load_size: int = 512  # short side of every view (aspect kept); items are load_size squares anywhere along it
    crop_size: int = 256  # random training crops the rerenderer sees (paper: 256 x 256)
    batch_size: int = 8
    num_workers: int = 2
    cache_views: bool = False  # keep decoded views in memory (small datasets; ~4 MB per 512^2 view)
    # optimisation (Adam beta1 = 0, beta2 = 0.99, lr 1e-3 for R and D, 1e-4 for the finetuned encoder)
    lr: float = 1e-3
    lr_encoder_pretrain: float = 1e-3
    lr_encoder_finetune: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.99)
    ema_decay: float = 0.999
    mixed_precision: bool = True  # only ever used on CUDA
    # loss weights (generator loss = 1.0 GAN + 0.3 VGG in the authors' code)
    w_gan: float = 1.0
    w_vgg: float = 0.3
    vgg_layer_weights: tuple[float, ...] = PAPER_VGG_WEIGHTS
    vgg_feature_scale: float = 0.1
    w_l1: float = 0.0  # the staged method uses no direct L1; baselines may
    # colour statistics (losses.colour_statistics_loss): per-channel mean, std and low-pass colour of the output
    # against the photo; 0 = the paper's losses only
    w_colour: float = 0.0
    # appearance pretraining (stage 1)
    triplet_margin: float = 0.1
    triplet_k_near: int = 5
    triplet_k_far: int = 13
    # > 0: the margin is this fraction of the pair's mean squared distance instead of the absolute triplet_margin.
    # Why: an absolute margin of 0.1 is met at initialisation (measured: loss ~0 from step 50), because the
    # encoder's latents are already far apart; a relative margin cannot be met by scale alone.
    triplet_relative_margin: float = 0.0
    # "random": the negative is drawn among the k_far farthest (the paper); "hard": of those, the one whose latent
    # is nearest the anchor's now, so the loss keeps teaching after the easy triplets are met (FaceNet's mining)
    triplet_mining: str = "random"
    # weight of losses.log_ratio_loss beside the triplet loss: the latents keep the appearance distance's ordering
    # over every pair of photos in a stage-1 batch, not only nearest-against-far; 0 = the paper's triplet alone
    w_log_ratio: float = 0.0
    style_size: int = 256  # central crop the style distance is computed on
    # weight of the colour-histogram distance added to the Gram distance that ranks stage 1's triplets
    # (losses.appearance_distances; both normalised by their median); 0 = the paper's Gram distance alone
    style_colour_weight: float = 0.0
    # BicycleGAN-style baseline (+Sem+BaseApp)
    w_kl: float = 0.01
    w_latent: float = 0.5
    w_cross_cycle: float = 10.0
    # discriminator
    d_scales: int = 3
    d_channels: int = 64
    # schedule, in optimiser steps per stage (the authors ran ~512k steps for stages 2 and 3 each)
    steps_stage1: int = 20_000
    steps_stage2: int = 200_000
    steps_stage3: int = 100_000
    steps_semantic: int = 50_000
    steps_baseline: int = 300_000
    checkpoint_every: int = 1000
    validate_every: int = 2000
    log_every: int = 50
    num_val_images: int = 4
    # networks (passed to the backend's bundle config)
    latent_size: int = 8
    network: dict[str, Any] = field(default_factory=dict)  # BundleConfig sizes (base_channels, depth, ...)
    vgg_width_divisor: int = 1  # 1 = the real VGG19 (ImageNet weights load); tests shrink it
    vgg_weights: str | None = None  # path to torchvision's vgg19-*.pth; None = torch hub cache / download
    # feature network of the perceptual loss and the style distance (training/features.py): auto = ImageNet VGG19
    # where it loads, else the segmenter's encoder, else a random VGG19 (loudly); or "vgg19" / "segmenter"
    features: str = "auto"
    segmenter_weights: str | None = None  # ESPNet .pth (or a folder holding it) for features "segmenter"/"auto"
    # how the latent enters the rerenderer: "film" (FiLM on every decoder stage + bottleneck concat) or "concat"
    # (the paper's bottleneck concatenation only); docs/evaluation.md has the A/B
    appearance_conditioning: str = "film"
    # staged method: standardise the latent inside R by the training photos' latents after stage 1
    # (BundleConfig.latent_standardised; docs/training.md)
    standardise_latent: bool = True
    # the appearance encoder also reads the photo's global colour statistics (backend/networks/encoder.py,
    # BundleConfig.encoder_colour_statistics; docs/training.md has the A/B)
    encoder_colour_statistics: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives lists
        self.vgg_layer_weights = tuple(self.vgg_layer_weights)
        if self.crop_size > self.load_size:
            raise ConfigError(f"crop_size {self.crop_size} is larger than load_size {self.load_size}; "
                              f"use a crop no larger than the loaded image")
        if len(self.vgg_layer_weights) != len(VGG_LAYERS):
            raise ConfigError(f"vgg_layer_weights needs {len(VGG_LAYERS)} values ({', '.join(VGG_LAYERS)})")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.features not in FEATURE_CHOICES:
            raise ConfigError(f"features must be one of {', '.join(FEATURE_CHOICES)}, got {self.features!r}")
        if self.appearance_conditioning not in ("concat", "film"):
            raise ConfigError(f"appearance_conditioning must be 'concat' or 'film', got "
                              f"{self.appearance_conditioning!r}")
        if self.triplet_mining not in ("random", "hard"):
            raise ConfigError(f"triplet_mining must be 'random' or 'hard', got {self.triplet_mining!r}")
        if not 0.0 <= self.triplet_relative_margin < 2.0:
            raise ConfigError(f"triplet_relative_margin must be in [0, 2), got {self.triplet_relative_margin}")
        if self.w_log_ratio < 0:
            raise ConfigError(f"w_log_ratio must be >= 0 (0 = the triplet loss alone), got {self.w_log_ratio}")

    @classmethod
    def tiny(cls, **overrides: Any) -> "TrainConfig":
        """Small images, small VGG, few steps: the same code paths on a CPU in seconds (tests, smoke runs)."""
        values: dict[str, Any] = dict(
            load_size=64, crop_size=32, batch_size=2, num_workers=0, cache_views=True, vgg_width_divisor=8, style_size=32,
            steps_stage1=4, steps_stage2=4, steps_stage3=4, steps_semantic=4, steps_baseline=4,
            checkpoint_every=2, validate_every=4, log_every=1, num_val_images=2, triplet_k_near=1,
            triplet_k_far=1, d_scales=2, d_channels=8, mixed_precision=False, features="vgg19",
            network={"base_channels": 8, "depth": 3, "max_channels": 32, "encoder_channels": 8, "encoder_blocks": 2},
        )
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        data["vgg_layer_weights"] = list(self.vgg_layer_weights)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable training config ({exc})") from exc
        return cls.from_json(data)
