"""Optimisers and learning-rate schedules by name, and the per-step schedule with warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from autoprune.registry import Registry

if TYPE_CHECKING:
    from autoprune.train.loop import TrainConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_scheduler", "schedule_factor"]

OPTIMIZERS: Registry[Callable[[Iterable[Tensor], TrainConfig], torch.optim.Optimizer]] = Registry(
    "optimizer"
)
# total steps -> (step -> learning-rate factor); the warm-up ramp is applied on top
SCHEDULES: Registry[Callable[[int], Callable[[int], float]]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
    )


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decoupled decay (AdamW): L2 inside Adam is rescaled per weight and barely regularises.
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@SCHEDULES.register("cosine")
def _cosine(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


@SCHEDULES.register("constant")
def _constant(total_steps: int) -> Callable[[int], float]:
    return lambda step: 1.0


def make_optimizer(params: Iterable[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` over `params`."""
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def schedule_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """step -> learning-rate factor: a linear warm-up over `cfg.warmup_epochs`, then the
    schedule over the remaining steps (cosine reaches zero at the last step)."""
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch - warm)
    after = SCHEDULES.get(cfg.schedule)(total)
    return lambda step: (step + 1) / (warm + 1) if step < warm else after(step - warm)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step learning-rate schedule spanning `cfg.epochs` epochs (step it every batch)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_factor(cfg, steps_per_epoch))
