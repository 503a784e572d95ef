"""`autoprune profile`: per-layer MACs and parameters (checked against FlopCounterMode) and the
units, prunable and frozen (each frozen one with the reason).
"""

from __future__ import annotations

from typing import Any

from autoprune.cost.budgets import format_value
from autoprune.cost.measure import count_macs, count_params
from autoprune.cost.model import CostModel
from autoprune.graph.units import Granularity, trace_units
from autoprune.graph.verify import prunable_share
from autoprune.models import build_model, default_input_size, default_num_classes
from autoprune.train.data import DATASETS


def profile(
    model: str,
    *,
    input_size: tuple[int, int, int] | None = None,
    dataset: str | None = None,
    granularity: Granularity = "channel",
) -> dict[str, Any]:
    """Layers, units and totals of `model`; `measured` is FlopCounterMode's independent count."""
    size = tuple(input_size) if input_size else default_input_size(model)
    num_classes = default_num_classes(model)
    if dataset is not None:
        DATASETS.get(dataset)  # unknown names fail here, with a suggestion
        # Every built-in dataset but imagefolder has 10 classes; imagefolder's count is only
        # known once its folders are read, which profiling does not need.
        num_classes = 10 if dataset != "imagefolder" else num_classes
    net = build_model(model, num_classes=num_classes, input_size=size)  # type: ignore[arg-type]
    graph = trace_units(net, size, granularity, model)  # type: ignore[arg-type]
    cm = CostModel(graph)
    costs = cm.costs(cm.dense_keep)
    return {
        "model": model,
        "input_size": list(size),
        "num_classes": num_classes,
        "layers": cm.layer_table(),
        "granularity": graph.granularity,
        "units": [{"name": u.name, "size": u.size} for u in graph.units],
        "frozen": [{"name": f.name, "size": f.size, "reason": f.reason} for f in graph.frozen],
        "prunable": prunable_share(cm),
        "totals": {
            "macs": costs.macs,
            "flops": 2 * costs.macs,
            "params": costs.params,
            "weights": costs.weights,
        },
        "measured": {"macs": count_macs(net, size), "params": count_params(net)},
        "signature": graph.signature,
    }


def render_profile(report: dict[str, Any]) -> str:
    rows = report["layers"]
    w = max([len(r["layer"]) for r in rows] + [5])
    lines = [
        f"{'layer':{w}}  {'type':6} {'in':>6} {'out':>6} {'k':>3} {'pos':>6} "
        f"{'MACs':>10} {'weights':>10}"
    ]
    for r in rows:
        lines.append(
            f"{r['layer']:{w}}  {r['type']:6} {r['in']:>6} {r['out']:>6} {r['kernel']:>3} "
            f"{r['positions']:>6} "
            f"{format_value('macs', r['macs']):>10} {format_value('params', r['weights']):>10}"
        )
    t, m = report["totals"], report["measured"]
    size = "x".join(map(str, report["input_size"]))
    lines.append(
        f"{report['model']} @ {size}: {format_value('macs', t['macs'])} MACs "
        f"({format_value('macs', t['flops'])} FLOPs), {format_value('params', t['params'])} params "
        f"({t['params']:,.0f})"
    )
    lines.append(f"FlopCounterMode: {m['macs']:,} MACs, {m['params']:,} params")
    return "\n".join(lines + _unit_lines(report))


def _unit_lines(report: dict[str, Any]) -> list[str]:
    """One line per unit: the prunable ones, then the frozen ones with the reason."""
    units, frozen = report["units"], report["frozen"]
    share = report["prunable"]
    lines = [
        f"prunable: {len(units)} unit{'s' * (len(units) != 1)} "
        f"({100 * share['macs']:.1f}% of the MACs, {100 * share['params']:.1f}% of the params); "
        f"frozen: {len(frozen)}"
    ]
    w = max([len(u["name"]) for u in units + frozen] + [4])
    lines += [f"  unit    {u['name']:{w}} {u['size']:>6}" for u in units]
    lines += [f"  frozen  {f['name']:{w}} {f['size']:>6}  {f['reason']}" for f in frozen]
    return lines
