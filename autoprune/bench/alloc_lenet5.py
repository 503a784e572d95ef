"""`autoprune bench alloc-lenet5-weight`: allocation methods on LeNet-5 at weight granularity.

Params budgets at 71x, 150x, 310x and 500x compression on MNIST and at 20x and 71x on
Fashion-MNIST (compression = conv + linear weights / kept weights, biases excluded: a budget of
R is the dense weights / R plus the biases). Each method (uniform, erk, global, lamp, optuna, rl,
dsa) allocates one dense checkpoint per dataset with search seed s, and the same backend recipe
trains every allocation with backend seed s, for each seed; ADMM's published 20 / 8 / 0.9 / 7 %
(Zhang et al. 2018, 71.2x) is trained the same way on MNIST. Final test accuracy is the mean
over seeds; methods are compared seed by seed with uniform and with the best heuristic (paired
differences, two standard errors, in autoprune.bench.alloc_report), and the proxy's Spearman
rank correlation with final accuracy is measured per budget over every (method, seed)
allocation. Finished runs are reused; `--only mnist-310x` runs one budget; `force` redoes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.bench.alloc_runs import (
    CODE_FILE,
    AllocRecipe,
    collect_rows,
    fill_proxies,
    search_runs,
    train_fixed,
    wanted_points,
    write_summary,
)
from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.search_report import code_version
from autoprune.cost.budgets import Budget, parse_budget
from autoprune.cost.projection import ProjectionConfig
from autoprune.graph.units import Granularity
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.train.loop import TrainConfig

NAME = "alloc-lenet5-weight"
ADMM = (0.20, 0.08, 0.009, 0.07)  # conv1 / conv2 / fc1 / fc2 kept, Zhang et al. 2018: 71.2x


@dataclass(frozen=True)
class Recipe(AllocRecipe):
    """Everything that decides the numbers; every method's allocations get the same training."""

    points: tuple[tuple[str, float], ...] = (
        ("mnist", 71.2), ("mnist", 150.0), ("mnist", 310.0), ("mnist", 500.0),
        ("fashion-mnist", 20.0), ("fashion-mnist", 71.2),
    )  # fmt: skip
    methods: tuple[str, ...] = ("uniform", "erk", "global", "lamp", "optuna", "rl", "dsa")
    seeds: tuple[int, ...] = (0, 1, 2)
    granularity: Granularity = "weight"
    # a validation subset after a short fine-tune of the masked model (LeNet-5 has no BatchNorm)
    evaluator: EvaluatorConfig = field(
        default_factory=lambda: EvaluatorConfig(
            val_limit=2000, finetune_steps=20, batch_size=128, bn_batches=0
        )
    )
    # 500x keeps 861 of 430,500 weights: a 5% floor per tensor would not fit, 0.05% does
    projection: ProjectionConfig = field(default_factory=lambda: ProjectionConfig(min_ratio=0.0005))
    distill: float = 0.7  # as the lenet5-mnist benchmark's runs
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=0.05, seed=0))
    admm_on: str = "mnist"  # the published allocation is MNIST's
    admm_ratio: float = 71.2


QUICK = Recipe(
    points=(("digits", 20.0),),
    seeds=(0, 1),
    trials=3,
    episodes=4,
    dsa_steps=4,
    evaluator=EvaluatorConfig(finetune_steps=2, bn_batches=0, val_limit=100),
    projection=ProjectionConfig(min_ratio=0.005),
    epochs=1,
    finetune_epochs=1,
    distill=0.0,
    dense=TrainConfig(epochs=2, lr=0.05, seed=0),
    admm_on="digits",
    admm_ratio=20.0,
)


def point_name(dataset: str, ratio: float) -> str:
    return f"{dataset}-{ratio:g}x"


@BENCHMARKS.register(NAME)
def alloc_lenet5_weight(cfg: BenchConfig) -> dict[str, Any]:
    """Run (or reuse) every search and training run; write OUT/README.md and OUT/summary.json."""
    recipe = QUICK if cfg.quick else Recipe()
    out = Path(cfg.out or Path("results") / NAME)
    names = [point_name(*p) for p in recipe.points]
    wanted = wanted_points(NAME, names, cfg)
    data_dir = None if cfg.quick else cfg.data_dir
    for dataset, ratio in recipe.points:
        if point_name(dataset, ratio) in wanted:
            run_point(out, recipe, dataset, ratio, data_dir, cfg)
    points = [collect(out, recipe, d, r, data_dir) for d, r in recipe.points]
    return write_summary(out, NAME, points, recipe, _recipe_dict(recipe), cfg)


def dense_checkpoint(out: Path, recipe: Recipe, dataset: str, data_dir: str | None,
                     cfg: BenchConfig) -> str:  # fmt: skip
    """OUT/dense-DATASET/checkpoint.pt, trained once (the file every allocation names)."""
    run = out / f"dense-{dataset}"
    if not (run / "metrics.json").is_file():
        run_train(TrainRun(model="lenet5", dataset=dataset, out=str(run), data_dir=data_dir,
                           train=recipe.dense, progress=cfg.progress, overwrite=True))  # fmt: skip
        (run / CODE_FILE).write_text(code_version() + "\n")
    return str(run / "checkpoint.pt")


def budget_for(recipe: Recipe, dataset: str, ratio: float, dense: str,
               data_dir: str | None) -> Budget:  # fmt: skip
    """The params budget of `ratio`x weight compression: dense weights / ratio, plus biases."""
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=data_dir,
                                 checkpoint=dense, limit=8)  # fmt: skip
    _, cost_model = trace(loaded, "weight")
    weights = cost_model.metric("weights", cost_model.sizes)
    biases = cost_model.metric("params", cost_model.sizes) - weights
    return parse_budget("params", str(int(weights // ratio + biases)))


def run_point(out: Path, recipe: Recipe, dataset: str, ratio: float, data_dir: str | None,
              cfg: BenchConfig) -> None:  # fmt: skip
    """Every method at every seed for one budget, then ADMM's allocation where it applies."""
    dense = dense_checkpoint(out, recipe, dataset, data_dir, cfg)
    budgets = [budget_for(recipe, dataset, ratio, dense, data_dir)]
    folder = out / "runs" / point_name(dataset, ratio)
    search_runs(folder, recipe, dataset, dense, budgets, data_dir, cfg)
    if dataset == recipe.admm_on and ratio == recipe.admm_ratio:
        for seed in recipe.seeds:
            train_fixed(folder / f"admm-published-seed{seed}", recipe, dataset, dense, budgets,
                        _admm_keep, "admm-published", seed, data_dir, cfg)  # fmt: skip


def _admm_keep(sizes: np.ndarray, *_: Any) -> np.ndarray:
    """ADMM's per-layer ratios (its published allocation)."""
    return np.clip(np.round(np.array(ADMM) * sizes).astype(np.int64), 1, sizes)


def collect(out: Path, recipe: Recipe, dataset: str, ratio: float,
            data_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """The finished runs of one budget as rows (method, seed); proxies missing from a method that
    needs no evaluator are filled in with the same evaluator the searches used."""
    rows = collect_rows(out / "runs" / point_name(dataset, ratio))
    fill_proxies(rows, recipe, dataset, str(out / f"dense-{dataset}" / "checkpoint.pt"), data_dir)
    return {"point": point_name(dataset, ratio), "dataset": dataset, "ratio": ratio, "rows": rows}


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return {"points": [point_name(*p) for p in recipe.points], **recipe.as_dict(),
            "dense_epochs": recipe.dense.epochs}  # fmt: skip
