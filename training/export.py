"""Trained run -> model bundle (backend/bundle.py): EMA weights, the semantic predictor, the appearance gallery.

Why EMA weights: the authors serve the exponential moving average of the generator and encoder; it is smoother
than the last optimiser step. The gallery holds the latent of every training photo, named by the photo, with a
thumbnail, so an artist can key "the look of photo X" on the timeline.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rerender.backend.bundle import THUMBNAIL_SIZE, Appearance, Bundle

from .data import collate, photos_tensor
from .trainer import Trainer


def thumbnail(photo: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A small uint8 copy of a photo, longest side ``size``."""
    im = Image.fromarray(photo)
    im.thumbnail((size, size), Image.LANCZOS)
    return np.asarray(im.convert("RGB"))


@torch.no_grad()
def gallery_latents(trainer: Trainer, batch_size: int = 8) -> list[Appearance]:
    """The EMA encoder's latent of every training photo (whole squared view, as in training)."""
    if trainer.ema_E is None:
        return []
    encoder = trainer.ema_E.module
    out: list[Appearance] = []
    ds = trainer.train_set
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        photo, x, _ = trainer._inputs(batch)
        z = encoder.latent(torch.cat([photo, x], dim=1)).float().cpu().numpy()
        out += [Appearance(name, latent, thumbnail(p)) for name, latent, p in zip(batch["name"], z, batch["photo"])]
    return out


def export_bundle(trainer: Trainer, path: str | Path) -> Bundle:
    """Write the run's bundle to ``path`` (atomically, by Bundle.save) and return it."""
    config = copy.deepcopy(trainer.bundle_config)
    config.notes = {"method": trainer.method, "phases_completed": list(trainer.completed),
                    "global_step": trainer.global_step, "dataset": str(trainer.dataset_root),
                    "vgg": trainer.vgg.weights_name, "features": trainer.vgg.weights_name}
    cpu = lambda m: copy.deepcopy(m).to("cpu").eval() if m is not None else None  # noqa: E731
    bundle = Bundle(config, cpu(trainer.ema_R.module), cpu(trainer.ema_E.module if trainer.ema_E else None),
                    cpu(trainer.S), gallery_latents(trainer))
    bundle.save(path)
    return bundle


__all__ = ["export_bundle", "gallery_latents", "thumbnail", "photos_tensor"]
