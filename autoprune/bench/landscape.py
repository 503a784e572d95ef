"""`autoprune bench search-lenet5-mnist-landscape`: how far any allocation gets above uniform.

LeNet-5 has three channel units, so the allocations on a MACs budget's boundary form a small
grid: conv1 and conv2 widths, and fc1 as wide as the budget then allows. Each grid point is
trained with the search benchmark's backend recipe and seed 0. The best few by seed-0 accuracy
and the uniform allocation are trained again with seeds 1 and 2, and only those seeds compare
them: the pick is biased upwards by having been picked on seed 0. That measures how much any
search method could gain over uniform with this backend recipe. Finished runs are reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.report import write_readme
from autoprune.bench.search import bench_command, search_dense, train_keep
from autoprune.bench.search_recipe import QUICK as SEARCH_QUICK
from autoprune.bench.search_recipe import Recipe
from autoprune.bench.search_report import code_version, dense_row, paired_noise
from autoprune.cost.model import CostModel
from autoprune.envs.layer_budget import largest_fitting
from autoprune.graph.units import UnitGraph
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.rundir import write_json_atomic
from autoprune.search import SearchProblem
from autoprune.search.uniform import uniform_trial

NAME = "search-lenet5-mnist-landscape"
SEARCH_DENSE = Path("results") / "search-lenet5-mnist" / "dense"
Point = dict[str, int]  # keeps of every unit but the widest, which fills the budget


def _grid(conv1: int, conv2s: range | tuple[int, ...]) -> tuple[Point, ...]:
    return tuple({"features.0": conv1, "features.2": c2} for c2 in conv2s)


@dataclass(frozen=True)
class Landscape:
    """The grid per budget, and how many of its best points are rechecked on more seeds."""

    search: Recipe = field(default_factory=Recipe)
    # (conv1, conv2) widths; every one leaves fc1 at least 20 channels. Without a grid for a
    # budget: the uniform allocation's neighbours.
    grid: dict[str, tuple[Point, ...]] = field(
        default_factory=lambda: {
            "10%": _grid(3, (14, 17, 20, 23, 26))
            + _grid(4, (11, 13, 15, 17, 19, 21))
            + _grid(5, (10, 11, 13, 15, 17))
            + _grid(6, (9, 11)),
            "5%": _grid(3, range(6, 14)) + _grid(4, range(4, 9)),
        }
    )
    recheck: int = 3  # grid points trained again, beside uniform, with the search recipe's seeds


QUICK = Landscape(search=SEARCH_QUICK, grid={}, recheck=1)


def fill(graph: UnitGraph, cost_model: CostModel, point: Point, limit: float) -> np.ndarray | None:
    """`point`'s keeps, the widest unit as wide as `limit` MACs allow (None: nothing fits)."""
    names = [u.name for u in graph.units]
    filler = int(np.argmax(graph.sizes))
    keep = np.array([point.get(n, 0) for n in names], dtype=np.int64)

    def fits(k: int) -> bool:  # MACs grow with the filler's width
        keep[filler] = k
        return cost_model.metric("macs", keep) <= limit

    if not fits(1):
        return None
    keep[filler] = largest_fitting(1, int(graph.sizes[filler]), fits)
    return keep


def _around(uniform: np.ndarray, names: list[str], filler: int) -> list[Point]:
    """Without a grid: uniform's neighbours, one channel more or less in each non-filler unit."""
    rest = [u for u in range(len(names)) if u != filler]
    points = []
    for u in rest:
        for step in (-1, 1):
            p = {names[v]: int(uniform[v]) for v in rest}
            p[names[u]] = max(1, p[names[u]] + step)
            points.append(p)
    return points


@BENCHMARKS.register(NAME)
def search_landscape(cfg: BenchConfig) -> dict[str, Any]:
    """Train every grid point (seed 0), recheck the best and uniform on the other seeds; write
    OUT/README.md and OUT/summary.json."""
    land = QUICK if cfg.quick else Landscape()
    recipe = land.search
    out = Path(cfg.out or Path("results") / NAME)
    data_dir = None if cfg.quick else cfg.data_dir
    shared = SEARCH_DENSE / "checkpoint.pt"  # the search benchmark's, whose methods this bounds
    dense = (
        str(shared)
        if shared.is_file() and not cfg.quick
        else search_dense(out, recipe, data_dir, cfg)
    )
    loaded = load_model_and_data(
        model=None, dataset=recipe.dataset, data_dir=data_dir, checkpoint=dense
    )
    graph, cost_model = trace(loaded, "channel")
    dense_macs = cost_model.metric("macs", cost_model.dense_keep)
    names, filler = [u.name for u in graph.units], int(np.argmax(graph.sizes))
    budgets = []
    for budget in recipe.budgets:
        limit = float(budget.rstrip("%")) / 100 * dense_macs
        # what the `uniform` search method returns for this budget
        uniform = uniform_trial(SearchProblem(cost_model, {"macs": limit})).keep
        points = land.grid.get(budget) or _around(uniform, names, filler)
        keeps = {tuple(int(v) for v in uniform)}
        for p in points:
            k = fill(graph, cost_model, p, limit)
            if k is not None:
                keeps.add(tuple(int(v) for v in k))
        folder = out / "runs" / f"{budget.rstrip('%')}pct"
        rows: list[dict[str, Any]] = []
        for keep in sorted(keeps):
            acc = train_keep(folder, recipe, keep, budget, dense, data_dir, cfg, seed=0)
            macs = cost_model.metric("macs", np.array(keep))
            rows.append(
                {
                    "keep": list(keep),
                    "macs": macs,
                    "seeds": {"0": acc},
                    "uniform": keep == tuple(int(v) for v in uniform),
                }
            )
        others = sorted((r for r in rows if not r["uniform"]), key=lambda r: -r["seeds"]["0"])
        for r in [next(r for r in rows if r["uniform"]), *others[: land.recheck]]:
            for s in recipe.extra_seeds:
                r["seeds"][str(s)] = train_keep(
                    folder, recipe, tuple(r["keep"]), budget, dense, data_dir, cfg, seed=s
                )
        budgets.append({"budget": budget, "limit": limit, "rows": rows})
    summary = {
        "benchmark": NAME,
        "quick": bool(cfg.quick),
        "dataset": recipe.dataset,
        "command": bench_command(cfg, NAME),
        "code": code_version(),
        "dense": dense_row(dense),
        "units": names,
        "recipe": {
            "backend": recipe.backend,
            "epochs": recipe.epochs,
            "finetune_epochs": recipe.finetune_epochs,
            "lr": recipe.lr,
            "recheck_seeds": list(recipe.extra_seeds),
        },
        "budgets": budgets,
        "runs": [str(out / "runs")],
    }
    write_json_atomic(out / "summary.json", summary)
    write_readme(out, render(summary))
    (out / ".gitignore").write_text("# re-creatable\n*.pt\n*.pt2\nepochs/\n.*.partial/\n")
    return summary


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _checks(b: dict[str, Any]) -> list[str]:
    rows = b["rows"]
    uniform = next(r for r in rows if r["uniform"])
    best = max((r for r in rows if not r["uniform"]), key=lambda r: r["seeds"]["0"], default=None)
    accs = [r["seeds"]["0"] for r in rows]
    lines = [
        f"- {b['budget']} MACs: {len(rows)} allocations, seed-0 test accuracy "
        f"{_pct(min(accs))} to {_pct(max(accs))}; uniform {_pct(uniform['seeds']['0'])}, "
        f"ranked {1 + sum(a > uniform['seeds']['0'] for a in accs)} of {len(rows)}"
    ]
    if best is None:
        return lines
    later = [s for s in best["seeds"] if s != "0" and s in uniform["seeds"]]
    if later:
        mine = {"test_accuracies": [best["seeds"][s] for s in later]}
        theirs = {"test_accuracies": [uniform["seeds"][s] for s in later]}
        diff = float(np.mean(mine["test_accuracies"]) - np.mean(theirs["test_accuracies"]))
        paired = paired_noise(mine, theirs)
        ahead = f"ahead on {paired[0]} of {paired[1]} seeds" if paired else f"seed {later[0]}"
        lines.append(
            f"- {b['budget']} MACs: the best other allocation on seed 0 "
            f"({' / '.join(map(str, best['keep']))}) against uniform on seeds "
            f"{', '.join(later)}, which did not pick it: {100 * diff:+.2f} points ({ahead})"
        )
    return lines


def render(summary: dict[str, Any]) -> str:
    r, d = summary["recipe"], summary["dense"]
    units = " / ".join(summary["units"])
    seeds = ["0", *map(str, r["recheck_seeds"])]
    out = [
        f"# {summary['benchmark']}" + (" (quick mode: digits)" if summary["quick"] else ""),
        "",
        "Produced by",
        "",
        "```",
        summary["command"],
        "```",
        "",
        f"at {summary['code']}.",
        "",
        f"How much better than uniform can any channel allocation of LeNet-5 be? Dense "
        f"`{d['checkpoint']}` ({d['epochs']} epochs, test accuracy {_pct(d['test_accuracy'])})"
        + (", the search benchmark's." if Path(d["checkpoint"]).parent == SEARCH_DENSE else ".")
        + " Every allocation on the MACs budget's boundary of a grid (conv1 and "
        "conv2 widths, fc1 as wide as the budget allows) is trained by the search benchmark's "
        f"backend recipe (`{r['backend']}`, {r['epochs']} + {r['finetune_epochs']} epochs, lr "
        f"{r['lr']}) with backend seed 0"
        + (
            f"; the uniform allocation and the best others on seed 0 are trained again with seeds "
            f"{', '.join(seeds[1:])}, and only those seeds compare them (picking on seed 0 biases "
            "seed 0 upwards)"
            if len(seeds) > 1
            else ""
        )
        + ". Test accuracy throughout; each run directory's `command.txt` is the exact command "
        "that made it.",
        "",
    ]
    for b in summary["budgets"]:
        out += [
            f"## {b['budget']} of dense MACs (<= {b['limit'] / 1e3:.1f}K)",
            "",
            f"| keep per unit ({units}) | MACs | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|---:|" + "---:|" * len(seeds),
        ]
        for row in sorted(b["rows"], key=lambda x: -x["seeds"]["0"]):
            keep = " / ".join(map(str, row["keep"])) + (" (uniform)" if row["uniform"] else "")
            accs = " | ".join(_pct(row["seeds"][s]) if s in row["seeds"] else "" for s in seeds)
            out.append(f"| {keep} | {row['macs'] / 1e3:.1f}K | {accs} |")
        out.append("")
    out += ["## Checks", ""] + [line for b in summary["budgets"] for line in _checks(b)] + [""]
    return "\n".join(out)
