"""The allocation-landscape benchmark: boundary allocations and what its report concludes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from autoprune.bench.landscape import fill, render, search_landscape
from autoprune.cost.model import CostModel
from autoprune.graph.units import trace_units
from autoprune.models import build_model


def test_fill_makes_the_widest_unit_as_wide_as_the_budget_allows() -> None:
    graph = trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5")
    cm = CostModel(graph)
    names = [u.name for u in graph.units]
    limit = 0.05 * cm.metric("macs", cm.dense_keep)
    keep = fill(graph, cm, {"features.0": 3, "features.2": 10}, limit)
    assert keep is not None
    assert keep[names.index("features.0")] == 3 and keep[names.index("features.2")] == 10
    assert cm.metric("macs", keep) <= limit
    wider = keep.copy()
    wider[int(np.argmax(graph.sizes))] += 1
    assert cm.metric("macs", wider) > limit
    assert fill(graph, cm, {"features.0": 20, "features.2": 50}, limit) is None


def _row(keep: list[int], seeds: dict[str, float], uniform: bool = False) -> dict:  # type: ignore[type-arg]
    return {"keep": keep, "macs": 1e5, "seeds": seeds, "uniform": uniform}


def test_report_compares_the_seed0_pick_with_uniform_on_the_other_seeds_only(
    tmp_path: Path,
) -> None:
    rows = [
        _row([137, 10, 3], {"0": 0.9894, "1": 0.9900, "2": 0.9890}, uniform=True),
        _row([100, 11, 3], {"0": 0.9910, "1": 0.9895, "2": 0.9889}),  # lucky on seed 0
        _row([42, 8, 4], {"0": 0.9861}),
    ]
    summary = {
        "benchmark": "b",
        "quick": False,
        "command": "autoprune bench b",
        "code": "abc",
        "dense": {"checkpoint": str(tmp_path / "d.pt"), "epochs": 15, "test_accuracy": 0.9929},
        "units": ["classifier.0", "features.2", "features.0"],
        "recipe": {
            "backend": "reweighted",
            "epochs": 2,
            "finetune_epochs": 1,
            "lr": 0.01,
            "recheck_seeds": [1, 2],
        },
        "budgets": [{"budget": "5%", "limit": 114650.0, "rows": rows}],
    }
    text = render(summary)
    assert "uniform 98.94%, ranked 2 of 3" in text
    # the seed-0 winner trails uniform on the seeds that did not pick it
    assert (
        "(100 / 11 / 3) against uniform on seeds 1, 2, which did not pick it: -0.03 points" in text
    )
    assert "ahead on 0 of 2 seeds" in text
    assert text.index("| 100 / 11 / 3 |") < text.index("| 137 / 10 / 3 (uniform) |")


@pytest.mark.slow
def test_quick_landscape_trains_boundary_allocations_under_the_budget(tmp_path: Path) -> None:
    cfg = SimpleNamespace(data_dir=None, out=str(tmp_path), quick=True, force=False, progress=False)
    summary = search_landscape(cfg)
    for b in summary["budgets"]:
        assert sum(r["uniform"] for r in b["rows"]) == 1 and len(b["rows"]) >= 3
        for r in b["rows"]:
            assert r["macs"] <= b["limit"]
            run = (
                tmp_path
                / "runs"
                / f"{b['budget'].rstrip('%')}pct"
                / f"keep-{'-'.join(map(str, r['keep']))}-seed0"
            )
            assert (run / "command.txt").read_text().startswith("autoprune prune --allocation")
    assert "ranked" in (tmp_path / "README.md").read_text()
