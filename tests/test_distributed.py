"""Two real processes on torch.distributed's gloo backend: gradients are averaged across ranks, and after training
steps on different data every rank holds the same weights as rank 0's checkpoint."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from support_dataset import make_dataset

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return torch.randn(4, 5, generator=g), torch.randn(4, 2, generator=g)


def _worker(rank: int, port: int, root: str, dataset: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from rerender.training.config import TrainConfig
        from rerender.training.distributed import DistContext, all_reduce_gradients
        from rerender.training.trainer import Trainer
        from rerender.training.vgg import load_vgg19

        ctx = DistContext(rank=rank, world_size=WORLD, local_rank=rank, device=torch.device("cpu"))
        # 1. gradient averaging on a tiny model with different data per rank
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 2)
        x, y = _data(rank)
        torch.nn.functional.mse_loss(model(x), y).backward()
        all_reduce_gradients([model], ctx)
        torch.save({"grad": model.weight.grad.clone()}, f"{root}/grad{rank}.pt")
        # 2. real trainer steps (different batches per rank), rank 0 writes the checkpoint
        torch.manual_seed(0)
        vgg = load_vgg19(width_divisor=8)
        cfg = TrainConfig.tiny(steps_stage1=1, steps_stage2=2, steps_stage3=0, steps_semantic=1,
                               triplet_margin=10.0, checkpoint_every=1000, validate_every=1000)
        trainer = Trainer(dataset, f"{root}/run", cfg, method="staged", ctx=ctx, vgg=vgg, progress=False)
        trainer.run()
        torch.save({k: m.state_dict() for k, m in {"R": trainer.R, "E": trainer.E, "S": trainer.S,
                                                     "D": trainer.D}.items()}, f"{root}/weights{rank}.pt")
        torch.save(trainer.sampler.state_dict(), f"{root}/sampler{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_synchronise_gradients_and_weights(tmp_path):
    dataset = make_dataset(tmp_path / "D")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), str(dataset)), nprocs=WORLD, join=True)

    # gradients: both ranks hold the mean of the per-rank gradients
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)
    expected = torch.zeros_like(model.weight)
    for r in range(WORLD):
        model.zero_grad()
        x, y = _data(r)
        torch.nn.functional.mse_loss(model(x), y).backward()
        expected += model.weight.grad / WORLD
    g0, g1 = (torch.load(tmp_path / f"grad{r}.pt")["grad"] for r in range(WORLD))
    assert torch.equal(g0, g1)
    torch.testing.assert_close(g0, expected)
    model.zero_grad()
    x, y = _data(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert not torch.allclose(model.weight.grad, expected)  # rank 0's own gradient differs from the mean

    # weights: identical on both ranks and in rank 0's checkpoint, after steps on different data
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in range(WORLD))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["completed"] == ["appearance", "rerender", "finetune", "semantic"]
    for net in ("R", "E", "S", "D"):
        for name, value in w0[net].items():
            assert torch.equal(value, w1[net][name]), f"{net}.{name} differs between ranks"
            assert torch.equal(value, ckpt["networks"][net][name]), f"{net}.{name} differs from the checkpoint"
    s0, s1 = (torch.load(tmp_path / f"sampler{r}.pt") for r in range(WORLD))
    assert s0 == s1  # both ranks walked the same number of batches of their own shares
    assert (tmp_path / "run" / "log.jsonl").read_text().count("\n") == 4  # one writer: rank 0
