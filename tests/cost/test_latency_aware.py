"""Latency-aware projection: the same budgets, met from below, with less predicted latency."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mac_tables import mac_table

from autoprune.cli.main import main
from autoprune.cost.latency import register_latency
from autoprune.cost.latency_table import LatencyTable
from autoprune.cost.measure import count_macs
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.errors import BudgetError, UsageError
from autoprune.graph.masking import slim
from autoprune.graph.units import trace_units
from autoprune.models import build_model

SIZE = (3, 32, 32)


def _slow_early_table(cm: CostModel, slow: float = 5.0) -> LatencyTable:
    """Time grows with MACs; layers at the highest resolution cost `slow` times more per MAC."""
    top = max(lay.positions for lay in cm.graph.layers)

    def seconds(lay: Any, macs: np.ndarray) -> np.ndarray:
        return (slow if lay.positions == top else 1.0) * 1e-9 * macs + 1e-6

    return mac_table(cm, (5, 5), seconds, 1e-5, 0.0)


@pytest.fixture(scope="module")
def priced() -> tuple[torch.nn.Module, CostModel]:
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, input_size=SIZE).eval()
    cm = CostModel(trace_units(model, SIZE, "channel", "resnet20"))
    register_latency(cm, _slow_early_table(cm))
    return model, cm


@pytest.mark.parametrize("round_to", [1, 4])
def test_latency_aware_allocation_is_faster_at_the_same_macs(
    priced: tuple[torch.nn.Module, CostModel], round_to: int
) -> None:
    model, cm = priced
    limits = {"macs": 0.5 * cm.metric("macs", cm.dense_keep)}
    ones = np.ones(len(cm.sizes))
    uniform = project(ones, cm, limits, ProjectionConfig(round_to=round_to))
    aware = project(ones, cm, limits, ProjectionConfig(round_to=round_to, latency_aware=True))
    assert cm.metric("latency", aware) < 0.95 * cm.metric("latency", uniform)
    assert cm.metric("macs", aware) <= limits["macs"]  # met from below ...
    assert cm.metric("macs", aware) >= (1 - 0.002) * cm.metric("macs", uniform)  # ... as tightly
    if round_to > 1:
        on_grid = (aware % round_to == 0) | (aware == cm.sizes)
        assert on_grid.all()
    # exact: the slimmed model counts the MACs the cost model predicts
    slimmed = slim(
        build_model("resnet20", num_classes=10, input_size=SIZE).eval(),
        cm.graph,
        [torch.arange(int(k)) for k in aware],
    )
    assert count_macs(slimmed, SIZE) == round(cm.metric("macs", aware))
    del model


def test_spread_bounds_every_unit_around_its_projected_keep(
    priced: tuple[torch.nn.Module, CostModel],
) -> None:
    _, cm = priced
    limits = {"macs": 0.5 * cm.metric("macs", cm.dense_keep)}
    ones = np.ones(len(cm.sizes))
    start = project(ones, cm, limits)
    bounded = project(ones, cm, limits, ProjectionConfig(latency_aware=True, latency_spread=1.5))
    assert (bounded >= np.ceil(start / 1.5)).all()
    assert (bounded <= np.maximum(np.floor(start * 1.5), start)).all()
    free = project(ones, cm, limits, ProjectionConfig(latency_aware=True))
    assert cm.metric("latency", free) <= cm.metric("latency", bounded)


def test_other_budgets_and_a_latency_budget_still_hold(
    priced: tuple[torch.nn.Module, CostModel],
) -> None:
    _, cm = priced
    dense = {m: cm.metric(m, cm.dense_keep) for m in ("macs", "params", "latency")}
    limits = {"macs": 0.6 * dense["macs"], "params": 0.5 * dense["params"],
              "latency": 0.7 * dense["latency"]}  # fmt: skip
    rng = np.random.default_rng(0)
    for _ in range(3):
        ratios = rng.uniform(0.2, 1.0, len(cm.sizes))
        keep = project(ratios, cm, limits, ProjectionConfig(latency_aware=True))
        assert all(cm.metric(m, keep) <= lim for m, lim in limits.items())


def test_latency_aware_needs_a_latency_metric_and_a_sane_spread() -> None:
    model = build_model("lenet5", num_classes=10, input_size=(1, 28, 28)).eval()
    cm = CostModel(trace_units(model, (1, 28, 28), "channel", "lenet5"))
    limits = {"macs": 0.5 * cm.metric("macs", cm.dense_keep)}
    with pytest.raises(UsageError, match="latency table"):
        project(np.ones(len(cm.sizes)), cm, limits, ProjectionConfig(latency_aware=True))
    with pytest.raises(BudgetError, match="latency_spread"):
        ProjectionConfig(latency_aware=True, latency_spread=0.5)


def test_search_latency_aware_measures_a_table_and_beats_uniform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoprune.cost.latency as latency

    def fake_measure(
        model: torch.nn.Module, graph: object, cm: CostModel, cfg: Any, progress: bool = False
    ) -> LatencyTable:
        table = _slow_early_table(cm)
        table.info["fractions"] = list(cfg.fractions)
        return table

    monkeypatch.setattr(latency, "measure_table", fake_measure)
    common = ["search", "--model", "lenet5", "--limit", "64", "--budget-flops", "50%",
              "--method", "uniform", "--dense-epochs", "0", "--no-prune", "--quiet"]  # fmt: skip
    aware, plain = tmp_path / "aware", tmp_path / "plain"
    assert main([*common, "--latency-aware", "--out", str(aware)]) == 0
    table = str(aware / "latency_table.json")
    assert main([*common, "--latency-table", table, "--out", str(plain)]) == 0
    a, p = (json.loads((d / "allocation.json").read_text()) for d in (aware, plain))
    assert a["predicted"]["latency"] < p["predicted"]["latency"]
    assert a["predicted"]["macs"] <= 0.5 * a["dense"]["macs"]
    metrics = json.loads((aware / "metrics.json").read_text())
    assert all(check["met"] for check in metrics["budgets"].values())


def test_latency_aware_refuses_weight_granularity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--model", "lenet5", "--limit", "64", "--budget-flops", "50%",
            "--method", "uniform", "--granularity", "weight", "--latency-aware",
            "--dense-epochs", "0", "--no-prune", "--quiet",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 2
    assert "--latency-aware needs --granularity channel" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
