"""`autoprune bench lenet5-mnist`: LeNet-5 on MNIST, every backend, against the published table.

The dense model is trained once and every run prunes its checkpoint. Unstructured runs start at
ADMM's per-layer 20 / 8 / 0.9 / 7 % (71.2x) and go further; one structured run slims channels to
20% of the dense MACs. `--quick` does the same on the embedded digits set in seconds.
"""

from __future__ import annotations

import json
import platform
import shlex
from pathlib import Path
from typing import Any

import torch

from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.overhead import step_overhead
from autoprune.bench.report import render_readme, write_gitignore, write_readme
from autoprune.bench.runner import (
    RunSpec,
    best_runs,
    keep_for,
    measure_run,
    recorded_command,
    run_specs,
    split_seed,
)
from autoprune.errors import UsageError
from autoprune.graph.units import Granularity
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.rundir import write_json_atomic
from autoprune.train.loop import TrainConfig

NAME = "lenet5-mnist"
ADMM = (0.20, 0.08, 0.009, 0.07)  # Zhang et al. 2018, conv1 / conv2 / fc1 / fc2: 71.2x
X150 = (0.25, 0.04, 0.004, 0.04)  # about 147x
X310 = (0.30, 0.02, 0.0015, 0.02)  # about 319x, 5.2% of the dense MACs (AutoPrune: 310x, 7%)
MAX_DROP_POINTS = 0.1  # the accuracy a "no loss" run may give up against the dense model


def _runs(table: list[tuple[str, str, Granularity, Any]], **recipe: Any) -> list[RunSpec]:
    """Specs from (name, backend, granularity, ratios per unit | fraction of dense MACs) rows;
    a name ending in -seedN is that run again with backend seed N."""
    return [
        RunSpec(
            name,
            backend,
            gran,
            ratios=None if isinstance(a, float) else a,
            macs=a if isinstance(a, float) else None,
            seed=split_seed(name)[1],
            **recipe,
        )
        for name, backend, gran, a in table
    ]


DENSE = TrainConfig(epochs=20, lr=0.05, seed=0)
FULL = _runs(
    [
        ("magnitude-71x", "magnitude", "weight", ADMM),
        ("reweighted-71x", "reweighted", "weight", ADMM),
        ("magnitude-71x-seed1", "magnitude", "weight", ADMM),
        ("reweighted-71x-seed1", "reweighted", "weight", ADMM),
        ("magnitude-71x-seed2", "magnitude", "weight", ADMM),
        ("reweighted-71x-seed2", "reweighted", "weight", ADMM),
        ("magnitude-71x-seed3", "magnitude", "weight", ADMM),
        ("reweighted-71x-seed3", "reweighted", "weight", ADMM),
        ("magnitude-71x-seed4", "magnitude", "weight", ADMM),
        ("reweighted-71x-seed4", "reweighted", "weight", ADMM),
        ("admm-71x", "admm", "weight", ADMM),
        ("reweighted-147x", "reweighted", "weight", X150),
        ("magnitude-147x", "magnitude", "weight", X150),
        ("reweighted-319x", "reweighted", "weight", X310),
        ("magnitude-319x", "magnitude", "weight", X310),
        ("admm-319x", "admm", "weight", X310),
        ("reweighted-channel-20pct-macs", "reweighted", "channel", 0.20),
        ("magnitude-channel-20pct-macs", "magnitude", "channel", 0.20),
    ],
    epochs=12,
    finetune_epochs=12,
    finetune_lr=0.05,
    distill=0.7,
)
QUICK_DENSE = TrainConfig(epochs=2, lr=0.05, seed=0)
QUICK = _runs(
    [
        ("magnitude-71x", "magnitude", "weight", ADMM),
        ("reweighted-71x", "reweighted", "weight", ADMM),
        ("reweighted-channel-20pct-macs", "reweighted", "channel", 0.20),
    ],
    epochs=1,
    finetune_epochs=1,
)
OVERHEAD = "overhead"  # the name `--only` takes for the step-overhead measurement


@BENCHMARKS.register(NAME)
def lenet5_mnist(cfg: BenchConfig) -> dict[str, Any]:
    """Train dense LeNet-5 once, prune it with each backend; write OUT/README.md, summary.json."""
    out = Path(cfg.out or Path("results") / NAME)
    dataset, data_dir = ("digits", None) if cfg.quick else ("mnist", cfg.data_dir)
    specs = QUICK if cfg.quick else FULL
    wanted = set(cfg.only) if cfg.only else {s.name for s in specs} | {OVERHEAD}
    unknown = wanted - {s.name for s in specs} - {OVERHEAD}
    if unknown:
        names = ", ".join([s.name for s in specs] + [OVERHEAD])
        raise UsageError(
            f"benchmark {NAME!r} has no run {', '.join(map(repr, sorted(unknown)))}; it has {names}"
        )

    dense_dir = out / "dense"
    dense_train = QUICK_DENSE if cfg.quick else DENSE
    if not (dense_dir / "metrics.json").is_file() or (cfg.force and not cfg.only):
        run_train(
            TrainRun(
                model="lenet5",
                dataset=dataset,
                out=str(dense_dir),
                data_dir=data_dir,
                train=dense_train,
                progress=cfg.progress,
                overwrite=True,
            )
        )
    dense_ckpt = str(dense_dir / "checkpoint.pt")
    run_specs(
        specs,
        wanted,
        out=out,
        dense_ckpt=dense_ckpt,
        dataset=dataset,
        data_dir=data_dir,
        force=cfg.force,
        progress=cfg.progress,
    )

    loaded = load_model_and_data(
        model=None, dataset=dataset, data_dir=data_dir, checkpoint=dense_ckpt
    )
    overhead_path = out / "overhead.json"
    if OVERHEAD in wanted and (cfg.force or not overhead_path.is_file()):
        graph, cost_model = trace(loaded, "weight")
        keep = keep_for(FULL[1], graph, cost_model)
        write_json_atomic(
            overhead_path, step_overhead(loaded, graph, keep, steps=5 if cfg.quick else 60)
        )

    dense_metrics = json.loads((dense_dir / "metrics.json").read_text())
    dense_acc = float(dense_metrics["final"]["accuracy"])
    graph, _ = trace(loaded, "weight")
    rows = [
        measure_run(out / "runs" / s.name, graph, dense_acc)
        for s in specs
        if (out / "runs" / s.name / "metrics.json").is_file()
    ]
    for row in rows:
        spec = next(s for s in specs if s.name == row["run"])
        alloc = f"{out}/allocations/{spec.name}.json"
        row["command"] = recorded_command(spec, alloc, data_dir, out / "runs" / spec.name)
    best = best_runs(rows, MAX_DROP_POINTS)
    summary = {
        "benchmark": NAME,
        "quick": cfg.quick,
        "dataset": dataset,
        "bench_command": _bench_command(cfg),
        "dense_command": _train_command(dataset, data_dir, dense_train, out),
        "dense": {
            "test_accuracy": dense_acc,
            "weights": dense_metrics["final"]["weights"],
            "macs": dense_metrics["final"]["macs"],
            "epochs": len(dense_metrics.get("history", [])),
            "wall_time_s": sum(dense_metrics.get("wall_time_s", {}).values()),
        },
        "runs": rows,
        "best": best,
        "max_drop_points": MAX_DROP_POINTS,
        "overhead": json.loads(overhead_path.read_text()) if overhead_path.is_file() else None,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    write_json_atomic(out / "summary.json", summary)
    write_readme(out, render_readme(summary))
    write_gitignore(out, best)
    return summary


def _bench_command(cfg: BenchConfig) -> str:
    parts = ["autoprune", "bench", NAME]
    if cfg.quick:
        parts.append("--quick")
    if cfg.data_dir and not cfg.quick:
        parts += ["--data-dir", cfg.data_dir]
    if cfg.out:
        parts += ["--out", cfg.out]
    return shlex.join(parts)


def _train_command(dataset: str, data_dir: str | None, train: TrainConfig, out: Path) -> str:
    parts = ["autoprune", "train", "--model", "lenet5", "--dataset", dataset]
    if data_dir:
        parts += ["--data-dir", data_dir]
    parts += [
        "--epochs",
        str(train.epochs),
        "--lr",
        f"{train.lr:g}",
        "--seed",
        str(train.seed),
        "--out",
        str(out / "dense"),
    ]
    return shlex.join(parts)
