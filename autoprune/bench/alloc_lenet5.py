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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.allocation import Allocation
from autoprune.backends.base import BackendConfig
from autoprune.bench.alloc_report import render_readme, summarise
from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.report import write_readme
from autoprune.bench.search import bench_command
from autoprune.bench.search_report import code_version
from autoprune.cost.budgets import Budget, parse_budget
from autoprune.cost.projection import ProjectionConfig
from autoprune.errors import UsageError
from autoprune.pipeline.load import load_model_and_data, resolve_limits, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.pipeline.search import SearchRun, run_search
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.rundir import write_json_atomic
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator
from autoprune.train.loop import TrainConfig

NAME = "alloc-lenet5-weight"
ADMM = (0.20, 0.08, 0.009, 0.07)  # conv1 / conv2 / fc1 / fc2 kept, Zhang et al. 2018: 71.2x
CODE_FILE = "code.txt"  # in each run: the commit that trained it (the README lists these)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the numbers; every method's allocations get the same training."""

    points: tuple[tuple[str, float], ...] = (
        ("mnist", 71.2), ("mnist", 150.0), ("mnist", 310.0), ("mnist", 500.0),
        ("fashion-mnist", 20.0), ("fashion-mnist", 71.2),
    )  # fmt: skip
    methods: tuple[str, ...] = ("uniform", "erk", "global", "lamp", "optuna", "rl", "dsa")
    seeds: tuple[int, ...] = (0, 1, 2)
    trials: int = 40  # optuna
    episodes: int = 150  # rl
    dsa_steps: int = 200
    # a validation subset after a short fine-tune of the masked model (LeNet-5 has no BatchNorm)
    evaluator: EvaluatorConfig = field(
        default_factory=lambda: EvaluatorConfig(
            val_limit=2000, finetune_steps=20, batch_size=128, bn_batches=0
        )
    )
    # 500x keeps 861 of 430,500 weights: a 5% floor per tensor would not fit, 0.05% does
    projection: ProjectionConfig = field(default_factory=lambda: ProjectionConfig(min_ratio=0.0005))
    backend: str = "reweighted"
    epochs: int = 4
    finetune_epochs: int = 4
    lr: float = 0.01
    finetune_lr: float = 0.05
    distill: float = 0.7  # as the lenet5-mnist benchmark's runs
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=0.05, seed=0))
    admm_on: str = "mnist"  # the published allocation is MNIST's
    admm_ratio: float = 71.2

    def backend_cfg(self, seed: int, progress: bool) -> BackendConfig:
        return BackendConfig(epochs=self.epochs, finetune_epochs=self.finetune_epochs,
                             lr=self.lr, finetune_lr=self.finetune_lr, distill=self.distill,
                             seed=seed, progress=progress)  # fmt: skip

    def options(self, method: str) -> dict[str, Any]:
        return {"optuna": {"trials": self.trials}, "rl": {"episodes": self.episodes},
                "dsa": {"steps": self.dsa_steps}}.get(method, {})  # fmt: skip


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
    wanted = set(cfg.only or names)
    if wanted - set(names):
        unknown = ", ".join(sorted(wanted - set(names)))
        raise UsageError(f"benchmark {NAME!r} has no budget {unknown}; it has {', '.join(names)}")
    data_dir = None if cfg.quick else cfg.data_dir
    for dataset, ratio in recipe.points:
        if point_name(dataset, ratio) in wanted:
            run_point(out, recipe, dataset, ratio, data_dir, cfg)
    points = [collect(out, recipe, d, r, data_dir) for d, r in recipe.points]
    summary = summarise(points, recipe.methods)
    summary |= {"benchmark": NAME, "quick": bool(cfg.quick), "command": bench_command(cfg, NAME),
                "rendered_at": code_version(), "recipe": _recipe_dict(recipe)}  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    write_readme(out, render_readme(summary))
    (out / ".gitignore").write_text(
        "# large or re-creatable; the dense checkpoints are kept (the allocations name them)\n"
        "runs/**/*.pt\n*.pt2\n*.db\n*.db-*\nartifacts/\nepochs/\n.*.partial/\nagent/\n"
    )
    return summary


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
    budget = budget_for(recipe, dataset, ratio, dense, data_dir)
    folder = out / "runs" / point_name(dataset, ratio)
    for seed in recipe.seeds:
        for method in recipe.methods:
            run = folder / f"{method}-seed{seed}"
            if cfg.force or not (run / "metrics.json").is_file():
                run_search(SearchRun(
                    dataset=dataset, out=str(run), budgets=[budget], data_dir=data_dir,
                    checkpoint=dense, method=method, method_options=recipe.options(method),
                    granularity="weight", seed=seed, backend=recipe.backend,
                    backend_cfg=recipe.backend_cfg(seed, cfg.progress),
                    evaluator=EvaluatorConfig(**{**_evaluator_fields(recipe), "seed": seed}),
                    projection=recipe.projection, progress=cfg.progress, overwrite=True,
                ))  # fmt: skip
                (run / CODE_FILE).write_text(code_version() + "\n")
        if dataset == recipe.admm_on and ratio == recipe.admm_ratio:
            _run_admm(folder, recipe, dataset, dense, budget, seed, data_dir, cfg)


def _run_admm(folder: Path, recipe: Recipe, dataset: str, dense: str, budget: Budget,
              seed: int, data_dir: str | None, cfg: BenchConfig) -> None:  # fmt: skip
    """ADMM's per-layer ratios (its published allocation) trained by the same recipe."""
    run = folder / f"admm-published-seed{seed}"
    if not cfg.force and (run / "metrics.json").is_file():
        return
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=data_dir,
                                 checkpoint=dense, limit=8)  # fmt: skip
    graph, cost_model = trace(loaded, "weight")
    sizes = np.array(graph.sizes)
    keep = np.clip(np.round(np.array(ADMM) * sizes).astype(np.int64), 1, sizes)
    _, dense_costs = resolve_limits([budget], cost_model, recipe.projection)
    path = folder / "admm-published.json"
    Allocation.from_keep(graph, keep, num_classes=loaded.num_classes, budgets=[budget],
                         predicted=cost_model.costs(keep).as_dict(), dense=dense_costs,
                         method="admm-published", seed=seed, dataset=dataset,
                         checkpoint=str(Path(dense).resolve())).save(path)  # fmt: skip
    run_prune(PruneRun(allocation=str(path), out=str(run), backend=recipe.backend,
                       backend_cfg=recipe.backend_cfg(seed, cfg.progress), data_dir=data_dir,
                       progress=cfg.progress, overwrite=True))  # fmt: skip
    (run / CODE_FILE).write_text(code_version() + "\n")


def collect(out: Path, recipe: Recipe, dataset: str, ratio: float,
            data_dir: str | None) -> dict[str, Any]:  # fmt: skip
    """The finished runs of one budget as rows (method, seed); proxies missing from a method that
    needs no evaluator are filled in with the same evaluator the searches used."""
    folder = out / "runs" / point_name(dataset, ratio)
    rows = []
    for run in sorted(folder.glob("*-seed*")) if folder.is_dir() else []:
        if not (run / "metrics.json").is_file():
            continue
        m = json.loads((run / "metrics.json").read_text())
        alloc = json.loads((run / "allocation.json").read_text())
        method, _, seed = run.name.rpartition("-seed")
        search = m.get("search") or {}
        rows.append({
            "method": method, "seed": int(seed), "run": str(run),
            "test_accuracy": float(m["final"]["accuracy"]),
            "proxy_accuracy": search.get("proxy_accuracy"),
            "search_s": search.get("seconds"),
            "compression": m.get("compression_ratio"),
            "keep": [u["keep"] for u in alloc["units"]],
            "checkpoint": alloc.get("checkpoint"),
            "code": (run / CODE_FILE).read_text().strip() if (run / CODE_FILE).is_file() else None,
            "budget_met": all(c["met"] for c in m.get("budgets", {}).values()),
        })  # fmt: skip
    _fill_proxies(rows, recipe, dataset, out, data_dir)
    return {"point": point_name(dataset, ratio), "dataset": dataset, "ratio": ratio, "rows": rows}


def _fill_proxies(rows: list[dict[str, Any]], recipe: Recipe, dataset: str, out: Path,
                  data_dir: str | None) -> None:  # fmt: skip
    missing = [r for r in rows if r["proxy_accuracy"] is None]
    if not missing:
        return
    dense = str(out / f"dense-{dataset}" / "checkpoint.pt")
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=data_dir, checkpoint=dense)
    graph, _ = trace(loaded, "weight")
    by_seed: dict[int, MaskEvaluator] = {}
    for r in missing:  # each with its own seed's evaluator, as a search of that seed scores
        if r["seed"] not in by_seed:
            cfg = EvaluatorConfig(**{**_evaluator_fields(recipe), "seed": r["seed"]})
            by_seed[r["seed"]] = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg)
        r["proxy_accuracy"] = by_seed[r["seed"]](np.array(r["keep"]))


def _evaluator_fields(recipe: Recipe) -> dict[str, Any]:
    e = recipe.evaluator
    return {k: getattr(e, k) for k in e.__dataclass_fields__}


def _recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return {
        "points": [point_name(*p) for p in recipe.points], "methods": list(recipe.methods),
        "seeds": list(recipe.seeds), "trials": recipe.trials, "episodes": recipe.episodes,
        "dsa_steps": recipe.dsa_steps, "evaluator": _evaluator_fields(recipe),
        "min_ratio": recipe.projection.min_ratio, "backend": recipe.backend,
        "epochs": recipe.epochs, "finetune_epochs": recipe.finetune_epochs, "lr": recipe.lr,
        "finetune_lr": recipe.finetune_lr, "distill": recipe.distill,
        "dense_epochs": recipe.dense.epochs,
    }  # fmt: skip
