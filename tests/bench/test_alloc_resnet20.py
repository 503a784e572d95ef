"""alloc-resnet20-fmnist: the fixed training subset, the landscape summary, and a quick run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from autoprune.bench import NAMES, BenchConfig, alloc_resnet20, alloc_runs, load_benchmarks
from autoprune.bench.alloc_report import render_readme, summarise
from autoprune.bench.alloc_resnet20 import Recipe, stratified_subset, subset_folder
from autoprune.bench.alloc_runs import best_so_far
from autoprune.errors import DataError, UsageError
from autoprune.search.finalists import FinalRound
from autoprune.train.data import load_dataset
from autoprune.train.idx import IDX_FILES, read_idx, write_idx

ORDER = ("uniform", "global", "optuna", "rl", "dsa")


def _fake_fmnist(root: Path, n_train: int = 200, n_test: int = 30) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for (images, labels), n in zip(IDX_FILES.values(), (n_train, n_test), strict=True):
        write_idx(raw / images, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / labels, (np.arange(n) % 10).astype(np.uint8))
    return root


def test_stratified_subset_takes_every_class_equally_and_is_seeded() -> None:
    labels = np.random.default_rng(1).integers(0, 10, 1000)
    a = stratified_subset(labels, 100, seed=0)
    assert len(set(a.tolist())) == 100
    assert np.bincount(labels[a], minlength=10).tolist() == [10] * 10
    assert np.array_equal(a, stratified_subset(labels, 100, seed=0))
    assert not np.array_equal(a, stratified_subset(labels, 100, seed=1))
    with pytest.raises(DataError, match="cannot draw 105"):
        stratified_subset(labels, 105, seed=0)


def test_subset_folder_keeps_the_whole_test_split(tmp_path: Path) -> None:
    data = _fake_fmnist(tmp_path / "src")
    recipe = Recipe(train_images=100)
    folder = Path(subset_folder(tmp_path / "out", recipe, str(data)))
    train = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert len(train) == 100 and np.bincount(train).tolist() == [10] * 10
    assert len(read_idx(folder / "t10k-images-idx3-ubyte.gz")) == 30
    splits = load_dataset("fashion-mnist", input_size=(1, 28, 28), data_dir=str(folder))
    assert len(splits.test) == 30 and len(splits.train) + len(splits.val) == 100
    with pytest.raises(UsageError, match="--data-dir"):
        subset_folder(tmp_path / "other", recipe, None)


def _row(method: str, seed: int, acc: float, proxy: float) -> dict[str, Any]:
    return {"method": method, "seed": seed, "test_accuracy": acc, "proxy_accuracy": proxy,
            "search_s": 1.0, "compression": 3.0, "budget_met": True, "code": "abc (clean)",
            "checkpoint": "results/x/dense/checkpoint.pt", "keep": [4, 8], "run": "r"}  # fmt: skip


def test_landscape_rows_are_summarised_apart_from_the_methods() -> None:
    rows = [_row("uniform", 0, 0.80, 0.5), _row("uniform", 1, 0.81, 0.5),
            _row("optuna", 0, 0.84, 0.7), _row("optuna", 1, 0.85, 0.7)]  # fmt: skip
    rows += [_row(f"landscape-{i}", 0, acc, acc - 0.3) for i, acc in enumerate([0.78, 0.83, 0.82])]
    point = {"point": "mixed", "dataset": "fashion-mnist",
             "budgets": ["macs 25%", "params 10%"], "rows": rows}  # fmt: skip
    (p,) = summarise([point], ORDER)["points"]
    assert [t["method"] for t in p["methods"]] == ["uniform", "optuna"]
    land = p["landscape"]
    assert land["n"] == 3 and land["uniform"] == 0.80 and land["above_uniform"] == 2
    assert land["best"] == 0.83 and land["worst"] == 0.78
    assert p["spearman_n"] == 7  # the landscape's allocations count for the proxy's rank
    text = render_readme({"points": [p], "trained_at": [], "checkpoints": [],
                          "benchmark": "b", "quick": False, "command": "c",
                          "rendered_at": "d"})  # fmt: skip
    assert "## mixed (macs 25% + params 10%)" in text
    assert "2 of 3 above it" in text and "| landscape-1 | 4 8 | 83.00% | 53.00% |" in text


def test_best_so_far_counts_a_search_own_evaluations_against_random(tmp_path: Path) -> None:
    log = tmp_path / "trials.json"
    log.write_text(json.dumps([
        {"score": 0.6, "source": "uniform"}, {"score": 0.7, "source": "global"},
        {"score": 0.5}, {"score": 0.4}, {"score": 0.65}, {"score": None},
    ]))  # fmt: skip
    assert best_so_far(log) == [0.5, 0.5, 0.65]  # the starts it was handed are not its finds
    assert best_so_far(tmp_path / "none.json") is None
    rows = []
    for seed, (rand, tpe) in enumerate([([0.5, 0.6, 0.6], [0.55, 0.7, 0.7, 0.72]),
                                        ([0.4, 0.5, 0.55], [0.5, 0.6, 0.65, 0.7])]):  # fmt: skip
        rows += [_row("random", seed, 0.8, rand[-1]) | {"curve": rand},
                 _row("optuna", seed, 0.8, tpe[-1]) | {"curve": tpe}]  # fmt: skip
    point = {"point": "mixed", "dataset": "d", "rows": rows}
    (p,) = summarise([point], ("random", *ORDER))["points"]
    random_curve, optuna_curve = p["curves"]
    assert random_curve["method"] == "random" and random_curve["vs_random"] is None
    assert optuna_curve["evaluations"] == 4 and optuna_curve["best_at"] == {1: 0.525}
    vs = optuna_curve["vs_random"]  # at n=3, the most both have: 0.7 - 0.6 and 0.65 - 0.55
    assert vs["at"] == 3 and vs["n"] == 2 and vs["mean"] == pytest.approx(0.1)
    text = render_readme({"points": [p], "trained_at": [], "checkpoints": [], "benchmark": "b",
                          "quick": False, "command": "c", "rendered_at": "d"})  # fmt: skip
    assert "| optuna | 4 | 52.50% | +10.00 ± 0.00 pts (n=2) at n=3 |" in text
    # seeds that do not match: compared over the seeds both have, at the length both have;
    # dsa learns from batches, not proxy calls, so it has no curve
    rows = [_row("random", 0, 0.8, 0.6) | {"curve": [0.5, 0.6, 0.6]},
            _row("random", 1, 0.8, 0.5) | {"curve": [0.5]},
            _row("rl", 0, 0.8, 0.7) | {"curve": [0.4, 0.7, 0.7, 0.7]},
            _row("rl", 2, 0.8, 0.7) | {"curve": [0.4, 0.5, 0.6, 0.7]},
            _row("dsa", 0, 0.8, 0.7) | {"curve": [0.7]}]  # fmt: skip
    (p,) = summarise([{"point": "m", "dataset": "d", "rows": rows}], ("random", *ORDER))["points"]
    assert [c["method"] for c in p["curves"]] == ["random", "rl"]
    vs = p["curves"][1]["vs_random"]
    assert vs["at"] == 3 and vs["n"] == 1 and vs["mean"] == pytest.approx(0.1)


def test_registered_and_unknown_budgets_refused(tmp_path: Path) -> None:
    assert "alloc-resnet20-fmnist" in NAMES
    bench = load_benchmarks().get("alloc-resnet20-fmnist")
    with pytest.raises(UsageError, match="no budget macs-7"):
        bench(BenchConfig(out=str(tmp_path), only=["macs-7"]))
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.slow  # ~3 min idle, ~10 min on two loaded cores (the whole --quick: 35 min loaded)
@pytest.mark.timeout(1500)
def test_quick_run_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # uniform, a heuristic and one landscape allocation: the whole flow at a third of --quick
    quick = dataclasses.replace(alloc_resnet20.QUICK, methods=("uniform", "global"), seeds=(0,))
    monkeypatch.setattr(alloc_resnet20, "QUICK", quick)
    summary = load_benchmarks().get("alloc-resnet20-fmnist")(
        BenchConfig(out=str(tmp_path), quick=True, progress=False)
    )
    (point,) = summary["points"]
    assert [t["method"] for t in point["methods"]] == ["uniform", "global"]
    assert all(t["budget_met"] and t["seeds"] == [0] for t in point["methods"])
    assert point["landscape"]["n"] == 1 and point["spearman_n"] == 3
    assert (tmp_path / "dense" / "checkpoint.pt").is_file()
    assert "## macs-30 (macs 30%)" in (tmp_path / "README.md").read_text()


def test_proxies_of_allocations_no_search_chose_come_from_the_recipe_evaluator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A uniform run's recorded proxy may come from an evaluator the recipe has since replaced;
    # a search's row keeps the score that search saw. With the recipe's final round (4 fresh
    # orders) the others get the mean over the orders a search's finalists are scored on.
    scored: list[tuple[int, tuple[int, ...]]] = []

    class Evaluator:
        def __init__(self, seed: int) -> None:
            self.seed = seed

        @classmethod
        def from_splits(cls, model: Any, graph: Any, data: Any, cfg: Any) -> Evaluator:
            return cls(cfg.seed)

        def reordered(self, seed: int) -> Evaluator:
            return Evaluator(seed)

        def __call__(self, keep: np.ndarray) -> float:
            scored.append((self.seed, tuple(int(k) for k in keep)))
            return self.seed / 100

    loaded = SimpleNamespace(model=None, data=None)
    monkeypatch.setattr(alloc_runs, "load_model_and_data", lambda **kw: loaded)
    monkeypatch.setattr(alloc_runs, "trace", lambda loaded, granularity: (None, None))
    monkeypatch.setattr(alloc_runs, "MaskEvaluator", Evaluator)

    def rows() -> list[dict[str, Any]]:
        return [{"method": "uniform", "seed": 1, "keep": [4, 2], "proxy_accuracy": 0.5},
                {"method": "optuna", "seed": 0, "keep": [3, 3], "proxy_accuracy": 0.6},
                {"method": "landscape", "seed": 0, "keep": [1, 5],
                 "proxy_accuracy": None}]  # fmt: skip

    got = rows()
    alloc_runs.fill_proxies(got, Recipe(), "fashion-mnist", "dense.pt", None)
    fresh = {seed: Recipe().final_round.order_seeds(seed) for seed in (0, 1)}
    assert len(fresh[0]) == 4 and not set(fresh[0]) & set(fresh[1])  # runs share no order
    assert [r["proxy_accuracy"] for r in got] == pytest.approx(
        [np.mean(fresh[1]) / 100, 0.6, np.mean(fresh[0]) / 100]
    )  # the fresh orders only, as a search's finalists are scored
    orders = [(s, (1, 5)) for s in fresh[0]] + [(s, (4, 2)) for s in fresh[1]]
    assert sorted(scored) == sorted(orders)
    scored.clear()
    single = dataclasses.replace(Recipe(), final_round=FinalRound(finalists=0))
    got = rows()
    alloc_runs.fill_proxies(got, single, "fashion-mnist", "dense.pt", None)
    assert [r["proxy_accuracy"] for r in got] == pytest.approx([0.01, 0.6, 0.0])
    assert sorted(scored) == [(0, (1, 5)), (1, (4, 2))]  # each with its own seed's evaluator


def test_the_report_says_what_each_search_returned(tmp_path: Path) -> None:
    log = tmp_path / "trials.json"
    log.write_text(json.dumps([{"keep": [4, 2], "source": "lamp"}, {"keep": [3, 3]}]))
    assert alloc_runs.returned(log, [4, 2]) == "lamp"
    assert alloc_runs.returned(log, [3, 3]) == "own"
    assert alloc_runs.returned(log, [1, 1]) is None
    assert alloc_runs.returned(tmp_path / "none.json", [4, 2]) is None
    rows = [_row("uniform", 0, 0.8, 0.5), _row("optuna", 1, 0.8, 0.6) | {"returned": "own"},
            _row("optuna", 0, 0.8, 0.6) | {"returned": "lamp"}]  # fmt: skip
    (p,) = summarise([{"point": "m", "dataset": "d", "rows": rows}], ORDER)["points"]
    assert p["returned"] == {"optuna": {0: "lamp", 1: "own"}}
    text = render_readme({"points": [p], "trained_at": [], "checkpoints": [], "benchmark": "b",
                          "quick": False, "command": "c", "rendered_at": "d"})  # fmt: skip
    assert "of its own proposals): optuna 0 lamp, 1 own." in text


def test_only_the_searches_get_the_final_round() -> None:
    recipe = Recipe()
    assert recipe.final_round.active
    for method in ("uniform", "global"):  # nothing to re-score: the pipeline refuses --finalists
        assert not alloc_runs.final_round_for(recipe, method).active
    for method in ("random", "optuna", "rl", "dsa"):
        assert alloc_runs.final_round_for(recipe, method) == recipe.final_round
