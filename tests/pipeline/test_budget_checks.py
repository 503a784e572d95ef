"""Every budget is measured on the exported model: MACs, params, size and BOPs, both granularities.

`nonzero_macs` is checked against FlopCounterMode on dense models (where the two must agree) and
against the zeros it is given; the runs check that metrics.json records a measurement for every
budget, and that an export breaking one is refused with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from autoprune.cli.main import main
from autoprune.cost.measure import count_macs
from autoprune.errors import BudgetBrokenError
from autoprune.models import build_model
from autoprune.pipeline import finish
from autoprune.pipeline.finish import nonzero_macs
from autoprune.train.checkpoint import load_checkpoint

TINY = ["search", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
        "--limit", "96", "--dense-epochs", "0", "--trials", "2", "--no-prune",
        "--quiet"]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "size"),
    [("lenet5", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32))],
)
def test_nonzero_macs_of_a_dense_model_is_flop_counter_mode_count(
    model: str, size: tuple[int, int, int]
) -> None:
    net = build_model(model, num_classes=10, input_size=size)
    for m in net.modules():  # no weight exactly zero by chance: the model must count as dense
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.constant_(m.weight, 0.5)
    assert nonzero_macs(net, size) == count_macs(net, size) > 0


def test_nonzero_macs_of_a_transposed_conv_is_flop_counter_mode_count() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ConvTranspose2d(8, 4, 3, stride=2))
    assert nonzero_macs(net, (3, 17, 17)) == count_macs(net, (3, 17, 17)) > 0


def test_nonzero_macs_skips_exactly_the_zeroed_weights() -> None:
    net = build_model("lenet5", num_classes=10, input_size=(1, 16, 16))
    dense = nonzero_macs(net, (1, 16, 16))
    conv = net.get_submodule("features.0")
    with torch.no_grad():
        conv.weight[:3, :, :2, :] = 0  # 3 filters x 1 channel x 2 x 5 weights = 30
    positions = 12 * 12  # a valid 5x5 convolution of 16x16
    assert nonzero_macs(net, (1, 16, 16)) == dense - 30 * positions


def _run(argv: list[str], out: Path) -> dict:
    assert main([*argv, "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_a_float_run_measures_size_and_bops_on_its_export(tmp_path: Path) -> None:
    metrics = _run([*TINY, "--budget-size", "100KB", "--budget-bops", "40%"], tmp_path / "run")
    checks = metrics["budgets"]
    assert set(checks) == {"size", "bops"} and all(c["met"] for c in checks.values())
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    nonzero = sum(int(torch.count_nonzero(t)) for t in state.values() if t.is_floating_point())
    assert checks["size"]["measured"] == 4 * metrics["final"]["nonzero_params"] == 4 * nonzero
    assert checks["bops"]["measured"] == metrics["final"]["macs"] * 32 * 32
    assert checks["size"]["limit"] == 100_000


def test_a_weight_sparse_run_measures_macs_and_bops_on_its_nonzero_weights(
    tmp_path: Path,
) -> None:
    argv = [*TINY, "--granularity", "weight", "--budget-flops", "20%", "--budget-bops", "25%",
            "--budget-size", "30%"]  # fmt: skip
    metrics = _run(argv, tmp_path / "run")
    checks = metrics["budgets"]
    assert set(checks) == {"macs", "bops", "size"} and all(c["met"] for c in checks.values())
    assert checks["macs"]["measured_on"] == "nonzero weights"
    # sparsity saves MACs: well under the dense count FlopCounterMode reports for the export
    assert checks["macs"]["measured"] <= 0.2 * metrics["dense"]["macs"] < metrics["final"]["macs"]
    assert checks["macs"]["measured"] == metrics["predicted"]["macs"]
    assert checks["bops"]["measured"] == checks["macs"]["measured"] * 32 * 32


@pytest.mark.parametrize(
    ("granularity", "budget", "broken"),
    [("weight", "--budget-flops", "macs"), ("weight", "--budget-size", "size"),
     ("channel", "--budget-bops", "bops")],
)  # fmt: skip
def test_an_export_that_breaks_a_budget_is_refused_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    granularity: str,
    budget: str,
    broken: str,
) -> None:
    # a slimming that forgets to prune: the dense model is exported under a 30% budget
    monkeypatch.setattr(finish, "slim", lambda model, graph, kept: model)
    out = tmp_path / "run"
    code = main([*TINY, "--granularity", granularity, budget, "30%", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == BudgetBrokenError.exit_code != 0 and "\n" not in err  # a bug, not bad input
    assert f"breaks its budgets: {broken} " in err and "nothing was written" in err
    assert list(tmp_path.iterdir()) == []
