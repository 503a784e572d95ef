"""Runs with bits: model.apq in the run, budgets met on the file, `autoprune eval` reading it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoprune.allocation import Allocation
from autoprune.backends.base import BackendConfig
from autoprune.cli.main import main
from autoprune.cost.budgets import parse_budget
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.quant.bits import BitAllocation
from autoprune.train.checkpoint import save_checkpoint

SIZE = (1, 16, 16)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Allocation]:
    tmp = tmp_path_factory.mktemp("quant")
    loaded = load_model_and_data(model="lenet5", dataset="digits", input_size=SIZE, limit=96)
    ckpt = tmp / "dense.pt"
    save_checkpoint(ckpt, state_dict=loaded.model.state_dict(),
                    meta={"kind": "dense", "model": "lenet5", "num_classes": 10,
                          "input_size": list(SIZE), "dataset": "digits"})  # fmt: skip
    graph, plain = trace(loaded, "weight")
    bits = BitAllocation.uniform(graph, 3, 8)
    bits.act[graph.layers[0].name] = 32  # the image itself stays float
    cm = plain.with_bits(bits)
    budgets = [parse_budget("size", "8KB"), parse_budget("bops", "3%")]
    dense = {
        m: plain.metric(m, cm.dense_keep) for m in ("macs", "params", "weights", "size", "bops")
    }
    limits = {b.metric: b.limit(dense[b.metric]) for b in budgets}
    keep = project(np.full(4, 0.3), cm, limits, ProjectionConfig(min_ratio=0.001))
    alloc = Allocation.from_keep(graph, keep, num_classes=10, budgets=budgets, dense=dense,
                                 bits=bits, predicted=cm.costs(keep).as_dict(), dataset="digits",
                                 checkpoint=str(ckpt))  # fmt: skip
    alloc.save(tmp / "allocation.json")
    cfg = BackendConfig(epochs=1, finetune_epochs=1, batch_size=32, progress=False)
    out = tmp / "run"
    metrics = run_prune(
        PruneRun(
            allocation=str(tmp / "allocation.json"),
            out=str(out),
            backend="reweighted",
            backend_cfg=cfg,
            limit=96,
        )
    )
    return out, metrics, alloc


def test_prune_writes_the_artifact_and_meets_budgets_on_it(
    run: tuple[Path, dict, Allocation],
) -> None:
    out, metrics, alloc = run
    art = metrics["artifact"]
    assert (out / "model.apq").stat().st_size == art["bytes"] == art["predicted_bytes_exact"]
    # At uniform bits the search-time estimate is exact but for the scales of kernels that lost
    # every weight (it assumes none does), so it bounds the file from above.
    empty = sum(n == 0 for counts in art["kernel_nonzeros"].values() for n in counts)
    assert art["predicted_bytes_search"] - art["bytes"] == 4 * empty
    size, bops = metrics["budgets"]["size"], metrics["budgets"]["bops"]
    assert size == {
        "limit": 8000.0,
        "measured": art["bytes"],
        "met": True,
        "measured_on": "model.apq",
    }
    assert bops["met"] and bops["measured_on"] == "model.apq"
    assert art["nonzero_weights"] == int(alloc.keep.sum())  # mid-rise: no kept weight becomes 0
    assert art["weight_code_bytes"] == pytest.approx(alloc.keep.sum() * 3 / 8)
    fp32 = 4 * metrics["dense"]["weights"]
    assert art["storage_ratio"] == pytest.approx(fp32 / art["bytes"])
    assert art["weight_data_only_ratio"] == pytest.approx(fp32 / art["weight_code_bytes"])


def test_eval_reads_the_artifact(
    run: tuple[Path, dict, Allocation], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, metrics, _ = run
    assert main(["eval", str(out), "--limit", "96", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["artifact_bytes"] == metrics["artifact"]["bytes"]
    assert report["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert report["program_max_abs_diff"] < 1e-5  # model.pt2 computes what the artifact does
    alone = tmp_path / "model.apq"
    alone.write_bytes((out / "model.apq").read_bytes())
    assert main(["eval", str(alone), "--limit", "96"]) == 2  # nothing names its dataset
    assert "pass --dataset" in capsys.readouterr().err
    assert main(["eval", str(alone), "--dataset", "digits", "--limit", "96", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(report["accuracy"])


def test_channel_run_artifact_is_predicted_exactly(tmp_path: Path) -> None:
    """Channel granularity at uniform bits: the search-time estimate is the file size, to the
    byte (pruned channels are empty kernels; the weights that read them are zeroed too)."""
    loaded = load_model_and_data(model="lenet5", dataset="digits", input_size=SIZE, limit=64)
    save_checkpoint(tmp_path / "d.pt", state_dict=loaded.model.state_dict(),
                    meta={"kind": "dense", "model": "lenet5", "num_classes": 10,
                          "input_size": list(SIZE), "dataset": "digits"})  # fmt: skip
    graph, cm = trace(loaded, "channel")
    bits = BitAllocation.uniform(graph, 3, 8)
    keep = np.maximum(1, np.array(graph.sizes) // 2)
    alloc = Allocation.from_keep(graph, keep, num_classes=10, bits=bits, dataset="digits",
                                 predicted=cm.with_bits(bits).costs(keep).as_dict(),
                                 checkpoint=str(tmp_path / "d.pt"))  # fmt: skip
    alloc.save(tmp_path / "a.json")
    cfg = BackendConfig(epochs=1, finetune_epochs=1, batch_size=32, progress=False)
    metrics = run_prune(
        PruneRun(
            allocation=str(tmp_path / "a.json"),
            out=str(tmp_path / "run"),
            backend="magnitude",
            backend_cfg=cfg,
            limit=64,
        )
    )
    art = metrics["artifact"]
    assert (
        art["bytes"]
        == art["predicted_bytes_search"]
        == (tmp_path / "run" / "model.apq").stat().st_size
    )
    assert art["nonzero_weights"] == metrics["final"]["nonzero_weights"]  # what slimming keeps


@pytest.mark.slow
def test_quick_quant_bench_reports_the_artifact(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "lenet5-mnist-quant", "--quick", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["runs"]
    apq = out / row["artifact"]
    assert apq.stat().st_size == row["artifact_bytes"] == row["predicted_bytes_exact"]
    assert row["mean_weight_bits_per_layer"] == [4.0, 1.0, 1.0, 2.0]
    fp32 = summary["dense"]["fp32_weight_bytes"]
    assert row["storage_ratio"] == pytest.approx(fp32 / apq.stat().st_size)
    assert row["weight_data_only_ratio"] == pytest.approx(fp32 / row["weight_code_bytes"])
    assert "weight-data-only ratio" in (out / "README.md").read_text()
