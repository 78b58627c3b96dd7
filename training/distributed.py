"""Several GPUs or machines: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; each process trains on its share of the data.

Why explicit gradient all-reduce instead of wrapping each network in ``DistributedDataParallel``: a GAN step runs
the discriminator twice before one backward, the baseline runs the rerenderer three times per step, and stage 2
keeps the encoder frozen. DDP's reducer assumes one forward per backward over a fixed set of parameters that need
gradients; these steps break that. Averaging the gradients of the networks being updated right after each
backward (flattened into one buffer per network, one all-reduce each, as StyleGAN2-ADA's training loop does) is
exactly DDP's arithmetic, and it works for every stage. ``wrap_ddp`` is still provided for single-forward uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, shows progress, writes checkpoints, validation images and the bundle."""
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or run alone without them.

    NCCL with one GPU per process when CUDA is there, gloo on CPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu")
    if want_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return DistContext(rank, world, local, dev)


def all_reduce_gradients(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Average the gradients of ``modules`` over all ranks (one flattened all-reduce per module)."""
    if not ctx.enabled:
        return
    for module in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            continue
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def broadcast_parameters(modules: Iterable[nn.Module], ctx: DistContext) -> None:
    """Make every rank start from rank 0's weights (and buffers)."""
    if not ctx.enabled:
        return
    for module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """Mean of a scalar over ranks (for logging losses of the whole batch)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item() / ctx.world_size)


def wrap_ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel for a network used once per backward (not used by the GAN steps, see above)."""
    if not ctx.enabled:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
