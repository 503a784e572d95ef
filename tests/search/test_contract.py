"""The contract every registered search method keeps (a new method is tested by registering it).

On a small LeNet-5 with real weights and data (for methods that learn through the network) and
a synthetic evaluator: the allocation is integer, within [min keep, size] per unit, meets every
budget of a mixed set at once, and the same seed gives the same allocation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from autoprune.cost.budgets import parse_budget
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.pipeline.load import Loaded, resolve_limits, trace
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.base import SearchContext
from autoprune.search.bit_space import BitSpace
from autoprune.search.testing import SyntheticEvaluator

# Small values for whatever of these a method takes, so every method runs in seconds.
QUICK = {"trials": 4, "episodes": 4, "warmup": 2, "steps": 8, "artifacts": False}
BUDGETS = [("macs", "30%"), ("params", "40%")]


def build(name: str) -> Any:
    cls = SEARCH_METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return SEARCH_METHODS.build(name, {k: v for k, v in QUICK.items() if k in fields})


def problem(
    loaded: Loaded, granularity: str, seed: int = 0, bits: BitSpace | None = None
) -> SearchProblem:
    graph, cost_model = trace(loaded, granularity)  # type: ignore[arg-type]
    parsed = [parse_budget(m, text) for m, text in BUDGETS]
    smallest = None
    if bits is not None:
        from autoprune.search.bit_space import smallest_bits

        smallest = cost_model.with_bits(smallest_bits(graph, bits))
        parsed.append(parse_budget("size", "25%"))
    limits, _ = resolve_limits(parsed, cost_model, ProjectionConfig(), smallest_model=smallest)
    context = SearchContext(loaded.model, graph, loaded.data.train, loaded.data.val)
    return SearchProblem(cost_model, limits, SyntheticEvaluator(cost_model.sizes), seed,
                         ProjectionConfig(), context=context, progress=False,
                         bits=bits)  # fmt: skip


def supported(name: str, granularity: str) -> bool:
    granularities = getattr(SEARCH_METHODS.get(name), "granularities", ("channel", "weight"))
    return granularity in granularities


def meets(cost_model: CostModel, keep: np.ndarray, limits: dict[str, float]) -> bool:
    return cost_model.fits(keep, limits)


@pytest.mark.parametrize("granularity", ["channel", "weight"])
@pytest.mark.parametrize("name", SEARCH_METHODS.names())
def test_allocation_meets_every_budget_and_repeats(
    digits_lenet: Loaded, name: str, granularity: str
) -> None:
    if not supported(name, granularity):
        pytest.skip(f"{name} does not search at {granularity} granularity")
    runs = [build(name).search(problem(digits_lenet, granularity, seed=s)) for s in (1, 1)]
    p = problem(digits_lenet, granularity)
    for result in runs:
        keep = np.asarray(result.keep)
        assert keep.dtype.kind == "i" and keep.shape == p.sizes.shape
        assert np.all(keep >= min_keeps(p.sizes, p.projection)) and np.all(keep <= p.sizes)
        assert meets(p.cost_model, keep, p.limits)
    assert np.array_equal(runs[0].keep, runs[1].keep)


@pytest.mark.parametrize("name", [n for n in SEARCH_METHODS.names()
                                  if SEARCH_METHODS.get(n).supports_bits])  # fmt: skip
def test_methods_with_bits_meet_the_packed_size_budget(digits_lenet: Loaded, name: str) -> None:
    granularity = getattr(SEARCH_METHODS.get(name), "granularities", ("channel",))[0]
    p = problem(digits_lenet, granularity, bits=BitSpace.parse("2,4,8", None))
    result = build(name).search(p)
    assert result.bits is not None
    assert meets(p.costed(result.bits), np.asarray(result.keep), p.limits)
