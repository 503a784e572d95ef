"""`autoprune search --method uniform --no-prune` end to end: the exported program meets its
budgets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.cli.main import main
from autoprune.cost.measure import count_macs, count_params
from autoprune.cost.model import CostModel
from autoprune.cost.projection import project
from autoprune.export.program import load_program
from autoprune.graph.masking import mask_model, slim
from autoprune.graph.units import trace_units
from autoprune.models import build_model

CASES = [
    ("lenet5", None),
    ("resnet18", "3x64x64"),
    pytest.param("mobilenet_v2", "3x64x64", marks=pytest.mark.slow),
    pytest.param("densenet121", "3x64x64", marks=pytest.mark.slow),
]
BUDGETS = {
    "flops": ["--budget-flops", "50%"],
    "params": ["--budget-params", "40%"],
    "both": ["--budget-flops", "50%", "--budget-params", "40%"],
}


def _cases() -> list:  # type: ignore[type-arg]
    """Every model x budget set; beyond LeNet-5 only the two-budget run is in the fast suite
    (test_uniform_projection_meets_budgets_after_slimming covers the rest quickly)."""
    out = []
    for case in CASES:
        model, size = case.values if hasattr(case, "values") else case
        for budget in BUDGETS:
            slow = model != "lenet5" and (budget != "both" or hasattr(case, "values"))
            marks = [pytest.mark.slow] if slow else []
            out.append(pytest.param(model, size, budget, marks=marks, id=f"{budget}-{model}"))
    return out


@pytest.mark.parametrize(("model", "size", "budget"), _cases())
def test_uniform_meets_budgets_on_the_exported_model(
    model: str, size: str | None, budget: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", model, "--dataset", "fake", "--limit", "16", "--method", "uniform",
            "--no-prune", "--quiet", "--out", str(out), *BUDGETS[budget]]  # fmt: skip
    if size:
        argv += ["--input-size", size]
    assert main(argv) == 0
    for name in ("allocation.json", "metrics.json", "model.pt2", "checkpoint.pt"):
        assert (out / name).is_file(), name
    alloc = json.loads((out / "allocation.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    input_size = tuple(alloc["model"]["input_size"])
    program = load_program(out / "model.pt2")
    measured_macs = count_macs(program, input_size)
    # model.pt2 folds BatchNorm into the convs: it holds fewer parameters than the slim model the
    # allocation priced; metrics.json records both, and the budget holds for both.
    measured_params = metrics["final"]["params"]
    assert count_params(program) == metrics["export"]["program_params"] <= measured_params
    dense = alloc["dense"]
    limits = {}
    if budget in ("flops", "both"):
        limits["macs"] = 0.5 * dense["macs"]
        assert measured_macs <= limits["macs"]
    if budget in ("params", "both"):
        limits["params"] = 0.4 * dense["params"]
        assert measured_params <= limits["params"]
    # The binding budget is met tightly, and the prediction equals the measurement.
    closeness = max(
        (measured_macs if m == "macs" else measured_params) / lim for m, lim in limits.items()
    )
    assert closeness >= 0.99
    assert measured_macs == pytest.approx(alloc["predicted"]["macs"], rel=1e-3)
    assert measured_params == alloc["predicted"]["params"]
    assert all(check["met"] for check in metrics["budgets"].values())
    # The program takes [0, 1] images with any batch size.
    x = torch.rand(3, *input_size)
    assert program(x).shape == (3, alloc["model"]["num_classes"])


@pytest.mark.parametrize(
    ("model", "size"),
    [("lenet5", (1, 28, 28)), ("resnet18", (3, 64, 64)), ("mobilenet_v2", (3, 64, 64)),
     ("densenet121", (3, 32, 32))],
)  # fmt: skip
def test_uniform_projection_meets_budgets_after_slimming(
    model: str, size: tuple[int, int, int]
) -> None:
    """The same claim without the CLI and export, for every model and budget set (fast)."""
    net = build_model(model, num_classes=10, input_size=size).eval()
    graph = trace_units(net, size, "channel", model)
    cm = CostModel(graph)
    dense = cm.costs(cm.dense_keep)
    for limits in ({"macs": 0.5 * dense.macs}, {"params": 0.4 * dense.params},
                   {"macs": 0.5 * dense.macs, "params": 0.4 * dense.params}):  # fmt: skip
        keep = project(np.full(len(cm.sizes), 0.5), cm, limits)
        pruned = copy.deepcopy(net)
        slimmed = slim(pruned, graph, mask_model(pruned, graph, keep))
        measured = {"macs": count_macs(slimmed, size), "params": count_params(slimmed)}
        assert measured["macs"] == cm.costs(keep).macs
        assert measured["params"] == cm.costs(keep).params
        assert all(measured[m] <= lim for m, lim in limits.items())
        assert max(measured[m] / lim for m, lim in limits.items()) >= 0.99
