"""The last stage of search and prune: slim, export, measure, check every budget, write the run.

Every budget is checked on what was exported, not on the prediction: FlopCounterMode MACs (at
weight granularity the MACs of nonzero weights), nonzero parameters, 4 bytes per nonzero
parameter and 32 x 32 bits per MAC for a float model, the artifact's bytes and BOPs with bits.
A broken budget writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.allocation import Allocation
from autoprune.cost.latency import latency_check
from autoprune.cost.model import FP32
from autoprune.cost.timing import measure_run_latency
from autoprune.errors import BudgetBrokenError, CheckpointError
from autoprune.export.fast import FastExportConfig
from autoprune.export.program import compression, deployed, export_program, model_metrics
from autoprune.export.quant import artifact_checks, export_artifact
from autoprune.graph.masking import slim
from autoprune.graph.units import UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.pipeline.load import CHECKPOINT_KIND_PRUNED, Loaded, checkpoint_meta, eval_loader
from autoprune.rundir import write_json_atomic
from autoprune.train.checkpoint import load_checkpoint, save_checkpoint


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

    `seed` is the one this run trained with (metrics.json and the checkpoint record it);
    metrics.json records torch's thread count beside it, since float sums split over another
    number of threads round differently (same seed and threads: same weights).

    Latency is measured here for both models at once (interleaved runs, medians), so their ratio
    is not skewed by load that comes and goes, each in the form it is exported in (BatchNorm
    folded, its layout); without `dense_model` a freshly built dense network of the same
    architecture is timed (weights do not change a dense kernel's speed).
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
                    meta=checkpoint_meta(loaded, CHECKPOINT_KIND_PRUNED, seed,
                               allocation=allocation.to_dict()))  # fmt: skip
    # model.pt2 runs the fastest equivalent form (BatchNorm folded, channels-last where faster);
    # the budgets below are checked on final_model, the form the allocation priced, and the
    # program's own parameter count is recorded beside them in metrics["export"].
    exported = export_program(
        final_model, loaded.input_size, loaded.data.mean, loaded.data.std, stage / "model.pt2",
        fast=FastExportConfig(),
    )  # fmt: skip
    final = model_metrics(
        final_model, loaded.input_size, eval_loader(loaded.data.test), latency=False
    )
    if dense_model is None:
        dense_model = build_model(
            loaded.name, num_classes=loaded.num_classes, input_size=loaded.input_size
        )
    # timed as they run exported: the dense model in its own fastest form, the final one in the
    # form model.pt2 holds (what a latency table in deployed form predicts)
    size = loaded.input_size
    latency = measure_run_latency(
        deployed(dense_model, size)[0],
        deployed(final_model, size, channels_last=exported["channels_last"])[0],
        size,
        batch=latency_batch,
    )
    latency["form"] = "deployed"
    dense_metrics = {**dense_metrics, "latency_s": latency["dense_s"]}
    final["latency_s"] = latency["final_s"]
    # weight sparsity saves the multiplications of its zeros only: count those that remain
    sparse = graph.granularity == "weight"
    macs = nonzero_macs(final_model, loaded.input_size) if sparse else float(final["macs"] or 0)
    checks = {}
    for b in allocation.budgets:
        if b.metric == "latency":
            checks[b.metric] = latency_check(b, latency["dense_s"], latency["final_s"])
            continue
        limit = b.limit(allocation.dense[b.metric])
        measured = _measured(final, b.metric, macs)
        checks[b.metric] = {"limit": limit, "measured": measured,
                            "met": measured <= limit * (1 + 1e-9)}  # fmt: skip
        if sparse and b.metric in ("macs", "bops"):
            checks[b.metric]["measured_on"] = "nonzero weights"
    if artifact is not None:
        checks |= artifact_checks(allocation.budgets, allocation.dense, artifact)
    _refuse_broken(checks)
    metrics = {
        "schema": "autoprune.metrics/v1", "model": loaded.name, "dataset": loaded.dataset,
        "granularity": graph.granularity, "seed": seed, "threads": torch.get_num_threads(),
        "dense": dense_metrics, "final": final, "predicted": allocation.predicted,
        "budgets": checks, **compression(dense_metrics, final), "latency": latency,
        "export": exported, **extra,
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


def _measured(final: dict[str, Any], metric: str, macs: float) -> float:
    """The exported float model's own count for a budget metric (docs/conventions.md): `macs`
    as counted on it, nonzero parameters, 4 bytes per nonzero parameter, 32 x 32 bits per MAC.
    With bits, size and BOPs are measured on the artifact instead (`artifact_checks`)."""
    if metric == "macs":
        return macs
    if metric == "params":
        return float(final["nonzero_params"])
    if metric == "size":
        return float(final["size_bytes"])
    if metric == "bops":
        return macs * FP32 * FP32
    raise KeyError(f"no measurement of budget metric {metric!r} on an exported model")


def nonzero_macs(model: nn.Module, input_size: tuple[int, ...]) -> float:
    """Multiply-accumulates of one sample that involve a nonzero weight of a conv or linear layer.

    Each weight is applied once per output position of its layer (per input position for a
    transposed conv), so a layer costs its nonzero weights times those positions; on a dense
    model this is FlopCounterMode's count (tested), at weight sparsity it skips the zeros.
    """
    positions: dict[nn.Module, int] = {}

    def record(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            positions[mod] = args[0].numel() // mod.in_channels
        else:  # conv: (1, out_channels, *spatial); linear: (1, ..., out_features)
            positions[mod] = out.numel() // int(mod.weight.shape[0])  # type: ignore[index]

    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    hooks = [m.register_forward_hook(record) for m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return float(sum(int(torch.count_nonzero(m.weight)) * positions.get(m, 0) for m in layers))


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
