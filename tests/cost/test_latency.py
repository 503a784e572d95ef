"""Latency tables: monotone predictions, latency budgets met by the projection, ONNX export."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mac_tables import mac_table
from torch import nn

from autoprune.cli.main import main
from autoprune.cost.budgets import parse_budget
from autoprune.cost.latency import (
    LatencyConfig,
    _grid,
    latency_check,
    latency_warning,
    measure_table,
    random_keeps,
    register_latency,
)
from autoprune.cost.latency_table import (
    LatencyPredictor,
    LatencyTable,
    LayerTiming,
    fit_calibrated,
    fit_rest,
    monotone,
)
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.cost.timing import TimingConfig
from autoprune.errors import UsageError
from autoprune.export.onnx import export_onnx
from autoprune.export.program import export_program
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.search import SEARCH_METHODS, SearchProblem

# Few widths, one short round: these tests check mechanics, not the machine's speed. The rest
# is fitted to the dense and smallest models only (calibration=0), as exactly as they allow.
FAST = LatencyConfig(
    fractions=(0.0, 0.5, 1.0),
    timing=TimingConfig(rounds=1, warmup=1, min_block_s=1e-4),
    calibration=0,
)


class Blocks(nn.Module):
    """Depthwise, pointwise, a residual add and a linear after a flatten: every width map kind."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Conv2d(8, 16, 1)
        )
        self.res = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.stem(x))
        return self.head(y + self.res(y))


def _traced(name: str, size: tuple[int, int, int]) -> tuple[nn.Module, CostModel]:
    torch.manual_seed(0)
    model = (
        Blocks().eval()
        if name == "blocks"
        else build_model(name, num_classes=10, input_size=size).eval()
    )
    return model, CostModel(trace_units(model, size, "channel", name))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Time with one thread: on a shared two-core machine a second thread waits on other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def lenet(one_thread: None) -> tuple[torch.nn.Module, CostModel, LatencyTable]:
    model, cm = _traced("lenet5", (1, 28, 28))
    return model, cm, measure_table(model, cm.graph, cm, FAST)


def _synthetic_table(cm: CostModel, seed: int, noise: float) -> LatencyTable:
    """A table whose timings grow with MACs plus `noise` (large noise: far from monotone)."""
    rng = np.random.default_rng(seed)

    def seconds(lay: Any, macs: np.ndarray) -> np.ndarray:
        return 1e-9 * macs + 1e-6 + noise * rng.uniform(0, 1, macs.shape)

    return mac_table(cm, (4, 3), seconds, 1e-4, 1e-9)


@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize(("name", "size"), [("lenet5", (1, 28, 28)), ("blocks", (3, 8, 8))])
def test_predictions_never_decrease_when_a_unit_keeps_more(
    name: str, size: tuple[int, int, int], block: int
) -> None:
    _, cm = _traced(name, size)
    assert name != "blocks" or any(lay.depthwise for lay in cm.graph.layers)
    table = _synthetic_table(cm, seed=1, noise=1e-4)
    table.block = block  # the grid is not at block starts here: monotone all the same
    predict = register_latency(cm, table)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = np.maximum(1, (cm.sizes * rng.uniform(0.0, 1.0, len(cm.sizes))).astype(np.int64))
        base = predict(keep)
        step = np.maximum(1, cm.sizes // 7)
        for u in range(len(keep)):
            wider = keep.copy()
            wider[u] = min(cm.sizes[u], keep[u] + step[u])
            assert predict(wider) >= base - 1e-15, f"unit {cm.graph.units[u].name}"
    assert predict(cm.dense_keep) > predict(np.ones(len(cm.sizes), dtype=np.int64))


def test_grid_times_block_starts_and_the_widest_widths() -> None:
    widths = _grid(1, 64, LatencyConfig().fractions, 1, 16)
    assert widths[0] == 1 and widths[-2:] == [63, 64] and len(widths) > 4
    assert all(w % 16 == 1 for w in widths[1:-2])
    assert _grid(4, 64, (0.0, 1.0), 1, 16) == [4, 49, 63, 64]  # the top block from its start


def test_a_staircase_timed_at_block_starts_is_priced_exactly_at_every_width() -> None:
    # Each layer takes one microsecond per (16-channel output block x input block), as CPU
    # kernels do; timed at every block start, the table prices every allocation exactly.
    _, cm = _traced("lenet5", (1, 28, 28))
    fractions = tuple(np.linspace(0.0, 1.0, 65))
    lo_out, lo_in = cm.layer_widths(np.ones(len(cm.sizes), dtype=np.int64))
    hi_out, hi_in = cm.layer_widths(cm.dense_keep)
    layers = []
    for i, lay in enumerate(cm.graph.layers):
        outs = _grid(lo_out[i], hi_out[i], fractions, 1, 16)
        ins = _grid(lo_in[i], hi_in[i], fractions, 1, 16)
        secs = [[1e-6 * -(-o // 16) * -(-n // 16) for n in ins] for o in outs]
        layers.append(LayerTiming(lay.name, outs, ins, secs))
    g = cm.graph
    table = LatencyTable(g.model_name, g.input_size, g.signature, 1, 1, layers, 0.0, 0.0, block=16)
    rng = np.random.default_rng(0)
    keeps = [
        np.maximum(1, (cm.sizes * rng.uniform(0, 1, len(cm.sizes))).astype(int)) for _ in range(20)
    ]
    errors = {}
    for block in (16, 1):
        table.block = block
        predictor = LatencyPredictor(table, cm)
        errors[block] = 0.0
        for keep in keeps:
            out, inp = cm.layer_widths(keep)
            true = 1e-6 * np.ceil(out / 16) * np.ceil(inp / 16)
            errors[block] = max(
                errors[block], float(np.abs(predictor.layer_seconds(keep) - true).max())
            )
    assert errors[16] < 1e-15 < 1e-8 < errors[1]  # a straight line between block starts is not


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31))
def test_monotone_grid_never_decreases_along_either_axis(rows: int, cols: int, seed: int) -> None:
    t = np.random.default_rng(seed).uniform(0, 1, (rows, cols))
    m = monotone(t)
    assert (np.diff(m, axis=0) >= 0).all() and (np.diff(m, axis=1) >= 0).all()
    assert m.max() <= t.max() + 1e-12 and m.min() >= t.min() - 1e-12


def test_measured_table_reproduces_the_timed_dense_and_smallest_models(lenet: tuple) -> None:
    _, cm, table = lenet
    predict = register_latency(cm, table)
    assert [lay.name for lay in table.layers] == [lay.name for lay in cm.graph.layers]
    assert all(s > 0 for lay in table.layers for row in lay.seconds for s in row)
    small = np.array(table.info["small_keep"])
    if table.rest_per_activation > 0:  # the rest term is fitted through both measured models
        assert predict(small) == pytest.approx(table.info["small_model_s"], rel=1e-9)
    assert 0.0 < predict(small) < predict(cm.dense_keep)  # whichever way fit_rest went
    assert predict(cm.dense_keep) == pytest.approx(table.info["dense_model_s"], rel=1e-9)
    assert table.threads == torch.get_num_threads() and table.batch == 1


def test_a_deployed_table_times_the_form_model_pt2_runs() -> None:
    from autoprune.cost.latency import DEPLOYED, DEPLOYED_LAST, PLAIN, _form, timed_copy

    model, cm = _traced("resnet20", (3, 32, 32))
    form, biased = _form(model, cm.graph, LatencyConfig())
    assert form in (DEPLOYED, DEPLOYED_LAST)
    # every conv is followed by a BatchNorm, which folds into a bias the probe layers carry
    assert model.stem[0].bias is None and all(biased[lay.name] for lay in cm.graph.layers)
    assert _form(model, cm.graph, LatencyConfig(channels_last=False))[0] == DEPLOYED
    assert _form(model, cm.graph, LatencyConfig(channels_last=True))[0] == DEPLOYED_LAST
    assert _form(model, cm.graph, LatencyConfig(deployed=False)) == (PLAIN, {})
    # a model of its own with a child called `net` and no image input (no normalising wrapper)
    flat = nn.Sequential()
    flat.net = nn.Sequential(nn.Linear(16, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
    flat.head = nn.Linear(8, 4)
    flat.eval()
    flat_cm = CostModel(trace_units(flat, (16,), "channel", "flat"))
    assert _form(flat, flat_cm.graph, LatencyConfig()) == (DEPLOYED, {"net.0": True, "head": True})
    keep = np.maximum(1, cm.sizes // 2)
    plain = timed_copy(model, cm.graph, keep, PLAIN)
    last = timed_copy(model, cm.graph, keep, DEPLOYED_LAST)
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in last.modules())
    convs = [m for m in last.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(last(x), plain(x), rtol=1e-4, atol=1e-4)


def test_a_plain_table_is_registered_with_a_warning_and_an_unknown_form_refused(
    tmp_path: Path,
) -> None:
    _, cm = _traced("lenet5", (1, 28, 28))
    table = _synthetic_table(cm, seed=7, noise=0.0)
    table.form = "plain"
    with pytest.warns(UserWarning, match="timed the modules as built"):
        register_latency(cm, table)
    d = table.to_dict() | {"form": "sideways"}
    with pytest.raises(UsageError, match="has form 'sideways'"):
        LatencyTable.from_dict(d)


def test_a_cached_table_is_reused_only_in_the_form_asked_for(tmp_path: Path) -> None:
    from autoprune.cost.latency import TABLE_FILE, _cached

    _, cm = _traced("lenet5", (1, 28, 28))
    table = _synthetic_table(cm, seed=6, noise=0.0)
    table.info["fractions"], table.block = list(FAST.fractions), FAST.block
    for form, wanted, reused in [
        ("plain", FAST, False),
        ("deployed", FAST, True),
        ("deployed-channels-last", FAST, True),
        ("deployed-channels-last", dataclasses.replace(FAST, channels_last=False), False),
        ("deployed", dataclasses.replace(FAST, channels_last=True), False),
        ("plain", dataclasses.replace(FAST, deployed=False), True),
    ]:
        table.form = form
        table.save(tmp_path / TABLE_FILE)
        assert (_cached(tmp_path, cm.graph, wanted) is not None) == reused, (form, wanted)


def test_rest_fit_reproduces_both_models_and_never_prices_a_model_at_nothing() -> None:
    # (dense, smallest): measured seconds, sum of the layers' table times, output elements.
    scale, const, slope = fit_rest((10e-3, 2e-3), (8e-3, 1e-3), (1e6, 1e4))
    assert scale == 1.0 and const >= 0.0 and slope >= 0.0  # the layers explain part of each
    for m, lay, a in ((10e-3, 8e-3, 1e6), (2e-3, 1e-3, 1e4)):
        assert scale * lay + const + slope * a == pytest.approx(m)
    # Layers timed under load add up to more than the whole model (seen: 46.7 ms of layers for a
    # ResNet-18 measured at 27.1 ms); a rest of -19.6 ms priced small models below zero.
    scale, const, slope = fit_rest((27.06e-3, 2.06e-3), (46.7e-3, 2.5e-3), (2.3e6, 1e5))
    assert 0.0 < scale < 1.0 and const >= 0.0 and slope == 0.0
    for m, lay in ((27.06e-3, 46.7e-3), (2.06e-3, 2.5e-3)):
        assert scale * lay + const == pytest.approx(m)
    # Noise that makes the smallest model the slower one: no exact fit, still positive.
    scale, const, _ = fit_rest((5e-3, 6e-3), (9e-3, 1e-3), (1e6, 1e4))
    assert const == 0.0 and scale * 9e-3 == pytest.approx(5e-3)


def test_calibrated_fit_recovers_how_whole_models_relate_to_their_layers() -> None:
    rng = np.random.default_rng(0)
    layers, acts = rng.uniform(1e-3, 9e-3, 8), rng.uniform(1e4, 1e6, 8)
    measured = 1.3 * layers + 2e-4 + 3e-10 * acts  # layers alone 30% short of the whole model
    scale, const, slope = fit_calibrated(measured, layers, acts)
    assert (scale, const, slope) == pytest.approx((1.3, 2e-4, 3e-10), rel=1e-6)
    # a term the data would make negative is zero (the prediction stays monotone), not negative
    scale, const, slope = fit_calibrated(0.8 * layers - 1e-10 * acts + 1e-3, layers, acts)
    assert scale > 0 and const >= 0 and slope == 0.0
    # two models, or nothing the layers explain: the two-point fit takes over
    assert fit_calibrated(measured[:2], layers[:2], acts[:2]) is None
    assert fit_calibrated([1e-3, 2e-3, 3e-3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) is None


def test_a_calibrated_table_fits_whole_models_at_least_as_well_as_two_of_them(
    one_thread: None,
) -> None:
    model, cm = _traced("lenet5", (1, 28, 28))
    table = measure_table(model, cm.graph, cm, dataclasses.replace(FAST, calibration=4))
    info = table.info
    assert len(info["calibration_s"]) == len(info["calibration_layers_s"]) == 4
    keeps = [cm.dense_keep, np.array(info["small_keep"])]
    keeps += random_keeps(cm, 4, LatencyConfig().calibration_seed, independent=True)
    measured = np.array([info["dense_model_s"], info["small_model_s"], *info["calibration_s"]])
    predict = LatencyPredictor(table, cm)
    calibrated = np.array([predict(k) for k in keeps]) / measured - 1
    two_point = dataclasses.replace(table, layer_scale=1.0)
    layers = np.array([predict.layer_seconds(k).sum() / table.layer_scale for k in keeps])
    positions = np.array([lay.positions for lay in cm.graph.layers], dtype=np.float64)
    acts = np.array([cm.layer_widths(k)[0] @ positions for k in keeps])
    two_point.layer_scale, two_point.rest_const, two_point.rest_per_activation = fit_rest(
        (measured[0], measured[1]), (layers[0], layers[1]), (acts[0], acts[1])
    )
    plain = np.array([LatencyPredictor(two_point, cm)(k) for k in keeps]) / measured - 1
    assert np.sum(calibrated**2) <= np.sum(plain**2) * (1 + 1e-9)


def test_a_table_that_prices_a_model_at_nothing_is_refused(tmp_path: Path) -> None:
    _, cm = _traced("lenet5", (1, 28, 28))
    table = _synthetic_table(cm, seed=0, noise=0.0)
    table.layer_scale = 0.5
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.layer_scale == 0.5
    half = register_latency(CostModel(cm.graph), again).layer_seconds(cm.dense_keep)
    full = register_latency(CostModel(cm.graph), _synthetic_table(cm, seed=0, noise=0.0))
    assert half == pytest.approx(0.5 * full.layer_seconds(cm.dense_keep))
    again.rest_const = -1.0  # as tables fitted before layer_scale could come out
    with pytest.raises(UsageError, match="rebuild it"):
        register_latency(CostModel(cm.graph), again)


def test_table_round_trips_through_json_and_refuses_another_model(
    lenet: tuple, tmp_path: Path
) -> None:
    _, cm, table = lenet
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    keep = cm.dense_keep // 2
    assert register_latency(CostModel(cm.graph), again)(keep) == register_latency(cm, table)(keep)
    _, other = _traced("lenet5", (1, 32, 32))
    with pytest.raises(UsageError, match=r"measured for lenet5 at 1x28x28"):
        register_latency(other, again)
    with pytest.raises(UsageError, match="not found"):
        LatencyTable.load(tmp_path / "missing.json")


@pytest.mark.parametrize("others", [{}, {"macs": 0.8}])
def test_latency_budget_is_met_by_the_projection(others: dict[str, float]) -> None:
    _, cm = _traced("blocks", (3, 8, 8))
    register_latency(cm, _synthetic_table(cm, seed=2, noise=1e-7))
    dense = {m: cm.metric(m, cm.dense_keep) for m in ("latency", "macs")}
    limits = {"latency": 0.6 * dense["latency"], **{m: f * dense[m] for m, f in others.items()}}
    rng = np.random.default_rng(0)
    for _ in range(10):
        keep = project(rng.uniform(0.05, 1.0, len(cm.sizes)), cm, limits)
        for metric, limit in limits.items():
            assert cm.metric(metric, keep) <= limit
        # The fill step leaves no unit that could keep one more element within every budget.
        grown = [
            np.where(np.arange(len(keep)) == u, keep + 1, keep)
            for u in range(len(keep))
            if keep[u] < cm.sizes[u]
        ]
        assert all(any(cm.metric(m, g) > lim for m, lim in limits.items()) for g in grown)


@pytest.mark.parametrize("method", ["uniform", "random"])
def test_every_search_method_meets_a_latency_budget(method: str) -> None:
    _, cm = _traced("lenet5", (1, 28, 28))
    register_latency(cm, _synthetic_table(cm, seed=3, noise=1e-7))
    limit = parse_budget("latency", "50%").limit(cm.metric("latency", cm.dense_keep))
    problem = SearchProblem(cm, {"latency": limit}, lambda k: float(k.sum()), 0, ProjectionConfig())
    kwargs = {"trials": 3} if method == "random" else {}
    result = SEARCH_METHODS.get(method)(**kwargs).search(problem)
    assert all(cm.metric("latency", t.keep) <= limit for t in result.trials)


def test_search_measures_a_table_once_caches_it_and_records_measured_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autoprune.cost.latency as latency
    from autoprune.pipeline.search import SearchRun, run_search

    calls = []

    def fake_measure(
        model: nn.Module, graph: object, cm: CostModel, cfg: object, progress: bool = False
    ) -> LatencyTable:
        calls.append(
            cfg
        )  # a synthetic table keeps the 60% budget feasible however loaded the machine is
        table = _synthetic_table(cm, seed=4, noise=0.0)
        table.info["fractions"] = list(cfg.fractions)  # type: ignore[attr-defined]
        table.block = cfg.block  # type: ignore[attr-defined]  # as measure_table records it
        table.form = "deployed"  # (what model.pt2 runs, the default)
        return table

    monkeypatch.setattr(latency, "measure_table", fake_measure)
    out = tmp_path / "run"
    cfg = SearchRun(
        dataset="digits",
        out=str(out),
        budgets=[parse_budget("latency", "60%")],
        model="lenet5",
        method="uniform",
        limit=64,
        no_prune=True,
        progress=False,
    )
    metrics = run_search(cfg)
    table = json.loads((out / "latency_table.json").read_text())
    allocation = json.loads((out / "allocation.json").read_text())
    assert (
        len(calls) == 1
        and allocation["predicted"]["latency"] <= 0.6 * allocation["dense"]["latency"]
    )
    lat = metrics["latency"]
    assert (
        lat["dense_s"] > 0
        and lat["final_s"] > 0
        and lat["speedup"] == pytest.approx(lat["dense_s"] / lat["final_s"])
    )
    assert (
        metrics["dense"]["latency_s"] == lat["dense_s"]
        and metrics["final"]["latency_s"] == lat["final_s"]
    )
    check = metrics["budgets"]["latency"]
    assert (
        check["limit"] == pytest.approx(0.6 * lat["dense_s"])
        and check["measured"] == lat["final_s"]
    )
    # A second attempt at the same run directory (here from the CLI) reuses the table.
    argv = [
        "search",
        "--model",
        "lenet5",
        "--limit",
        "64",
        "--budget-latency",
        "60%",
        "--method",
        "uniform",
        "--dense-epochs",
        "0",
        "--no-prune",
        "--quiet",
        "--force",
        "--out",
        str(out),
    ]
    assert main(argv) == 0 and len(calls) == 1
    assert json.loads((out / "latency_table.json").read_text()) == table
    err = capsys.readouterr().err
    missed = json.loads((out / "metrics.json").read_text())["budgets"]["latency"]["miss"] > 0.10
    assert ("misses --budget-latency 60%" in err) == missed


def test_a_given_table_file_is_registered(tmp_path: Path) -> None:
    from autoprune.cost.latency import attach_latency

    model, cm = _traced("lenet5", (1, 28, 28))
    _synthetic_table(cm, seed=5, noise=0.0).save(tmp_path / "t.json")
    budgets = [parse_budget("macs", "50%")]
    assert attach_latency(budgets, model, cm.graph, cm, table_path=None, run_dir=None) is None
    assert "latency" not in cm.metrics
    table = attach_latency(
        budgets, model, cm.graph, cm, table_path=str(tmp_path / "t.json"), run_dir=None
    )
    assert table is not None and "latency" in cm.metrics
    assert cm.metric("latency", cm.dense_keep) > cm.metric("latency", cm.dense_keep // 2)


def test_latency_budget_needs_channel_granularity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "search",
            "--model",
            "lenet5",
            "--limit",
            "32",
            "--granularity",
            "weight",
            "--budget-latency",
            "50%",
            "--method",
            "uniform",
            "--no-prune",
            "--quiet",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 2 and "--granularity channel" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_warning_names_the_miss_only_beyond_ten_percent() -> None:
    budget = parse_budget("latency", "5ms")
    assert latency_warning({"budgets": {"latency": latency_check(budget, 0.010, 0.0054)}}) is None
    line = latency_warning(
        {
            "budgets": {"latency": latency_check(budget, 0.010, 0.006)},
            "predicted": {"latency": 0.0049},
        }
    )
    assert line is not None and "by 20%" in line and "5ms" in line and "\n" not in line
    relative = latency_check(parse_budget("latency", "50%"), 0.010, 0.0045)
    assert relative["limit"] == pytest.approx(0.005) and relative["met"]


def test_onnx_export_matches_the_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    model, _ = _traced("lenet5", (1, 28, 28))
    export_program(model, (1, 28, 28), [0.13], [0.31], tmp_path / "model.pt2")
    assert main(["export", "--onnx", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (
        Path(report["onnx"]) == tmp_path / "model.onnx"
        and max(report["max_abs_diff"].values()) <= 1e-4
    )
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(tmp_path / "model.pt2")).module()
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        np.testing.assert_allclose(got, program(x).detach().numpy(), atol=1e-4, rtol=0)


def test_export_refuses_a_folder_without_a_program(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no model\.pt2"):
        export_onnx(tmp_path)
    assert main(["export", str(tmp_path)]) == 2  # no format chosen


def test_latency_table_command_writes_a_table_that_fits_the_model(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    argv = ["latency-table", "--model", "lenet5", "--rounds", "1", "--threads", "1", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    table = LatencyTable.load(out)
    _, cm = _traced("lenet5", (1, 28, 28))
    # fitted to 26 whole models (dense, smallest, 24 random): close to each, exact for none
    assert len(table.info["calibration_s"]) == LatencyConfig().calibration == 24
    dense = register_latency(cm, table)(cm.dense_keep)
    assert dense == pytest.approx(table.info["dense_model_s"], rel=0.25)
    assert (table.threads, table.batch, table.info["num_classes"]) == (1, 1, 10)
    assert main([*argv[:-1], "--rounds", "0", "--out", str(tmp_path / "bad.json")]) == 2
    assert not (tmp_path / "bad.json").exists()
