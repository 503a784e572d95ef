"""What every search method shares: the problem it is given, the result it returns, the registry."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autoprune.cost.kernel_counts import KernelCounts, priced
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.errors import UsageError
from autoprune.registry import RegisteredName, Registry

if TYPE_CHECKING:
    import torch
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
    # priced exactly (autoprune.cost.kernel_counts); without, by CostModel.with_bits's estimate.
    kernel_counts: KernelCounts | None = None
    # The one importance measure of this search: the evaluator masks by it, heuristics rank by it,
    # and the allocation records it so an export keeps the elements that were scored.
    importance: str = "l1"
    # Its per-element scores on the dense model (the evaluator's); None: computed from `context`
    # on first use (`element_scores`).
    scores: list[torch.Tensor] | None = None
    # What several methods of one problem share, built once: the uniform trial, the heuristics'.
    shared: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False, compare=False)

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

    def once(self, name: str, build: Callable[[], Any]) -> Any:
        """`build()` on first use for these limits, bits, evaluator and importance; then the same
        object again, so methods sharing a problem share it (the uniform trial, the heuristics')."""
        key = (name, tuple(sorted(self.limits.items())), self.bits, id(self.evaluate),
               self.importance)  # fmt: skip
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]

    def element_scores(self) -> list[torch.Tensor]:
        """Per-element scores of `importance`, one tensor per unit (higher is kept first)."""
        if self.scores is None:
            if self.context is None:
                raise UsageError(
                    "this search ranks elements by importance and needs the model's weights: "
                    "give the SearchProblem a context (or scores), as run_search does"
                )
            from autoprune.search.evaluator import element_scores

            ctx = self.context
            self.scores = element_scores(ctx.model, ctx.graph, self.importance, ctx.train)
        return self.scores

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
    source: str | None = None  # the method that proposed it when not the searching one (uniform)


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

    name = RegisteredName(lambda: SEARCH_METHODS)  # the name it is registered under
    needs_evaluator: ClassVar[bool] = True
    supports_bits: ClassVar[bool] = False  # chooses bits when the problem has a BitSpace
    granularities: ClassVar[tuple[str, ...]] = ("channel", "weight")  # what it can allocate

    @classmethod
    def check_granularity(cls, granularity: str) -> None:
        """A one-line UsageError when this method cannot allocate units of `granularity`."""
        if granularity not in cls.granularities:
            fits = sorted(
                n
                for n in SEARCH_METHODS.names()
                if granularity in SEARCH_METHODS.get(n).granularities
            )
            raise UsageError(
                f"search method {cls.name!r} allocates {' or '.join(cls.granularities)} units, not "
                f"{granularity}; use --granularity {cls.granularities[0]} or one of {fits}"
            )

    @abstractmethod
    def search(self, problem: SearchProblem) -> SearchResult: ...


SEARCH_METHODS: Registry[type[SearchMethod]] = Registry("search method")


def renumbered(trial: Trial, number: int) -> Trial:
    """A copy of a shared trial under another number (its arrays copied too)."""
    return dataclasses.replace(
        trial, number=number, keep=trial.keep.copy(), costs=dict(trial.costs)
    )


def best_of(trials: list[Trial]) -> Trial:
    """The highest-scoring trial (the earliest among equals)."""
    return max(trials, key=lambda t: (t.score if t.score is not None else -np.inf, -t.number))
