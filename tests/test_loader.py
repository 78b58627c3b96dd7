"""Training batches: windows anywhere along a view's long side, worker prefetch that keeps the data order exactly
resumable, network inputs encoded on the device equal to the numpy encoding, checkpoints written in the background."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rerender.backend.encoding import InputEncoding
from rerender.training.checkpoint_writer import CheckpointWriter
from rerender.training.data import AlignedDataset, EpochSampler, batch_buffers, collate, photos_tensor
from rerender.training.loader import BatchIterator, device_inputs
from rerender.training.trainer import Trainer
from support_dataset import make_dataset

LOAD, CROP = 32, 16


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> AlignedDataset:
    root = make_dataset(tmp_path_factory.mktemp("portrait") / "D", n_train=3, n_val=1, height=96, width=48)
    return AlignedDataset(root, "train", LOAD, cache=True)


def test_crop_windows_of_a_portrait_view_cover_its_top_and_bottom_rows(portrait: AlignedDataset):
    fitted_h, fitted_w = portrait.fitted_size(0)
    assert (fitted_h, fitted_w) == (64, 32)  # aspect kept: short side = load_size
    sampler = EpochSampler(len(portrait), batch_size=2, seed=3)
    data = BatchIterator(portrait, sampler)
    trainer_like = SimpleNamespace(config=SimpleNamespace(load_size=LOAD, crop_size=CROP),
                                   gen=torch.Generator().manual_seed(0))
    rows = np.zeros(fitted_h, bool)
    for _ in range(150):
        batch = next(data)
        assert batch["photo"].shape[1:3] == (LOAD, LOAD)
        crops = Trainer._crop_windows(trainer_like, len(batch["name"]))  # the trainer's own crop draw
        for (top, left, h, w), (y, _x) in zip(batch["window"].tolist(), crops):
            assert (h, w) == (fitted_h, fitted_w) and left == 0 and 0 <= top <= h - LOAD
            rows[top + y: top + y + CROP] = True
    assert rows[0] and rows[-1] and rows.all()
    # the window holds the fitted view's pixels at that place; plain indexing keeps the center square
    view = portrait.fitted(0)
    item = portrait.window(0, 1.0)
    assert item["window"][0] == fitted_h - LOAD
    assert np.array_equal(item["photo"], view.photo[-LOAD:])
    assert portrait[0]["window"][0] == (fitted_h - LOAD) // 2


def test_worker_prefetch_gives_the_synchronous_batches_and_a_resumable_order(portrait: AlignedDataset):
    plain = BatchIterator(portrait, EpochSampler(len(portrait), 2, seed=5))
    sampler = EpochSampler(len(portrait), 2, seed=5)
    workers = BatchIterator(portrait, sampler, num_workers=2, prefetch=2)
    try:
        for _ in range(5):
            a, b = next(plain), next(workers)
            assert a["name"] == b["name"] and torch.equal(a["window"], b["window"])
            assert all(torch.equal(a[k], b[k]) for k in ("photo", "color", "depth", "segmentation", "mask"))
        state = sampler.state_dict()  # the trainer's sampler: only the 5 batches handed over, not the prefetched
        assert state == plain.sampler.state_dict()
    finally:
        workers.close()
    resumed = EpochSampler(len(portrait), 2, seed=5)
    resumed.load_state_dict(state)
    assert next(BatchIterator(portrait, resumed))["name"] == next(plain)["name"]


@pytest.mark.parametrize("use_semantics", [True, False])
def test_device_inputs_equal_the_numpy_encoding_of_the_batch(portrait: AlignedDataset, use_semantics: bool):
    encoding = InputEncoding.for_classes(portrait.classes, near=1.0, far=30.0)
    items = [portrait.window(i, f) for i, f in ((0, 0.0), (1, 0.7))]
    batch = collate(items)
    buffers = batch_buffers(batch)
    want_x = encoding.encode_buffers(buffers, with_labels=use_semantics, labels=batch["segmentation"])
    want_plain = encoding.encode_buffers(buffers, with_labels=False)
    want_photo = photos_tensor(batch["photo"])
    worker_batch = BatchIterator(portrait, EpochSampler(3, 2, seed=1), encoding=encoding,
                                 use_semantics=use_semantics)._collate(items)
    for b in (batch, worker_batch):  # main-thread encoding from numpy, and inputs a worker encoded
        photo, x, x_plain = device_inputs(b, encoding, "cpu", use_semantics)
        for got, want in ((photo, want_photo), (x, want_x), (x_plain, want_plain)):
            assert got.dtype == torch.float32 and got.shape == want.shape
            assert np.array_equal(got.numpy().view(np.uint32), want.numpy().view(np.uint32))


def test_background_checkpoint_holds_the_state_of_its_step(tmp_path):
    writer = CheckpointWriter()
    weights = torch.arange(1_000_000, dtype=torch.float32)
    writer.save({"w": weights, "step": 7, "nested": [weights[:3]]}, tmp_path / "ck.pt")
    weights.add_(1)  # the next step updates the parameters in place while the write may still be running
    writer.wait()
    saved = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert saved["step"] == 7 and torch.equal(saved["w"], torch.arange(1_000_000, dtype=torch.float32))
    assert saved["nested"][0].tolist() == [0.0, 1.0, 2.0] and not (tmp_path / "ck.pt.part").exists()
    writer.save({"w": weights}, tmp_path / "missing" / "ck.pt")  # a folder that does not exist
    with pytest.raises(RuntimeError, match="writing the checkpoint failed"):
        writer.wait()
