"""Metrics with known answers, `rerender evaluate` on a trained tiny bundle, and that bundle served by a real
`rerender serve` process over ZeroMQ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rerender.training import metrics
from rerender.training.config import TrainConfig
from rerender.training.evaluate import evaluate
from rerender.training.export import export_bundle
from rerender.training.trainer import Trainer
from rerender.training.vgg import load_vgg19

from support_dataset import make_dataset, one_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return load_vgg19(width_divisor=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vgg):
    root = tmp_path_factory.mktemp("eval")
    dataset = make_dataset(root / "D")
    cfg = TrainConfig.tiny(steps_stage1=2, steps_stage2=2, steps_stage3=2, steps_semantic=2, triplet_margin=10.0)
    trainer = Trainer(dataset, root / "run", cfg, vgg=vgg, progress=False)
    trainer.run()
    bundle = export_bundle(trainer, root / "bundle")
    return dataset, root / "bundle", bundle, trainer


def test_metrics_known_answers(vgg):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert metrics.l1_255(a, a) == 0.0 and metrics.psnr(a, a) == metrics.PSNR_CAP
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.vgg_distance(vgg, a, a) == 0.0
    b = a.astype(np.int16) + 10
    b = np.clip(b, 0, 255).astype(np.uint8)
    c = np.clip(a.astype(np.int16) + 10, 0, 255)
    assert metrics.l1_255(a, b) == pytest.approx(np.abs(c - a).mean())
    flat, off = np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 110, np.uint8)
    assert metrics.l1_255(flat, off) == 10.0
    assert metrics.psnr(flat, off) == pytest.approx(10 * np.log10(255 ** 2 / 100))  # 28.13 dB
    noisy = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(a, noisy) < 0.9 and metrics.vgg_distance(vgg, a, noisy) > 0
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        metrics.psnr(a, a[:10])


def test_evaluate_writes_table_json_and_contact_sheet(trained, tmp_path, vgg):
    dataset, bundle_path, _, _ = trained
    result = evaluate(bundle_path, dataset, tmp_path / "ev", device="cpu", vgg=vgg, progress=False)
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert data["count"] == 2 and [v["name"] for v in data["views"]] == ["view006.jpg", "view007.jpg"]
    for key in ("vgg", "l1", "psnr", "ssim"):
        assert np.isfinite(data["mean"][key])
    assert 0 < data["mean"]["l1"] < 255 and 0 < data["mean"]["psnr"] < metrics.PSNR_CAP
    assert data["mean"]["l1"] == pytest.approx(np.mean([v["l1"] for v in data["views"]]))
    table = (tmp_path / "ev" / "metrics.md").read_text()
    assert "| VGG ↓ | L1 ↓ | PSNR ↑ | SSIM ↑ |" in table and "not comparable to the paper" in table
    assert result.vgg_weights == vgg.weights_name
    # rows are named by method; random VGG weights give no VGG number at all; 2 held-out views get the caveat
    row = next(line for line in table.splitlines() if line.startswith("| +Sem+StagedApp"))
    assert row.split("|")[3].strip() == "n/a †" and "bundle" not in row
    assert "no ImageNet VGG19 weights" in table and "only 2 held-out views" in table
    sheet = np.asarray(Image.open(tmp_path / "ev" / "contact_sheet.png"))
    # 2 views x (buffer|seg|output|photo), 64x80 views enlarged to tiles of 256x320
    assert sheet.shape[0] == 2 * 256 and sheet.shape[1] == 4 * 320


def test_table_rows_by_method_and_marks(tmp_path):
    from rerender.training.evaluate import EvalResult, table1_markdown

    views = [{"name": f"v{i}", "vgg": 0.5, "l1": 10.0, "psnr": 20.0, "ssim": 0.5} for i in range(12)]
    mean = {"vgg": 0.5, "l1": 10.0, "psnr": 20.0, "ssim": 0.5}
    imagenet = EvalResult(views, mean, "imagenet-vgg19", "runs/a/bundle", "D", method="i2i")
    features = EvalResult(views, mean, "espnet-encoder-features", "runs/b/bundle", "D", method="staged")
    table = table1_markdown([(imagenet.label, imagenet), (features.label, features)])
    assert "| I2I | 12 | 0.5000 |" in table and "| +Sem+StagedApp (staged, ours) | 12 | 0.5000 ‡ |" in table
    assert "‡ VGG column computed with espnet-encoder-features" in table
    assert "Caveat" not in table and "†" not in table.replace("‡", "")


def test_evaluate_command_bad_input(trained, tmp_path, capsys):
    from rerender.commands import main
    dataset, bundle_path, _, _ = trained
    assert main(["evaluate", "--bundle", str(tmp_path / "missing"), "--dataset", str(dataset)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_exported_bundle_served_over_zeromq(trained):
    from rerender.bridge import Client
    from support_backend import BackendProcess, free_tcp_address
    from rerender.training.data import load_view

    dataset, bundle_path, bundle, trainer = trained
    view = load_view(trainer.val_set.records[0])
    with BackendProcess(bundle_path, free_tcp_address()) as backend:
        with Client(backend.address, timeout=30) as client:
            names = [a.name for a in client.appearances()]
            assert names == trainer.train_set.names
            latent = client.encode(view.photo, view.buffer)
            frame = client.rerender(view.buffer, latent)
    assert np.asarray(latent).shape == (8,)
    assert np.asarray(frame).shape == (64, 80, 3)
