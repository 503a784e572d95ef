"""Channel units of a traced model: torch-pruning's groups, tied and split into `Unit`s (see
`autoprune.graph.ties`), or frozen with a reason.

A unit is kept when the cost model can price every slice in it (conv / linear layers, norm
modules, free parameters with a channel dim); otherwise it is frozen, never an error.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autoprune.graph.attention import head_layouts, head_units
from autoprune.graph.ties import RawUnit, Tie, tied_units
from autoprune.graph.tracing import (
    Graph,
    build_dependency_graph,
    item_dim,
    members,
    one_line,
    root_groups,
)
from autoprune.graph.units import CONV_TYPES, FrozenUnit, UnitGraph


def channel_units(model: nn.Module, graph: UnitGraph) -> None:
    """Fill `graph.units` and `graph.frozen` with the channel groups of `model`."""
    try:
        dg = build_dependency_graph(model, graph.input_size)
    except Exception as err:  # a forward torch-pruning cannot trace: nothing is prunable
        graph.frozen = [FrozenUnit(lay.name, lay.out_channels, f"tracing fails: {one_line(err)}")
                        for lay in graph.layers if lay.name != graph.classifier]  # fmt: skip
        return
    modules = dict(model.named_modules())
    names: dict = {m: n for n, m in modules.items()}
    # Parameters used directly in forward (a layer-scale gamma, a position embedding): torch-
    # pruning slices them along `dim`; they are priced like norm parameters, per channel.
    for param, dim in dg.unwrapped_parameters:
        name = dg._param_to_name[param]
        names[param] = name
        graph.free_params[name] = int(dim)
        channels = int(param.shape[dim])
        graph.norms[name] = (channels, param.numel() // channels)
        graph.other_params -= param.numel()
    # attention heads are units of their own (autoprune.graph.attention); the layers that hold
    # one slice per head root no torch-pruning group (it cannot map them through the heads)
    layouts = head_layouts(model)
    per_head = {lay.qkv for lay in layouts} | {n for lay in layouts for n in lay.per_head_layers}
    raw: list[RawUnit] = []
    ties: list[Tie] = []
    for rg in root_groups(model, dg, graph.classifier):
        if rg.root in per_head:
            continue
        if rg.group is None:
            graph.frozen.append(FrozenUnit(rg.root, rg.size, str(rg.error)))
            continue
        for item in rg.group:
            rule = _tie_rule(item.dep.target.module, item_dim(dg, item), dg)
            if rule is not None:
                space = (id(item.dep.target.module), item_dim(dg, item))
                ties += [(space, rule(i), len(raw), r)
                         for i, r in zip(item.idxs, item.root_idxs, strict=True)]  # fmt: skip
        raw.append(RawUnit(rg.root, rg.size, tuple(members(rg.group, dg, names))))
    heads = head_units(model, graph, layouts) if layouts else []
    priced = {lay.name for lay in graph.layers} | set(graph.norms) | set(graph.matmuls)
    owner: dict[tuple[str, str, int], str] = {}  # each slice belongs to one unit at most
    for unit in tied_units(raw, ties) + heads:
        unpriced = [m.module for m in unit.members if m.module not in priced]
        shared = [(m.module, owner[(m.module, m.dim, i)]) for m in unit.members for i in m.idxs
                  if (m.module, m.dim, i) in owner]  # fmt: skip
        if unpriced:
            kind = type(modules[unpriced[0]]).__name__ if unpriced[0] in modules else "parameter"
            reason = f"prunes {unpriced[0]} ({kind}), which the cost model cannot price"
        elif shared:  # torch-pruning traced two groups through the same channels
            reason = f"shares channels of {shared[0][0]} with unit {shared[0][1]}"
        else:
            graph.units.append(unit)
            owner |= {(m.module, m.dim, i): unit.name for m in unit.members for i in m.idxs}
            continue
        graph.frozen.append(FrozenUnit(unit.name, unit.size, reason))


def _tie_rule(module: Any, dim: str, dg: Graph) -> Any:
    """How the channels of one slice are tied: a function local index -> class, or None."""
    if isinstance(module, CONV_TYPES) and module.groups > 1:
        if module.groups == module.in_channels == module.out_channels:
            return None  # depthwise: channel i in, channel i out, nothing shared
        width = (module.in_channels if dim == "in" else module.out_channels) // module.groups
        return lambda i: i % width  # the same position in every group
    if isinstance(module, nn.GroupNorm) and module.num_groups < module.num_channels:
        size = module.num_channels // module.num_groups
        return lambda i: i // size  # whole groups
    if isinstance(module, nn.Module) and module in dg.ties:
        width = dg.ties[module]
        return lambda i: i % width  # the same position in every shuffled group or chunk
    return None
