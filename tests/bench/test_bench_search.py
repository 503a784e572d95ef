"""The search benchmark's report: rank correlation and the optuna-against-uniform checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoprune.bench.search_report import checks, paired_noise, render_readme, spearman


def test_spearman_ranks_with_ties_and_refuses_degenerate_input() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / 10**0.5)  # average ranks
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None


def test_readme_states_whether_optuna_beats_uniform(tmp_path: Path) -> None:
    row = {
        "proxy_accuracy": 0.9,
        "search_s": 1.0,
        "trials": 4,
        "macs": 1e5,
        "dense_macs": 2.29e6,
        "keep": [3, 2, 1],
        "budget_met": True,
    }
    seeds = {"test_accuracies": [0.95, 0.951, 0.949]}
    rows = [
        {**row, "method": "uniform", "budget": "10%", "test_accuracy": 0.95},
        {**row, "method": "optuna", "budget": "10%", "test_accuracy": 0.97, "keep": [4, 2, 1]},
        {**row, "method": "uniform", "budget": "5%", "test_accuracy": 0.93, **seeds},
        {**row, "method": "rl", "budget": "5%", "test_accuracy": 0.931, **seeds},
        {
            **row,
            "keep": [2, 2, 1],
            "method": "optuna",
            "budget": "5%",
            "test_accuracy": 0.9295,
            "test_accuracies": [0.9495, 0.9515, 0.9475],
        },  # paired: -0.05, +0.05, -0.15 points
    ]
    points = [{"keep": [i], "proxy_accuracy": i / 10, "test_accuracy": i / 10} for i in range(3)]
    summary = {
        "benchmark": "b",
        "dataset": "mnist",
        "command": "autoprune bench b",
        "rows": rows,
        "dense": {"checkpoint": "d.pt", "epochs": 1, "test_accuracy": 0.99, "macs": 2.29e6},
        "recipe": {
            "budgets": ["10%", "5%"],
            "backend": "reweighted",
            "epochs": 1,
            "finetune_epochs": 1,
            "lr": 0.01,
            "seed": 0,
            "trials": 4,
            "evaluator": {"val_limit": 100, "finetune_steps": 2},
        },
        "correlation": {"budget": "10%", "n": 3, "spearman": 1.0, "points": points},
    }
    lines = checks(summary)
    assert lines[0].startswith("- 10% MACs: optuna beats uniform") and "+2.00 points" in lines[0]
    assert lines[1].startswith("- 5% MACs: optuna does NOT beat uniform")
    # the same allocation as uniform (its own seed-0 run a little luckier) is no win
    assert lines[2].startswith(
        "- 5% MACs: rl does NOT beat uniform: it chose the uniform allocation"
    )
    assert "ahead on 1 of 3 seeds; within seed noise (+-0.12)" in lines[1]
    assert "noise" not in lines[0] and "seeds" not in lines[0]
    text = render_readme(summary, tmp_path)
    assert (
        "| optuna | 90.00% | 97.00% | 1.0 s | 4 |" in text
        and (tmp_path / "proxy_vs_final.png").is_file()
    )


def test_a_small_lead_on_every_seed_is_not_called_noise() -> None:
    """Seeds move both rows together: 0.05 points ahead on each of three seeds that differ by
    a whole point is a win, not noise."""
    uniform = {"test_accuracies": [0.95, 0.96, 0.97]}
    method = {"test_accuracies": [0.9505, 0.9604, 0.9706]}
    ahead, n, bound = paired_noise(method, uniform)
    assert (ahead, n) == (3, 3) and 0 < bound < 0.0005
    assert paired_noise(method, {"test_accuracies": [0.95, 0.96]}) is None
    assert paired_noise({"test_accuracies": [0.95]}, {"test_accuracies": [0.95]}) is None
