"""The report of a search run: report.md with keep ratio per unit, trials and Pareto-front plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.cost.budgets import format_value
from autoprune.graph.units import UnitGraph
from autoprune.plots import accuracy_cost_chart, keep_ratio_chart
from autoprune.search.base import SearchResult
from autoprune.search.pareto import pareto_front

KEEP_PNG, TRIALS_PNG, PARETO_PNG, REPORT_MD = (
    "keep_ratio.png",
    "trials.png",
    "pareto.png",
    "report.md",
)


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def write_search_report(
    out: Path,
    *,
    graph: UnitGraph,
    result: SearchResult,
    keep: np.ndarray,
    limits: Mapping[str, float],
    metrics: Mapping[str, Any],
    method: str,
    command: str | None = None,
) -> Path:
    """Write report.md and its PNG plots into `out`; returns the Markdown file."""
    names = [u.name for u in graph.units]
    sizes = np.array(graph.sizes, dtype=np.float64)
    ratios = (np.asarray(keep) / sizes).tolist()
    keep_ratio_chart(
        names, ratios, out / KEEP_PNG, title=f"{graph.model_name}: keep ratio per unit"
    )
    lines = [f"# Search report: {graph.model_name} on {metrics.get('dataset')}", ""]
    if command:
        lines += ["```", command, "```", ""]
    budgets = ", ".join(f"{m} <= {format_value(m, v)}" for m, v in limits.items())
    lines += [f"Method `{method}`, {graph.granularity} granularity, budgets: {budgets}.", ""]
    lines += _summary(metrics, result)
    lines += [
        "## Keep ratio per unit",
        "",
        f"![keep ratio]({KEEP_PNG})",
        "",
        "| unit | keep | total | ratio |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {int(k)} | {int(s)} | {r:.1%} |"
        for n, k, s, r in zip(names, keep, sizes, ratios, strict=True)
    ]
    lines += ["", *_trial_plots(out, result, limits)]
    path = out / REPORT_MD
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(metrics: Mapping[str, Any], result: SearchResult) -> list[str]:
    d, f = metrics.get("dense", {}), metrics.get("final", {})
    rows = [("test accuracy", _acc(d.get("accuracy")), _acc(f.get("accuracy")))]
    for key, metric in (("macs", "macs"), ("params", "params"), ("nonzero_params", "params")):
        if key in d and key in f:
            rows.append(
                (key.replace("_", " "), format_value(metric, d[key]), format_value(metric, f[key]))
            )
    search = metrics.get("search", {})
    lines = ["| | dense | final |", "|---|---:|---:|"] + [
        f"| {a} | {b} | {c} |" for a, b, c in rows
    ]
    lines += [
        "",
        f"Validation (proxy) accuracy of the chosen allocation: {_acc(result.score)}; "
        f"{len(result.trials)} trials in {search.get('seconds', 0.0):.1f} s. "
        f"Backend: {metrics.get('backend') or 'none (--no-prune)'}.",
        "",
    ]
    checks = metrics.get("budgets", {})
    if checks:
        parts = [
            f"{m} {format_value(m, c['measured'])} <= {format_value(m, c['limit'])}: "
            + ("met" if c["met"] else "MISSED")
            for m, c in checks.items()
        ]
        lines += ["Budgets measured on the exported model: " + "; ".join(parts) + ".", ""]
    info = result.info
    if "study" in info:
        where = (
            f"`{info['study_file']}` in this folder"
            if "study_file" in info
            else info.get("storage") or "memory"
        )
        lines += [
            f"Optuna study `{info['study']}` in {where}; browse it with `autoprune dashboard RUN`"
            + (" --storage URL" if "storage" in info else "")
            + ".",
            "",
        ]
    return lines


def _trial_plots(out: Path, result: SearchResult, limits: Mapping[str, float]) -> list[str]:
    scored = [t for t in result.trials if t.score is not None]
    if not scored:
        return []
    objective = result.info.get("objective")
    metric = objective[1] if objective else next(iter(limits), "macs")
    metric = metric if all(metric in t.costs for t in scored) else "macs"
    costs = [float(t.costs[metric]) for t in scored]
    accs = [float(t.score or 0.0) for t in scored]
    front = pareto_front(list(zip(accs, costs, strict=True)))
    chosen = _index_of(scored, result)
    common = {"cost_label": f"{metric} (predicted)", "front": front, "chosen": chosen,
              "limit": limits.get(metric)}  # fmt: skip
    title = f"{len(scored)} trials: validation accuracy against {metric}"
    accuracy_cost_chart(costs, accs, out / TRIALS_PNG, title=title, **common)
    accuracy_cost_chart(
        costs, accs, out / PARETO_PNG, title="Pareto front", front_only=True, **common
    )
    lines = [
        "## Trials",
        "",
        f"![trials]({TRIALS_PNG})",
        "",
        "## Pareto front",
        "",
        f"![pareto]({PARETO_PNG})",
        "",
        f"| trial | val accuracy | {metric} |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {scored[i].number} | {_acc(accs[i])} | {format_value(metric, costs[i])} |"
        for i in front
    ]
    return [*lines, ""]


def _index_of(trials: Sequence[Any], result: SearchResult) -> int | None:
    """Position of the chosen trial: by number when the method names it, else by its keeps."""
    number = result.info.get("best_trial")
    for i, t in enumerate(trials):
        if t.number == number if number is not None else np.array_equal(t.keep, result.keep):
            return i
    return None
