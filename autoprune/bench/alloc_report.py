"""The allocation benchmark's numbers: paired differences over seeds, proxy rank correlation, and
the README that shows them (autoprune.bench.alloc_lenet5 runs; this only reads its rows)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from autoprune.bench.search_report import spearman

HEURISTICS = ("erk", "global", "lamp")
SEARCHES = ("optuna", "rl", "dsa")
PROPOSERS = ("random", "optuna", "rl")  # the searches whose effort is proxy evaluations
LANDSCAPE = "landscape"  # runs named landscape-N-seedS: random allocations on the budget
CURVE_AT = (1, 5, 10, 20, 40, 80, 150)  # evaluations at which the best-so-far table looks


def paired(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean of a - b over the seeds both have, and two standard errors of that mean."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    two_se = 2 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else None
    return {"n": len(d), "mean": float(d.mean()), "two_se": two_se}


def beyond(diff: dict[str, Any] | None, sign: int) -> bool | None:
    """Whether the paired difference is beyond noise in direction `sign` (+1 above, -1 below)."""
    if diff is None or diff["two_se"] is None:
        return None
    return bool(sign * diff["mean"] > diff["two_se"])


def _methods(rows: list[dict[str, Any]], order: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        m = out.setdefault(r["method"], {"acc": {}, "proxy": [], "search_s": [], "ratio": [],
                                         "met": True})  # fmt: skip
        m["acc"][r["seed"]] = r["test_accuracy"]
        m["proxy"].append(r["proxy_accuracy"])
        m["ratio"].append(r["compression"])
        m["met"] = m["met"] and r["budget_met"]
        if r["search_s"] is not None:
            m["search_s"].append(r["search_s"])
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarise_point(point: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    """One budget: per method the mean over seeds and the paired differences with uniform and
    with the best heuristic (by mean final accuracy); the proxy's Spearman over all rows."""
    methods = _methods([r for r in point["rows"] if not _landscape(r)], order)
    heur = [h for h in HEURISTICS if h in methods]
    best_h = max(heur, key=lambda h: np.mean(list(methods[h]["acc"].values()))) if heur else None
    table = []
    for name, m in methods.items():
        vs_u = paired(m["acc"], methods["uniform"]["acc"]) if "uniform" in methods else None
        vs_h = paired(m["acc"], methods[best_h]["acc"]) if best_h else None
        table.append({
            "method": name, "seeds": sorted(m["acc"]),
            "test_accuracy": _mean(list(m["acc"].values())),
            "proxy_accuracy": _mean(m["proxy"]), "search_s": _mean(m["search_s"]),
            "compression": _mean(m["ratio"]), "budget_met": m["met"],
            "vs_uniform": vs_u, "vs_best_heuristic": vs_h,
        })  # fmt: skip
    rows = [r for r in point["rows"] if r["proxy_accuracy"] is not None]
    rho = spearman([r["proxy_accuracy"] for r in rows], [r["test_accuracy"] for r in rows])
    searches = [t for t in table if t["method"] in SEARCHES and t["test_accuracy"] is not None]
    best_s = max(searches, key=lambda t: t["test_accuracy"]) if searches else None
    checks = {
        "best_search": None if best_s is None else best_s["method"],
        "best_heuristic": best_h,
        "search_beats_uniform": None if best_s is None else beyond(best_s["vs_uniform"], +1),
        "search_below_best_heuristic": None if best_s is None else beyond(
            best_s["vs_best_heuristic"], -1),
        "searches_below_uniform": [t["method"] for t in searches
                                   if beyond(t["vs_uniform"], -1)],
    }  # fmt: skip
    picked: dict[str, dict[int, str | None]] = {}
    for r in sorted(point["rows"], key=lambda r: r["seed"]):
        if r["method"] in PROPOSERS + SEARCHES:
            picked.setdefault(r["method"], {})[r["seed"]] = r.get("returned")
    return {"point": point["point"], "dataset": point["dataset"], "ratio": point.get("ratio"),
            "budgets": point.get("budgets"), "methods": table, "spearman": rho,
            "spearman_n": len(rows), "checks": checks, "curves": curves(point["rows"]),
            "landscape": landscape(point["rows"]), "returned": picked}  # fmt: skip


def curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per search that spends proxy evaluations (random search the reference, optuna, rl; dsa
    learns from training batches instead), the best proxy score after n of its own evaluations,
    mean over seeds, and against random search at the same n, paired by seed: does a learning
    method find better allocations than random proposals for the same effort?"""
    by: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        if r.get("curve") and r["method"] in PROPOSERS:
            by.setdefault(r["method"], {})[r["seed"]] = r["curve"]
    rand = by.get("random", {})
    out = []
    for method, seeds in by.items():
        n = min(len(c) for c in seeds.values())
        common = sorted(s for s in seeds if s in rand)
        vs = None
        if method != "random" and common:
            at = min([n, *(len(rand[s]) for s in common)])
            diff = paired({s: seeds[s][at - 1] for s in common},
                          {s: rand[s][at - 1] for s in common})  # fmt: skip
            vs = None if diff is None else {**diff, "at": at}
        out.append({
            "method": method, "seeds": sorted(seeds), "evaluations": n,
            "best_at": {k: float(np.mean([c[k - 1] for c in seeds.values()]))
                        for k in CURVE_AT if k <= n},
            "vs_random": vs,
        })  # fmt: skip
    return out


def _landscape(row: dict[str, Any]) -> bool:
    return str(row["method"]).startswith(LANDSCAPE)


def landscape(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How far apart allocations on the budget are: the random allocations (one backend seed)
    against uniform at that seed, best first."""
    land = sorted((r for r in rows if _landscape(r)), key=lambda r: -r["test_accuracy"])
    if not land:
        return None
    seed = land[0]["seed"]
    uniform = next((r["test_accuracy"] for r in rows
                    if r["method"] == "uniform" and r["seed"] == seed), None)  # fmt: skip
    accs = [r["test_accuracy"] for r in land]
    return {
        "seed": seed, "uniform": uniform, "n": len(land), "best": accs[0], "worst": accs[-1],
        "above_uniform": None if uniform is None else sum(a > uniform for a in accs),
        "rows": [{k: r[k] for k in ("method", "keep", "test_accuracy", "proxy_accuracy")}
                 for r in land],
    }  # fmt: skip


def summarise(points: list[dict[str, Any]], order: tuple[str, ...]) -> dict[str, Any]:
    """Every budget, the commits that trained its runs and the dense checkpoints they name."""
    rows = [r for p in points for r in p["rows"]]
    return {
        "points": [summarise_point(p, order) for p in points if p["rows"]],
        "trained_at": sorted({r["code"] for r in rows if r["code"]}),
        "checkpoints": sorted({r["checkpoint"] for r in rows if r["checkpoint"]}),
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    noise = "" if d["two_se"] is None else f" ± {100 * d['two_se']:.2f}"
    return f"{100 * d['mean']:+.2f}{noise} pts (n={d['n']})"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _render_landscape(land: dict[str, Any] | None) -> list[str]:
    if land is None:
        return []
    out = ["", f"Landscape: {land['n']} random allocations on the budget (backend seed "
           f"{land['seed']}): {_pct(land['worst'])} to {_pct(land['best'])}; uniform at that "
           f"seed {_pct(land['uniform'])}, {land['above_uniform']} of {land['n']} above it.", "",
           "| allocation | keeps | test accuracy | proxy |", "|---|---|---|---|"]  # fmt: skip
    for r in land["rows"]:
        keeps = " ".join(str(k) for k in r["keep"])
        out.append(f"| {r['method']} | {keeps} | {_pct(r['test_accuracy'])} | "
                   f"{_pct(r['proxy_accuracy'])} |")  # fmt: skip
    return out


def _render_curves(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    at = [k for k in CURVE_AT if any(k in r["best_at"] for r in rows)]
    out = ["", "Best proxy score after n of a search's own evaluations (the starts it is handed "
           "left out), mean over seeds, and against random search at the same n, paired by seed:",
           "", "| search | evaluations | " + " | ".join(f"n={k}" for k in at) + " | vs random |",
           "|---|---|" + "---|" * len(at) + "---|"]  # fmt: skip
    for r in rows:
        cells = " | ".join(_pct(r["best_at"].get(k)) for k in at)
        vs = r["vs_random"]
        shown = "-" if vs is None else f"{_diff(vs)} at n={vs['at']}"
        out.append(f"| {r['method']} | {r['evaluations']} | {cells} | {shown} |")
    return out


def render_readme(summary: dict[str, Any]) -> str:
    """The README: one table per budget, then the checks the issue asks for."""
    out = [
        f"# {summary['benchmark']}" + (" (quick mode: digits)" if summary["quick"] else ""),
        "",
        "Written by `autoprune bench`; every number is read from the run directories here.",
        f"Reproduce with `{summary['command']}`.",
        "",
        f"Runs trained at commit: {', '.join(summary['trained_at']) or '-'}. "
        f"Table rendered at: {summary['rendered_at']}.",
        f"Dense checkpoints named by the allocations: {', '.join(summary['checkpoints']) or '-'}.",
        "",
        "Final test accuracy is the mean over seeds; differences are paired by seed (search and",
        "backend seed alike), with two standard errors of the mean difference.",
    ]
    for p in summary["points"]:
        budgets = f" ({' + '.join(p['budgets'])})" if p.get("budgets") else ""
        out += ["", f"## {p['point']}{budgets}", "",
                "| method | seeds | test accuracy | vs uniform | vs best heuristic | proxy | "
                "search s | compression | budget met |",
                "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for t in p["methods"]:
            out.append(
                f"| {t['method']} | {len(t['seeds'])} | {_pct(t['test_accuracy'])} | "
                f"{_diff(t['vs_uniform'])} | {_diff(t['vs_best_heuristic'])} | "
                f"{_pct(t['proxy_accuracy'])} | {_num(t['search_s'], '.1f')} | "
                f"{_num(t['compression'], '.1f')}x | {'yes' if t['budget_met'] else 'NO'} |"
            )
        c = p["checks"]
        out += ["", f"Proxy Spearman over {p['spearman_n']} allocations: "
                f"{_num(p['spearman'], '.2f')}. Best heuristic: {c['best_heuristic'] or '-'}; "
                f"best search: {c['best_search'] or '-'}, beats uniform beyond noise: "
                f"{c['search_beats_uniform']}, below the best heuristic beyond noise: "
                f"{c['search_below_best_heuristic']}; searches below uniform beyond noise: "
                f"{', '.join(c['searches_below_uniform']) or 'none'}."]  # fmt: skip
        if p.get("returned"):
            said = "; ".join(f"{m} " + ", ".join(f"{seed} {who or '-'}" for seed, who in by.items())
                             for m, by in p["returned"].items())  # fmt: skip
            out += ["", "What each search returned, by seed (a start it was handed, or `own`: one "
                    f"of its own proposals): {said}."]  # fmt: skip
        out += _render_curves(p.get("curves") or [])
        out += _render_landscape(p.get("landscape"))
    return "\n".join(out) + "\n"
