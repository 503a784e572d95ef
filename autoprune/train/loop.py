"""The one training loop: `autoprune train` and every pruning backend train through `fit`.

Backends plug in through three hooks per batch, in this order, the way Torch-Pruning places
its regulariser: `penalty()` is added to the loss, `after_backward(step)` edits gradients
(regularisation), `after_step(step)` edits weights (projection onto masks).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.errors import AutoPruneError, UsageError
from autoprune.registry import Registry

Batches = Iterable[tuple[Tensor, Tensor]]

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "EpochStats",
    "EvalResult",
    "TrainConfig",
    "evaluate",
    "fit",
    "make_optimizer",
    "make_scheduler",
    "set_seed",
    "train_epoch",
]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TrainConfig:
    """How to train: the defaults are the usual CIFAR recipe, which also suits LeNet on MNIST."""

    epochs: int = 10  # enough for LeNet-5 on MNIST to pass 99%; CIFAR models want ~160
    batch_size: int = 128  # fits every zoo model on a CPU and keeps BN statistics stable
    lr: float = 0.05  # SGD with momentum on batch 128; Adam wants ~1e-3
    momentum: float = 0.9  # SGD only; the standard value for image classifiers
    weight_decay: float = 5e-4  # the ResNet/VGG CIFAR value; pruning backends may add their own
    optimizer: str = "sgd"  # "sgd" | "adam"
    schedule: str = "cosine"  # "cosine" (per step, to zero) | "constant"
    seed: int = 0  # every run is seeded; recorded in allocation.json and metrics.json
    label_smoothing: float = 0.0  # off: published pruning baselines train without it

    def __post_init__(self) -> None:
        OPTIMIZERS.get(self.optimizer)
        SCHEDULES.get(self.schedule)
        if not _is_int(self.epochs) or self.epochs < 0:
            raise UsageError(f"epochs must be an integer >= 0, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise UsageError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got {self.lr!r}")
        if self.weight_decay < 0 or self.momentum < 0:
            raise UsageError(
                f"weight decay and momentum must be >= 0, got {self.weight_decay!r} "
                f"and {self.momentum!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"label smoothing must be in [0, 1), got {self.label_smoothing!r}")


@dataclass(frozen=True)
class EvalResult:
    """Accuracy (fraction in [0, 1]) and mean cross-entropy over `n` examples."""

    accuracy: float
    loss: float
    n: int


@dataclass(frozen=True)
class EpochStats:
    """Mean training loss and accuracy of one epoch, its optimiser steps and wall time."""

    loss: float
    accuracy: float
    steps: int
    seconds: float


OPTIMIZERS: Registry[Callable[[Iterable[Tensor], TrainConfig], torch.optim.Optimizer]] = Registry(
    "optimizer"
)
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


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: Iterable[Tensor], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.optimizer` over `params`."""
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step learning-rate schedule spanning `cfg.epochs` epochs (step it every batch)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.schedule)(total))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def evaluate(model: nn.Module, loader: Batches) -> EvalResult:
    """Accuracy and loss of `model` over `loader`, in eval mode; the mode is restored after."""
    device, was_training = _device(model), model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        with torch.no_grad():
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
                n += len(y)
    finally:
        model.train(was_training)
    return EvalResult(correct / n if n else 0.0, loss_sum / n if n else 0.0, n)


def _progress(loader: Batches, show: bool, desc: str) -> Iterator[tuple[Tensor, Tensor]]:
    total = len(loader) if isinstance(loader, Sized) else None
    return iter(tqdm(loader, total=total, desc=desc, disable=not show, leave=False))


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation from a frozen teacher (Hinton et al. 2015): the objective becomes
    (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at temperature T."""

    teacher: nn.Module
    alpha: float
    temperature: float = 4.0

    def objective(self, logits: Tensor, x: Tensor, ce: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1),
                      log_target=True, reduction="batchmean")  # fmt: skip
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl


def train_epoch(
    model: nn.Module,
    loader: Batches,
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    penalty: Callable[[], Tensor] | None = None,
    after_backward: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    step_offset: int = 0,
    label_smoothing: float = 0.0,
    distill: Distill | None = None,
    progress: bool = True,
    desc: str = "",
) -> EpochStats:
    """One pass over `loader`; hooks get the global step (`step_offset` + batch index).

    The loss reported is the cross-entropy, also when `distill` trains on another objective.
    """
    device, start = _device(model), time.perf_counter()
    model.train()
    loss_sum, correct, n, steps = 0.0, 0, 0, 0
    for x, y in _progress(loader, progress, desc):
        step = step_offset + steps
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise AutoPruneError(
                f"training diverged: the loss is {loss_value} at step {step}; "
                "lower the learning rate (--lr) or the regularisation strength"
            )
        if distill is not None:
            loss = distill.objective(logits, x, loss)
        total = loss + penalty() if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if after_backward is not None:
            after_backward(step)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss_value * len(y)
        correct += int((logits.detach().argmax(1) == y).sum())
        n += len(y)
        steps += 1
    seconds = time.perf_counter() - start
    return EpochStats(loss_sum / n if n else 0.0, correct / n if n else 0.0, steps, seconds)


def fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches | None,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    **train_epoch_kwargs: Any,
) -> list[dict[str, float]]:
    """Train `model` for `cfg.epochs` epochs; returns one history row per epoch.

    Seeds torch with `cfg.seed` first; the loaders carry their own shuffle seed (`make_loader`).

    Each row holds epoch, train_loss, train_acc, val_loss, val_acc (omitted without a
    validation loader), lr (at the epoch's start) and seconds. Extra keyword arguments
    (penalty, after_backward, after_step) go to `train_epoch`.
    """
    for reserved in ("scheduler", "step_offset", "label_smoothing", "desc"):
        if reserved in train_epoch_kwargs:
            raise UsageError(f"fit() sets {reserved} itself; configure it through TrainConfig")
    set_seed(cfg.seed)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    if not isinstance(train_loader, Sized) and cfg.schedule != "constant":
        raise UsageError(
            f"the {cfg.schedule} schedule needs a training loader with a length; "
            "use make_loader or schedule='constant'"
        )
    steps_per_epoch = len(train_loader) if isinstance(train_loader, Sized) else 1
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(
            model,
            train_loader,
            optimizer,
            scheduler=scheduler,
            step_offset=step,
            label_smoothing=cfg.label_smoothing,
            progress=progress,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            **train_epoch_kwargs,
        )
        step += stats.steps
        row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.accuracy, "lr": lr}
        if val_loader is not None:
            val = evaluate(model, val_loader)
            row |= {"val_loss": val.loss, "val_acc": val.accuracy}
        row["seconds"] = stats.seconds
        history.append(row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    return history
