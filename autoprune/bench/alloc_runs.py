"""What the allocation benchmarks share: one training recipe for every allocation, every method at
every seed on one budget, a fixed allocation trained the same way, and the finished runs read
back as rows (autoprune.bench.alloc_lenet5 and alloc_resnet20 run them; alloc_report sums up)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.allocation import Allocation
from autoprune.backends.base import BackendConfig
from autoprune.bench.alloc_report import PROPOSERS, SEARCHES, render_readme, summarise
from autoprune.bench.base import BenchConfig
from autoprune.bench.report import write_readme
from autoprune.bench.search import bench_command
from autoprune.bench.search_report import code_version
from autoprune.cost.budgets import Budget
from autoprune.cost.projection import ProjectionConfig
from autoprune.errors import UsageError
from autoprune.graph.units import Granularity
from autoprune.pipeline.load import load_model_and_data, resolve_limits, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.pipeline.search import SearchRun, run_search
from autoprune.rundir import write_json_atomic
from autoprune.search import SEARCH_METHODS
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator
from autoprune.search.finalists import FinalRound

CODE_FILE = "code.txt"  # in each run: the commit that trained it (the README lists these)
SCORED_BY_SEARCH = frozenset(PROPOSERS + SEARCHES)  # their proxy is the score the search saw


@dataclass(frozen=True)
class AllocRecipe:
    """What every allocation of one benchmark shares: methods, seeds, search effort, the proxy
    and the one backend recipe that trains them all (the subclasses set the values)."""

    methods: tuple[str, ...] = ("uniform",)
    seeds: tuple[int, ...] = (0,)
    granularity: Granularity = "channel"
    trials: int = 40  # optuna
    episodes: int = 150  # rl
    dsa_steps: int = 200
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    final_round: FinalRound = field(default_factory=FinalRound)  # off unless a benchmark sets it
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    backend: str = "reweighted"
    epochs: int = 4
    finetune_epochs: int = 4
    lr: float = 0.01
    finetune_lr: float = 0.05
    distill: float = 0.7

    def backend_cfg(self, seed: int, progress: bool) -> BackendConfig:
        return BackendConfig(epochs=self.epochs, finetune_epochs=self.finetune_epochs,
                             lr=self.lr, finetune_lr=self.finetune_lr, distill=self.distill,
                             seed=seed, progress=progress)  # fmt: skip

    def options(self, method: str) -> dict[str, Any]:
        return {"optuna": {"trials": self.trials}, "random": {"trials": self.trials},
                "rl": {"episodes": self.episodes},
                "dsa": {"steps": self.dsa_steps}}.get(method, {})  # fmt: skip

    def evaluator_for(self, seed: int) -> EvaluatorConfig:
        return EvaluatorConfig(**{**evaluator_fields(self), "seed": seed})

    def as_dict(self) -> dict[str, Any]:
        return {
            "methods": list(self.methods), "seeds": list(self.seeds),
            "granularity": self.granularity, "trials": self.trials, "episodes": self.episodes,
            "dsa_steps": self.dsa_steps, "evaluator": evaluator_fields(self),
            "final_round": dataclasses.asdict(self.final_round),
            "min_ratio": self.projection.min_ratio, "backend": self.backend,
            "epochs": self.epochs, "finetune_epochs": self.finetune_epochs, "lr": self.lr,
            "finetune_lr": self.finetune_lr, "distill": self.distill,
        }  # fmt: skip


def evaluator_fields(recipe: AllocRecipe) -> dict[str, Any]:
    e = recipe.evaluator
    return {k: getattr(e, k) for k in e.__dataclass_fields__}


def finished(run: Path, cfg: BenchConfig) -> bool:
    return not cfg.force and (run / "metrics.json").is_file()


def search_runs(folder: Path, recipe: AllocRecipe, dataset: str, dense: str,
                budgets: list[Budget], data_dir: str | None, cfg: BenchConfig) -> None:  # fmt: skip
    """Every method at every seed on `budgets` (search seed and backend seed alike)."""
    for seed in recipe.seeds:
        for method in recipe.methods:
            run = folder / f"{method}-seed{seed}"
            if finished(run, cfg):
                continue
            run_search(SearchRun(
                dataset=dataset, out=str(run), budgets=budgets, data_dir=data_dir,
                checkpoint=dense, method=method, method_options=recipe.options(method),
                granularity=recipe.granularity, seed=seed, backend=recipe.backend,
                backend_cfg=recipe.backend_cfg(seed, cfg.progress),
                evaluator=recipe.evaluator_for(seed), final_round=final_round_for(recipe, method),
                projection=recipe.projection, progress=cfg.progress, overwrite=True,
            ))  # fmt: skip
            (run / CODE_FILE).write_text(code_version() + "\n")


def final_round_for(recipe: AllocRecipe, method: str) -> FinalRound:
    """The recipe's final round for a method that scores proposals; none for the others
    (uniform and the heuristics score nothing to re-score)."""
    return recipe.final_round if SEARCH_METHODS.get(method).needs_evaluator else FinalRound()


def train_fixed(run: Path, recipe: AllocRecipe, dataset: str, dense: str, budgets: list[Budget],
                keep_of: Any, method: str, seed: int, data_dir: str | None,
                cfg: BenchConfig) -> None:  # fmt: skip
    """An allocation chosen outside the searches (a published one, a random one), written as
    RUN.json beside the run and trained by the same recipe. `keep_of(sizes, cost_model, limits)`
    gives its keeps."""
    if finished(run, cfg):
        return
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=data_dir,
                                 checkpoint=dense, limit=8)  # fmt: skip
    graph, cost_model = trace(loaded, recipe.granularity)
    limits, dense_costs = resolve_limits(budgets, cost_model, recipe.projection)
    keep = np.asarray(keep_of(np.array(graph.sizes), cost_model, limits), dtype=np.int64)
    path = run.with_name(run.name + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    Allocation.from_keep(graph, keep, num_classes=loaded.num_classes, budgets=budgets,
                         predicted=cost_model.costs(keep).as_dict(), dense=dense_costs,
                         method=method, seed=seed, dataset=dataset,
                         checkpoint=str(Path(dense).resolve())).save(path)  # fmt: skip
    run_prune(PruneRun(allocation=str(path), out=str(run), backend=recipe.backend,
                       backend_cfg=recipe.backend_cfg(seed, cfg.progress), data_dir=data_dir,
                       progress=cfg.progress, overwrite=True))  # fmt: skip
    (run / CODE_FILE).write_text(code_version() + "\n")


def shown(path: str | None) -> str | None:
    """A path as the README shows it: relative to the working folder when inside it (the
    allocations name absolute paths; the repository is the same anywhere it is cloned)."""
    if path is None:
        return None
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
    except ValueError:
        return path


def collect_rows(folder: Path) -> list[dict[str, Any]]:
    """The finished runs in `folder` (named METHOD-seedS) as rows."""
    rows = []
    for run in sorted(folder.glob("*-seed*")) if folder.is_dir() else []:
        if not run.is_dir() or not (run / "metrics.json").is_file():
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
            "checkpoint": shown(alloc.get("checkpoint")),
            "code": (run / CODE_FILE).read_text().strip() if (run / CODE_FILE).is_file() else None,
            "budget_met": all(c["met"] for c in m.get("budgets", {}).values()),
            "curve": best_so_far(run / "trials.json"),
            "returned": returned(run / "trials.json", [u["keep"] for u in alloc["units"]]),
        })  # fmt: skip
    return rows


def returned(trials: Path, keep: list[int]) -> str | None:
    """Which trial a search's allocation is: the start it was handed (`uniform`, `lamp` ...) or
    `own` (one of its proposals); None without a trial log or a matching trial."""
    if not trials.is_file():
        return None
    for t in json.loads(trials.read_text()):
        if t["keep"] == keep:
            return t.get("source") or "own"
    return None


def best_so_far(trials: Path) -> list[float] | None:
    """The best proxy score after each of a search's own proposals, in the order it made them
    (the starts it was handed, uniform and the heuristics, are left out: they are not its
    finds); None without a trial log."""
    if not trials.is_file():
        return None
    own = [t["score"] for t in json.loads(trials.read_text())
           if t.get("source") is None and t["score"] is not None]  # fmt: skip
    return np.fmax.accumulate(own).tolist() if own else None  # a NaN score does not stick


def fill_proxies(rows: list[dict[str, Any]], recipe: AllocRecipe, dataset: str, dense: str,
                 data_dir: str | None) -> None:  # fmt: skip
    """Proxy scores, from the recipe's evaluator of each row's seed, for every allocation that no
    search chose (uniform, heuristics, fixed allocations): a score recorded by such a run may
    come from an evaluator the recipe has since replaced. A search's rows keep the scores it saw
    (with a final round, the winner's mean over the fresh orders: the others get the same)."""
    missing = [r for r in rows
               if r["proxy_accuracy"] is None or r["method"] not in SCORED_BY_SEARCH]  # fmt: skip
    if not missing:
        return
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=data_dir, checkpoint=dense)
    graph, _ = trace(loaded, recipe.granularity)
    by_seed: dict[int, list[MaskEvaluator]] = {}
    for r in missing:
        seed = r["seed"]
        if seed not in by_seed:
            first = MaskEvaluator.from_splits(loaded.model, graph, loaded.data,
                                              recipe.evaluator_for(seed))  # fmt: skip
            by_seed[seed] = [first]
            if recipe.final_round.active:  # the fresh orders a search's finalists are scored on
                by_seed[seed] = [first.reordered(s) for s in recipe.final_round.order_seeds(seed)]
        r["proxy_accuracy"] = float(np.mean([ev(np.array(r["keep"])) for ev in by_seed[seed]]))


def wanted_points(bench: str, names: list[str], cfg: BenchConfig) -> set[str]:
    """The budgets `--only` names (all by default); an unknown one is a usage error."""
    wanted = set(cfg.only or names)
    if wanted - set(names):
        unknown = ", ".join(sorted(wanted - set(names)))
        raise UsageError(f"benchmark {bench!r} has no budget {unknown}; it has {', '.join(names)}")
    return wanted


def write_summary(out: Path, bench: str, points: list[dict[str, Any]], recipe: AllocRecipe,
                  recipe_dict: dict[str, Any], cfg: BenchConfig) -> dict[str, Any]:  # fmt: skip
    """OUT/summary.json and OUT/README.md from the collected points; OUT/.gitignore."""
    summary = summarise(points, recipe.methods)
    summary |= {"benchmark": bench, "quick": bool(cfg.quick), "command": bench_command(cfg, bench),
                "rendered_at": code_version(), "recipe": recipe_dict}  # fmt: skip
    write_json_atomic(out / "summary.json", summary)
    write_readme(out, render_readme(summary))
    (out / ".gitignore").write_text(
        "# large or re-creatable; the dense checkpoints are kept (the allocations name them)\n"
        "runs/**/*.pt\n*.pt2\n*.db\n*.db-*\n.*.lock\nartifacts/\nepochs/\n.*.partial/\nagent/\ndata/\n"
    )
    return summary
