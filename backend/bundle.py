"""The model bundle: one directory that holds everything a backend needs to serve a trained model.

  B/config.json           BundleConfig: format version, name, created, network sizes, variant flags, class table,
                          input encoding, training resolution
  B/weights.safetensors   all weights, keys prefixed rerenderer. / encoder. / semantic.
  B/gallery.json          named appearance latents: {"appearances": [{"name", "latent": [...], "thumbnail"}]}
  B/gallery/<name>.png    a small sRGB thumbnail per appearance

Why safetensors: no pickle (docs/design.md §5's rule extends to files a user downloads), and it loads without copies.
Saving is atomic (write a temporary sibling directory, then rename) so a crash never leaves half a bundle.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from rerender.bridge.gallery import Appearance
from rerender.bridge.classes import CITYSCAPES, DEFAULT_CLASSES, ClassTable, SemanticClass

from .encoding import InputEncoding
from .networks import CONDITIONING_MODES, AppearanceEncoder, Rerenderer, SemanticPredictor

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
GALLERY_FILE = "gallery.json"
GALLERY_DIR = "gallery"
THUMBNAIL_SIZE = 64


class BundleError(ValueError):
    """A model bundle that cannot be used, with what is wrong and what to do."""


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class BundleConfig:
    """Everything needed to rebuild the networks and feed them: sizes, variant flags, classes, input encoding.

    Defaults are the paper's and the authors' code's (U-Net 32 channels, depth 6, cap 512; latent 8; encoder 64
    channels, 3 residual blocks; Cityscapes classes; 7 input channels + mask).
    """

    name: str = "untitled"
    created: str = field(default_factory=_now)
    format_version: int = FORMAT_VERSION
    base_channels: int = 32
    depth: int = 6
    max_channels: int = 512
    latent_size: int = 8
    use_semantics: bool = True
    encoder_channels: int = 64
    encoder_blocks: int = 3
    # how the latent enters R: "concat" (the paper's bottleneck concatenation) or "film" (that plus FiLM of every
    # decoder stage). The default is "concat" because a config.json written before this field existed means it.
    appearance_conditioning: str = "concat"
    # R standardises the latent by the training collection's per-dimension mean and spread before it enters the
    # network (UNet.latent_mean / latent_scale, set by training); False in config.json files written before it
    latent_standardised: bool = False
    # the encoder's heads also read the photo's global colour statistics (networks/encoder.py); False in config.json
    # files written before it, whose encoders have no such inputs
    encoder_colour_statistics: bool = False
    classes: ClassTable = field(default_factory=lambda: DEFAULT_CLASSES)
    encoding: InputEncoding | None = None  # None -> derived from `classes` with default depth range
    training_resolution: tuple[int, int] = (512, 512)  # (H, W) of the training views (crops are smaller)
    notes: dict = field(default_factory=dict)  # free-form: training stage, steps, dataset, metrics...

    def __post_init__(self) -> None:
        self.latent_size = int(self.latent_size or 0)
        if self.encoding is None:
            self.encoding = InputEncoding.for_classes(self.classes)
        if self.encoding.num_classes != len(self.classes):
            raise BundleError(f"the input encoding's palette has {self.encoding.num_classes} classes but the class "
                              f"table has {len(self.classes)}; build it with InputEncoding.for_classes(classes)")
        for name in ("base_channels", "depth", "max_channels", "encoder_channels", "encoder_blocks"):
            if int(getattr(self, name)) < 1:
                raise BundleError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.latent_size < 0:
            raise BundleError(f"latent_size must be >= 0, got {self.latent_size}")
        if self.appearance_conditioning not in CONDITIONING_MODES:
            raise BundleError(f"appearance_conditioning must be one of {', '.join(CONDITIONING_MODES)}, got "
                              f"{self.appearance_conditioning!r}")
        self.training_resolution = tuple(int(v) for v in self.training_resolution)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multiple(self) -> int:
        """Input sides of R and S must be multiples of this."""
        return 2**self.depth

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["classes"] = self.classes.to_json()
        d["encoding"] = self.encoding.to_json()
        d["training_resolution"] = list(self.training_resolution)
        return d

    @classmethod
    def from_json(cls, data: Any) -> "BundleConfig":
        if not isinstance(data, dict):
            raise BundleError(f"config must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise BundleError("config has no integer format_version: this is not a rerender model bundle")
        if version > FORMAT_VERSION:
            raise BundleError(f"bundle format version {version} is newer than this rerender understands "
                              f"({FORMAT_VERSION}); upgrade rerender")
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise BundleError(f"config has unknown fields {sorted(extra)}; upgrade rerender")
        d = dict(data)
        try:
            if "classes" in d:
                d["classes"] = ClassTable.from_json(d["classes"])
            if "encoding" in d:
                d["encoding"] = InputEncoding.from_json(d["encoding"])
            return cls(**d)
        except BundleError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"config is invalid: {exc}") from exc


def safe_name(name: str) -> str:
    """A file-name-safe form of an appearance name (letters, digits, '-', '_')."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    return s or "appearance"


def build_networks(config: BundleConfig) -> tuple[Rerenderer, AppearanceEncoder | None, SemanticPredictor]:
    """Fresh networks for a config; no encoder when the bundle has no appearance latent (I2I baseline)."""
    encoder = AppearanceEncoder(config) if config.latent_size else None
    return Rerenderer(config), encoder, SemanticPredictor(config)


class Bundle:
    """A loaded model bundle: config, the three networks (CPU, eval mode) and the appearance gallery."""

    def __init__(self, config: BundleConfig, rerenderer: Rerenderer, encoder: AppearanceEncoder | None,
                 semantic: SemanticPredictor, gallery: list[Appearance] | None = None) -> None:
        self.config = config
        self.rerenderer = rerenderer
        self.encoder = encoder
        self.semantic = semantic
        self.gallery: list[Appearance] = list(gallery or [])

    @classmethod
    def new(cls, config: BundleConfig, gallery: list[Appearance] | None = None) -> "Bundle":
        """A bundle with freshly initialised networks for ``config`` (training starts from this), not yet saved."""
        return cls(config, *build_networks(config), gallery)

    def modules(self) -> dict[str, nn.Module]:
        mods = {"rerenderer": self.rerenderer, "semantic": self.semantic}
        if self.encoder is not None:
            mods["encoder"] = self.encoder
        return mods

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All weights with prefixed keys, as stored in weights.safetensors."""
        return {f"{prefix}.{k}": v for prefix, m in self.modules().items() for k, v in m.state_dict().items()}

    # ---- saving ---------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle to ``path`` atomically (a temporary sibling directory renamed into place)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not (path / CONFIG_FILE).is_file():
            if not path.is_dir() or any(path.iterdir()):
                raise BundleError(f"{path} exists and is not a model bundle; refusing to overwrite it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            self._write(tmp)
            if path.exists():
                old = path.with_name(f".{path.name}.old-{tmp.name}")
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def _write(self, d: Path) -> None:
        (d / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(d / WEIGHTS_FILE), metadata={"format": "rerender-bundle",
                                                             "format_version": str(FORMAT_VERSION)})
        (d / GALLERY_DIR).mkdir()
        entries, used = [], set()
        for a in self.gallery:
            stem = safe_name(a.name)
            n = 2
            while stem in used:
                stem, n = f"{safe_name(a.name)}_{n}", n + 1
            used.add(stem)
            rel = f"{GALLERY_DIR}/{stem}.png"
            Image.fromarray(a.thumbnail).save(d / rel)
            entries.append({"name": a.name, "latent": [float(v) for v in a.latent], "thumbnail": rel})
        (d / GALLERY_FILE).write_text(json.dumps({"appearances": entries}, indent=2) + "\n")

    # ---- loading --------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Read a bundle directory; every failure is a BundleError saying what is wrong and what to do."""
        path = Path(path)
        if not path.is_dir():
            raise BundleError(f"model bundle {path} does not exist (or is not a directory); create one with "
                              f"`rerender train` or `rerender bundle init --out {path}`")
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise BundleError(f"{path} has no {CONFIG_FILE}: not a model bundle (or an interrupted copy)")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{cfg_path} is corrupt ({exc}); re-copy or re-create the bundle") from exc
        config = BundleConfig.from_json(raw)
        rerenderer, encoder, semantic = build_networks(config)
        bundle = cls(config, rerenderer, encoder, semantic)
        bundle._load_weights(path / WEIGHTS_FILE)
        bundle.gallery = _load_gallery(path, config.latent_size)
        for m in bundle.modules().values():
            m.eval()
        return bundle

    def _load_weights(self, weights_path: Path) -> None:
        if not weights_path.is_file():
            raise BundleError(f"{weights_path} is missing: the bundle has no weights; re-copy or re-create it")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{weights_path} is not a readable safetensors file ({exc}); re-copy the bundle") from exc
        for prefix, module in self.modules().items():
            own = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            expected = module.state_dict()
            missing = sorted(set(expected) - set(own))
            unexpected = sorted(set(own) - set(expected))
            wrong = sorted(k for k in set(expected) & set(own) if tuple(expected[k].shape) != tuple(own[k].shape))
            if missing or unexpected or wrong:
                detail = "; ".join(
                    f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                    if keys)
                raise BundleError(f"{weights_path}: the {prefix} weights do not match config.json ({detail}); "
                                  f"the config and weights come from different models")
            module.load_state_dict(own, strict=True)
        stray = sorted(k for k in tensors if k.split(".", 1)[0] not in self.modules())
        if stray:
            raise BundleError(f"{weights_path} holds weights for networks the config does not describe "
                              f"({', '.join(stray[:3])}); the config and weights come from different models")


def _load_gallery(path: Path, latent_size: int) -> list[Appearance]:
    gpath = path / GALLERY_FILE
    if not gpath.is_file():
        return []
    try:
        items = json.loads(gpath.read_text())["appearances"]
        gallery = []
        for item in items:
            with Image.open(path / item["thumbnail"]) as im:
                thumb = np.asarray(im.convert("RGB"))
            gallery.append(Appearance(str(item["name"]), np.asarray(item["latent"], np.float32), thumb))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as exc:
        raise BundleError(f"{gpath} or its thumbnails are corrupt ({exc}); re-create the gallery") from exc
    for a in gallery:
        if a.latent.shape != (latent_size,):
            raise BundleError(f"{gpath}: appearance {a.name!r} has a latent of length {a.latent.size}, the bundle's "
                              f"latent_size is {latent_size}")
    return gallery


def class_table(num_classes: int) -> ClassTable:
    """The default table, truncated or extended with generated classes to ``num_classes`` (for tests and sizes)."""
    if num_classes < 1:
        raise BundleError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes <= len(CITYSCAPES):
        return ClassTable(CITYSCAPES[:num_classes])
    rng = np.random.default_rng(12345)
    used = {c.color for c in CITYSCAPES} | {(0, 0, 0)}
    extra = []
    for i in range(len(CITYSCAPES), num_classes):
        color = tuple(int(v) for v in rng.integers(1, 256, 3))
        while color in used:
            color = tuple(int(v) for v in rng.integers(1, 256, 3))
        used.add(color)
        extra.append(SemanticClass(i, f"class_{i}", color, False))
    return ClassTable(list(CITYSCAPES) + extra)


GALLERY_NAMES = ("noon", "golden hour", "overcast", "night")


def _swatch(latent: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A sky-to-ground gradient whose colors are derived from the latent: recognisable, deterministic."""
    z = np.tanh(np.resize(latent, 6).astype(np.float32))
    top, bottom = (z[:3] + 1) * 127.5, (z[3:] + 1) * 127.5
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    img = (1 - t) * top + t * bottom
    return np.broadcast_to(img, (size, size, 3)).round().astype(np.uint8).copy()


def init_bundle(out: str | Path, *, base_channels: int = 32, depth: int = 6, max_channels: int = 512,
                latent_size: int = 8, num_classes: int = 19, encoder_channels: int = 64, encoder_blocks: int = 3,
                use_semantics: bool = True, label_mode: str = "color", near: float = 1.0, far: float = 100.0,
                training_resolution: tuple[int, int] = (512, 512), name: str = "untitled", seed: int = 0,
                gallery_size: int = len(GALLERY_NAMES), appearance_conditioning: str = "concat") -> Bundle:
    """Write a bundle with freshly initialised weights and a small random gallery, and return it (loaded).

    For tests and for checking a whole pipeline (Blender -> bridge -> backend) before any training.
    """
    classes = class_table(num_classes)
    config = BundleConfig(
        name=name, base_channels=base_channels, depth=depth, max_channels=max_channels, latent_size=latent_size,
        use_semantics=use_semantics, encoder_channels=encoder_channels, encoder_blocks=encoder_blocks,
        classes=classes, encoding=InputEncoding.for_classes(classes, label_mode=label_mode, near=near, far=far),
        training_resolution=training_resolution, notes={"stage": "untrained", "seed": seed},
        appearance_conditioning=appearance_conditioning,
    )
    gallery = []
    if latent_size:
        rng = np.random.default_rng(seed)
        for i in range(gallery_size):
            label = GALLERY_NAMES[i] if i < len(GALLERY_NAMES) else f"appearance {i + 1}"
            z = rng.standard_normal(latent_size).astype(np.float32)
            gallery.append(Appearance(label, z, _swatch(z)))
    with torch.random.fork_rng(devices=[]):  # seeded weights without disturbing the caller's random state
        torch.manual_seed(seed)
        bundle = Bundle.new(config, gallery)
    for m in bundle.modules().values():
        m.eval()
    bundle.save(out)
    return bundle
