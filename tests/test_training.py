"""Staged training on a tiny procedural dataset: data reader errors, which weights each phase moves, learning,
bit-exact resume, the train command and the exported bundle served by the backend runtime (real torch, CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rerender.backend.bundle import Bundle
from rerender.backend.runtime import ModelRuntime
from rerender.training.config import TrainConfig
from rerender.training.data import AlignedDataset, DatasetError, EpochSampler
from rerender.training.export import export_bundle
from rerender.training.trainer import Trainer, TrainingError
from rerender.training.vgg import load_vgg19

from support_dataset import make_dataset, one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "D")


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return load_vgg19(width_divisor=8)


def _copy(dataset, tmp_path):
    dst = tmp_path / "D"
    shutil.copytree(dataset, dst)
    return dst


def _snapshot(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    nets = {"R": trainer.R, "E": trainer.E, "S": trainer.S, "D": trainer.D}
    return {k: {n: p.detach().clone() for n, p in m.state_dict().items()} for k, m in nets.items() if m is not None}


def _changed(before, after) -> set[str]:
    return {k for k in before if any(not torch.equal(before[k][n], after[k][n]) for n in before[k])}


# ---- data ------------------------------------------------------------------------------------------------------

def test_dataset_items_are_squared_and_validation_is_deterministic(dataset):
    ds = AlignedDataset(dataset, "train", load_size=32)
    assert len(ds) == 6 and ds.names[0] == "view000.jpg"
    item = ds[0]
    assert item["photo"].shape == (32, 32, 3) and item["photo"].dtype == np.uint8
    assert item["depth"].shape == item["segmentation"].shape == item["mask"].shape == (32, 32)
    assert set(np.unique(item["segmentation"])) <= {2, 10, 11}  # nearest resize never invents class ids
    val = AlignedDataset(dataset, "val", load_size=32)
    assert np.array_equal(val[1]["photo"], val[1]["photo"])
    assert len(val) == 2


def test_dataset_errors_name_the_file(dataset, tmp_path):
    d = _copy(dataset, tmp_path)
    (d / "views" / "view001" / "photo.png").unlink()
    with pytest.raises(DatasetError, match=r"view001/photo\.png is missing"):
        AlignedDataset(d, "train", 32)
    shutil.copy(dataset / "views" / "view001" / "photo.png", d / "views" / "view001" / "photo.png")
    (d / "views" / "view002" / "photo.png").write_bytes(b"\x89PNG garbage")
    ds = AlignedDataset(d, "train", 32)
    with pytest.raises(DatasetError, match=r"view002/photo\.png: corrupt"):
        ds.verify()


def test_dataset_size_mismatch_and_empty_split(dataset, tmp_path):
    from PIL import Image
    d = _copy(dataset, tmp_path)
    Image.new("L", (40, 30)).save(d / "views" / "view004" / "segmentation.png")
    with pytest.raises(DatasetError, match=r"view004/segmentation\.png: segmentation is 40x30 but manifest"):
        AlignedDataset(d, "train", 32).verify()
    manifest = json.loads((d / "manifest.json").read_text())
    for v in manifest["views"]:
        v["split"] = "train"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"the 'val' split is empty"):
        AlignedDataset(d, "val", 32)


def test_epoch_sampler_resumes_mid_epoch_and_splits_ranks():
    a = EpochSampler(10, 3, seed=1)
    seq = [a.next_batch() for _ in range(7)]
    b = EpochSampler(10, 3, seed=1)
    for _ in range(4):
        b.next_batch()
    state = b.state_dict()
    c = EpochSampler(10, 3, seed=1)
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(3)] == seq[4:]
    r0, r1 = EpochSampler(10, 5, 1, 0, 2), EpochSampler(10, 5, 1, 1, 2)
    assert sorted(r0.next_batch() + r1.next_batch()) == list(range(10))


# ---- one step of each phase --------------------------------------------------------------------------------------

PHASE_MOVES = {  # method, phase -> networks that must change (all others must not)
    ("staged", "appearance"): {"E"},
    ("staged", "rerender"): {"R", "D"},
    ("staged", "finetune"): {"R", "D", "E"},
    ("staged", "semantic"): {"S"},
    ("bicycle", "bicycle"): {"R", "D", "E"},
    ("i2i", "rerender"): {"R", "D"},
}


@pytest.mark.parametrize("method,phase", list(PHASE_MOVES))
def test_one_step_changes_only_the_trained_networks(dataset, tmp_path, vgg, method, phase):
    # a huge margin keeps the triplet loss positive, so stage 1 must move the encoder
    cfg = TrainConfig.tiny(triplet_margin=1e6, checkpoint_every=1000, validate_every=1000)
    trainer = Trainer(dataset, tmp_path / "run", cfg, method=method, vgg=vgg, progress=False)
    trainer.phase_index = trainer.phases.index(phase)
    before = _snapshot(trainer)
    trainer.run(max_steps=1)
    assert trainer.phase_step == 1
    assert _changed(before, _snapshot(trainer)) == PHASE_MOVES[(method, phase)]


def test_stage_one_with_the_log_ratio_term_logs_it_and_moves_only_the_encoder(dataset, tmp_path, vgg):
    cfg = TrainConfig.tiny(w_log_ratio=1.0, log_every=1, checkpoint_every=1000, validate_every=1000)
    trainer = Trainer(dataset, tmp_path / "run", cfg, vgg=vgg, progress=False)
    trainer.phase_index = trainer.phases.index("appearance")
    before = _snapshot(trainer)
    trainer.run(max_steps=2)
    assert _changed(before, _snapshot(trainer)) == {"E"}
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    ratios = [r["log_ratio"] for r in logged if "log_ratio" in r]
    assert ratios and all(np.isfinite(ratios)) and max(ratios) > 0


def test_training_steps_flush_subnormal_floats_and_leave_them_kept_after(dataset, tmp_path, vgg):
    from rerender.training import numerics

    subnormal = torch.tensor([1e-40], dtype=torch.float32)
    seen = []
    step = Trainer.step_appearance

    def spy(self, batch):  # records the CPU mode inside a real training step
        seen.append(float(subnormal * 1.5))
        return step(self, batch)

    trainer = Trainer(dataset, tmp_path / "run", TrainConfig.tiny(), vgg=vgg, progress=False)
    trainer.step_appearance = spy.__get__(trainer)
    trainer.run(max_steps=1)
    assert seen == [0.0]  # flushed inside the step
    assert float(subnormal * 1.5) > 0  # kept again afterwards, torch's default
    with numerics.subnormals_flushed() as flushed:
        assert not flushed or float(subnormal * 1.5) == 0.0
    assert float(subnormal * 1.5) > 0


def test_stage_two_alone_needs_stage_one(dataset, tmp_path, vgg):
    with pytest.raises(TrainingError, match="--stage 1"):
        Trainer(dataset, tmp_path / "run", TrainConfig.tiny(), stage="2", vgg=vgg, progress=False)


# ---- learning, resume, export ------------------------------------------------------------------------------------

def test_training_drives_reconstruction_loss_down(dataset, tmp_path, vgg):
    """100 steps of stage 3 (R + Ea) on reconstruction alone: L1 falls far below where it started.

    Ea must carry the lighting (day, dusk, night) for this to work: without a latent the error stays high.
    """
    cfg = TrainConfig.tiny(load_size=32, crop_size=32, w_gan=0.0, w_vgg=0.0, w_l1=1.0, steps_stage3=100,
                           batch_size=4, lr=3e-3, lr_encoder_finetune=3e-3, checkpoint_every=1000,
                           validate_every=1000)
    trainer = Trainer(dataset, tmp_path / "run", cfg, method="staged", vgg=vgg, progress=False)
    trainer.phase_index = trainer.phases.index("finetune")
    trainer.run(max_steps=100)
    l1 = [json.loads(line)["l1"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = np.mean(l1[:10]), np.mean(l1[-10:])
    assert len(l1) == 100
    assert last < 0.4 * first, f"L1 went from {first:.3f} to {last:.3f}"


def test_resume_after_interruption_is_bit_exact(dataset, tmp_path, vgg):
    """Stopped at step 5 with checkpoints every 2 steps: the resumed run loses step 5 only and ends identical."""
    cfg = TrainConfig.tiny(steps_stage1=2, steps_stage2=4, steps_stage3=2, steps_semantic=1, checkpoint_every=2,
                           validate_every=1000, triplet_margin=10.0)
    full = Trainer(dataset, tmp_path / "full", cfg, vgg=vgg, progress=False)
    full.run()
    cut = Trainer(dataset, tmp_path / "cut", cfg, vgg=vgg, progress=False)
    cut.run(max_steps=5)  # "killed" after step 5; the last checkpoint is from step 4
    resumed = Trainer(dataset, tmp_path / "cut", cfg, resume=True, vgg=vgg, progress=False)
    assert resumed.global_step == 4 and resumed.phases[resumed.phase_index] == "rerender"
    resumed.run()
    assert resumed.global_step == full.global_step == 9
    a, b = _snapshot(full), _snapshot(resumed)
    assert _changed(a, b) == set()
    for k in ("R", "E"):
        ema_a = getattr(full, f"ema_{k}").module.state_dict()
        ema_b = getattr(resumed, f"ema_{k}").module.state_dict()
        assert all(torch.equal(ema_a[n], ema_b[n]) for n in ema_a)
    steps = [json.loads(line)["global_step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))  # the lost step 5 is logged once, by the resumed run
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(dataset, tmp_path / "cut", cfg, vgg=vgg, progress=False)


def test_exported_bundle_is_served_by_the_backend(dataset, tmp_path, vgg):
    cfg = TrainConfig.tiny(steps_stage1=1, steps_stage2=1, steps_stage3=1, steps_semantic=1, triplet_margin=10.0)
    trainer = Trainer(dataset, tmp_path / "run", cfg, vgg=vgg, progress=False)
    trainer.run()
    bundle = export_bundle(trainer, tmp_path / "bundle")
    loaded = Bundle.load(tmp_path / "bundle")
    assert [a.name for a in loaded.gallery] == trainer.train_set.names
    assert all(a.thumbnail.shape[2] == 3 and max(a.thumbnail.shape[:2]) <= 64 for a in loaded.gallery)
    assert loaded.config.notes["phases_completed"] == ["appearance", "rerender", "finetune", "semantic"]
    runtime = ModelRuntime(loaded, "cpu")
    from rerender.bridge.buffers import DeepBuffer
    from rerender.training.data import load_view, square_view
    train_view = square_view(load_view(trainer.train_set.records[0]), cfg.load_size)
    b = train_view.buffer
    z0 = runtime.encode([train_view.photo], [DeepBuffer(b.color, b.depth, train_view.segmentation, b.mask)])
    np.testing.assert_allclose(z0[0], loaded.gallery[0].latent, rtol=1e-4, atol=1e-5)  # gallery = served encoder
    view = load_view(trainer.val_set.records[0])
    z = runtime.encode([view.photo], [view.buffer])
    frame = runtime.rerender([view.buffer], z)
    assert frame.shape == (1, 64, 80, 3) and frame.dtype == np.uint8
    np.testing.assert_allclose(loaded.gallery[0].latent, bundle.gallery[0].latent)


def test_train_command_end_to_end_and_bad_input(dataset, tmp_path):
    from rerender.commands import main
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TrainConfig.tiny(steps_stage1=1, steps_stage2=1, steps_stage3=1, steps_semantic=1,
                                               triplet_margin=10.0).to_json()))
    rc = main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "run"), "--config", str(cfg)])
    assert rc == 0
    assert (tmp_path / "run" / "bundle" / "config.json").is_file()
    assert Bundle.load(tmp_path / "run" / "bundle").config.latent_size == 8
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 4
    rc = main(["train", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "r2"), "--config", str(cfg)])
    assert rc == 2
    rc = main(["train", "--dataset", str(dataset), "--out", str(tmp_path / "r3"), "--config", str(cfg),
               "--set", "bogus=1"])
    assert rc == 2


def test_stages_run_one_by_one_from_the_command(dataset, tmp_path):
    from rerender.commands import main
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TrainConfig.tiny(steps_stage1=1, steps_stage2=1, steps_stage3=1,
                                               triplet_margin=10.0).to_json()))
    common = ["--dataset", str(dataset), "--out", str(tmp_path / "run"), "--config", str(cfg), "--no-export"]
    assert main(["train", "--stage", "2", *common]) == 2  # stage 2 before stage 1: refused with advice
    assert main(["train", "--stage", "1", *common]) == 0
    assert main(["train", "--stage", "2", *common]) == 0
    assert main(["train", "--stage", "3", *common]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["completed"] == ["appearance", "rerender", "finetune"]
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(x["phase"], x["global_step"]) for x in lines] == [("appearance", 1), ("rerender", 2), ("finetune", 3)]
