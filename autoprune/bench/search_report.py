"""The README of the search benchmark: a table per budget, the proxy's rank correlation, a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.cost.budgets import format_value

SCATTER = "proxy_vs_final.png"


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _scatter(corr: dict[str, Any], path: Path) -> None:
    from autoprune.plots import plt

    pts = corr["points"]
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(
        [100 * p["proxy_accuracy"] for p in pts], [100 * p["test_accuracy"] for p in pts], s=22
    )
    rho = corr["spearman"]
    ax.set_title(
        f"{corr['n']} allocations at {corr['budget']} MACs: Spearman {rho:.2f}"
        if rho is not None
        else f"{corr['n']} allocations"
    )
    ax.set_xlabel("proxy: validation accuracy after the short fine-tune (%)")
    ax.set_ylabel("final test accuracy after the backend (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def checks(summary: dict[str, Any]) -> list[str]:
    """Each searching method against uniform (final test accuracy) at every budget, and the
    correlation size."""
    lines = []
    noise = seed_noise(summary["rows"])
    for budget in summary["recipe"]["budgets"]:
        by = {r["method"]: r for r in summary["rows"] if r["budget"] == budget}
        for method in [m for m in ("optuna", "rl", "dsa") if m in by and "uniform" in by]:
            o, u = by[method]["test_accuracy"], by["uniform"]["test_accuracy"]
            verdict = "beats" if o > u else "does NOT beat"
            if by[method]["keep"] == by["uniform"]["keep"]:
                lines.append(
                    f"- {budget} MACs: {method} does NOT beat uniform: it chose the uniform "
                    f"allocation ({_pct(o)} vs {_pct(u)} on its own backend runs)"
                )
                continue
            paired = paired_noise(by[method], by["uniform"])
            bound = noise if paired is None else paired[2]
            within = f"; within seed noise (+-{100 * bound:.2f})" if abs(o - u) <= bound else ""
            if paired is not None:
                within = f"; ahead on {paired[0]} of {paired[1]} seeds{within}"
            lines.append(
                f"- {budget} MACs: {method} {verdict} uniform on final test accuracy "
                f"({_pct(o)} vs {_pct(u)}, {100 * (o - u):+.2f} points{within})"
            )
        timed = {m: by[m]["search_s"] for m in ("optuna", "rl", "dsa") if m in by}
        if "dsa" in timed and len(timed) > 1:
            times = ", ".join(f"{m} {t:.1f} s" for m, t in timed.items())
            fastest = min(timed, key=timed.__getitem__)
            lines.append(f"- {budget} MACs: search wall time {times}; fastest: {fastest}")
    corr = summary["correlation"]
    rho = corr["spearman"]
    lines.append(
        f"- Spearman rank correlation, proxy vs final, over {corr['n']} allocations at "
        f"{corr['budget']} MACs: {'undefined' if rho is None else f'{rho:.2f}'}"
    )
    return lines


TABLE_HEAD = (
    "| method | proxy (val) accuracy | final test accuracy: mean (per seed) | search wall time "
    "| trials | MACs (measured) | keep per unit |\n|---|---:|---:|---:|---:|---:|---|"
)


def paired_noise(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, int, float] | None:
    """Seeds on which `a` is ahead of `b`, the seed count, and two standard errors of the mean
    per-seed difference, when both rows were trained with the same seeds: a seed moves every
    allocation's accuracy together, so the paired spread is the honest noise."""
    xs, ys = a.get("test_accuracies", []), b.get("test_accuracies", [])
    if len(xs) < 2 or len(xs) != len(ys):
        return None
    d = np.asarray(xs) - np.asarray(ys)
    return int((d > 0).sum()), len(d), float(2 * d.std(ddof=1) / np.sqrt(len(d)))


def seed_noise(rows: list[dict[str, Any]]) -> float:
    """Two standard errors of a difference of two seed means, from the pooled per-row spread."""
    seeded = [r["test_accuracies"] for r in rows if len(r.get("test_accuracies", [])) > 1]
    if not seeded:
        return 0.0
    pooled = float(np.mean([np.var(a, ddof=1) for a in seeded]))
    return float(2 * np.sqrt(2 * pooled / len(seeded[0])))


def _final(row: dict[str, Any]) -> str:
    seeds = row.get("test_accuracies", [])
    each = f" ({' / '.join(f'{100 * a:.2f}' for a in seeds)})" if len(seeds) > 1 else ""
    return _pct(row["test_accuracy"]) + each


def _trials(row: dict[str, Any]) -> str:
    """Trials (rl: episodes plus the trained policy's own), and the episode that found the best."""
    best = row.get("best_episode")
    return f"{row['trials']} (best: #{best})" if best is not None else str(row["trials"])


def _seeds(recipe: dict[str, Any]) -> str:
    return ", ".join(map(str, recipe.get("seeds", [recipe["seed"]])))


def _keep(keep: list[int]) -> str:
    return " / ".join(map(str, keep))


def _intro(summary: dict[str, Any]) -> list[str]:
    r, d, ev = summary["recipe"], summary["dense"], summary["recipe"]["evaluator"]
    val = ev["val_limit"] or "all"
    return [
        f"# {summary['benchmark']}: search methods on LeNet-5 / {summary['dataset']}",
        "",
        f"Produced by\n\n```\n{summary['command']}\n```\n\nat commit {summary.get('code', '?')}.",
        "",
        f"Dense LeNet-5 (`{d['checkpoint']}`, {d['epochs']} epochs): test accuracy "
        f"{_pct(d['test_accuracy'])}, {format_value('macs', d['macs'])} MACs. Channel "
        "granularity; budgets on MACs.",
        "",
        f"Every allocation is trained by the `{r['backend']}` backend for {r['epochs']} + "
        f"{r['finetune_epochs']} (fine-tune) epochs at lr {r['lr']}, backend seed {r['seed']}; the "
        f"methods' own allocations are trained with seeds {_seeds(r)} and their final accuracy is "
        "the mean (the per-seed numbers are in brackets). The proxy "
        f"(what random and optuna maximise) is the validation accuracy on {val} held-out training "
        f"images after {ev['finetune_steps']} SGD steps on the pruned model; random and optuna get "
        f"{r['trials']} trials each, rl {r.get('episodes', '-')} episodes (DDPG, every episode "
        "scored by the same proxy, repeats cached; its trials count the trained policy's greedy "
        "episode too, and `best: #N` is the episode, from 0, that found the chosen allocation); "
        "dsa learns the keep ratios by gradient through soft channel masks on training batches "
        "(its defaults: 200 steps of 64 images, no evaluator; the proxy column scores its result). "
        "Search time is the wall time of the search stage only (2 CPU "
        "cores shared with other jobs); the test split is read once, after the backend.",
        "",
    ]


def render_readme(summary: dict[str, Any], out: Path) -> str:
    _scatter(summary["correlation"], out / SCATTER)
    lines = _intro(summary)
    for budget in summary["recipe"]["budgets"]:
        rows = [x for x in summary["rows"] if x["budget"] == budget]
        if not rows:
            continue
        limit = float(budget.rstrip("%")) / 100 * rows[0]["dense_macs"]
        lines += [f"## {budget} of dense MACs (<= {format_value('macs', limit)})", "", TABLE_HEAD]
        lines += [
            f"| {x['method']} | {_pct(x['proxy_accuracy'])} | {_final(x)} | "
            f"{x['search_s']:.1f} s | {_trials(x)} | {format_value('macs', x['macs'])} | "
            f"{_keep(x['keep'])} |"
            for x in rows
        ]
        lines.append("")
    corr = summary["correlation"]
    lines += [
        "## Does the proxy rank allocations like the final accuracy does?",
        "",
        f"{corr['n']} distinct allocations from the random and optuna trials at {corr['budget']} "
        "MACs, spread evenly over their proxy accuracies, each trained like the rows above:",
        "",
        f"![proxy vs final]({SCATTER})",
        "",
        "| proxy (val) | final test | keep per unit |\n|---:|---:|---|",
    ]
    points = sorted(corr["points"], key=lambda p: p["proxy_accuracy"])
    lines += [
        f"| {_pct(p['proxy_accuracy'])} | {_pct(p['test_accuracy'])} | {_keep(p['keep'])} |"
        for p in points
    ]
    lines += ["", "## Checks", "", *checks(summary), ""]
    finals = np.array([p["test_accuracy"] for p in points])
    if len(finals):
        span = f"{_pct(finals.min())} to {_pct(finals.max())}"
        lines += [f"Final accuracies of those allocations span {span}.", ""]
    return "\n".join(lines)


def dense_row(dense: str) -> dict[str, Any]:
    m = json.loads((Path(dense).parent / "metrics.json").read_text())
    return {
        "checkpoint": dense,
        "test_accuracy": m["final"]["accuracy"],
        "macs": m["final"]["macs"],
        "epochs": len(m.get("history", [])),
    }


def recipe_dict(r: Any) -> dict[str, Any]:
    return {
        "trials": r.trials,
        "episodes": r.episodes,
        "backend": r.backend,
        "epochs": r.epochs,
        "finetune_epochs": r.finetune_epochs,
        "lr": r.lr,
        "evaluator": r.evaluator.__dict__,
        "seed": r.seed,
        "budgets": list(r.budgets),
        "dense_epochs": r.dense.epochs,
        "seeds": [r.seed, *r.extra_seeds],
    }


def code_version() -> str:
    """The commit the benchmark ran from, marked dirty when the code differed from it."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        status = [*git, "status", "--porcelain", "-uno", "--", "autoprune", "search", "envs"]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} ({'with uncommitted changes' if dirty else 'clean'})"
