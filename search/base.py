"""What every search method shares: the problem it is given, the result it returns, the registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.quant.kernel_counts import KernelCounts, priced
from autoprune.registry import Registry

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from autoprune.graph.units import UnitGraph
    from autoprune.quant.bits import BitAllocation
    from autoprune.search.bit_space import BitSpace

# Scores an allocation (integer keeps per unit) by validation accuracy; higher is better. Passed in
# as a callable so tests can use a cheap one and searches never touch data themselves. A search with
# bits calls it as evaluate(keep, bits=BitAllocation), so its evaluator must take that keyword.
Evaluator = Callable[..., float]


@dataclass
class SearchContext:
    """The dense model and its data, for methods that learn through the network (dsa).

    Only the train and validation splits: a search never sees the test split. Methods work on a
    copy of `model` and leave it as it is.
    """

    model: nn.Module
    graph: UnitGraph
    train: Dataset[Any]
    val: Dataset[Any]


@dataclass
class SearchProblem:
    """Units and their costs, absolute limits per metric, and how to score an allocation."""

    cost_model: CostModel
    limits: Mapping[str, float]
    evaluate: Evaluator | None = None
    seed: int = 0
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    # Where a method may keep state that must survive an interrupt (an Optuna study database);
    # None: nowhere, the method keeps everything in memory.
    workdir: Path | None = None
    progress: bool = False  # show a progress bar while searching
    context: SearchContext | None = None  # model and data; None where only costs are searched
    bits: BitSpace | None = None  # None: keeps only; else every method chooses bits from these
    # Nonzeros per kernel as the evaluator keeps elements: with it, allocations with bits are
    # priced exactly (autoprune.quant.kernel_counts); without, by CostModel.with_bits's estimate.
    kernel_counts: KernelCounts | None = None

    @property
    def sizes(self) -> np.ndarray:
        return self.cost_model.sizes

    def costed(self, bits: BitAllocation | None) -> CostModel:
        """The cost model of allocations quantised to `bits` (the float one for None)."""
        if bits is None:
            return self.cost_model
        if self.kernel_counts is None:
            return self.cost_model.with_bits(bits)
        return priced(self.cost_model, bits, self.kernel_counts)

    def project(
        self, ratios: np.ndarray | list[float], bits: BitAllocation | None = None
    ) -> np.ndarray:
        """Integer keeps that meet every limit, as close to `ratios` as the budgets allow."""
        return project(ratios, self.costed(bits), self.limits, self.projection)

    def costs(self, keep: np.ndarray, bits: BitAllocation | None = None) -> dict[str, float]:
        model = self.costed(bits)
        return {m: model.metric(m, keep) for m in dict.fromkeys(("macs", "params", *self.limits))}

    def score(self, keep: np.ndarray, bits: BitAllocation | None = None) -> float:
        """The evaluator's score of `keep` (quantised to `bits` when given)."""
        if self.evaluate is None:
            raise ValueError("this search problem has no evaluator")
        return float(self.evaluate(keep) if bits is None else self.evaluate(keep, bits=bits))


@dataclass
class Trial:
    """One scored proposal."""

    number: int
    keep: np.ndarray
    score: float | None
    costs: dict[str, float]
    bits: BitAllocation | None = None


@dataclass
class SearchResult:
    """The chosen allocation and the history that led to it."""

    keep: np.ndarray
    score: float | None
    trials: list[Trial] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # per-kernel weight and per-layer activation bits, if searched
    bits: BitAllocation | None = None


class SearchMethod(ABC):
    """A strategy that proposes allocations; it owns its loop and returns the best one."""

    name: ClassVar[str]
    needs_evaluator: ClassVar[bool] = True
    supports_bits: ClassVar[bool] = False  # chooses bits when the problem has a BitSpace

    @abstractmethod
    def search(self, problem: SearchProblem) -> SearchResult: ...


SEARCH_METHODS: Registry[type[SearchMethod]] = Registry("search method")


def best_of(trials: list[Trial]) -> Trial:
    """The highest-scoring trial (the earliest among equals)."""
    return max(trials, key=lambda t: (t.score if t.score is not None else -np.inf, -t.number))
