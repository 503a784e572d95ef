"""Benchmark of the latency tables: predicted against measured latency, and speed-up against MACs.

    python -m autoprune.bench.latency [--out results/latency] [--models lenet5,resnet18,...]

For each model: measure its table, then time (interleaved, medians) the dense model with 20 random
allocations and with the allocations that 50% and 30% MAC budgets (and a 50% latency budget)
project to. Writes latency.json, a scatter plot and README.md; every number comes from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.bench.latency_report import plot, readme
from autoprune.bench.report import write_readme
from autoprune.cost.latency import (
    LatencyConfig,
    measure_table,
    random_keeps,
    register_latency,
    timed_copy,
)
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.cost.shared_machine import Quiet, quietly, raise_priority
from autoprune.cost.timing import TimingConfig, compare_latency, machine_info
from autoprune.errors import BudgetError
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.rundir import write_json_atomic


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_size: tuple[int, int, int]
    num_classes: int


MODELS = {
    "lenet5": ModelSpec("lenet5", (1, 28, 28), 10),
    "resnet18": ModelSpec("resnet18", (3, 224, 224), 1000),
    "mobilenet_v2": ModelSpec("mobilenet_v2", (3, 224, 224), 1000),
}


def bench_model(
    spec: ModelSpec,
    cfg: LatencyConfig,
    *,
    n_random: int,
    seed: int,
    quiet: Quiet,
    tables: Path,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_model(spec.name, num_classes=spec.num_classes, input_size=spec.input_size).eval()
    graph = trace_units(model, spec.input_size, "channel", spec.name)
    cm = CostModel(graph)
    out: dict[str, Any] = {
        "model": spec.name,
        "input_size": list(spec.input_size),
        "units": len(graph.units),
    }

    table, out["conditions_table"] = quietly(lambda: measure_table(model, graph, cm, cfg), quiet)
    table.save(tables / f"{spec.name}.json")
    predict = register_latency(cm, table)
    out["table"] = {
        "seconds_to_measure": table.info["seconds_to_measure"],
        "layers": len(table.layers),
        "block": table.block,
        "layer_scale": table.layer_scale,
        "rest_const_s": table.rest_const,
        "rest_per_activation_s": table.rest_per_activation,
    }

    keeps = random_keeps(cm, n_random, seed)
    # timed in the form the table was (as model.pt2 runs them, by default)
    models = {"dense": timed_copy(model, cm.graph, None, table.form)} | {
        f"r{i}": timed_copy(model, cm.graph, k, table.form) for i, k in enumerate(keeps)
    }
    measured, out["conditions_random"] = quietly(
        lambda: compare_latency(models, spec.input_size, batch=cfg.batch, cfg=cfg.timing), quiet
    )
    pred = np.array([predict(k) for k in keeps])
    meas = np.array([measured[f"r{i}"] for i in range(len(keeps))])
    dense_pred, dense_meas = predict(cm.dense_keep), measured["dense"]
    out["random"] = {
        "predicted_s": pred.tolist(),
        "measured_s": meas.tolist(),
        "macs": [cm.metric("macs", k) for k in keeps],
        "dense_predicted_s": dense_pred,
        "dense_measured_s": dense_meas,
        **agreement(pred, meas),
        # Each side as a fraction of its own dense model: what a relative budget compares, and
        # free of the drift in absolute speed between the table's timing and this one.
        "relative": agreement(pred / dense_pred, meas / dense_meas),
    }
    out["table"]["form"] = table.form
    out["budgets"] = [
        budget_row(model, cm, spec, cfg, metric, frac, quiet, table.form)
        for metric, frac in (("macs", 0.5), ("macs", 0.3), ("latency", 0.5))
    ]
    return out


def agreement(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """Correlations and errors of predictions against measurements (same units)."""
    ranks = np.argsort(np.argsort(pred)), np.argsort(np.argsort(meas))
    return {
        "pearson_r": float(np.corrcoef(pred, meas)[0, 1]),
        "spearman_rho": float(np.corrcoef(*ranks)[0, 1]),
        "mae": float(np.abs(pred - meas).mean()),
        "mape": float((np.abs(pred - meas) / meas).mean()),
        "bias": float((pred - meas).mean()),
    }


def budget_row(
    model: torch.nn.Module,
    cm: CostModel,
    spec: ModelSpec,
    cfg: LatencyConfig,
    metric: str,
    frac: float,
    quiet: Quiet,
    form: str,
) -> dict[str, Any]:
    """Project uniform ratios onto one budget, slim, and time the result against the dense model."""
    dense = {m: cm.metric(m, cm.dense_keep) for m in ("macs", "latency")}
    name = f"{metric} {100 * frac:.0f}%"
    try:
        keep = project(np.full(len(cm.sizes), 1.0), cm, {metric: frac * dense[metric]})
    except BudgetError:
        smallest = cm.metric(metric, min_keeps(cm.sizes, ProjectionConfig()))
        return {"budget": name, "infeasible": True, "smallest_fraction": smallest / dense[metric]}
    pair = {"dense": timed_copy(model, cm.graph, None, form),
            "final": timed_copy(model, cm.graph, keep, form)}  # fmt: skip
    t, conditions = quietly(
        lambda: compare_latency(pair, spec.input_size, batch=cfg.batch, cfg=cfg.timing), quiet
    )
    macs = cm.metric("macs", keep)
    return {
        "budget": name,
        "macs": macs,
        "mac_reduction": dense["macs"] / macs,
        "predicted_speedup": dense["latency"] / cm.metric("latency", keep),
        "measured_speedup": t["dense"] / t["final"],
        "dense_s": t["dense"],
        "final_s": t["final"],
        "measured_latency_fraction": t["final"] / t["dense"],
        "conditions": conditions,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m autoprune.bench.latency", description=__doc__)
    p.add_argument("--out", default="results/latency")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--random", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-busy", type=float, default=Quiet.max_busy,
                   help="wait until other jobs keep fewer CPU cores than this busy")  # fmt: skip
    p.add_argument("--max-busy-during", type=float, default=Quiet.max_busy_during,
                   help="repeat a measurement if other jobs used more cores meanwhile")  # fmt: skip
    p.add_argument("--attempts", type=int, default=Quiet.attempts, help="at most this many times")
    p.add_argument("--max-wait", type=float, default=Quiet.max_wait_s,
                   help="seconds to wait for that, per measurement")  # fmt: skip
    p.add_argument(
        "--priority", type=int, help="scheduler nice value for this run, e.g. -15 on a busy machine"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite README.md and the plot from OUT/latency.json and OUT/NOTES.md",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        write_report(out, json.loads((out / "latency.json").read_text()))
        return 0
    priority = raise_priority(args.priority) if args.priority is not None else None
    spare = max(0, (os.cpu_count() or 1) - args.threads)
    quiet = Quiet(args.max_busy, args.max_busy_during, spare, args.max_wait, args.attempts)
    torch.set_num_threads(args.threads)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    cfg = LatencyConfig(timing=TimingConfig(rounds=args.rounds, threads=args.threads))
    t0 = time.time()
    results = []
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        results.append(
            bench_model(
                MODELS[name],
                cfg,
                n_random=args.random,
                seed=args.seed,
                quiet=quiet,
                tables=out / "tables",
            )
        )
    summary = {
        "command": "python -m autoprune.bench.latency "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": time.time() - t0,
        "machine": machine_info(args.threads),
        "threads": args.threads,
        "batch": cfg.batch,
        "rounds": args.rounds,
        "random": args.random,
        "fractions": list(cfg.fractions),
        "max_busy": args.max_busy,
        "max_busy_during": args.max_busy_during,
        "spare_cores": spare,
        "attempts": args.attempts,
        "priority": priority,
        "max_wait_s": args.max_wait,
        "results": results,
    }
    write_json_atomic(out / "latency.json", summary)
    write_report(out, summary)
    return 0


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """README.md (with OUT/NOTES.md, hand-written, appended when present) and the plot."""
    plot(summary["results"], out / "predicted_vs_measured.png")
    write_readme(out, readme(summary))
    print(f"wrote {out}/README.md, predicted_vs_measured.png")


if __name__ == "__main__":
    sys.exit(main())
