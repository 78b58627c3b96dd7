"""`rerender train --time`: a plan measured on this machine, a deadline kept under load; SIGTERM and --resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rerender.backend.bundle import Bundle
from rerender.backend.runtime import ModelRuntime
from rerender.training.budget import format_seconds, parse_duration
from rerender.training.config import TrainConfig
from rerender.training.data import load_view, read_manifest
from support_dataset import make_dataset

BUDGET_S = 180
TOLERANCE = 1.15  # the budget holds within 15 %, measured as the wall time of the whole process


def _rerender(*args: str) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "rerender", "train", *args]


def test_durations_parse_and_print():
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("2") == 120  # a bare number is minutes
    with pytest.raises(ValueError, match="15m"):
        parse_duration("soon")
    assert format_seconds(287 * 3600) == "287h00m" and format_seconds(75) == "1m15s"


def _serves(bundle_dir, dataset):
    bundle = Bundle.load(bundle_dir)
    runtime = ModelRuntime(bundle, "cpu")
    _, records = read_manifest(dataset)
    view = load_view([r for r in records if r.split == "val"][0])
    frame = runtime.rerender([view.buffer], runtime.encode([view.photo], [view.buffer]))
    assert frame.shape == (1, view.photo.shape[0], view.photo.shape[1], 3) and frame.dtype == np.uint8
    return bundle


@pytest.mark.slow
def test_time_budget_is_kept_and_ends_with_a_bundle_that_serves(tmp_path):
    dataset = make_dataset(tmp_path / "d", n_train=6, n_val=2)
    t0 = time.monotonic()
    proc = subprocess.run(_rerender("--dataset", str(dataset), "--out", str(tmp_path / "run"), "--time", "3m"),
                          capture_output=True, text=True, timeout=BUDGET_S * 2)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"--time 3m took {wall:.1f} s wall")
    assert wall <= BUDGET_S * TOLERANCE, f"{wall:.0f} s for a {BUDGET_S} s budget"
    assert "chose 'tiny'" in proc.stdout and "measured on this device" in proc.stdout, proc.stdout
    bundle = _serves(tmp_path / "run" / "bundle", dataset)
    assert bundle.config.notes["phases_completed"] == ["appearance", "rerender", "finetune", "semantic"]
    steps = [json.loads(x)["global_step"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps[-1] >= 8, "the budget should have bought more than a step per phase"


def _wait_for_steps(log, n, proc, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        if log.exists() and len(log.read_text().splitlines()) >= n:
            return
        time.sleep(0.5)
    raise AssertionError(f"no {n} logged steps within {timeout} s")


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues_with_the_stored_settings(tmp_path):
    dataset = make_dataset(tmp_path / "d", n_train=4, n_val=1)
    cfg = tmp_path / "long.json"
    cfg.write_text(json.dumps(TrainConfig.tiny(steps_stage1=2, steps_stage2=100_000, steps_stage3=2,
                                               steps_semantic=2, checkpoint_every=10 ** 6,
                                               triplet_margin=10.0).to_json()))
    run = tmp_path / "run"
    common = ["--dataset", str(dataset), "--out", str(run), "--no-estimate"]
    proc = subprocess.Popen(_rerender(*common, "--config", str(cfg)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_steps(run / "log.jsonl", 6, proc)  # well into stage 2; no periodic checkpoint yet
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "--resume" in err and "checkpoint saved" in err
    state = torch.load(run / "checkpoint.pt", weights_only=False, map_location="cpu")
    stopped_at = state["global_step"]
    assert stopped_at >= 6 and state["completed"] == ["appearance"]

    refused = subprocess.run(_rerender(*common, "--resume", "--set", "lr=0.5"), capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "lr=0.5" in refused.stderr and "0.001" in refused.stderr

    # the stored run asks for 100k steps: a time budget on resume shortens what is left and still exports
    resumed = subprocess.run(_rerender(*common, "--resume", "--time", "40s"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    steps = [x["global_step"] for x in lines]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "the resumed run continues the log"
    assert steps[-1] > stopped_at and [x["phase"] for x in lines][-1] == "semantic"
    assert json.loads((run / "train_config.json").read_text())["steps_stage1"] == 2  # stored settings kept
    _serves(run / "bundle", dataset)


def test_explicit_settings_that_take_hours_are_warned_up_front(tmp_path, caplog):
    import argparse

    from rerender.training.commands.train import _warn_if_long
    from rerender.training.distributed import DistContext

    dataset = make_dataset(tmp_path / "d", n_train=4, n_val=1)
    args = argparse.Namespace(dataset=dataset, method="staged")
    config = TrainConfig.tiny(steps_stage2=10 ** 7, triplet_margin=10.0)
    with caplog.at_level("WARNING", logger="rerender.train"):
        _warn_if_long(args, config, DistContext())
    text = caplog.text
    assert "estimated training time on cpu" in text and "--time 15m" in text and "h" in text.split("time on cpu:")[1]
    caplog.clear()
    with caplog.at_level("WARNING", logger="rerender.train"):
        _warn_if_long(args, TrainConfig.tiny(), DistContext())  # a few steps: no probe, no warning
    assert "estimated" not in caplog.text


def test_remaining_phases_are_rescaled_to_the_time_left(tmp_path):
    from rerender.training.budget import MAX_GROWTH, _fit_remaining
    from rerender.training.trainer import Trainer

    dataset = make_dataset(tmp_path / "d", n_train=4, n_val=1)
    cfg = TrainConfig.tiny(steps_stage1=10, steps_stage2=50, steps_stage3=20, steps_semantic=20)
    trainer = Trainer(dataset, tmp_path / "run", cfg, progress=False)
    planned = {p: trainer.steps_for(p) for p in trainer.phases}
    trainer.phase_index, trainer.phase_step = 1, 30  # 30 of stage 2's 50 steps done
    cost = {"appearance": 0.1, "rerender": 1.0, "finetune": 2.0, "semantic": 0.5}
    _fit_remaining(trainer, 30.0, planned, cost)  # 20 + 40 + 10 = 70 s of work left, 30 s of time
    left = (trainer.steps_for("rerender") - 30) * 1.0 + trainer.steps_for("finetune") * 2.0 \
        + trainer.steps_for("semantic") * 0.5
    assert 25 <= left <= 30 and trainer.steps_for("finetune") >= 1 and trainer.steps_for("semantic") >= 1
    _fit_remaining(trainer, 0.0, planned, cost)  # out of time: the current phase ends, later ones keep a step
    assert trainer.steps_for("rerender") == 30 and trainer.steps_for("finetune") == 1
    _fit_remaining(trainer, 1e6, planned, cost)  # a faster machine: more steps, up to MAX_GROWTH x the plan
    assert trainer.steps_for("finetune") == int(20 * MAX_GROWTH)  # the whole plan grown by one factor
    assert trainer.steps_for("rerender") == int(50 * MAX_GROWTH)
    assert trainer.steps_for("appearance") == 10  # finished phases are left alone
    # a phase already grown past its planned count keeps its share of the time left (it used to be ended at once)
    trainer.phase_step = 120  # 120 of a planned 50
    _fit_remaining(trainer, 300.0, planned, cost)
    rerender, finetune = trainer.steps_for("rerender"), trainer.steps_for("finetune")
    assert rerender > 120 and abs(rerender / finetune - 50 / 20) < 0.1  # the plan's proportions
    assert (rerender - 120) * 1.0 + (finetune + 1) * 2.0 + (trainer.steps_for("semantic") + 1) * 0.5 <= 300.0
    # the last phase, become current with no time left before its first step, still gets that step (it used to be
    # set to 0 steps under load, and the bundle's S went untrained)
    trainer.phase_index, trainer.phase_step = trainer.phases.index("semantic"), 0
    _fit_remaining(trainer, 0.0, planned, cost)
    assert trainer.steps_for("semantic") == 1
