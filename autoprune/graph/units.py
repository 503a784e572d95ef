"""Allocation units of a model, traced once: coupled channel groups and per-tensor weight units.

Channel units come from torch-pruning's DependencyGraph: every group of channels that must be
removed together (a conv's outputs, the BatchNorm after it, the residual adds it joins, the inputs
of every consumer) is one unit. Nothing here knows any architecture by name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch_pruning as tp
from torch import nn

from autoprune.errors import UsageError

Granularity = Literal["channel", "weight"]
GRANULARITIES: tuple[str, ...] = ("channel", "weight")

# Modules whose parameters the cost model understands. Anything else with parameters is counted
# as a fixed cost; if torch-pruning would prune it, `trace_units` refuses rather than miscount.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR_TYPES = (nn.Linear,)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


@dataclass(frozen=True)
class Member:
    """One slice of one module's parameters that a channel unit controls.

    `idxs[j]` is an index along the module's `dim` ("out" or "in") and `root_idxs[j]` the unit
    channel it belongs to; a linear layer after a flatten has several idxs per unit channel.
    """

    module: str
    dim: Literal["out", "in"]
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]


@dataclass(frozen=True)
class Unit:
    """Something an allocation gives a `keep` count: a channel group or a weight tensor."""

    name: str
    kind: Granularity
    size: int
    members: tuple[Member, ...] = ()

    @property
    def root(self) -> str:
        """The module that names the unit (the group's root layer, or the weight's layer)."""
        return self.name


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer as the cost model sees it (dense shapes, measured spatial size)."""

    name: str
    type: Literal["conv", "linear"]
    in_channels: int
    out_channels: int
    groups: int
    kernel: int  # kernel elements (kh * kw)
    positions: int  # output positions per sample (H_out * W_out for conv, 1 for a plain linear)
    bias: bool

    @property
    def weights(self) -> int:
        return self.out_channels * (self.in_channels // self.groups) * self.kernel

    @property
    def macs(self) -> int:
        return self.weights * self.positions

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels


@dataclass
class UnitGraph:
    """Everything traced from one model at one input size; the input of the cost model."""

    model_name: str
    input_size: tuple[int, int, int]
    granularity: Granularity
    units: list[Unit]
    layers: list[Layer]
    norms: dict[str, tuple[int, int]]  # norm module -> (channels, parameters per channel)
    other_params: int  # parameters of modules the cost model does not scale
    classifier: str  # last conv/linear executed; its outputs are never pruned
    module_order: list[str] = field(default_factory=list)

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    @property
    def sizes(self) -> list[int]:
        return [u.size for u in self.units]

    @property
    def signature(self) -> str:
        """Hash of unit names and sizes and layer shapes: equal iff an allocation fits the model."""
        h = hashlib.sha256()
        h.update(f"{self.granularity}|{self.input_size}".encode())
        for u in self.units:
            h.update(f"|u:{u.name}:{u.size}".encode())
        for lay in self.layers:
            h.update(f"|l:{lay.name}:{lay.in_channels}:{lay.out_channels}:{lay.kernel}".encode())
        return h.hexdigest()[:16]


def example_input(input_size: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))


def _record_layers(model: nn.Module, x: torch.Tensor) -> tuple[list[Layer], list[str]]:
    """Run one forward pass and record every conv/linear layer with its output size."""
    layers: dict[str, Layer] = {}
    order: list[str] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        name = names[mod]
        order.append(name)
        if name in layers:
            return
        if isinstance(mod, CONV_TYPES):
            layers[name] = Layer(
                name, "conv", mod.in_channels, mod.out_channels, mod.groups,
                int(torch.tensor(mod.kernel_size).prod()), int(torch.tensor(out.shape[2:]).prod()),
                mod.bias is not None,
            )  # fmt: skip
        else:
            assert isinstance(mod, nn.Linear)
            layers[name] = Layer(
                name, "linear", mod.in_features, mod.out_features, 1, 1,
                int(torch.tensor(out.shape[1:-1]).prod()) if out.dim() > 2 else 1,
                mod.bias is not None,
            )  # fmt: skip

    for m in model.modules():
        if isinstance(m, CONV_TYPES + LINEAR_TYPES):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [layers[n] for n in dict.fromkeys(order)], order


def build_dependency_graph(
    model: nn.Module, input_size: tuple[int, int, int]
) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(input_size))


def channel_groups(
    model: nn.Module, dg: tp.DependencyGraph, classifier: str
) -> list[tuple[str, tp.dependency.Group]]:
    """The prunable channel groups of `model`, named by their root module, in graph order."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    groups = dg.get_all_groups(
        ignored_layers=[modules[classifier]], root_module_types=CONV_TYPES + LINEAR_TYPES
    )
    return [(names[g[0].dep.target.module], g) for g in groups]


def _members(group: tp.dependency.Group, dg: tp.DependencyGraph, names: dict) -> list[Member]:
    seen: dict[tuple[str, str], Member] = {}
    for item in group:
        mod = item.dep.target.module
        if mod not in names:  # torch-pruning's pseudo-modules for adds, concats, flattens
            continue
        fn = item.dep.handler
        dim: Literal["out", "in"] = "out" if dg.is_out_channel_pruning_fn(fn) else "in"
        key = (names[mod], dim)
        if key not in seen:
            seen[key] = Member(names[mod], dim, tuple(item.idxs), tuple(item.root_idxs))
    return list(seen.values())


def trace_units(
    model: nn.Module,
    input_size: tuple[int, int, int],
    granularity: Granularity = "channel",
    model_name: str = "model",
) -> UnitGraph:
    """Trace `model` once and return its units, layers and the parameters nothing scales."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")
    was_training = model.training
    model.eval()
    try:
        layers, order = _record_layers(model, example_input(input_size))
    finally:
        model.train(was_training)
    if not layers:
        raise UsageError(f"model {model_name!r} has no conv or linear layer to prune")
    classifier = order[-1]
    modules = dict(model.named_modules())

    norms: dict[str, tuple[int, int]] = {}
    other = 0
    layer_names = {lay.name for lay in layers}
    for name, mod in modules.items():
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        if name in layer_names or own == 0:
            continue
        if isinstance(mod, NORM_TYPES) and own > 0:
            channels = _norm_channels(mod)
            norms[name] = (channels, own // channels)
        else:
            other += own

    if granularity == "weight":
        units = [Unit(f"{lay.name}.weight", "weight", lay.weights) for lay in layers]
    else:
        was_training = model.training
        model.eval()
        try:
            dg = build_dependency_graph(model, input_size)
        finally:
            model.train(was_training)
        names = {m: n for n, m in modules.items()}
        units = []
        for root, group in channel_groups(model, dg, classifier):
            members = _members(group, dg, names)
            for mem in members:
                if mem.module not in layer_names and mem.module not in norms:
                    raise UsageError(
                        f"layer {mem.module!r} ({type(modules[mem.module]).__name__}) is pruned "
                        "with channel group " + repr(root) + " but the cost model cannot count it; "
                        "use --granularity weight for this model"
                    )
            units.append(Unit(root, "channel", len(group[0].idxs), tuple(members)))
    size = cast(tuple[int, int, int], tuple(input_size))  # callers may pass a list
    return UnitGraph(model_name, size, granularity, units, layers, norms, other, classifier, order)


def _norm_channels(mod: nn.Module) -> int:
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm):
        return int(torch.tensor(mod.normalized_shape).prod())
    if isinstance(mod, nn.PReLU):
        return mod.num_parameters
    return int(cast(int, mod.num_features))
