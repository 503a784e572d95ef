"""`autoprune bench search-lenet5-mnist`: the search methods against each other on LeNet-5 / MNIST.

At channel granularity and 10% / 5% of the dense MACs, `uniform`, `random` and `optuna` each
search an allocation of one dense checkpoint (random and optuna with the same trials and the same
evaluator: a validation subset and a short fine-tune), the same backend trains every allocation
with the same epochs, and the test split gives the final accuracy. Then allocations drawn from
the trials at 10% (spread over their proxy accuracies) are trained the same way, to measure how
well the proxy ranks them (Spearman). Finished runs in OUT are reused; `force` redoes them.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.allocation import Allocation
from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.report import write_readme
from autoprune.bench.runner import COMMAND_FILE, RunSpec
from autoprune.bench.search_recipe import QUICK, Recipe
from autoprune.bench.search_report import checks as render_checks
from autoprune.bench.search_report import (
    code_version,
    dense_row,
    recipe_dict,
    render_readme,
    spearman,
)
from autoprune.cost.budgets import parse_budget
from autoprune.cost.projection import ProjectionConfig
from autoprune.pipeline.load import load_model_and_data, resolve_limits, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.pipeline.search import SearchRun, run_search
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.rundir import write_json_atomic
from autoprune.search.evaluator import MaskEvaluator

NAME = "search-lenet5-mnist"
SHARED_DENSE = Path("results") / "lenet5-mnist" / "dense"  # the backend benchmark's, if present


@BENCHMARKS.register(NAME)
def search_lenet5_mnist(cfg: BenchConfig) -> dict[str, Any]:
    """Run (or reuse) every search and training run; write OUT/README.md and OUT/summary.json."""
    recipe = QUICK if cfg.quick else Recipe()
    out = Path(cfg.out or Path("results") / NAME)
    data_dir = None if cfg.quick else cfg.data_dir
    dense = search_dense(out, recipe, data_dir, cfg)
    rows = []
    for budget in recipe.budgets:
        for method in recipe.methods:
            run = out / "runs" / f"{method}-{budget.rstrip('%')}pct"
            if cfg.force or not (run / "metrics.json").is_file():
                run_search(_search_run(recipe, method, budget, dense, data_dir, run, cfg.progress))
            row = _row(run, method, budget)
            finals = [row["test_accuracy"]]
            finals += [_retrain(run, s, recipe, data_dir, cfg) for s in recipe.extra_seeds]
            row |= {"test_accuracies": finals, "test_accuracy": float(np.mean(finals))}
            rows.append(row)
    _fill_uniform_proxy(rows, recipe, dense, data_dir)
    corr = _correlation(out, recipe, rows, dense, data_dir, cfg)
    summary = {
        "benchmark": NAME,
        "quick": bool(cfg.quick),
        "dataset": recipe.dataset,
        "command": bench_command(cfg),
        "code": code_version(),
        "dense": dense_row(dense),
        "recipe": recipe_dict(recipe),
        "rows": rows,
        "runs": [r["run"] for r in rows],
        "correlation": corr,
    }
    write_json_atomic(out / "summary.json", summary)
    write_readme(out, render_readme(summary, out))
    (out / ".gitignore").write_text(
        "# large or re-creatable: checkpoints, programs, studies\n"
        "*.pt\n*.pt2\n*.db\n*.db-*\nartifacts/\nepochs/\n.*.partial/\nagent/\n"
    )
    return summary


def search_dense(out: Path, recipe: Recipe, data_dir: str | None, cfg: Any) -> str:
    """The dense checkpoint: this benchmark's own if trained already, else the backend
    benchmark's (results/lenet5-mnist/dense) if present, else one trained here now."""
    own = out / "dense" / "checkpoint.pt"
    shared = SHARED_DENSE / "checkpoint.pt"
    if own.is_file() or cfg.quick or not shared.is_file():
        if not own.is_file():
            train = TrainRun(model="lenet5", dataset=recipe.dataset, out=str(own.parent),
                             data_dir=data_dir, train=recipe.dense, progress=cfg.progress,
                             overwrite=True)  # fmt: skip
            run_train(train)
        return str(own)
    return str(shared)


def _search_run(
    recipe: Recipe,
    method: str,
    budget: str,
    dense: str,
    data_dir: str | None,
    run: Path,
    progress: bool,
) -> SearchRun:
    by_method = {"uniform": {}, "rl": {"episodes": recipe.episodes}, "dsa": {}}
    options = by_method.get(method, {"trials": recipe.trials})
    return SearchRun(
        dataset=recipe.dataset,
        out=str(run),
        budgets=[parse_budget("macs", budget)],
        data_dir=data_dir,
        checkpoint=dense,
        method=method,
        method_options=options,
        granularity="channel",
        seed=recipe.seed,
        backend=recipe.backend,
        backend_cfg=recipe.backend_cfg(progress),
        evaluator=recipe.evaluator,
        progress=progress,
        overwrite=True,
    )


def _row(run: Path, method: str, budget: str) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    return {
        "method": method,
        "budget": budget,
        "run": str(run),
        "proxy_accuracy": m["search"]["proxy_accuracy"],
        "test_accuracy": m["final"]["accuracy"],
        "search_s": m["search"]["seconds"],
        "trials": m["search"]["trials"],
        "best_episode": m["search"].get("best_episode"),  # rl: episodes to the best allocation
        "macs": m["final"]["macs"],
        "dense_macs": m["dense"]["macs"],
        "keep": [u["keep"] for u in json.loads((run / "allocation.json").read_text())["units"]],
        "budget_met": all(c["met"] for c in m["budgets"].values()),
        "backend_s": m["wall_time_s"].get("prune"),
    }


def _retrain(run: Path, seed: int, recipe: Recipe, data_dir: str | None, cfg: Any) -> float:
    """Final test accuracy of `run`'s allocation trained again with another backend seed (one run
    per allocation and seed: methods that chose the same allocation share it)."""
    keep = [u["keep"] for u in json.loads((run / "allocation.json").read_text())["units"]]
    again = run.parent.parent / "seeds" / f"keep-{'-'.join(map(str, keep))}-seed{seed}"
    if cfg.force or not (again / "metrics.json").is_file():
        backend_cfg = recipe.backend_cfg(cfg.progress, seed=seed)
        run_prune(PruneRun(allocation=str(run / "allocation.json"), out=str(again),
                           backend=recipe.backend, backend_cfg=backend_cfg, data_dir=data_dir,
                           progress=cfg.progress, overwrite=True))  # fmt: skip
    return float(json.loads((again / "metrics.json").read_text())["final"]["accuracy"])


def _fill_uniform_proxy(
    rows: list[dict[str, Any]], recipe: Recipe, dense: str, data_dir: str | None
) -> None:
    """Uniform needs no evaluator to choose; score its allocation with the same one anyway."""
    missing = [r for r in rows if r["proxy_accuracy"] is None]
    if not missing:
        return
    loaded = load_model_and_data(
        model=None, dataset=recipe.dataset, data_dir=data_dir, checkpoint=dense
    )
    graph, _ = trace(loaded, "channel")
    evaluate = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, recipe.evaluator)
    for r in missing:
        r["proxy_accuracy"] = evaluate(np.array(r["keep"]))


def _correlation(
    out: Path,
    recipe: Recipe,
    rows: list[dict[str, Any]],
    dense: str,
    data_dir: str | None,
    cfg: Any,
) -> dict[str, Any]:
    """Proxy against final accuracy at the first budget: the methods' own allocations, topped up
    with trial allocations spread evenly over the proxy range, all trained the same way."""
    budget = recipe.budgets[0]
    mine = [r for r in rows if r["budget"] == budget]
    # one backend seed for every point, as for the allocations trained only for this
    points = {tuple(r["keep"]): (r["proxy_accuracy"], r["test_accuracies"][0]) for r in mine}
    pool: dict[tuple[int, ...], float] = {}
    for r in mine:
        trials = Path(r["run"]) / "trials.json"
        for t in json.loads(trials.read_text()) if r["method"] in ("random", "optuna") else []:
            if tuple(t["keep"]) not in points:
                pool.setdefault(tuple(t["keep"]), float(t["score"]))
    ranked = sorted(pool.items(), key=lambda kv: kv[1])
    extra = max(0, recipe.correlation - len(points))
    spread: list[int] = []
    if extra and ranked:
        spread = np.unique(np.linspace(0, len(ranked) - 1, extra).round().astype(int)).tolist()
    for keep, proxy in (ranked[i] for i in spread):
        final = train_keep(out / "correlation", recipe, keep, recipe.budgets[0], dense, data_dir,
                           cfg, extra={"proxy_accuracy": proxy})  # fmt: skip
        points[keep] = (proxy, final)
    listed = [
        {"keep": list(k), "proxy_accuracy": p, "test_accuracy": f} for k, (p, f) in points.items()
    ]
    rho = spearman([p["proxy_accuracy"] for p in listed], [p["test_accuracy"] for p in listed])
    return {"budget": budget, "n": len(listed), "spearman": rho, "points": listed}


def train_keep(
    folder: Path,
    recipe: Recipe,
    keep: tuple[int, ...],
    budget: str,
    dense: str,
    data_dir: str | None,
    cfg: Any,
    *,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> float:
    """Final test accuracy of `keep` after the backend, in FOLDER/keep-K1-K2-...[-seedN] (reused
    when finished); `seed` None is the recipe's backend seed."""
    name = "keep-" + "-".join(map(str, keep)) + ("" if seed is None else f"-seed{seed}")
    run = folder / name
    if cfg.force or not (run / "metrics.json").is_file():
        loaded = load_model_and_data(
            model=None, dataset=recipe.dataset, data_dir=data_dir, checkpoint=dense
        )
        graph, cost_model = trace(loaded, "channel")
        budgets = [parse_budget("macs", budget)]
        _, dense_costs = resolve_limits(budgets, cost_model, ProjectionConfig())
        k = np.array(keep)
        path = folder / f"{name}.json"
        predicted = {m: cost_model.metric(m, k) for m in dense_costs}
        Allocation.from_keep(graph, k, num_classes=loaded.num_classes, budgets=budgets,
                             predicted=predicted, dense=dense_costs, method="bench",
                             seed=recipe.seed, dataset=recipe.dataset, checkpoint=dense,
                             extra=extra or {}).save(path)  # fmt: skip
        bcfg = recipe.backend_cfg(cfg.progress, seed)
        run_prune(PruneRun(allocation=str(path), out=str(run), backend=recipe.backend,
                           backend_cfg=bcfg, data_dir=data_dir,
                           progress=cfg.progress, overwrite=True))  # fmt: skip
        spec = RunSpec(name, recipe.backend, "channel", epochs=bcfg.epochs, lr=bcfg.lr,
                       finetune_epochs=bcfg.finetune_epochs, seed=bcfg.seed)  # fmt: skip
        (run / COMMAND_FILE).write_text(spec.prune_command(str(path), data_dir, str(run)) + "\n")
    return float(json.loads((run / "metrics.json").read_text())["final"]["accuracy"])


def bench_command(cfg: Any, name: str = NAME) -> str:
    """The `autoprune bench NAME ...` command line that `cfg` stands for."""
    parts = ["autoprune", "bench", name]
    if cfg.quick:
        parts.append("--quick")
    elif cfg.data_dir:
        parts += ["--data-dir", cfg.data_dir]
    if cfg.out:
        parts += ["--out", cfg.out]
    return shlex.join(parts)


def main(argv: list[str] | None = None) -> None:
    """`python -m autoprune.bench.search`: the benchmark without the bench registry."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m autoprune.bench.search", description=__doc__)
    p.add_argument("--data-dir")
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    cfg = BenchConfig(
        data_dir=a.data_dir, out=a.out, quick=a.quick, force=a.force, progress=not a.quiet
    )
    summary = search_lenet5_mnist(cfg)
    print("\n".join(line for line in render_checks(summary)))


if __name__ == "__main__":
    main()
