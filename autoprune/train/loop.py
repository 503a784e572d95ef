"""The one training loop: `autoprune train` and every pruning backend train through `fit`.

Backends plug in through three hooks per batch, in this order, the way Torch-Pruning places
its regulariser: `penalty()` is added to the loss, `after_backward(step)` edits gradients
(regularisation), `after_step(step)` edits weights (projection onto masks).

The loops compute where the runtime says (autoprune.train.device: --device, --amp): the model
goes to the device for the epoch and back after, the forward pass runs under autocast (a
GradScaler with fp16), and under torchrun each step trains on this rank's share of the batch
with gradients averaged before the hooks see them (autoprune.train.distributed).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.errors import AutoPruneError, UsageError
from autoprune.train import distributed
from autoprune.train.device import autocast, on_device, scaler_for, unscale_outside
from autoprune.train.distill import Distill
from autoprune.train.optim import (
    OPTIMIZERS,
    SCHEDULES,
    make_optimizer,
    make_scheduler,
    schedule_factor,
)

Batches = Iterable[tuple[Tensor, Tensor]]

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "Distill",
    "EpochStats",
    "EvalResult",
    "TrainConfig",
    "evaluate",
    "fit",
    "make_optimizer",
    "make_scheduler",
    "schedule_factor",
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
    # linear ramp from ~0 to lr over these epochs first: large batches and pretrained weights
    # need it (Goyal et al. 2017 warm up ImageNet for 5 epochs); off for the CIFAR recipe
    warmup_epochs: float = 0.0
    seed: int = 0  # every run is seeded; recorded in allocation.json and metrics.json
    label_smoothing: float = 0.0  # off: published pruning baselines train without it
    augment: bool = False  # the dataset's standard augmentation (autoprune.train.augment)

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
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise UsageError(
                f"warm-up epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs!r}"
            )


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


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate(model: nn.Module, loader: Batches) -> EvalResult:
    """Accuracy and loss of `model` over `loader`, in eval mode; the mode is restored after.

    Runs on the runtime's device under its autocast; every rank evaluates all of `loader`.
    """
    was_training = model.training
    correct, n = 0, 0
    loss_sum: Tensor | float = 0.0
    try:
        with on_device(model) as device, torch.no_grad():
            model.eval()
            hits: Tensor | int = 0
            for x, y in loader:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast():
                    logits = model(x)
                # summed on the device: one synchronisation per pass, not per batch
                loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum").double()
                hits = hits + (logits.argmax(1) == y).sum()
                n += len(y)
            correct = int(hits)
    finally:
        model.train(was_training)
    loss = float(loss_sum)
    return EvalResult(correct / n if n else 0.0, loss / n if n else 0.0, n)


def _progress(loader: Batches, show: bool, desc: str) -> Iterator[tuple[Tensor, Tensor]]:
    total = len(loader) if isinstance(loader, Sized) else None
    return iter(tqdm(loader, total=total, desc=desc, disable=not show, leave=False))


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
    trainables: Sequence[Tensor] = (),
    progress: bool = True,
    desc: str = "",
) -> EpochStats:
    """One pass over `loader`; hooks get the global step (`step_offset` + batch index).

    The loss reported is the cross-entropy, also when `distill` trains on another objective.
    Under torchrun the statistics are over every rank's examples, and the gradients of the
    optimiser's parameters and of `trainables` (tensors a hook steps, e.g. a backend's gates)
    are averaged across ranks before `after_backward`.
    """
    start = time.perf_counter()
    scaler = scaler_for(optimizer)
    shard = distributed.active() and not getattr(loader, "sharded", False)
    averaged = [*distributed.grad_params(optimizer), *trainables]
    teacher = [distill.teacher] if distill is not None else []
    with on_device(model, *teacher) as device:
        distributed.sync_model(model)  # every rank starts the epoch from rank 0's weights
        model.train()
        # Sums stay on the device; the loss is read back every step on the CPU (free there)
        # and every CHECK_EVERY steps elsewhere, so a GPU is not stalled once per batch.
        check = 1 if device.type == "cpu" else CHECK_EVERY
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        n, steps = 0, 0
        last: Tensor | None = None  # the latest loss not yet checked for divergence
        for x, y in _progress(loader, progress, desc):
            step = step_offset + steps
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if shard:
                x, y = distributed.shard(x, y)
            optimizer.zero_grad(set_to_none=True)
            if len(y):
                with autocast():
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
                    objective = distill.objective(logits, x, loss) if distill else loss
                total = objective + penalty() if penalty is not None else objective
                (scaler.scale(total) if scaler is not None else total).backward()
                loss_sum += loss.detach().double() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                last = loss
            distributed.average_gradients(averaged, len(y))
            if scaler is not None:
                scaler.unscale_(optimizer)  # the hooks see (and edit) true gradients
                unscale_outside(trainables, scaler)
            if after_backward is not None:
                after_backward(step)
            if scaler is not None:
                scaler.step(optimizer)  # skipped when fp16 gradients overflowed
                scaler.update()
            else:
                optimizer.step()
            if after_step is not None:
                after_step(step)
            if scheduler is not None:
                scheduler.step()
            n += len(y)
            steps += 1
            if last is not None and steps % check == 0:
                _check_finite(last, step)
                last = None
        if last is not None:
            _check_finite(last, step_offset + steps - 1)
        distributed.sync_model(model, average_buffers=True)
        loss_total, hits, seen = distributed.all_sum([float(loss_sum), float(correct), n], device)
    seconds = time.perf_counter() - start
    return EpochStats(loss_total / seen if seen else 0.0, hits / seen if seen else 0.0, steps,
                      seconds)  # fmt: skip


CHECK_EVERY = 50  # steps between reading the loss back from an accelerator


def _check_finite(loss: Tensor, step: int) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise AutoPruneError(
            f"training diverged: the loss is {value} at step {step}; "
            "lower the learning rate (--lr), warm it up (--warmup-epochs 1) or lower the "
            "regularisation strength"
        )


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
    with on_device(model):  # the optimiser's state is made on the device, and stays there
        return _fit(model, train_loader, val_loader, cfg, progress, on_epoch_end,
                    train_epoch_kwargs)  # fmt: skip


def _fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches | None,
    cfg: TrainConfig,
    progress: bool,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None,
    train_epoch_kwargs: dict[str, Any],
) -> list[dict[str, float]]:
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
