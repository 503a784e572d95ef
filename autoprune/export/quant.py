"""Export of runs with bits: model.apq beside model.pt2, its measured ratios and budget checks.

Ratios (the conventions of docs/conventions.md, named as in metrics.json):
- `storage_ratio`: fp32 bytes of all conv+linear weights of the dense model / bytes of the
  artifact file on disk (header, indices, scales, codes, biases and checksum included).
- `weight_data_only_ratio`: the same fp32 bytes / bytes of the weight codes alone (n x bits per
  kernel), ADMM-NN's convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.graph.masking import apply_masks, element_masks, remove_masks
from autoprune.graph.units import UnitGraph
from autoprune.quant.artifact import ARTIFACT, write_artifact
from autoprune.quant.bits import BitAllocation, artifact_bytes
from autoprune.quant.fake import ActQuant, add_act_quant, add_weight_quant, quantised_inputs


def act_scales(model: nn.Module, graph: UnitGraph) -> dict[str, float]:
    """The activation scales of the ActQuant hooks a quantisation-aware backend left on `model`."""
    out = {}
    for lay in graph.layers:
        for hook in model.get_submodule(lay.name)._forward_pre_hooks.values():
            if isinstance(hook, ActQuant):
                out[lay.name] = hook.scale
    return out


def quantise_in_place(
    model: nn.Module, graph: UnitGraph, kept: Sequence[torch.Tensor], bits: BitAllocation
) -> None:
    """Zero every pruned element and put every weight on its kernel's levels (a no-op, up to
    float rounding, after a quantisation-aware backend; post-training quantisation otherwise).

    Channel masks zero what produces a pruned channel; the artifact keeps dense shapes, so the
    weights that consume it are zeroed too (slimming would remove them).
    """
    remove_masks(model, bake=True)
    apply_masks(model, element_masks(model, graph, kept))
    remove_masks(model, bake=True)
    with torch.no_grad():
        for unit, idx in zip(graph.units, kept, strict=True):
            pruned = set(range(unit.size)) - set(idx.tolist())
            for mem in unit.members:
                w = getattr(model.get_submodule(mem.module), "weight", None)
                if mem.dim != "in" or not pruned or w is None or w.dim() < 2:
                    continue
                cols = [i for i, r in zip(mem.idxs, mem.root_idxs, strict=True) if r in pruned]
                if cols and max(cols) < w.shape[1]:  # grouped convs index inputs per group
                    w[:, cols] = 0.0
    add_weight_quant(model, graph, bits)
    remove_masks(model, bake=True)


def calibrate_activations(
    model: nn.Module,
    graph: UnitGraph,
    kept: Sequence[torch.Tensor],
    bits: BitAllocation,
    batches: Sequence[torch.Tensor],
) -> dict[str, float]:
    """Post-training activation scales for a model no backend trained (`search --no-prune`).

    The weights are pruned and quantised first, then every quantised layer's input scale is
    calibrated on `batches` as the evaluator scores allocations; the hooks stay on `model`.
    """
    quantise_in_place(model, graph, kept, bits)
    with quantised_inputs(model, graph, bits, batches):
        scales = act_scales(model, graph)
    return {name: hook.scale for name, hook in add_act_quant(model, graph, bits, scales).items()}


def export_artifact(
    stage: Path,
    model: nn.Module,
    graph: UnitGraph,
    kept: Sequence[torch.Tensor],
    bits: BitAllocation,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    predicted_size: float | None = None,
) -> dict[str, Any]:
    """Quantise `model` (dense shapes) to `bits`, write stage/model.apq, return its numbers."""
    quantise_in_place(model, graph, kept, bits)
    scales = act_scales(model, graph)
    missing = [
        lay.name for lay in graph.layers if bits.act[lay.name] != 32 and lay.name not in scales
    ]
    if missing:
        raise ValueError(f"layers {missing} quantise activations but were never calibrated")
    enc = write_artifact(stage / ARTIFACT, model, graph, bits, num_classes=num_classes,
                         mean=list(mean), std=list(std), act_scales=scales)  # fmt: skip
    fp32 = 4.0 * sum(lay.weights for lay in graph.layers)
    bops = sum(
        float(sum(n * b for n, b in zip(enc.counts[lay.name], bits.weight[lay.name], strict=True)))
        * lay.positions * bits.act[lay.name]
        for lay in graph.layers
    )  # fmt: skip
    return {
        "file": ARTIFACT,
        "bytes": enc.bytes,
        "weight_code_bytes": enc.code_bytes,
        "storage_ratio": fp32 / enc.bytes,
        "weight_data_only_ratio": fp32 / max(enc.code_bytes, 1e-9),
        "fp32_weight_bytes": fp32,
        "predicted_bytes_exact": artifact_bytes(graph, bits, enc.counts),
        "predicted_bytes_search": predicted_size,
        "bops": bops,
        "nonzero_weights": sum(sum(c) for c in enc.counts.values()),
        "kernel_nonzeros": enc.counts,
        "act_scales": scales,
    }


def artifact_checks(
    budgets: Sequence[Any], dense: dict[str, float], artifact: dict[str, Any]
) -> dict[str, Any]:
    """Size and BOPs budgets, measured on the written artifact."""
    checks = {}
    for b in budgets:
        measured = {"size": artifact["bytes"], "bops": artifact["bops"]}.get(b.metric)
        if measured is not None:
            limit = b.limit(dense[b.metric])
            met = measured <= limit * (1 + 1e-9)
            checks[b.metric] = {
                "limit": limit,
                "measured": measured,
                "met": met,
                "measured_on": ARTIFACT,
            }
    return checks
