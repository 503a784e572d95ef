"""Apply an allocation to a model: element masks (parametrize) or physical slimming (torch-pruning).

A channel unit is masked by zeroing every parameter slice that *produces* its channels (conv and
linear output rows, their biases, norm scales and shifts), so a masked model computes exactly what
the slimmed model computes. A weight unit is masked element by element.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize

from autoprune.importance import score_units, top_k
from autoprune.units import CONV_TYPES, UnitGraph, build_dependency_graph


class ElementMask(nn.Module):
    """Parametrization w -> w * mask; the mask is a buffer broadcast against the parameter."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def select_kept(
    model: nn.Module, graph: UnitGraph, keep: Sequence[int], importance: str = "l1"
) -> list[torch.Tensor]:
    """Indices each unit keeps: its `keep` most important elements."""
    scores = score_units(model, graph.units, importance)
    return [top_k(s, k) for s, k in zip(scores, keep)]


def element_masks(
    model: nn.Module, graph: UnitGraph, kept: Sequence[torch.Tensor]
) -> dict[tuple[str, str], torch.Tensor]:
    """0/1 masks shaped like each affected parameter, keyed by (module name, parameter name)."""
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for unit, idx in zip(graph.units, kept):
        if unit.kind == "weight":
            module_name = unit.name.removesuffix(".weight")
            w = model.get_submodule(module_name).weight
            flat = torch.zeros(w.numel(), dtype=w.dtype)
            flat[idx] = 1.0
            masks[(module_name, "weight")] = flat.view_as(w)
            continue
        alive = torch.zeros(unit.size, dtype=torch.bool)
        alive[idx] = True
        for mem in unit.members:
            if mem.dim != "out":
                continue
            module = model.get_submodule(mem.module)
            for pname in ("weight", "bias"):
                p = getattr(module, pname, None)
                if p is None or p.dim() == 0:
                    continue
                key = (mem.module, pname)
                m = masks.get(key)
                if m is None:
                    m = torch.ones(p.shape[0], dtype=p.dtype)
                dead = torch.tensor(mem.idxs)[~alive[torch.tensor(mem.root_idxs)]]
                m[dead] = 0.0
                masks[key] = m
    for (mod_name, pname), m in list(masks.items()):
        p = getattr(model.get_submodule(mod_name), pname)
        if m.dim() == 1 and p.dim() > 1:
            masks[(mod_name, pname)] = m.view(-1, *([1] * (p.dim() - 1)))
    return masks


def apply_masks(model: nn.Module, masks: dict[tuple[str, str], torch.Tensor]) -> None:
    """Register an ElementMask parametrization for every mask (replacing an earlier one)."""
    for (mod_name, pname), m in masks.items():
        module = model.get_submodule(mod_name)
        if parametrize.is_parametrized(module, pname):
            parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        parametrize.register_parametrization(module, pname, ElementMask(m.to(getattr(module, pname).device)))


def remove_masks(model: nn.Module, *, bake: bool) -> None:
    """Drop every parametrization; with `bake` the masked (zeroed) values stay in the weights."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):  # type: ignore[union-attr]
                parametrize.remove_parametrizations(module, pname, leave_parametrized=bake)


def mask_model(
    model: nn.Module, graph: UnitGraph, keep: Sequence[int], importance: str = "l1"
) -> list[torch.Tensor]:
    """Mask `model` in place to the allocation `keep`; returns the kept indices per unit."""
    kept = select_kept(model, graph, keep, importance)
    apply_masks(model, element_masks(model, graph, kept))
    return kept


def slim(model: nn.Module, graph: UnitGraph, kept: Sequence[torch.Tensor]) -> nn.Module:
    """Physically apply kept indices: channels removed (torch-pruning), or weights zeroed."""
    remove_masks(model, bake=False)
    if graph.granularity == "weight":
        with torch.no_grad():
            for (mod_name, pname), m in element_masks(model, graph, kept).items():
                getattr(model.get_submodule(mod_name), pname).mul_(m)
        return model
    was_training = model.training
    model.eval()
    dg = build_dependency_graph(model, graph.input_size)
    for unit, idx in zip(graph.units, kept):
        alive = torch.zeros(unit.size, dtype=torch.bool)
        alive[idx] = True
        dead = torch.nonzero(~alive).flatten().tolist()
        if not dead:
            continue
        root = model.get_submodule(unit.name)
        fn = tp.prune_conv_out_channels if isinstance(root, CONV_TYPES) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(root, fn, idxs=dead)
        group.prune()
    model.train(was_training)
    return model
