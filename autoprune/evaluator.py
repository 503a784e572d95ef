"""The shared evaluator: scores an allocation without full training (validation split only).

Each unit keeps its most important elements (an importance measure from the registry), BatchNorm
statistics are recomputed on a few training batches (pruning shifts them), optionally a short
fine-tune runs, and accuracy on the validation split is the score. Results are cached per keep.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoprune.data import make_loader
from autoprune.importance import score_units, top_k
from autoprune.masking import apply_masks, element_masks, remove_masks
from autoprune.training import EvalResult, evaluate
from autoprune.units import UnitGraph


@dataclass(frozen=True)
class EvaluatorConfig:
    importance: str = "l1"  # magnitude is cheap and needs no gradients
    bn_batches: int = 8  # enough batches for stable BN means/variances after pruning
    batch_size: int = 256
    val_limit: int | None = None  # score on the first N validation samples (None: all)
    finetune_steps: int = 0  # short SGD fine-tune before scoring; 0 = pure proxy
    finetune_lr: float = 0.01
    seed: int = 0


def recalibrate_bn(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Recompute BatchNorm running statistics as an exact average over `batches`."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, mom in saved:
        m.momentum = mom
    model.train(was_training)


class MaskEvaluator:
    """Callable keep -> validation accuracy; the dense model is never modified."""

    def __init__(
        self,
        model: nn.Module,
        graph: UnitGraph,
        train: Dataset,
        val: Dataset,
        cfg: EvaluatorConfig | None = None,
    ) -> None:
        self.cfg = cfg or EvaluatorConfig()
        self.graph = graph
        self.model = copy.deepcopy(model).eval()
        remove_masks(self.model, bake=True)
        self._dense_state = copy.deepcopy(self.model.state_dict())
        self.scores = score_units(self.model, graph.units, self.cfg.importance)
        loader = make_loader(train, batch_size=self.cfg.batch_size, shuffle=True, seed=self.cfg.seed)
        self._bn_batches: list[torch.Tensor] = []
        self._train_batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, (x, y) in enumerate(loader):
            if i >= max(self.cfg.bn_batches, self.cfg.finetune_steps):
                break
            self._train_batches.append((x, y))
            if i < self.cfg.bn_batches:
                self._bn_batches.append(x)
        val_data = list(make_loader(val, batch_size=self.cfg.batch_size, shuffle=False))
        if self.cfg.val_limit is not None:
            val_data = _limit(val_data, self.cfg.val_limit)
        self._val = val_data
        self.cache: dict[tuple[int, ...], EvalResult] = {}
        self.calls = 0

    def __call__(self, keep: Sequence[int] | np.ndarray) -> float:
        return self.evaluate(keep).accuracy

    def evaluate(self, keep: Sequence[int] | np.ndarray) -> EvalResult:
        key = tuple(int(k) for k in keep)
        if key not in self.cache:
            self.calls += 1
            self.cache[key] = self._score(key)
        return self.cache[key]

    def _score(self, keep: tuple[int, ...]) -> EvalResult:
        model = self.model
        remove_masks(model, bake=False)
        model.load_state_dict(self._dense_state)
        kept = [top_k(s, k) for s, k in zip(self.scores, keep)]
        apply_masks(model, element_masks(model, self.graph, kept))
        if self.cfg.finetune_steps:
            self._finetune(model)
        recalibrate_bn(model, self._bn_batches)
        return evaluate(model, self._val)

    def _finetune(self, model: nn.Module) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=self.cfg.finetune_lr, momentum=0.9)
        model.train()
        for x, y in self._train_batches[: self.cfg.finetune_steps]:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()


def _limit(batches: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, seen = [], 0
    for x, y in batches:
        if seen >= n:
            break
        take = min(len(y), n - seen)
        out.append((x[:take], y[:take]))
        seen += take
    return out
