"""Heuristic allocators, the baselines a user would pick by hand: global, lamp and erk.

Each turns scores into keep ratios and sends them through the shared projection, so every budget
holds, several at once. None trains or needs an evaluator (the result is scored when the problem
has one); with bits they take the widths of the uniform allocation.

- `global`: one ranking of every element of every unit by a normalised importance (Torch-Pruning's
  global pruning; with raw scores at weight granularity, global magnitude pruning). The most
  top-ranked elements that meet every budget are kept, each unit at least its minimum.
- `lamp`: the same ranking by LAMP scores (Lee et al. 2021), which normalise each unit by the
  mass of its larger elements, so no unit is emptied before the others.
- `erk`: Erdős–Rényi-Kernel densities (Evci et al. 2020, RigL): each weight tensor's density
  proportional to sum(shape) / prod(shape), scaled by a common factor until a budget binds; a
  tensor that would exceed density 1 stays dense and the rest scale on, which is what the
  projection's common scale with its clip at full units does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from autoprune.cost.projection import min_keeps
from autoprune.errors import UsageError
from autoprune.quant.bits import BitAllocation
from autoprune.search.base import SEARCH_METHODS, SearchMethod, SearchProblem, SearchResult, Trial
from autoprune.search.uniform import uniform_trial

NORMALISERS = ("mean", "max", "sum", "none", "lamp")


def normalised(scores: np.ndarray, how: str) -> np.ndarray:
    """One unit's scores made comparable across units: divided by their mean, max or sum, raw
    (`none`), or LAMP scores (`lamp_scores`)."""
    s = np.asarray(scores, dtype=np.float64)
    if how == "lamp":
        return lamp_scores(s)
    if how == "none":
        return s
    if not len(s):
        return s
    scale = float(s.mean() if how == "mean" else s.max() if how == "max" else s.sum())
    return s / scale if scale > 0 else np.zeros_like(s)


def lamp_scores(scores: np.ndarray) -> np.ndarray:
    """LAMP: with s sorted ascending, score(u) = s[u]^2 / sum over v >= u of s[v]^2.

    On magnitudes (the l1 importance at weight granularity) this is Lee et al.'s formula; the
    largest element of a unit scores 1, so global ranking never empties a unit first.
    """
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    squared = s[order] ** 2
    tail = np.cumsum(squared[::-1])[::-1]  # mass of the element and every larger one
    out = np.zeros_like(s)
    out[order] = np.divide(squared, tail, out=np.zeros_like(squared), where=tail > 0)
    return out


def ranked_keeps(
    problem: SearchProblem, scores: list[np.ndarray], bits: BitAllocation | None
) -> np.ndarray:
    """Keeps of the globally top-ranked elements: the most of them that meet every budget.

    Each unit keeps at least its minimum (`min_keeps`); costs only grow with keeps, so the count
    of top elements that fits is found by bisection.
    """
    sizes = problem.sizes
    unit_of = np.concatenate([np.full(len(s), u, dtype=np.int64) for u, s in enumerate(scores)])
    order = np.argsort(-np.concatenate(scores), kind="stable")  # ties: earlier unit, lower index
    ranked = unit_of[order]
    low = min_keeps(sizes, problem.projection)
    model = problem.costed(bits)

    def keeps(n: int) -> np.ndarray:
        return np.maximum(low, np.bincount(ranked[:n], minlength=len(sizes)))

    if not model.fits(low, problem.limits):
        return problem.project(low / sizes, bits)  # raises the projection's BudgetError
    lo, hi = 0, len(ranked)  # keeps(lo) fits; keeps(hi + 1) is beyond every element
    if model.fits(keeps(hi), problem.limits):
        return keeps(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if model.fits(keeps(mid), problem.limits) else (lo, mid)
    return keeps(lo)


def tensor_shapes(problem: SearchProblem) -> list[tuple[int, ...]]:
    """The weight tensor shape of every weight unit: from the model when the problem has it,
    else from the traced layer (a kernel of k elements taken as sqrt(k) x sqrt(k) when square)."""
    layers = {lay.name: lay for lay in problem.cost_model.graph.layers}
    shapes = []
    for unit in problem.cost_model.graph.units:
        module = unit.name.removesuffix(".weight")
        if problem.context is not None:
            weight = problem.context.model.get_submodule(module).weight
            shapes.append(tuple(int(d) for d in weight.shape))
            continue
        lay = layers[module]
        side = math.isqrt(lay.kernel)
        kernel: tuple[int, ...] = (side, side) if side * side == lay.kernel else (lay.kernel,)
        kernel = () if lay.type == "linear" else kernel
        shapes.append((lay.out_channels, lay.in_channels // lay.groups, *kernel))
    return shapes


def erk_densities(shapes: list[tuple[int, ...]], power: float = 1.0) -> np.ndarray:
    """Unscaled ERK densities: (sum(shape) / prod(shape)) ** power per tensor; (n_in + n_out +
    k_h + k_w) / (n_in n_out k_h k_w) for a conv, (n_in + n_out) / (n_in n_out) for a linear."""
    return np.array([(sum(s) / math.prod(s)) ** power for s in shapes], dtype=np.float64)


@dataclass
class Heuristic(SearchMethod):
    """Ratios from a closed-form rule, projected onto the budgets: one trial, no training."""

    needs_evaluator = False  # scores its allocation when the problem has an evaluator
    supports_bits = True  # the uniform allocation's widths; keeps projected under them
    needs_weights: ClassVar[bool] = True  # ranks elements by the problem's importance

    def ratios(self, problem: SearchProblem, bits: BitAllocation | None) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict[str, object]:
        return {}

    def search(self, problem: SearchProblem) -> SearchResult:
        self.check_granularity(problem.cost_model.graph.granularity)
        bits = None if problem.bits is None else uniform_trial(problem).bits
        ratios = self.ratios(problem, bits)
        keep = problem.project(ratios, bits)
        score = problem.score(keep, bits) if problem.evaluate is not None else None
        trial = Trial(0, keep, score, problem.costs(keep, bits), bits, source=self.name)
        info = {"ratios": [round(float(r), 6) for r in ratios], **self.info()}
        return SearchResult(keep, score, [trial], info, bits=bits)


@SEARCH_METHODS.register("global")
@dataclass
class GlobalRanking(Heuristic):
    """Every element of every unit in one ranking by normalised importance; the top ones kept.

    `normalise`: how one unit's scores are made comparable with another's; None: `mean` at
    channel granularity (Torch-Pruning's default for global pruning, where a channel's score
    grows with its fan-in) and `none` at weight granularity (global magnitude pruning).
    """

    normalise: str | None = None

    def __post_init__(self) -> None:
        if self.normalise is not None and self.normalise not in NORMALISERS:
            raise UsageError(
                f"global normalise {self.normalise!r} is unknown; use one of {NORMALISERS}"
            )

    def _how(self, problem: SearchProblem) -> str:
        if self.normalise is not None:
            return self.normalise
        return "mean" if problem.cost_model.graph.granularity == "channel" else "none"

    def ratios(self, problem: SearchProblem, bits: BitAllocation | None) -> np.ndarray:
        how = self._how(problem)
        scores = [normalised(s.numpy(), how) for s in problem.element_scores()]
        return ranked_keeps(problem, scores, bits) / problem.sizes

    def info(self) -> dict[str, object]:
        return {"normalise": self.normalise}


@SEARCH_METHODS.register("lamp")
@dataclass
class LAMP(GlobalRanking):
    """Global ranking by LAMP scores (Lee et al. 2021); at channel granularity on the channels'
    importance, the analogue Torch-Pruning's LAMP importance uses."""

    normalise: str | None = "lamp"

    def __post_init__(self) -> None:
        if self.normalise != "lamp":
            raise UsageError("lamp ranks by LAMP scores; for another normalisation use global")


@SEARCH_METHODS.register("erk")
@dataclass
class ERK(Heuristic):
    """Erdős–Rényi-Kernel densities scaled to the budget (weight granularity)."""

    granularities = ("weight",)
    needs_weights = False  # shapes only
    power: float = 1.0  # RigL's erk_power_scale: 0 gives uniform densities

    def __post_init__(self) -> None:
        if not (isinstance(self.power, (int, float)) and math.isfinite(self.power)):
            raise UsageError(f"erk power must be a finite number, got {self.power!r}")

    def ratios(self, problem: SearchProblem, bits: BitAllocation | None) -> np.ndarray:
        raw = erk_densities(tensor_shapes(problem), self.power)
        return raw / raw.max()  # any common scale: the projection finds the one on the budget

    def info(self) -> dict[str, object]:
        return {"power": self.power}
