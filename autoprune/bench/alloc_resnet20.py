"""`autoprune bench alloc-resnet20-fmnist`: channel allocation methods on resnet20 / Fashion-MNIST.

The zoo's resnet20 (19 conv layers in three stages, so layers of very different cost and
sensitivity) at channel granularity on Fashion-MNIST, at 30% and 15% of the dense MACs and at the
mixed budget 25% MACs + 10% params. Training uses a fixed, stated subset of the training split
(`train_images` of the 60,000, the same number of every class, drawn by a seeded permutation;
the validation split is carved from it as usual) and the whole 10,000-image test split, so one
pruned run costs a few minutes on two CPU cores.

Per budget, first a landscape: `landscape` random allocations on the budget (per-unit ratios
drawn uniformly, projected onto the budgets), trained with backend seed 0, against uniform at
seed 0: how far apart can allocations be here at all? Then each method (uniform, global, random,
optuna, rl, dsa) at every seed, search seed and backend seed alike, trained by one recipe;
methods are compared seed by seed (autoprune.bench.alloc_report), every search's best proxy so
far against random search's at the same number of evaluations, and the proxy's Spearman rank
correlation with final accuracy is measured over every allocation of the budget. Finished runs
are reused; `--only mixed` runs one budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.bench.alloc_report import LANDSCAPE
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
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.errors import DataError, UsageError
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.search.finalists import FinalRound
from autoprune.train.idx import IDX_FILES, find_idx_files, read_split, write_idx
from autoprune.train.loop import TrainConfig

NAME = "alloc-resnet20-fmnist"
Point = tuple[str, tuple[tuple[str, str], ...]]  # name, ((metric, budget text), ...)


@dataclass(frozen=True)
class Recipe(AllocRecipe):
    """Everything that decides the numbers; every allocation gets the same training."""

    model: str = "resnet20"
    dataset: str = "fashion-mnist"
    input_size: tuple[int, int, int] = (1, 28, 28)  # the images as they are (the zoo's is 3x32x32)
    points: tuple[Point, ...] = (
        ("macs-30", (("macs", "30%"),)),
        ("macs-15", (("macs", "15%"),)),
        ("mixed", (("macs", "25%"), ("params", "10%"))),
    )
    # random search is the reference the learning searches must beat at equal effort
    methods: tuple[str, ...] = ("uniform", "global", "random", "optuna", "rl", "dsa")
    seeds: tuple[int, ...] = (0, 1, 2)
    # Every search that proposes gets the same effort, 24 proxy evaluations (~11 s each here):
    # random 24 trials, optuna 24 (the first 3 are the starts it is handed, uniform, global and
    # lamp), rl 24 episodes (a quarter warm-up, rl's default is 150) and its greedy one
    trials: int = 24
    episodes: int = 24
    landscape: int = 8  # random allocations per budget (with the methods: >= 10 for Spearman)
    # 6,000 images: a resnet20 epoch is ~15 s on two idle cores, so a 5 + 5 epoch run ~3 min
    train_images: int = 6000
    # BN is recalibrated after a fine-tune of 100 steps at the dense model's learning rate: with
    # 20 steps at 0.01 the proxy ranked the 20 trained allocations of the mixed budget at
    # Spearman 0.26, with 100 at 0.1 at 0.68 (proxy_study_lr.py, NOTES.md)
    evaluator: EvaluatorConfig = field(
        default_factory=lambda: EvaluatorConfig(
            bn_batches=4, finetune_steps=100, finetune_lr=0.1, batch_size=128
        )
    )
    # One fine-tune order's score moves ~1.9 points from another's (proxy-study-orders-mixed.
    # json), as much as the gaps among the good allocations: each search's 4 best allocations and
    # its best start are scored on 4 fresh orders and the best mean wins
    final_round: FinalRound = field(default_factory=lambda: FinalRound(finalists=4, orders=4))
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    epochs: int = 5
    finetune_epochs: int = 5
    lr: float = 0.05
    finetune_lr: float = 0.01
    distill: float = 0.7
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, lr=0.1, seed=0))


QUICK = Recipe(
    model="resnet20",
    dataset="digits",
    input_size=(1, 8, 8),
    points=(("macs-30", (("macs", "30%"),)),),
    methods=("uniform", "global", "optuna"),
    seeds=(0, 1),
    landscape=1,
    trials=3,
    episodes=4,
    dsa_steps=4,
    evaluator=EvaluatorConfig(bn_batches=1, finetune_steps=2, val_limit=64),
    final_round=FinalRound(finalists=2, orders=1),
    epochs=1,
    finetune_epochs=1,
    distill=0.0,
    dense=TrainConfig(epochs=1, lr=0.05, seed=0),
)


@BENCHMARKS.register(NAME)
def alloc_resnet20_fmnist(cfg: BenchConfig) -> dict[str, Any]:
    """Run (or reuse) the landscape and every method; write OUT/README.md and OUT/summary.json."""
    recipe = QUICK if cfg.quick else Recipe()
    out = Path(cfg.out or Path("results") / NAME)
    wanted = wanted_points(NAME, [name for name, _ in recipe.points], cfg)
    data_dir = None if cfg.quick else subset_folder(out, recipe, cfg.data_dir)
    dense = dense_checkpoint(out, recipe, data_dir, cfg)
    for name, spec in recipe.points:
        if name in wanted:
            run_point(out / "runs" / name, recipe, dense, budgets_of(spec), data_dir, cfg)
    points = []
    for name, spec in recipe.points:
        rows = collect_rows(out / "runs" / name)
        fill_proxies(rows, recipe, recipe.dataset, dense, data_dir)
        points.append({"point": name, "dataset": recipe.dataset,
                       "budgets": [f"{m} {t}" for m, t in spec], "rows": rows})  # fmt: skip
    return write_summary(out, NAME, points, recipe, _recipe_dict(recipe), cfg)


def budgets_of(spec: tuple[tuple[str, str], ...]) -> list[Budget]:
    return [parse_budget(metric, text) for metric, text in spec]


def subset_folder(out: Path, recipe: Recipe, data_dir: str | None) -> str:
    """OUT/data: the fixed training subset and the whole test split as four IDX files, made once
    from `data_dir` (re-created, not committed: the same seed draws the same images)."""
    folder = out / "data"
    if all((folder / (stem + ".gz")).is_file() for pair in IDX_FILES.values() for stem in pair):
        return str(folder)
    if data_dir is None:
        raise UsageError(f"benchmark {NAME!r} reads Fashion-MNIST; pass --data-dir")
    files = find_idx_files(Path(data_dir), "FashionMNIST/raw")
    images, labels = read_split(*files["train"], classes=10)
    chosen = stratified_subset(labels, recipe.train_images, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    test_images, test_labels = read_split(*files["test"], classes=10)
    for (i_stem, l_stem), (x, y) in zip(IDX_FILES.values(), [
        (images[chosen], labels[chosen]), (test_images, test_labels)
    ], strict=True):  # fmt: skip
        write_idx(folder / i_stem, x, gz=True)
        write_idx(folder / l_stem, y.astype(np.uint8), gz=True)
    return str(folder)


def stratified_subset(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """`n` indices, n / classes of every class, the first of each class in a seeded permutation,
    returned in that permutation's order (so the loader's own carving sees mixed classes)."""
    classes = int(labels.max()) + 1
    if n % classes or n // classes > np.bincount(labels, minlength=classes).min():
        raise DataError(f"cannot draw {n} images, {n // classes} of each of {classes} classes")
    order = np.random.default_rng(seed).permutation(len(labels))
    taken = np.zeros(classes, dtype=np.int64)
    chosen = []
    for i in order:
        c = labels[i]
        if taken[c] < n // classes:
            taken[c] += 1
            chosen.append(i)
    return np.array(chosen, dtype=np.int64)


def dense_checkpoint(out: Path, recipe: Recipe, data_dir: str | None, cfg: BenchConfig) -> str:
    """OUT/dense/checkpoint.pt, trained once (the file every allocation names; committed)."""
    run = out / "dense"
    if not (run / "metrics.json").is_file():
        run_train(TrainRun(model=recipe.model, dataset=recipe.dataset, out=str(run),
                           data_dir=data_dir, input_size=recipe.input_size, train=recipe.dense,
                           progress=cfg.progress, overwrite=True))  # fmt: skip
        (run / CODE_FILE).write_text(code_version() + "\n")
    return str(run / "checkpoint.pt")


def run_point(folder: Path, recipe: Recipe, dense: str, budgets: list[Budget],
              data_dir: str | None, cfg: BenchConfig) -> None:  # fmt: skip
    """The landscape first (random allocations, backend seed 0), then every method."""
    for i in range(recipe.landscape):
        train_fixed(folder / f"{LANDSCAPE}-{i}-seed0", recipe, recipe.dataset, dense, budgets,
                    _random_keep(i, recipe.projection), LANDSCAPE, 0, data_dir, cfg)  # fmt: skip
    search_runs(folder, recipe, recipe.dataset, dense, budgets, data_dir, cfg)


def _random_keep(i: int, projection: ProjectionConfig) -> Any:
    """Allocation `i` of the landscape: per-unit ratios drawn uniformly with seed i, projected."""

    def keep(sizes: np.ndarray, cost_model: CostModel, limits: dict[str, float]) -> np.ndarray:
        ratios = np.random.default_rng(1000 + i).uniform(projection.min_ratio, 1.0, len(sizes))
        return project(ratios, cost_model, limits, projection)

    return keep


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return {"model": recipe.model, "dataset": recipe.dataset, "input_size": recipe.input_size,
            "points": {name: [f"{m} {t}" for m, t in spec] for name, spec in recipe.points},
            **recipe.as_dict(), "landscape": recipe.landscape,
            "train_images": recipe.train_images, "dense_epochs": recipe.dense.epochs,
            "dense_lr": recipe.dense.lr}  # fmt: skip
