"""torchvision-coverage: each model in its own watched process, measured on its exported program."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.bench import NAMES, load_benchmarks
from autoprune.bench.coverage import Limits, default_trace, input_size, run_model
from autoprune.bench.coverage_report import write_report

AWKWARD = str(Path(__file__).parents[1] / "graph")


def test_registered_and_sized_for_the_architecture() -> None:
    assert "torchvision-coverage" in NAMES and "torchvision-coverage" in load_benchmarks()
    assert input_size("resnet18", quick=False) == 96
    assert input_size("resnet18", quick=True) == 64
    assert input_size("vit_b_16", quick=True) == input_size("maxvit_t", quick=False) == 224


@pytest.mark.slow
def test_a_row_measures_the_exported_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", AWKWARD)  # the worker imports awkward.py
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    row = run_model("awkward:Shuffle", 16, tmp_path / "runs" / "shuffle", Limits())
    assert "error" not in row, row
    assert row["units"] == 2 and row["frozen"] == []
    assert row["predicted_equals_measured"] and row["budget_met"]
    assert 0.45 < row["macs_ratio"] <= 0.5
    assert row["peak_gb"] >= row["trace_peak_gb"] > 0.1
    assert row["wall_s"] >= row["search_s"] + row["trace_s"] and row["trace_s"] > 0


def test_memory_is_measured_at_the_default_input_in_its_own_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", AWKWARD)  # the worker's import, and the default size here
    monkeypatch.syspath_prepend(AWKWARD)
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", str(tmp_path / "cache"))  # the worker's is off
    default = default_trace("awkward:Shuffle", tmp_path / "logs", Limits())
    assert "error" not in default, default
    assert default["input"] == 224 and default["units"] == 2 and default["frozen"] == []
    assert default["peak_gb"] >= default["trace_peak_gb"] > 0.1  # its own process
    assert not (tmp_path / "cache").exists()  # verified, not read from a cache


def test_a_worker_over_its_memory_cap_is_stopped_and_reported(tmp_path: Path) -> None:
    row = run_model("resnet18", 64, tmp_path / "runs" / "r", Limits(memory_gb=0.02, poll_s=0.05))
    assert row["error"] == "stopped: resident memory passed 0.02 GB"
    assert row["peak_gb"] is not None and row["peak_gb"] < 1.0


def test_report_counts_what_the_rows_measured(tmp_path: Path) -> None:
    rows = [
        {"model": "a", "input": 64, "units": 3, "frozen": [], "macs_ratio": 0.4995,
         "predicted_equals_measured": True, "budget_met": True, "peak_gb": 1.0},
        {"model": "b", "input": 64, "units": 1, "frozen": [{"name": "x", "size": 4,
         "reason": "the slimmed model fails: E"}], "error": "autoprune search exited 2"},
    ]  # fmt: skip
    summary = write_report(tmp_path, rows, command="c", budget="50%", limits={"memory_gb": 4})
    s = summary["summary"]
    assert (s["exported"], s["budget_met"], s["budget_tight"], s["fully_prunable"]) == (1, 1, 1, 1)
    assert s["with_frozen_units"] == ["b"] and s["failed"] == {"b": "autoprune search exited 2"}
    readme = (tmp_path / "README.md").read_text()
    assert "| a | 64 | 3 | 0 | 49.95% | yes | - | - |" in readme
    assert "autoprune search exited 2" in readme
