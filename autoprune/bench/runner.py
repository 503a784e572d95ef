"""What every benchmark does: build allocations from ratios, prune with a backend, measure the runs.

A benchmark is a dense run plus named `RunSpec`s. Each run goes to OUT/runs/NAME through the same
`run_prune` the CLI uses, and is reused (or resumed, if interrupted) on the next call. The rows of
the report are measured from the exported checkpoints, never copied from a config.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.allocation import Allocation
from autoprune.backends.base import BackendConfig
from autoprune.cost.budgets import parse_budget
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.graph.units import CONV_TYPES, LINEAR_TYPES, Granularity, UnitGraph
from autoprune.pipeline.finish import load_pruned
from autoprune.pipeline.load import Loaded, load_model_and_data, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.rundir import partial_dir


@dataclass(frozen=True)
class RunSpec:
    """One pruning run: an allocation (per-unit ratios, or a MACs fraction) and a backend recipe."""

    name: str
    backend: str
    granularity: Granularity = "weight"
    ratios: tuple[float, ...] | None = None  # keep ratio per unit, in the traced unit order
    macs: float | None = (
        None  # or: this fraction of the dense MACs, uniform ratios projected onto it
    )
    epochs: int = 10
    finetune_epochs: int = 10
    lr: float = 0.01
    finetune_lr: float | None = None
    distill: float = 0.0
    seed: int = 0  # the backend's (data order, gates); a replicate of a run differs only here
    options: dict[str, Any] = field(default_factory=dict)
    bits: Any = None  # an object with allocate(model, graph) -> BitAllocation: kernel-wise bits

    @property
    def allocation(self) -> str:
        """Runs whose names differ only in the backend prefix share their allocation."""
        return self.name.removeprefix(f"{self.backend}-")

    def backend_config(self, progress: bool) -> BackendConfig:
        return BackendConfig(
            epochs=self.epochs,
            finetune_epochs=self.finetune_epochs,
            lr=self.lr,
            finetune_lr=self.finetune_lr,
            distill=self.distill,
            seed=self.seed,
            options=dict(self.options),
            progress=progress,
        )

    def prune_command(self, allocation: str, data_dir: str | None, out: str) -> str:
        parts = [
            "autoprune prune",
            f"--allocation {allocation}",
            f"--backend {self.backend}",
            f"--epochs {self.epochs}",
            f"--finetune-epochs {self.finetune_epochs}",
            f"--lr {self.lr:g}",
        ]
        if self.finetune_lr is not None:
            parts.append(f"--finetune-lr {self.finetune_lr:g}")
        if self.distill:
            parts.append(f"--distill {self.distill:g}")
        if self.seed:
            parts.append(f"--seed {self.seed}")
        parts += [f"--backend-option {k}={v}" for k, v in sorted(self.options.items())]
        if data_dir:
            parts.append(f"--data-dir {data_dir}")
        return " ".join([*parts, f"--out {out}"])


def split_seed(name: str) -> tuple[str, int]:
    """A run name NAME-seedN as (NAME, N); any other name as (name, 0)."""
    head, _, seed = name.rpartition("-seed")
    return (head, int(seed)) if head and seed.isdigit() else (name, 0)


COMMAND_FILE = "command.txt"  # in a run directory: the exact `autoprune prune` that made it


def keep_for(spec: RunSpec, graph: UnitGraph, cost_model: CostModel) -> np.ndarray:
    """Integer keeps of a spec: rounded ratios, or uniform ratios projected onto a MACs budget."""
    sizes = np.array(graph.sizes)
    if spec.ratios is not None:
        if len(spec.ratios) != len(sizes):
            raise ValueError(
                f"run {spec.name!r} gives {len(spec.ratios)} ratios for {len(sizes)} units"
            )
        return np.clip(np.round(np.array(spec.ratios) * sizes).astype(np.int64), 1, sizes)
    if spec.macs is None:
        raise ValueError(f"run {spec.name!r} needs ratios or a macs fraction")
    limit = spec.macs * cost_model.metric("macs", cost_model.dense_keep)
    return project(
        np.ones(len(sizes)), cost_model, {"macs": limit}, ProjectionConfig(min_ratio=0.02)
    )


def make_allocation(spec: RunSpec, loaded: Loaded, checkpoint: str, path: Path) -> Allocation:
    """Write the allocation of `spec` for the dense model in `loaded` to `path`."""
    graph, cost_model = trace(loaded, spec.granularity)
    keep = keep_for(spec, graph, cost_model)
    budgets = [parse_budget("macs", f"{100 * spec.macs:g}%")] if spec.macs is not None else []
    bits = None if spec.bits is None else spec.bits.allocate(loaded.model, graph)
    costs = (cost_model if bits is None else cost_model.with_bits(bits)).costs(keep).as_dict()
    dense = cost_model.costs(cost_model.dense_keep).as_dict()
    alloc = Allocation.from_keep(
        graph,
        keep,
        num_classes=loaded.num_classes,
        budgets=budgets,
        predicted=costs,
        dense=dense,
        method="bench",
        dataset=loaded.dataset,
        checkpoint=checkpoint,
        extra={"run": spec.name, "allocation": spec.allocation},
        bits=bits,
    )
    alloc.save(path)
    return alloc


def run_spec(
    spec: RunSpec,
    *,
    out: Path,
    dense_ckpt: str,
    dataset: str,
    data_dir: str | None,
    limit: int | None,
    force: bool,
    progress: bool,
) -> bool:
    """Prune one run into out/runs/NAME unless it is there already; True if it ran now."""
    run_dir = out / "runs" / spec.name
    if (run_dir / "metrics.json").is_file() and not force:
        return False
    loaded = load_model_and_data(
        model=None, dataset=dataset, data_dir=data_dir, checkpoint=dense_ckpt, limit=limit
    )
    alloc_path = out / "allocations" / f"{spec.name}.json"
    make_allocation(spec, loaded, dense_ckpt, alloc_path)
    resume = (partial_dir(run_dir) / "epochs" / "last.pt").is_file() and not force
    run_prune(
        PruneRun(
            allocation=str(alloc_path),
            out=str(run_dir),
            backend=spec.backend,
            backend_cfg=spec.backend_config(progress),
            data_dir=data_dir,
            limit=limit,
            progress=progress,
            overwrite=force,
            resume=resume,
        )
    )
    # The per-epoch resume state is as big as several models and useless once the run is done.
    shutil.rmtree(run_dir / "epochs", ignore_errors=True)
    (run_dir / COMMAND_FILE).write_text(
        spec.prune_command(str(alloc_path), data_dir, str(run_dir)) + "\n"
    )
    return True


def run_specs(
    specs: list[RunSpec],
    wanted: set[str] | list[str],
    *,
    out: Path,
    dense_ckpt: str,
    dataset: str,
    data_dir: str | None,
    force: bool,
    progress: bool,
) -> None:
    """Run (or reuse) every spec whose name is in `wanted`, in the specs' order."""
    for spec in specs:
        if spec.name in wanted:
            run_spec(
                spec,
                out=out,
                dense_ckpt=dense_ckpt,
                dataset=dataset,
                data_dir=data_dir,
                limit=None,
                force=force,
                progress=progress,
            )


def recorded_command(spec: RunSpec, allocation: str, data_dir: str | None, run_dir: Path) -> str:
    """The command a finished run was made with: its own record, so a reused run made with an
    older recipe is reported as it ran, not as the current spec would run it."""
    record = run_dir / COMMAND_FILE
    if record.is_file():
        return record.read_text().strip()
    return spec.prune_command(allocation, data_dir, str(run_dir))


def layer_counts(
    run_dir: Path, layers: list[str], positions: dict[str, int]
) -> tuple[list[int], int]:
    """Nonzero weights per layer and nonzero MACs per sample of a run's exported checkpoint."""
    model, _ = load_pruned(run_dir / "checkpoint.pt")
    modules = dict(model.named_modules())
    counts = []
    for name in layers:
        m = modules[name]
        assert isinstance(m, CONV_TYPES + LINEAR_TYPES)
        counts.append(int(torch.count_nonzero(m.weight.detach())))
    return counts, sum(c * positions[n] for c, n in zip(counts, layers, strict=True))


def measure_run(run_dir: Path, graph: UnitGraph, dense_acc: float) -> dict[str, Any]:
    """One report row, measured from the run's files."""
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    alloc = Allocation.load(run_dir / "allocation.json")
    layers = [lay.name for lay in graph.layers]
    positions = {lay.name: lay.positions for lay in graph.layers}
    counts, nonzero_macs = layer_counts(run_dir, layers, positions)
    dense_macs = sum(lay.macs for lay in graph.layers)
    history = metrics.get("history", [])
    acc = float(metrics["final"]["accuracy"])
    return {
        "run": run_dir.name,
        "backend": metrics.get("backend"),
        "granularity": metrics["granularity"],
        "allocation": alloc.provenance.get("allocation", run_dir.name),
        "weights_per_layer": counts,
        "dense_weights_per_layer": [lay.weights for lay in graph.layers],
        "compression_ratio": float(metrics["compression_ratio"]),
        "test_accuracy": acc,
        "delta_points": 100 * (acc - dense_acc),
        "nonzero_macs": nonzero_macs,
        "macs": int(metrics["final"]["macs"]),
        "macs_fraction": nonzero_macs / dense_macs,
        "predicted_macs": alloc.predicted.get("macs"),
        "epochs": len(history),
        "wall_time_s": float(sum(metrics.get("wall_time_s", {}).values())),
        "budgets_met": all(c["met"] for c in metrics.get("budgets", {}).values()),
    }


def best_runs(rows: list[dict[str, Any]], max_drop_points: float) -> list[str]:
    """Per backend and granularity: the most compressed run within the drop, else the most
    accurate."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["backend"], r["granularity"])

        def rank(x: dict[str, Any]) -> tuple[bool, float]:
            ok = x["delta_points"] >= -max_drop_points
            return ok, x["compression_ratio"] if ok else x["test_accuracy"]

        if key not in best or rank(r) > rank(best[key]):
            best[key] = r
    return sorted(r["run"] for r in best.values())


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t
