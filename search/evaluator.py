"""The shared evaluator: scores an allocation without full training (validation split only).

Each unit keeps its most important elements (an importance measure from the registry, computed
once on the dense model; `taylor` first accumulates gradients on a few training batches),
optionally a short fine-tune runs, BatchNorm statistics are recomputed on a few training batches
(pruning shifts them), and accuracy and loss on the validation split are the score. Results are
cached per allocation. The test split is never read: the evaluator is only ever handed the train
and validation splits.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autoprune.errors import UsageError
from autoprune.graph.importance import IMPORTANCE, score_units, top_k
from autoprune.graph.masking import apply_masks, element_masks, remove_masks, slim
from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BitAllocation
from autoprune.quant.fake import add_weight_quant, quantised_inputs
from autoprune.train.data import DataSplits, make_loader
from autoprune.train.device import current
from autoprune.train.loop import EvalResult, evaluate

Batch = tuple[torch.Tensor, torch.Tensor]
PHYSICAL_MACS = (
    100_000_000  # above this many dense MACs per image, scoring a slimmed copy is faster
)


@dataclass(frozen=True)
class EvaluatorConfig:
    importance: str = "l1"  # magnitude is cheap and needs no gradients
    grad_batches: int = 4  # training batches whose gradients `taylor` accumulates (once)
    bn_batches: int = 4  # enough batches for stable BN means/variances after pruning
    batch_size: int = 256
    val_limit: int | None = None  # score on the first N validation samples (None: all)
    finetune_steps: int = 0  # short SGD fine-tune before scoring; 0 = pure proxy
    finetune_lr: float = 0.01
    seed: int = 0
    # Score a physically slimmed copy instead of a masked model (channel granularity only): the
    # passes then cost what the allocation costs, which repays the slimming (a fraction of a
    # second to a few seconds). None: slim when fine-tuning or at >= 100M dense MACs per image.
    physical: bool | None = None

    def __post_init__(self) -> None:
        IMPORTANCE.get(self.importance)
        for name in ("grad_batches", "bn_batches", "finetune_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UsageError(f"evaluator {name} must be an integer >= 0, got {value!r}")
        if self.val_limit is not None and self.val_limit < 1:
            raise UsageError(f"evaluator val_limit must be >= 1 or None, got {self.val_limit!r}")
        if self.batch_size < 1 or not self.finetune_lr > 0:
            raise UsageError(
                f"evaluator batch size and fine-tune lr must be positive, got "
                f"{self.batch_size!r} and {self.finetune_lr!r}"
            )


def bits_key(bits: BitAllocation) -> tuple[Any, ...]:
    """A hashable key of a bit allocation (for caches)."""
    return tuple(sorted(bits.weight.items())), tuple(sorted(bits.act.items()))


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


def accumulate_gradients(model: nn.Module, batches: Sequence[Batch]) -> None:
    """Sum cross-entropy gradients of `batches` into `.grad` (eval mode: BN statistics kept)."""
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
    model.train(was_training)


def first_batches(train: Dataset[Any], cfg: EvaluatorConfig, n: int) -> list[Batch]:
    """The first `n` training batches in the evaluator's fixed order (its seed and batch size)."""
    out: list[Batch] = []
    for x, y in make_loader(train, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed):
        if len(out) >= n:
            break
        out.append((x, y))
    return out


def element_scores(
    model: nn.Module,
    graph: UnitGraph,
    importance: str,
    train: Dataset[Any] | None = None,
    cfg: EvaluatorConfig | None = None,
) -> list[torch.Tensor]:
    """Per-element scores of `importance` on `model`, as the evaluator ranks elements.

    `taylor` needs gradients: they are accumulated on a copy of the model over the evaluator's
    first `grad_batches` training batches, so these scores equal the evaluator's own.
    """
    if importance != "taylor":
        return score_units(model, graph.units, importance)
    cfg = cfg or EvaluatorConfig(importance=importance)
    if train is None:
        raise UsageError("--importance taylor needs training images for its gradients")
    work = copy.deepcopy(model)
    remove_masks(work, bake=True)
    accumulate_gradients(work, first_batches(train, cfg, max(1, cfg.grad_batches)))
    return score_units(work, graph.units, importance)


class MaskEvaluator:
    """Callable keep -> validation accuracy; the dense model is never modified.

    `evaluate(keep)` gives accuracy and loss; `cache` maps each scored allocation to its result.
    `evaluate(keep, bits)` scores the allocation fake-quantised as the backends train it
    (autoprune.quant.fake, after the fine-tune, activation scales calibrated on the BatchNorm
    batches); it always scores a masked model, since per-kernel widths index the dense kernels.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: UnitGraph,
        train: Dataset[Any],
        val: Dataset[Any],
        cfg: EvaluatorConfig | None = None,
    ) -> None:
        self.cfg = cfg or EvaluatorConfig()
        self.graph = graph
        # The dense model, never changed after this: every call scores a fresh copy of it.
        self.model = copy.deepcopy(model).eval()
        remove_masks(self.model, bake=True)
        # at least one batch: activation scales of allocations with bits are calibrated on it
        needed = max(self.cfg.bn_batches, self.cfg.finetune_steps, self._grad_batches, 1)
        self._train = train  # other batch orders are drawn from it (`reordered`)
        batches = first_batches(train, self.cfg, needed)
        if self.cfg.importance == "taylor":
            accumulate_gradients(self.model, batches[: self._grad_batches])
        self.scores = score_units(self.model, graph.units, self.cfg.importance)
        self.model.zero_grad(set_to_none=True)
        # The dense copy stays on the CPU (slimming traces there); each candidate is moved to
        # the runtime's --device for its fine-tune, BatchNorm batches and scoring.
        self.device = current().device
        self._use_batches(batches)
        val_data = list(make_loader(val, batch_size=self.cfg.batch_size, shuffle=False))
        if self.cfg.val_limit is not None:
            val_data = _limit(val_data, self.cfg.val_limit)
        if not val_data:
            raise UsageError("the validation split is empty; the evaluator needs validation images")
        self._val = val_data
        self.cache: dict[Any, EvalResult] = {}  # keeps, or (keeps, bits_key) with bits
        self.calls = 0
        physical = self.cfg.physical
        if physical is None:  # a fine-tune runs forward and backward many times: slimming repays
            physical = (
                self.cfg.finetune_steps > 0
                or sum(lay.macs for lay in graph.layers) >= PHYSICAL_MACS
            )
        self.physical = bool(physical) and graph.granularity == "channel"

    @classmethod
    def from_splits(
        cls,
        model: nn.Module,
        graph: UnitGraph,
        data: DataSplits,
        cfg: EvaluatorConfig | None = None,
    ) -> MaskEvaluator:
        """The evaluator of a dataset: reads its train and validation splits, never its test."""
        return cls(model, graph, data.train, data.val, cfg)

    def reordered(self, seed: int) -> MaskEvaluator:
        """This evaluator fine-tuning and recalibrating BatchNorm on the training batches of
        another seed: the same dense model, element scores and validation images, a cache of its
        own (the final round of a search scores its finalists on several orders)."""
        other = copy.copy(self)
        other.cfg = dataclasses.replace(self.cfg, seed=seed)
        other._use_batches(first_batches(self._train, other.cfg, len(self._train_batches)))
        other.cache = {}
        other.calls = 0
        return other

    def _use_batches(self, batches: list[Batch]) -> None:
        """Fine-tune and score with `batches` (moved to the runtime's device), their first
        `bn_batches` recalibrating BatchNorm."""
        self._train_batches = [(x.to(self.device), y.to(self.device)) for x, y in batches]
        self._bn_batches = [x for x, _ in self._train_batches[: self.cfg.bn_batches]]

    @property
    def _grad_batches(self) -> int:
        return max(1, self.cfg.grad_batches) if self.cfg.importance == "taylor" else 0

    def __call__(
        self, keep: Sequence[int] | np.ndarray, bits: BitAllocation | None = None
    ) -> float:
        return self.evaluate(keep, bits).accuracy

    def evaluate(
        self, keep: Sequence[int] | np.ndarray, bits: BitAllocation | None = None
    ) -> EvalResult:
        key = tuple(int(k) for k in keep)
        if len(key) != len(self.graph.units):
            raise ValueError(f"expected {len(self.graph.units)} keeps, got {len(key)}")
        cache_key = key if bits is None else (key, bits_key(bits))
        if cache_key not in self.cache:
            self.calls += 1
            self.cache[cache_key] = self._score(key) if bits is None else self._score(key, bits)
        return self.cache[cache_key]

    def prepared(
        self, keep: Sequence[int] | np.ndarray, bits: BitAllocation | None = None
    ) -> nn.Module:
        """The model `keep` (and `bits`) is scored with: a fresh copy of the dense model, its
        most important elements kept (masked, or slimmed when physical), fine-tuned, and with
        bits fake-quantised. Nothing of one call survives into the next."""
        kept = [top_k(s, int(k)) for s, k in zip(self.scores, keep, strict=True)]
        model = copy.deepcopy(self.model)
        if self.physical and bits is None:
            model = slim(model, self.graph, kept)
        else:
            apply_masks(model, element_masks(model, self.graph, kept))
        model.to(self.device)
        if self.cfg.finetune_steps:
            self._finetune(model)
        if bits is not None:
            add_weight_quant(model, self.graph, bits)
        return model

    def _score(self, keep: tuple[int, ...], bits: BitAllocation | None = None) -> EvalResult:
        model = self.prepared(keep, bits)
        if bits is None:
            recalibrate_bn(model, self._bn_batches)
            return evaluate(model, self._val)
        with quantised_inputs(model, self.graph, bits, self._calibration):
            recalibrate_bn(model, self._bn_batches)
            return evaluate(model, self._val)

    @property
    def _calibration(self) -> list[torch.Tensor]:
        """Training batches that set the activation scales: the BatchNorm ones, at least one."""
        return self._bn_batches or [x for x, _ in self._train_batches[:1]]

    def _finetune(self, model: nn.Module) -> None:
        # The same batches for every allocation, so scores differ only by the allocation.
        opt = torch.optim.SGD(model.parameters(), lr=self.cfg.finetune_lr, momentum=0.9)
        model.train()
        steps = self.cfg.finetune_steps
        batches = self._train_batches
        for i in range(steps):
            x, y = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()


def _limit(batches: list[Batch], n: int) -> list[Batch]:
    out, seen = [], 0
    for x, y in batches:
        if seen >= n:
            break
        take = min(len(y), n - seen)
        out.append((x[:take], y[:take]))
        seen += take
    return out
