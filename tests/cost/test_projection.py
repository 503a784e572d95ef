"""The shared projection: any proposal becomes integer keeps that meet every budget, tightly."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.errors import BudgetError
from autoprune.graph.units import trace_units
from autoprune.models import build_model

SIZES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "mobilenet_v2": (3, 32, 32)}


@cache
def cost_model(name: str, granularity: str = "channel") -> CostModel:
    return CostModel(trace_units(build_model(name, num_classes=10), SIZES[name], granularity, name))  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(SIZES)),
    granularity=st.sampled_from(["channel", "weight"]),
    seed=st.integers(0, 2**31 - 1),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3),
)
def test_projection_meets_every_budget(
    name: str, granularity: str, seed: int, fractions: list[float]
) -> None:
    cm = cost_model(name, granularity)
    cfg = ProjectionConfig()
    lo, hi = min_keeps(cm.sizes, cfg), cm.dense_keep
    metrics = ["macs", "params", "size"][: len(fractions)]
    # Budgets anywhere between the smallest feasible model and the dense one.
    limits = {
        m: cm.metric(m, lo) + f * (cm.metric(m, hi) - cm.metric(m, lo))
        for m, f in zip(metrics, fractions, strict=True)
    }
    ratios = np.random.default_rng(seed).uniform(0, 1, len(cm.sizes))
    keep = project(ratios, cm, limits, cfg)
    assert keep.dtype.kind == "i"
    assert (keep >= lo).all() and (keep <= cm.sizes).all()
    assert all(cm.metric(m, keep) <= lim for m, lim in limits.items())
    # Tight: no unit can grow by one element without breaking a budget.
    for u in np.flatnonzero(keep < cm.sizes):
        bumped = keep.copy()
        bumped[u] += 1
        assert any(cm.metric(m, bumped) > lim for m, lim in limits.items())


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.8])
def test_binding_budget_within_one_percent(name: str, fraction: float) -> None:
    cm = cost_model(name)
    dense = cm.costs(cm.dense_keep)
    limits = {"macs": fraction * dense.macs}
    keep = project(np.random.default_rng(0).uniform(0.2, 1, len(cm.sizes)), cm, limits)
    assert 0.99 * limits["macs"] <= cm.costs(keep).macs <= limits["macs"]


def test_same_ratios_keep_their_shape() -> None:
    cm = cost_model("resnet20")
    keep = project(np.full(len(cm.sizes), 0.5), cm, {"macs": 0.5 * cm.costs(cm.dense_keep).macs})
    ratios = keep / cm.sizes
    assert ratios.max() - ratios.min() < 0.15  # uniform stays (nearly) uniform


def test_infeasible_budget_raises() -> None:
    cm = cost_model("lenet5")
    with pytest.raises(BudgetError, match="smallest model"):
        project(np.ones(len(cm.sizes)), cm, {"macs": 10.0})
