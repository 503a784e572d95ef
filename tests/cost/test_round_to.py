"""--round-to: channel keeps on a grid of N (or the whole unit), every budget still met."""

from __future__ import annotations

import numpy as np
import pytest

from autoprune.cost.budgets import parse_budget
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, on_grid, project, snap
from autoprune.errors import BudgetError
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.pipeline.load import resolve_limits


def _resnet() -> CostModel:
    net = build_model("resnet20", num_classes=10, input_size=(3, 32, 32))
    return CostModel(trace_units(net, (3, 32, 32), "channel", "resnet20"))


def test_on_grid_rounds_down_and_keeps_whole_units() -> None:
    sizes = np.array([16, 20, 5, 64])
    keep = np.array([15, 20, 3, 9])
    assert on_grid(keep, sizes, 8).tolist() == [8, 20, 5, 8]
    assert min_keeps(sizes, ProjectionConfig(min_ratio=0.05), 8).tolist() == [8, 8, 5, 8]


@pytest.mark.parametrize("step", [4, 8, 16])
def test_projection_lands_on_the_grid_within_every_budget(step: int) -> None:
    cm = _resnet()
    cfg = ProjectionConfig(round_to=step)
    budgets = [parse_budget("macs", "50%"), parse_budget("params", "40%")]
    limits, _ = resolve_limits(budgets, cm, cfg)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = project(rng.uniform(0.2, 1.0, len(cm.sizes)), cm, limits, cfg)
        assert np.all((keep % step == 0) | (keep == cm.sizes))
        assert cm.fits(keep, limits)
        # as tight as the grid allows: no unit can take its next grid width
        for u in np.flatnonzero(keep < cm.sizes):
            bigger = keep.copy()
            bigger[u] = min((keep[u] // step + 1) * step, cm.sizes[u])
            assert not cm.fits(bigger, limits)


def test_snap_moves_a_free_allocation_onto_the_grid() -> None:
    cm = _resnet()
    cfg = ProjectionConfig(round_to=8)
    limits, _ = resolve_limits([parse_budget("macs", "50%")], cm, cfg)
    keep = np.maximum(1, (cm.sizes * 0.6).astype(np.int64) - 1)
    snapped = snap(keep, cm, limits, cfg)
    assert np.all((snapped % 8 == 0) | (snapped == cm.sizes)) and cm.fits(snapped, limits)
    on = project(np.full(len(cm.sizes), 0.5), cm, limits, cfg)
    assert np.array_equal(snap(on, cm, limits, cfg), on)  # already on the grid: unchanged


def test_round_to_must_be_positive() -> None:
    with pytest.raises(BudgetError, match="round_to must be a positive integer"):
        ProjectionConfig(round_to=0)
