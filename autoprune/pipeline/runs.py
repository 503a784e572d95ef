"""The stages end to end, as the CLI runs them: train, search, prune. Each writes a run directory.

Every check of user input (model, dataset, budgets, files) happens before anything is written,
and run directories are staged, so a failure leaves nothing behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import __version__
from autoprune.allocation import Allocation, write_json_atomic
from autoprune.cost.budgets import Budget, check_budgets
from autoprune.cost.latency import latency_check
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.cost.timing import measure_run_latency
from autoprune.errors import BudgetBrokenError, CheckpointError, UsageError
from autoprune.export.program import compression, export_program, model_metrics
from autoprune.export.quant import artifact_checks, export_artifact
from autoprune.graph.masking import slim
from autoprune.graph.units import Granularity, UnitGraph, trace_units
from autoprune.models import build_model, default_input_size
from autoprune.rundir import staged_run_dir
from autoprune.train.checkpoint import load_checkpoint, save_checkpoint
from autoprune.train.data import DataSplits, load_dataset, make_loader
from autoprune.train.loop import TrainConfig, fit, set_seed

CHECKPOINT_KIND_DENSE = "dense"
CHECKPOINT_KIND_PRUNED = "pruned"


@dataclass
class Loaded:
    """A model ready for a stage: the network, what it is, and its data."""

    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    num_classes: int
    data: DataSplits
    dataset: str
    checkpoint: str | None


def load_model_and_data(
    *,
    model: str | None,
    dataset: str,
    data_dir: str | None = None,
    checkpoint: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    limit: int | None = None,
    download: bool = False,
) -> Loaded:
    """Build (or restore from a dense checkpoint) a model and load its dataset at its input size."""
    meta: dict[str, Any] = {}
    state = None
    if checkpoint is not None:
        state, meta = load_checkpoint(checkpoint)
        if meta.get("kind", CHECKPOINT_KIND_DENSE) != CHECKPOINT_KIND_DENSE:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} is already pruned; search on the dense one"
            )
        if model is not None and model != meta["model"]:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} holds {meta['model']!r}, not {model!r}"
            )
        model = str(meta["model"])
        input_size = tuple(meta["input_size"])
    if model is None:
        raise UsageError("no model given; pass --model NAME (see `autoprune profile --help`)")
    size = tuple(input_size) if input_size else default_input_size(model)
    data = load_dataset(dataset, input_size=size, data_dir=data_dir, limit=limit, download=download)  # type: ignore[arg-type]
    num_classes = int(meta.get("num_classes", data.spec.num_classes))
    net = build_model(model, num_classes=num_classes, input_size=size)  # type: ignore[arg-type]
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} does not fit {model!r}: {str(e).splitlines()[0]}"
            ) from None
    return Loaded(net, model, size, num_classes, data, dataset, checkpoint)  # type: ignore[arg-type]


def _meta(loaded: Loaded, kind: str, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": kind, "model": loaded.name, "num_classes": loaded.num_classes,
        "input_size": list(loaded.input_size), "dataset": loaded.dataset, "seed": seed,
        "mean": list(loaded.data.mean), "std": list(loaded.data.std), "version": __version__,
        **extra,
    }  # fmt: skip


def _loader(ds: Any, batch: int = 256) -> Any:
    return make_loader(ds, batch_size=batch, shuffle=False)


# ------------------------------------------------------------------------------------------ train
@dataclass
class TrainRun:
    model: str
    dataset: str
    out: str
    data_dir: str | None = None
    input_size: tuple[int, int, int] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False


def run_train(cfg: TrainRun) -> dict[str, Any]:
    """Dense training: checkpoint.pt, model.pt2 and metrics.json in cfg.out."""
    loaded = load_model_and_data(model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                 input_size=cfg.input_size, limit=cfg.limit)  # fmt: skip
    _refuse_existing(cfg.out, cfg.overwrite)
    set_seed(cfg.train.seed)
    t0 = time.perf_counter()
    train_loader = make_loader(
        loaded.data.train, batch_size=cfg.train.batch_size, shuffle=True, seed=cfg.train.seed
    )
    history = fit(
        loaded.model, train_loader, _loader(loaded.data.val), cfg.train, progress=cfg.progress
    )
    train_s = time.perf_counter() - t0
    with staged_run_dir(cfg.out, overwrite=cfg.overwrite) as stage:
        save_checkpoint(stage / "checkpoint.pt", state_dict=loaded.model.state_dict(),
                        meta=_meta(loaded, CHECKPOINT_KIND_DENSE, cfg.train.seed))  # fmt: skip
        export_program(
            loaded.model, loaded.input_size, loaded.data.mean, loaded.data.std, stage / "model.pt2"
        )
        dense = model_metrics(loaded.model, loaded.input_size, _loader(loaded.data.test))
        metrics = {
            "schema": "autoprune.metrics/v1", "stage": "train", "model": loaded.name,
            "dataset": loaded.dataset, "seed": cfg.train.seed, "dense": dense, "final": dense,
            "history": history, "train_config": cfg.train.__dict__,
            "wall_time_s": {"train": train_s},
        }  # fmt: skip
        write_json_atomic(stage / "metrics.json", metrics)
    return metrics


def _refuse_existing(out: str, overwrite: bool) -> None:
    p = Path(out)
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise UsageError(
            f"output directory {out!r} exists and is not empty; "
            "choose another --out or pass --force"
        )


# ------------------------------------------------------------------------------------- the shared
def trace(loaded: Loaded, granularity: Granularity) -> tuple[UnitGraph, CostModel]:
    graph = trace_units(loaded.model, loaded.input_size, granularity, loaded.name)
    return graph, CostModel(graph)


def resolve_limits(
    budgets: list[Budget],
    cost_model: CostModel,
    projection: ProjectionConfig,
    *,
    smallest_model: CostModel | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Absolute limits per metric (errors for infeasible budgets) and the dense costs.

    Budgets in % are of the dense float model; `smallest_model` (default `cost_model`) prices the
    smallest allocation, e.g. at the smallest bit widths a search may choose.
    """
    dense_keep = cost_model.dense_keep
    smallest_keep = min_keeps(cost_model.sizes, projection)
    metrics = {b.metric for b in budgets} | {"macs", "params", "weights", "size", "bops"}
    dense = {m: cost_model.metric(m, dense_keep) for m in metrics}
    low = smallest_model or cost_model
    smallest = {m: low.metric(m, smallest_keep) for m in metrics}
    return check_budgets(budgets, dense, smallest), dense


def finish_run(
    stage: Path,
    loaded: Loaded,
    graph: UnitGraph,
    allocation: Allocation,
    model: nn.Module,
    kept: list[torch.Tensor],
    *,
    dense_metrics: dict[str, Any],
    extra: dict[str, Any],
    seed: int,
    dense_model: nn.Module | None = None,
    latency_batch: int = 1,
) -> dict[str, Any]:
    """Slim, export and measure the final model; write allocation, checkpoint, program, metrics.

    `seed` is the one this run trained with (metrics.json and the checkpoint record it).

    Latency is measured here for both models at once (interleaved runs, medians), so their ratio
    is not skewed by load that comes and goes; without `dense_model` a freshly built dense network
    of the same architecture is timed (weights do not change a dense kernel's speed).
    """
    t0 = time.perf_counter()
    bits = allocation.bit_allocation(graph)
    artifact = None
    if bits is not None:  # the artifact keeps dense shapes, so it is written before slimming
        artifact = export_artifact(stage, model, graph, kept, bits, num_classes=loaded.num_classes,
                                   mean=loaded.data.mean, std=loaded.data.std,
                                   predicted_size=allocation.predicted.get("size"))  # fmt: skip
    final_model = slim(model, graph, kept).eval()
    allocation.save(stage / "allocation.json")
    save_checkpoint(stage / "checkpoint.pt", state_dict=final_model.state_dict(),
                    meta=_meta(loaded, CHECKPOINT_KIND_PRUNED, seed,
                               allocation=allocation.to_dict()))  # fmt: skip
    export_program(
        final_model, loaded.input_size, loaded.data.mean, loaded.data.std, stage / "model.pt2"
    )
    final = model_metrics(final_model, loaded.input_size, _loader(loaded.data.test), latency=False)
    if dense_model is None:
        dense_model = build_model(
            loaded.name, num_classes=loaded.num_classes, input_size=loaded.input_size
        )
    latency = measure_run_latency(dense_model, final_model, loaded.input_size, batch=latency_batch)
    dense_metrics = {**dense_metrics, "latency_s": latency["dense_s"]}
    final["latency_s"] = latency["final_s"]
    checks = {}
    for b in allocation.budgets:
        if b.metric == "latency":
            checks[b.metric] = latency_check(b, latency["dense_s"], latency["final_s"])
            continue
        measured = _measured(final, b.metric, graph.granularity)
        if measured is None:
            continue
        limit = b.limit(allocation.dense[b.metric])
        checks[b.metric] = {
            "limit": limit,
            "measured": measured,
            "met": measured <= limit * (1 + 1e-9),
        }
    if artifact is not None:
        checks |= artifact_checks(allocation.budgets, allocation.dense, artifact)
    _refuse_broken(checks)
    metrics = {
        "schema": "autoprune.metrics/v1", "model": loaded.name, "dataset": loaded.dataset,
        "granularity": graph.granularity, "seed": seed,
        "dense": dense_metrics, "final": final, "predicted": allocation.predicted,
        "budgets": checks, **compression(dense_metrics, final), "latency": latency, **extra,
    }  # fmt: skip
    if artifact is not None:
        metrics["artifact"] = artifact
    metrics.setdefault("wall_time_s", {})["export"] = time.perf_counter() - t0
    write_json_atomic(stage / "metrics.json", metrics)
    return metrics


def _refuse_broken(checks: dict[str, dict[str, Any]]) -> None:
    """Every budget but latency (a noisy measurement) must hold on what was exported."""
    broken = [
        f"{metric} {c['measured']:,.0f} > {c['limit']:,.0f}"
        + (f" (measured on {c['measured_on']})" if "measured_on" in c else "")
        for metric, c in checks.items()
        if metric != "latency" and not c["met"]
    ]
    if broken:
        raise BudgetBrokenError(
            f"the exported model breaks its budgets: {'; '.join(broken)}; nothing was written "
            "(a bug: the allocation was priced within them)"
        )


def _measured(final: dict[str, Any], metric: str, granularity: str) -> float | None:
    """The exported model's own count for a budget metric (nonzero counts for weight sparsity)."""
    if metric == "macs":
        return None if granularity == "weight" else float(final["macs"])
    if metric == "params":
        return float(final["nonzero_params"])
    return None


def load_pruned(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a pruned model from its checkpoint (dense build, slim to the saved shapes, load)."""
    state, meta = load_checkpoint(path)
    net = build_model(str(meta["model"]), num_classes=int(meta["num_classes"]),
                      input_size=tuple(meta["input_size"]))  # fmt: skip
    if meta.get("kind") == CHECKPOINT_KIND_PRUNED:
        alloc = Allocation.from_dict(meta["allocation"], source=f"checkpoint {str(path)!r}")
        graph = trace_units(net, alloc.input_size, alloc.granularity, alloc.model)  # type: ignore[arg-type]
        alloc.check_fits(graph)
        slim(net, graph, [torch.arange(k) for k in alloc.keep])
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit its model: {str(e).splitlines()[0]}"
        ) from None
    return net.eval(), meta
