"""Tiny aligned datasets ``D/`` (docs/architecture.md) generated procedurally, for training and evaluation tests.

Why procedural: a test needs a scene where appearance matters and is learnable in a few hundred CPU steps. Each
view sees the same "landmark" (colored blocks with depth) from a shifted viewpoint; the photo is the albedo lit by
one of several lights (day, dusk, night: a color multiplier plus a sky color), and some photos have a "person"
(transient class) that the deep buffer does not know about but the photo's segmentation does.
"""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rerender.bridge.buffers import DeepBuffer
from rerender.bridge.classes import DEFAULT_CLASSES, UNKNOWN
from rerender.bridge.colors import linear_to_srgb8, srgb_to_linear

BUILDING, SKY, PERSON = DEFAULT_CLASSES.id_of("building"), DEFAULT_CLASSES.id_of("sky"), DEFAULT_CLASSES.id_of("person")
LIGHTS = (  # (albedo multiplier, sky sRGB)
    ((1.0, 0.95, 0.85), (120, 170, 230)),
    ((0.9, 0.55, 0.35), (230, 130, 80)),
    ((0.15, 0.18, 0.35), (10, 15, 40)),
)


def render_view(height: int, width: int, shift: int, light: int, person: bool, rng: np.random.Generator):
    """One aligned view: (photo uint8, DeepBuffer, segmentation uint8)."""
    yy, xx = np.mgrid[0:height, 0:width]
    albedo = np.zeros((height, width, 3), np.float32)
    depth = np.full((height, width), np.inf, np.float32)
    mask = np.zeros((height, width), bool)
    blocks = (((0.7, 0.6, 0.5), 0.35, 0.05, 0.55, 0.95, 10.0), ((0.3, 0.5, 0.7), 0.15, 0.5, 0.3, 0.45, 6.0),
              ((0.8, 0.8, 0.75), 0.55, 0.55, 0.95, 0.9, 8.0))
    for rgb, top, left, bottom, right, z in blocks:
        inside = ((yy >= top * height) & (yy < bottom * height) & (xx >= left * width + shift)
                  & (xx < right * width + shift))
        stripes = 0.85 + 0.15 * ((xx // 4 + yy // 4) % 2)
        albedo[inside] = (np.asarray(rgb, np.float32)[None] * stripes[inside][:, None])
        depth[inside] = z + 0.01 * yy[inside]
        mask[inside] = True
    gain, sky = LIGHTS[light]
    lit = np.clip(albedo * np.asarray(gain, np.float32), 0, 1)
    photo = linear_to_srgb8(lit)
    photo[~mask] = sky
    seg = np.where(mask, BUILDING, SKY).astype(np.uint8)
    if person:
        top, left = int(rng.integers(height // 2, height - 12)), int(rng.integers(0, width - 6))
        photo[top:top + 12, left:left + 6] = (200, 30, 50)
        seg[top:top + 12, left:left + 6] = PERSON
    photo = np.clip(photo.astype(np.int16) + rng.integers(-3, 4, photo.shape), 0, 255).astype(np.uint8)
    color = np.where(mask[..., None], albedo, 0).astype(np.float16)
    label = np.where(mask, BUILDING, UNKNOWN).astype(np.uint8)
    return photo, DeepBuffer(color, depth, label, mask), seg


def make_dataset(root: str | Path, n_train: int = 6, n_val: int = 2, height: int = 64, width: int = 80,
                 seed: int = 0) -> Path:
    """Write a dataset with ``n_train`` + ``n_val`` views into ``root`` and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n_train + n_val):
        name = f"view{i:03d}.jpg"
        photo, buffer, seg = render_view(height, width, shift=int(rng.integers(-6, 7)), light=i % len(LIGHTS),
                                         person=bool(i % 2), rng=rng)
        folder = root / "views" / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(folder / "photo.png")
        buffer.save_npz(folder / "buffer.npz")
        Image.fromarray(seg, mode="L").save(folder / "segmentation.png")
        views.append({"name": name, "split": "train" if i < n_train else "val", "width": width, "height": height,
                      "coverage": buffer.coverage(),
                      "camera": {"model": "PINHOLE", "params": [50.0, 50.0, width / 2, height / 2],
                                 "R": np.eye(3).tolist(), "t": [float(i), 0.0, 0.0]}})
    manifest = {"format": "rerender-dataset", "version": 1, "classes": DEFAULT_CLASSES.to_json(),
                "workspace": "synthetic", "views": views, "dropped": [],
                "depth_stats": {"p01": 6.0, "p50": 8.0, "p99": 11.0}}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return root


def make_trained_film_bundle(root: Path) -> tuple[Path, Path]:
    """A tiny staged FiLM run (stage 1 .. semantic) on a procedural dataset, exported: (dataset, bundle).

    Seconds of training, yet the latent already changes the picture, so tests of the looks (changing, fitting,
    matching a photo) have something to find. torch is imported here, not at module level: the Blender lanes
    import this module without torch."""
    import torch

    from rerender.training.config import TrainConfig
    from rerender.training.export import export_bundle
    from rerender.training.trainer import Trainer
    from rerender.training.vgg import load_vgg19

    dataset = make_dataset(Path(root) / "D")
    config = TrainConfig.tiny(appearance_conditioning="film", w_gan=0.0, w_l1=1.0, steps_stage1=4, steps_stage2=12,
                              steps_stage3=8, steps_semantic=2, triplet_relative_margin=0.5)
    torch.manual_seed(0)
    trainer = Trainer(dataset, Path(root) / "run", config, progress=False, vgg=load_vgg19(width_divisor=8))
    trainer.run()
    export_bundle(trainer, Path(root) / "bundle")
    return dataset, Path(root) / "bundle"


__all__ = ["BUILDING", "LIGHTS", "PERSON", "SKY", "make_dataset", "make_trained_film_bundle", "render_view",
           "srgb_to_linear"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine run ~10x faster on one thread than fighting over two.
    Import it into a test module to apply it there (autouse, module scope)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
