"""alloc-lenet5-weight: paired differences and checks on made-up rows, and a quick run on digits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from autoprune.bench import NAMES, BenchConfig, alloc_lenet5, load_benchmarks
from autoprune.bench.alloc_lenet5 import QUICK, point_name
from autoprune.bench.alloc_report import beyond, paired, render_readme, summarise
from autoprune.errors import UsageError

ORDER = ("uniform", "erk", "global", "lamp", "optuna", "rl", "dsa")


def _row(method: str, seed: int, acc: float, proxy: float | None = 0.5) -> dict[str, Any]:
    return {"method": method, "seed": seed, "test_accuracy": acc, "proxy_accuracy": proxy,
            "search_s": 1.0, "compression": 71.0, "budget_met": True, "code": "abc1234 (clean)",
            "checkpoint": "/r/dense-mnist/checkpoint.pt", "keep": [1], "run": "x"}  # fmt: skip


def test_paired_differences_are_by_seed_with_two_standard_errors() -> None:
    d = paired({0: 0.99, 1: 0.98, 2: 0.97}, {0: 0.98, 1: 0.98, 2: 0.95, 3: 0.5})
    assert d is not None and d["n"] == 3  # seed 3 has no partner
    assert d["mean"] == pytest.approx(0.01)
    assert d["two_se"] == pytest.approx(2 * 0.01 / 3**0.5)  # std of (0.01, 0, 0.02) is 0.01
    assert beyond(d, +1) is False and beyond(d, -1) is False
    assert beyond(paired({0: 0.9, 1: 0.91}, {0: 0.8, 1: 0.8}), +1) is True
    assert beyond(paired({0: 0.9}, {0: 0.8}), +1) is None  # one seed: no noise estimate
    assert paired({0: 0.9}, {1: 0.8}) is None


def test_checks_name_the_best_search_and_heuristic() -> None:
    rows = []
    for seed, (u, g, lamp, opt, rl) in enumerate(
        [
            (0.90, 0.93, 0.92, 0.95, 0.85),
            (0.91, 0.94, 0.92, 0.96, 0.86),
            (0.90, 0.93, 0.93, 0.955, 0.84),
        ]
    ):
        rows += [_row("uniform", seed, u), _row("global", seed, g), _row("lamp", seed, lamp),
                 _row("optuna", seed, opt, proxy=opt), _row("rl", seed, rl, proxy=rl)]  # fmt: skip
    point = {"point": "mnist-310x", "dataset": "mnist", "ratio": 310.0, "rows": rows}
    summary = summarise([point], ORDER)
    (p,) = summary["points"]
    assert [t["method"] for t in p["methods"]] == ["uniform", "global", "lamp", "optuna", "rl"]
    c = p["checks"]
    assert c["best_heuristic"] == "global" and c["best_search"] == "optuna"
    assert c["search_beats_uniform"] is True and c["search_below_best_heuristic"] is False
    assert c["searches_below_uniform"] == ["rl"]
    assert p["spearman_n"] == 15 and summary["trained_at"] == ["abc1234 (clean)"]
    text = render_readme(summary | {"benchmark": "b", "quick": False, "command": "c",
                                    "rendered_at": "def5678 (clean)"})  # fmt: skip
    assert "## mnist-310x" in text and "Runs trained at commit: abc1234 (clean)" in text
    assert "searches below uniform beyond noise: rl" in text


def test_the_benchmark_is_registered_and_refuses_unknown_budgets(tmp_path: Path) -> None:
    assert "alloc-lenet5-weight" in NAMES
    bench = load_benchmarks().get("alloc-lenet5-weight")
    with pytest.raises(UsageError, match="no budget mnist-7x"):
        bench(BenchConfig(out=str(tmp_path), only=["mnist-7x"]))
    assert point_name("fashion-mnist", 71.2) == "fashion-mnist-71.2x"


@pytest.mark.slow  # ~4 min on two loaded cores (the whole --quick: 8 min)
@pytest.mark.timeout(900)
def test_quick_run_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a heuristic, a search and uniform: the whole flow, at half the runs of --quick
    quick = dataclasses.replace(QUICK, methods=("uniform", "global", "optuna"))
    monkeypatch.setattr(alloc_lenet5, "QUICK", quick)
    summary = load_benchmarks().get("alloc-lenet5-weight")(
        BenchConfig(out=str(tmp_path), quick=True, progress=False)
    )
    (point,) = summary["points"]
    methods = {t["method"]: t for t in point["methods"]}
    assert set(methods) == {*quick.methods, "admm-published"}
    assert all(t["seeds"] == list(quick.seeds) and t["budget_met"] for t in methods.values())
    assert all(t["proxy_accuracy"] is not None for t in methods.values())  # heuristics scored too
    assert methods["optuna"]["vs_uniform"]["n"] == len(quick.seeds)
    assert point["spearman_n"] == 2 * len(methods)
    run = tmp_path / "runs" / "digits-20x" / "optuna-seed0"
    alloc = json.loads((run / "allocation.json").read_text())
    assert alloc["checkpoint"] == str((tmp_path / "dense-digits" / "checkpoint.pt").resolve())
    assert summary["trained_at"] and (tmp_path / "README.md").is_file()
