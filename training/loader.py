"""Training batches that keep the device busy: worker processes, prefetch, pinned memory, compact arrays.

Why: a training step used to spend ~0.5 s of main-thread CPU before the GPU saw anything (decoding and resizing
the views in a 2-thread pool with nothing prefetched, encoding the buffers twice with numpy, and copying 134 MB of
pageable float32 per batch of 8 at 512²). Now:
  * views are decoded, fitted and windowed in DataLoader worker processes, ``prefetch`` batches ahead, into
    pinned memory when training on CUDA;
  * what crosses to the device is the compact form (uint8 photo and labels, float16 color, float32 depth, bool
    mask: 12 bytes a pixel instead of 44), and the network input is encoded there by the backend's exact tables
    (:func:`device_inputs`); S's input is R's minus the label channels, not a second encoding;
  * on the CPU (no device to offload to) the workers encode instead, so the main thread only trains.

The data order stays exactly resumable: the workers are fed by a copy of the trainer's :class:`EpochSampler` that
runs ahead, while the trainer's own sampler advances only when a batch is handed over, so its checkpointed state
is that of the batches actually trained on. Window positions come from :func:`window_fractions`.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
import torch

from rerender.backend.encoding import InputEncoding
from rerender.backend.tensor_encoding import encoder_for

from .data import AlignedDataset, EpochSampler, collate, window_fractions

_ARRAYS = ("photo", "color", "depth", "label", "mask", "segmentation", "window")


class BatchIterator:
    """Batches of the views an :class:`EpochSampler` picks, each a ``load_size`` window placed along the view's
    long side. ``num_workers > 0`` loads in worker processes with ``prefetch`` batches per worker in flight;
    ``encoding`` given and a CPU ``device``: the workers also encode (``device_inputs`` then only passes through).
    """

    def __init__(self, dataset: AlignedDataset, sampler: EpochSampler, num_workers: int = 0, *, prefetch: int = 2,
                 device: str | torch.device = "cpu", encoding: InputEncoding | None = None,
                 use_semantics: bool = True) -> None:
        self.dataset, self.sampler, self.num_workers = dataset, sampler, num_workers
        self.device = torch.device(device)
        encode = (encoding, use_semantics) if encoding is not None and self.device.type == "cpu" else None
        self._collate = _Collate(encode)
        self._loader: Iterator[dict[str, Any]] | None = None
        if num_workers > 0:
            ahead = copy.deepcopy(sampler)
            self._loader = iter(torch.utils.data.DataLoader(
                _Windows(dataset), batch_sampler=_AheadBatches(ahead), num_workers=num_workers,
                collate_fn=self._collate, pin_memory=self.device.type == "cuda", prefetch_factor=prefetch,
                persistent_workers=True))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        indices = self.sampler.next_batch()
        if self._loader is None:
            fractions = window_fractions(self.sampler.seed, self.sampler.epoch, self.sampler.position, len(indices))
            return self._collate([self.dataset.window(i, f) for i, f in zip(indices, fractions)])
        batch = next(self._loader)
        if [int(i) for i in batch["index"]] != indices:  # the two samplers can only part by a bug
            raise RuntimeError(f"prefetched batch {batch['index'].tolist()} is not the sampler's {indices}")
        return batch

    def close(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            getattr(loader, "_shutdown_workers", lambda: None)()


class _AheadBatches:
    """The batch sampler of the workers: (index, window fraction) lists from a sampler copy that runs ahead."""

    def __init__(self, sampler: EpochSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        while True:
            indices = self.sampler.next_batch()
            s = self.sampler
            yield list(zip(indices, window_fractions(s.seed, s.epoch, s.position, len(indices))))


class _Windows(torch.utils.data.Dataset):
    def __init__(self, dataset: AlignedDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, float]) -> dict[str, Any]:
        return self.dataset.window(*key)


class _Collate:
    """Stack items into tensors (pinnable); with ``encode`` = (encoding, use_semantics) add the network inputs."""

    def __init__(self, encode: tuple[InputEncoding, bool] | None) -> None:
        self.encode = encode

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(items)
        out: dict[str, Any] = {"index": torch.from_numpy(batch["index"]), "name": batch["name"]}
        for key in _ARRAYS:
            if key in batch:
                out[key] = torch.from_numpy(batch[key])
        if self.encode is not None:
            encoding, use_semantics = self.encode
            out["inputs"] = device_inputs(out, encoding, "cpu", use_semantics)
        return out


def device_inputs(batch: dict[str, Any], encoding: InputEncoding, device: str | torch.device,
                  use_semantics: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(photos N x 3, R's input with the photo's segmentation as labels, S's input) on ``device``, float32.

    The same numbers as ``encode_photos`` / ``encode_buffers`` (exact tables), computed on the device from the
    compact arrays (non-blocking copies: pinned batches overlap with the step before); inputs a worker already
    encoded are only moved.
    """
    device = torch.device(device)
    if "inputs" in batch:
        return tuple(t.to(device, non_blocking=True) for t in batch["inputs"])  # type: ignore[return-value]
    host = {k: _tensor(batch[k]) for k in ("photo", "color", "depth", "mask", "segmentation")}
    if use_semantics:
        encoding.check_labels(host["segmentation"])
    dev = {k: v.to(device, non_blocking=True) for k, v in host.items()}
    x = encoding.encode_wire({"color": dev["color"], "depth": dev["depth"], "label": dev["segmentation"],
                              "mask": dev["mask"]}, with_labels=use_semantics)
    x_plain = plain_channels(x, encoding) if use_semantics else x
    return encoder_for(encoding, device).encode_photos(dev["photo"]), x, x_plain


def plain_channels(x: torch.Tensor, encoding: InputEncoding) -> torch.Tensor:
    """R's input without its label channels: S's input (color, depth, mask), channel for channel the same numbers
    as an encoding without labels."""
    keep = [x[:, :4]] + ([x[:, -1:]] if encoding.mask_channel else [])
    return torch.cat(keep, dim=1)


def _tensor(a: Any) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))


__all__ = ["BatchIterator", "device_inputs", "plain_channels"]
