"""Reader of the aligned dataset ``D/`` (docs/architecture.md): photo, its deep buffer, its segmentation, split.

Why views are fitted, then windowed: the appearance encoder sees a whole square and a batch needs one size, so every
view is resized keeping its aspect ratio (short side = ``load_size``; nearest for buffers and labels, which must not
be blended, Lanczos for photos), and a training item is a ``load_size`` square *window* of it, drawn anywhere along
the long side (:meth:`AlignedDataset.window`); the rerenderer then trains on random ``crop_size`` crops of that
square, drawn by the trainer from its own checkpointed generator. Over a run the crops cover portrait and landscape
views edge to edge (a fixed center square never trained the top and bottom of a portrait photo). Where the window
lies is a function of the seed and the batch's place in the epoch order (:func:`window_fractions`), so a resumed run
draws the same windows. Validation, and every plain ``dataset[i]``, uses the center square, deterministically.

Every failure names the file and says what to do: a missing or corrupt photo, a buffer whose size differs from
its photo, an empty split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from rerender.bridge.buffers import BufferError, DeepBuffer
from rerender.bridge.classes import UNKNOWN, ClassTable

FORMAT = "rerender-dataset"
SUPPORTED_VERSIONS = (1,)


class DatasetError(ValueError):
    """An aligned dataset that cannot be trained on; the message names the file and the fix."""


@dataclass(frozen=True)
class ViewRecord:
    name: str
    split: str
    width: int
    height: int
    folder: Path

    @property
    def photo_path(self) -> Path:
        return self.folder / "photo.png"

    @property
    def buffer_path(self) -> Path:
        return self.folder / "buffer.npz"

    @property
    def segmentation_path(self) -> Path:
        return self.folder / "segmentation.png"


@dataclass
class View:
    """One loaded view at its stored size: uint8 photo H x W x 3, its DeepBuffer, uint8 segmentation H x W."""

    name: str
    photo: np.ndarray
    buffer: DeepBuffer
    segmentation: np.ndarray


def read_manifest(root: str | Path) -> tuple[dict[str, Any], list[ViewRecord]]:
    """Parse and check ``D/manifest.json``; returns the manifest and one record per view."""
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; build one with `rerender dataset`")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path} is missing: {root} is not an aligned dataset (build it with `rerender dataset`)")
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({exc}); rebuild the dataset with `rerender dataset`")
    if manifest.get("format") != FORMAT or manifest.get("version") not in SUPPORTED_VERSIONS:
        raise DatasetError(f"{path}: format {manifest.get('format')!r} version {manifest.get('version')!r} is not "
                           f"{FORMAT!r} version {SUPPORTED_VERSIONS}; rebuild with this version of `rerender dataset`")
    records = []
    for i, v in enumerate(manifest.get("views", [])):
        try:
            rec = ViewRecord(str(v["name"]), str(v["split"]), int(v["width"]), int(v["height"]),
                             root / "views" / Path(str(v["name"])).stem)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: view #{i} lacks name/split/width/height ({exc})") from exc
        if rec.split not in ("train", "val"):
            raise DatasetError(f"{path}: view {rec.name} has split {rec.split!r}; use 'train' or 'val'")
        records.append(rec)
    return manifest, records


def class_table(manifest: dict[str, Any]) -> ClassTable:
    """The dataset's class table (the default Cityscapes table when the manifest has none)."""
    from rerender.bridge.classes import DEFAULT_CLASSES
    items = manifest.get("classes")
    return ClassTable.from_json(items) if items else DEFAULT_CLASSES


def load_view(record: ViewRecord) -> View:
    """Read one view's three files and check that they agree with each other and the manifest."""
    for p in (record.photo_path, record.buffer_path, record.segmentation_path):
        if not p.is_file():
            raise DatasetError(f"{p} is missing (view {record.name}); rebuild the dataset or remove the view "
                               f"from manifest.json")
    photo = _read_png(record.photo_path, "RGB")
    seg = _read_png(record.segmentation_path, "L")
    try:
        buffer = DeepBuffer.load_npz(record.buffer_path)
    except BufferError as exc:
        raise DatasetError(str(exc)) from exc
    want = (record.height, record.width)
    for what, arr, p in (("photo", photo, record.photo_path), ("deep buffer", buffer.color, record.buffer_path),
                         ("segmentation", seg, record.segmentation_path)):
        if arr.shape[:2] != want:
            raise DatasetError(f"{p}: {what} is {arr.shape[1]}x{arr.shape[0]} but manifest.json says view "
                               f"{record.name} is {record.width}x{record.height}; all three files of a view must "
                               f"have one size (rebuild the view)")
    return View(record.name, photo, buffer, seg)


def _read_png(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "L" and im.mode not in ("L", "P"):
                raise DatasetError(f"{path}: segmentation must be a single-channel uint8 PNG of class ids, "
                                   f"got mode {im.mode}")
            return np.asarray(im.convert(mode) if im.mode != mode and mode == "RGB" else im, dtype=np.uint8)
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: corrupt or unreadable image ({exc}); re-export it or drop the view") from exc


def fitted_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) of a view resized so its short side is ``size``, aspect ratio kept."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def fit_view(view: View, size: int) -> View:
    """Resize so the short side is ``size``, keeping the aspect ratio (see module docstring for why)."""
    h, w = view.photo.shape[:2]
    nh, nw = fitted_size(h, w, size)
    if (nh, nw) == (h, w):
        return view

    def nearest(a: np.ndarray) -> np.ndarray:
        ys = np.minimum((np.arange(nh) + 0.5) * h / nh, h - 1).astype(np.int64)
        xs = np.minimum((np.arange(nw) + 0.5) * w / nw, w - 1).astype(np.int64)
        return a[ys][:, xs]

    photo = np.asarray(Image.fromarray(view.photo).resize((nw, nh), Image.LANCZOS))
    b = view.buffer
    buffer = DeepBuffer(nearest(b.color), nearest(b.depth), nearest(b.label), nearest(b.mask))
    return View(view.name, photo, buffer, nearest(view.segmentation))


def window_origin(height: int, width: int, size: int, along: float | None) -> tuple[int, int]:
    """(top, left) of a size x size window of a fitted view; ``along`` in [0, 1] places it along the long side
    (0: top / left edge, 1: bottom / right edge), None centers it."""
    span_y, span_x = height - size, width - size
    if along is None:
        return span_y // 2, span_x // 2
    along = min(max(float(along), 0.0), 1.0)
    return round(along * span_y), round(along * span_x)


def crop_view(view: View, top: int, left: int, size: int) -> View:
    sl = (slice(top, top + size), slice(left, left + size))
    b = view.buffer
    buffer = DeepBuffer(*(np.ascontiguousarray(a[sl]) for a in (b.color, b.depth, b.label, b.mask)))
    return View(view.name, np.ascontiguousarray(view.photo[sl]), buffer, np.ascontiguousarray(view.segmentation[sl]))


def square_view(view: View, size: int) -> View:
    """Resize so the short side is ``size`` and center-crop to size x size (the validation view)."""
    fitted = fit_view(view, size)
    h, w = fitted.photo.shape[:2]
    return crop_view(fitted, *window_origin(h, w, size, None), size)


def window_fractions(seed: int, epoch: int, position: int, count: int) -> list[float]:
    """Where along the long side each item of a batch gets its window: a pure function of the seed and the batch's
    place in the sampler's order, so the windows do not depend on worker processes, prefetching or resuming.

    Uniform, except that each end gets 1/6 of the draws: the trainer's crops are uniform *inside* the window, so
    with uniform windows a view's first and last rows would be trained far more rarely than its middle.
    """
    u = np.random.default_rng([seed, epoch, position, 0x57]).random(count)
    return np.clip(1.5 * u - 0.25, 0.0, 1.0).tolist()


class AlignedDataset(torch.utils.data.Dataset):
    """The views of one split, squared to ``load_size``; items are dicts of numpy arrays (see :func:`collate`)."""

    def __init__(self, root: str | Path, split: str, load_size: int, cache: bool = False):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.manifest, records = read_manifest(root)
        self.records = [r for r in records if r.split == split]
        self.split = split
        self.load_size = load_size
        self._cache: dict[int, View] | None = {} if cache else None  # small datasets: decode once
        self.classes = class_table(self.manifest)
        if not self.records:
            counts = {s: sum(r.split == s for r in records) for s in ("train", "val")}
            raise DatasetError(f"{self.root / 'manifest.json'}: the {split!r} split is empty ({counts}); "
                               f"rebuild the dataset with views in both splits")
        for rec in self.records:
            for p in (rec.photo_path, rec.buffer_path, rec.segmentation_path):
                if not p.is_file():
                    raise DatasetError(f"{p} is missing (view {rec.name}); rebuild the dataset or remove the view "
                                       f"from manifest.json")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def verify(self, progress: bool = False) -> None:
        """Decode every view once, so a corrupt file fails now rather than hours into a run."""
        from tqdm import tqdm
        for rec in tqdm(self.records, desc=f"checking {self.split} views", disable=not progress, leave=False):
            load_view(rec)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The center square of view ``index`` (validation, and what a plain index means)."""
        return self.window(index, None)

    def fitted(self, index: int) -> View:
        """View ``index`` resized to short side ``load_size`` (aspect kept); cached when ``cache`` is on."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        view = fit_view(load_view(self.records[index]), self.load_size)
        if self._cache is not None:
            self._cache[index] = view
        return view

    def fitted_size(self, index: int) -> tuple[int, int]:
        rec = self.records[index]
        return fitted_size(rec.height, rec.width, self.load_size)

    def window(self, index: int, along: float | None) -> dict[str, Any]:
        """A load_size square of view ``index`` as a dict of numpy arrays (see :func:`collate`); ``along`` places
        it on the long side (:func:`window_origin`), None centers it."""
        view = self.fitted(index)
        h, w = view.photo.shape[:2]
        top, left = window_origin(h, w, self.load_size, along)
        sq = crop_view(view, top, left, self.load_size)
        b = sq.buffer
        return {"index": index, "name": sq.name, "photo": sq.photo, "color": b.color, "depth": b.depth,
                "label": b.label, "mask": b.mask, "segmentation": sq.segmentation,
                "window": np.array([top, left, h, w], np.int64)}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack arrays into N x ... numpy arrays (the backend's InputEncoding turns buffers into channels)."""
    out: dict[str, Any] = {"index": np.array([i["index"] for i in items]), "name": [i["name"] for i in items]}
    for key in ("photo", "color", "depth", "label", "mask", "segmentation", "window"):
        if all(key in i for i in items):
            out[key] = np.stack([i[key] for i in items])
    return out


def batch_buffers(batch: dict[str, Any], *, labels: str = "segmentation",
                  window: tuple[int, int, int] | None = None) -> list[DeepBuffer]:
    """DeepBuffers of a collated batch. ``labels='segmentation'`` puts the PHOTO's segmentation in the label pass.

    Why: the paper conditions R on the photo's segmentation during training (so transient objects are explained
    by the labels, not baked into the appearance); at render time the rasterized/predicted labels take its place.
    ``window = (top, left, size)`` crops.
    """
    if labels not in ("segmentation", "buffer"):
        raise ValueError("labels must be 'segmentation' or 'buffer'")
    n = len(batch["name"])
    t, l, s = window if window else (0, 0, None)
    sl = (slice(t, t + s), slice(l, l + s)) if s else (slice(None), slice(None))
    label_key = "segmentation" if labels == "segmentation" else "label"
    return [DeepBuffer(batch["color"][i][sl], batch["depth"][i][sl], np.ascontiguousarray(batch[label_key][i][sl]),
                       batch["mask"][i][sl]) for i in range(n)]


def photos_tensor(photos_uint8: np.ndarray) -> torch.Tensor:
    """N x H x W x 3 uint8 sRGB -> N x 3 x H x W float in [-1, 1] (the networks' photo convention)."""
    t = torch.from_numpy(np.ascontiguousarray(photos_uint8)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


class EpochSampler:
    """Yields dataset indices epoch after epoch in a seeded order; resumable at any (epoch, position).

    Why not a plain shuffled DataLoader: an exact resume must continue with the very batch the interrupted run would
    have drawn next. With several processes each rank takes its strided share of the same permutation (the split
    DistributedSampler makes), padded by wrapping so every rank runs the same number of steps.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def _epoch_indices(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        per_rank = -(-self.size // self.world_size)
        total = per_rank * self.world_size
        perm = (perm * (total // self.size + 1))[:total]
        return perm[self.rank:total:self.world_size]

    def batches_per_epoch(self) -> int:
        return max(1, -(-self.size // self.world_size) // self.batch_size)

    def next_batch(self) -> list[int]:
        """The next batch of indices; the short tail of an epoch is dropped (every batch has one size)."""
        while True:
            indices = self._epoch_indices(self.epoch)
            if len(indices) < self.batch_size:  # tiny datasets: repeat the epoch's order to fill one batch
                indices = indices * (self.batch_size // len(indices) + 1)
            if self.position + self.batch_size <= len(indices):
                batch = indices[self.position:self.position + self.batch_size]
                self.position += self.batch_size
                return batch
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class BatchIterator:
    """Loads the batches an :class:`EpochSampler` picks, optionally in DataLoader worker processes.

    The sampler advances in the main process before the batch is loaded, so checkpointing the sampler state
    checkpoints the data order exactly.
    """

    def __init__(self, dataset: AlignedDataset, sampler: EpochSampler, num_workers: int = 0):
        self.dataset, self.sampler, self.num_workers = dataset, sampler, num_workers
        self._pool = None
        if num_workers > 0:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(num_workers)  # PNG/npz decoding releases the GIL

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        indices = self.sampler.next_batch()
        if self._pool is not None:
            items = list(self._pool.map(self.dataset.__getitem__, indices))
        else:
            items = [self.dataset[i] for i in indices]
        return collate(items)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def labels_tensor(labels: np.ndarray) -> torch.Tensor:
    """N x H x W uint8 class ids -> int64 tensor (255 stays UNKNOWN)."""
    return torch.from_numpy(np.ascontiguousarray(labels)).long()


__all__ = ["AlignedDataset", "BatchIterator", "DatasetError", "EpochSampler", "UNKNOWN", "View", "ViewRecord",
           "batch_buffers", "class_table", "collate", "labels_tensor", "load_view", "photos_tensor", "read_manifest",
           "square_view"]
