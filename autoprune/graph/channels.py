"""Channel units of a traced model: torch-pruning's groups as `Unit`s, or frozen with a reason.

A group becomes a unit when the cost model can price every slice in it (conv / linear layers,
norm modules, free parameters with a channel dim); otherwise it is frozen, never an error.
"""

from __future__ import annotations

from torch import nn

from autoprune.graph.tracing import build_dependency_graph, members, one_line, root_groups
from autoprune.graph.units import FrozenUnit, Unit, UnitGraph


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
    layer_names = {lay.name for lay in graph.layers}
    # Parameters used directly in forward (a layer-scale gamma, a position embedding): torch-
    # pruning slices them along `dim`; they are priced like norm parameters, per channel.
    for param, dim in dg.unwrapped_parameters:
        name = dg._param_to_name[param]
        names[param] = name
        graph.free_params[name] = int(dim)
        channels = int(param.shape[dim])
        graph.norms[name] = (channels, param.numel() // channels)
        graph.other_params -= param.numel()
    for rg in root_groups(model, dg, graph.classifier):
        if rg.group is None:
            graph.frozen.append(FrozenUnit(rg.root, rg.size, str(rg.error)))
            continue
        mems = members(rg.group, dg, names)
        unpriced = [m.module for m in mems if m.module not in layer_names | set(graph.norms)]
        if unpriced:
            kind = type(modules[unpriced[0]]).__name__ if unpriced[0] in modules else "parameter"
            graph.frozen.append(FrozenUnit(rg.root, rg.size,
                f"prunes {unpriced[0]} ({kind}), which the cost model cannot price"))  # fmt: skip
            continue
        graph.units.append(Unit(rg.root, "channel", rg.size, tuple(mems)))
