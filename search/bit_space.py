"""Bit widths in a search: the choices a method may pick from, and the helpers every method shares.

A search with bits (`autoprune search --bits`) gives every conv/linear layer weight bits (one per
kernel: an output filter of a conv, an output row of a linear layer) and activation bits (of the
layer's input) from a `BitSpace`, then projects the keeps onto the budgets with the cost model of
those bits, so a size or BOPs budget is met at the chosen widths. Choices are repaired first
(`fit_bits`): where even the smallest keeps would break a budget at the proposed widths, the
widths come down until they fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.cost.projection import min_keeps
from autoprune.errors import UsageError
from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BIT_CHOICES, FLOAT_BITS, STORABLE_BITS, BitAllocation
from autoprune.search.base import SearchProblem

# `uniform --bits` takes more bits only while it still keeps this share of the weights the
# smallest widths would keep (see `uniform_bits`). A half let 8 bits win nearly every size budget
# on LeNet-5 (per-kernel scales and counts make narrow codes cheaper than they look).
UNIFORM_KEEP_SHARE = 0.75


@dataclass(frozen=True)
class BitSpace:
    """Which widths a search may choose: `--weight-bits` and `--act-bits` of `autoprune search`.

    One activation width fixes it for every layer (32, the default: activations stay in float, as
    in Deep Compression and ADMM-NN, whose storage counts only weights); several make it part of
    the search, per layer.
    """

    weight: tuple[int, ...] = BIT_CHOICES
    act: tuple[int, ...] = (FLOAT_BITS,)

    def __post_init__(self) -> None:
        for flag, values in (("--weight-bits", self.weight), ("--act-bits", self.act)):
            bad = [v for v in values if v not in STORABLE_BITS]
            if not values or bad:
                raise UsageError(
                    f"{flag} {','.join(map(str, values)) or '(empty)'}: each width must be "
                    f"{min(STORABLE_BITS)}..{max(set(STORABLE_BITS) - {FLOAT_BITS})} or 32 (float)"
                )
        object.__setattr__(self, "weight", tuple(sorted(set(self.weight))))
        object.__setattr__(self, "act", tuple(sorted(set(self.act))))

    @classmethod
    def parse(cls, weight: str | None, act: str | None) -> BitSpace:
        """From the flags' text: comma-separated widths (`4` fixes one, `2,4,8` searches)."""
        return cls(
            weight=_widths("--weight-bits", weight) if weight else BIT_CHOICES,
            act=_widths("--act-bits", act) if act else (FLOAT_BITS,),
        )

    def to_json(self) -> dict[str, list[int]]:
        return {"weight": list(self.weight), "act": list(self.act)}


def _widths(flag: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a comma-separated list of bit widths; write e.g. 2,4,8"
        ) from None


def layer_bits(graph: UnitGraph, weight: Sequence[int], act: Sequence[int]) -> BitAllocation:
    """One weight width per layer (every kernel of it alike) and one activation width per layer."""
    return BitAllocation(
        weight={
            lay.name: (int(w),) * lay.out_channels
            for lay, w in zip(graph.layers, weight, strict=True)
        },
        act={lay.name: int(a) for lay, a in zip(graph.layers, act, strict=True)},
    )


def smallest_bits(graph: UnitGraph, space: BitSpace) -> BitAllocation:
    n = len(graph.layers)
    return layer_bits(graph, [space.weight[0]] * n, [space.act[0]] * n)


def fits_at_min_keep(problem: SearchProblem, bits: BitAllocation) -> bool:
    """Whether the smallest keeps meet every budget at these widths (then projection succeeds)."""
    low = min_keeps(problem.sizes, problem.projection)
    return problem.costed(bits).fits(low, problem.limits)


def fit_bits(
    problem: SearchProblem, space: BitSpace, weight: Sequence[int], act: Sequence[int]
) -> BitAllocation:
    """Per-layer widths as proposed, lowered one choice at a time until every budget can be met.

    Each step lowers the width (weight or activation, any layer) whose step down removes the most
    of the budgets' overshoot at the smallest keeps; the smallest widths fit (checked when the
    limits were resolved), so this ends.
    """
    graph = problem.cost_model.graph
    w_idx = [space.weight.index(int(w)) for w in weight]
    a_idx = [space.act.index(int(a)) for a in act]
    low = min_keeps(problem.sizes, problem.projection)

    def overshoot(wi: list[int], ai: list[int]) -> float:
        bits = layer_bits(graph, [space.weight[i] for i in wi], [space.act[i] for i in ai])
        model = problem.costed(bits)
        return sum(max(0.0, model.metric(m, low) / lim - 1.0) for m, lim in problem.limits.items())

    now = overshoot(w_idx, a_idx)
    while now > 0:
        options = [
            ([*w_idx[:i], w_idx[i] - 1, *w_idx[i + 1 :]], a_idx)
            for i in range(len(w_idx))
            if w_idx[i]
        ]
        options += [
            (w_idx, [*a_idx[:i], a_idx[i] - 1, *a_idx[i + 1 :]])
            for i in range(len(a_idx))
            if a_idx[i]
        ]
        if not options:
            raise UsageError(
                f"no allocation meets {dict(problem.limits)} even at the smallest widths"
            )
        scored = [(overshoot(wi, ai), k) for k, (wi, ai) in enumerate(options)]
        now, best = min(scored)
        w_idx, a_idx = options[best]
    return layer_bits(graph, [space.weight[i] for i in w_idx], [space.act[i] for i in a_idx])


def uniform_bits(problem: SearchProblem, space: BitSpace, ratios: np.ndarray) -> BitAllocation:
    """The same widths everywhere: the largest that still leave the keeps reasonable.

    Candidates (weight, act) are tried from the largest down; one is taken when its projected
    allocation keeps at least `UNIFORM_KEEP_SHARE` of the weights that the smallest widths'
    projection keeps: more bits are worth it while they cost at most a quarter of the weights (a
    budget on MACs alone ignores bits, so there the largest widths win). Without such a
    candidate, the smallest widths.
    """
    graph = problem.cost_model.graph
    n = len(graph.layers)
    pairs = sorted(
        ((w, a) for w in space.weight for a in space.act), key=lambda p: (min(p), p), reverse=True
    )
    smallest = smallest_bits(graph, space)
    floor = UNIFORM_KEEP_SHARE * problem.cost_model.metric(
        "weights", problem.project(ratios, smallest)
    )
    for w, a in pairs:
        bits = layer_bits(graph, [w] * n, [a] * n)
        if fits_at_min_keep(problem, bits):
            kept = problem.cost_model.metric("weights", problem.project(ratios, bits))
            if kept >= floor:
                return bits
    return smallest


def random_bits(problem: SearchProblem, space: BitSpace, rng: np.random.Generator) -> BitAllocation:
    """Independent uniform widths per layer, repaired to fit (`fit_bits`)."""
    n = len(problem.cost_model.graph.layers)
    weight = [int(b) for b in rng.choice(space.weight, n)]
    return fit_bits(problem, space, weight, [int(b) for b in rng.choice(space.act, n)])
