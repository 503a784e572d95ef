"""Data-parallel training under `torchrun`: the process group, batch shards, gradient averaging.

Every process runs the whole command; rank 0 alone writes the run directory (the others stage
into a throwaway folder, see `autoprune.rundir`). Each training step, every rank takes its strided
share of the same global batch the one-process run would see, and the gradients are summed
weighted by shard size, so a step is the one-process step (up to BatchNorm statistics, which each
rank computes on its share and which are averaged after every epoch). The parameters and buffers
are broadcast from rank 0 at the start and end of every epoch, so every rank holds the same model
and decides the same kept elements.

Why not DistributedDataParallel: backends edit gradients and weights of parametrized modules
between backward() and step() (`after_backward`, `after_step`); one explicit, flattened
all-reduce right after backward() serves every backend unchanged. gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from autoprune.errors import UsageError

T = TypeVar("T")
# Ranks run the same search before training together again; its length varies a little by rank.
TIMEOUT = timedelta(minutes=60)

__all__ = [
    "active",
    "agree",
    "all_sum",
    "average_gradients",
    "barrier",
    "grad_params",
    "init_from_env",
    "is_writer",
    "leave",
    "rank",
    "shard",
    "sync_model",
    "world_size",
]


def active() -> bool:
    """Whether this process trains together with others."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes files and prints results (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group (WORLD_SIZE > 1 in the environment); True if joined here."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise UsageError("this torch build has no torch.distributed; run one process")
    if dist.is_initialized():  # the caller's own process group
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"torchrun needs --device cpu (gloo) or cuda (NCCL), not {device}")
    kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if device.type == "cuda":
        kwargs["device_id"] = device  # binds NCCL's communicator to this rank's GPU
    dist.init_process_group(**kwargs)
    return True


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's strided share of a global batch (the shares differ in size by at most one)."""
    if not active():
        return x, y
    r, k = rank(), world_size()
    return x[r::k], y[r::k]


def grad_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The tensors `optimizer` steps (those whose gradients a data-parallel step averages)."""
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def average_gradients(params: Sequence[Tensor], n_local: int) -> None:
    """Make every rank's gradients the one-process gradient of the global batch.

    Each rank's gradient is of its mean loss over `n_local` examples; the sum over ranks of
    n_local x gradient, divided by the global count, is the gradient of the global mean. One
    flattened all-reduce per dtype carries the counts and which parameters have gradients, so a
    parameter no rank touched keeps grad None, as it would in one process.
    """
    if not active():
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for dtype, group in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
        device = group[0].device
        flat = torch.cat([p.grad.reshape(-1) * n_local if p.grad is not None
                          else torch.zeros(p.numel(), dtype=dtype, device=device)
                          for p in group])  # fmt: skip
        flags = torch.tensor([p.grad is not None for p in group] + [n_local],
                             dtype=torch.float64, device=device)  # fmt: skip
        dist.all_reduce(flat)
        dist.all_reduce(flags)
        total = float(flags[-1])
        flat /= max(total, 1.0)
        offset = 0
        for p, had in zip(group, flags[:-1].tolist(), strict=True):
            n = p.numel()
            if had > 0:
                p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n


def sync_model(model: nn.Module, *, average_buffers: bool = False) -> None:
    """Rank 0's parameters and buffers on every rank (optionally first averaging float buffers,
    i.e. BatchNorm statistics each rank gathered on its shares)."""
    if not active():
        return
    with torch.no_grad():
        if average_buffers:
            for b in model.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= world_size()
        for t in (*model.parameters(), *model.buffers()):
            dist.broadcast(t.data, src=0)


def all_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over ranks (epoch statistics); the values themselves in one process."""
    if not active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def agree(value: T) -> T:
    """Rank 0's `value` on every rank (an allocation every rank must train to)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
