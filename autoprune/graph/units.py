"""Allocation units of a model, traced once: coupled channel groups and per-tensor weight units.

Channel units come from torch-pruning's DependencyGraph (`autoprune.graph.channels`): every group
of channels that must be removed together (a conv's outputs, the BatchNorm after it, the residual
adds it joins, the inputs of every consumer) is one unit, and each is verified before use
(`autoprune.graph.verify`). Nothing here knows any architecture by name.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autoprune.errors import UsageError
from autoprune.graph.shapes import FunctionalCalls

Granularity = Literal["channel", "weight"]
GRANULARITIES: tuple[str, ...] = ("channel", "weight")

# Modules whose parameters the cost model understands. Anything else with parameters is counted
# as a fixed cost; a channel group that would prune it is frozen rather than miscounted.
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
class FrozenUnit:
    """A channel group kept whole: it failed verification (or tracing) for `reason`."""

    name: str
    size: int
    reason: str


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
    # channel groups kept whole (never offered to a search), each with the reason
    frozen: list[FrozenUnit] = field(default_factory=list)
    # parameters used directly in forward that carry a channel dim: name -> that dim
    free_params: dict[str, int] = field(default_factory=dict)
    # MACs FlopCounterMode counts that no layer above prices (attention matmuls, nn.Multihead-
    # Attention's projections, F.linear on a free weight), measured at dense by verification.
    # Constant: a unit whose pruning would change them fails verification and is frozen.
    unpriced_macs: float = 0.0
    # attention modules whose heads are a unit (`autoprune.graph.attention`): path -> (heads,
    # MACs of its attention matmuls per head); a head unit's member on that path counts heads
    matmuls: dict[str, tuple[int, float]] = field(default_factory=dict)

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


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """Attention as its decomposed ops: nn.MultiheadAttention and nn.TransformerEncoderLayer
    otherwise run one fused kernel in eval mode without gradients, which neither module hooks
    nor FlopCounterMode see inside (a ViT-B/32 then counts 32% fewer MACs than its export)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def macs_counter() -> FlopCounterMode:
    """FlopCounterMode as every MAC count here uses it (model, verification, export alike).

    torch has no formula for the CPU kernel of scaled-dot-product attention, so attention written
    with F.scaled_dot_product_attention (autoprune.models.attention.PackedAttention) would count
    its q k^T and attention x v matmuls as 0; they get the formula of the other SDPA kernels.
    """
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(query: Any, key: Any, value: Any, *_: Any, **__: Any) -> int:
        return int(sdpa_flop_count(query, key, value))  # shapes: FlopCounterMode passes them

    kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return FlopCounterMode(display=False, custom_mapping={kernel: cpu_sdpa})


def example_input(input_size: tuple[int, int, int]) -> torch.Tensor:
    return torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))


def _positions(mod: nn.Module, out: torch.Tensor) -> int:
    """Output positions of the one example sample: H x W of a conv, the tokens of a linear
    layer, counted over the whole output (a Swin window folds positions into the batch dim)."""
    channels = out.shape[1] if isinstance(mod, CONV_TYPES) else out.shape[-1]
    return out.numel() // max(int(channels), 1)


def _record_layers(model: nn.Module, x: torch.Tensor) -> tuple[list[Layer], list[str]]:
    """Run one forward pass and record every conv/linear layer with its output size."""
    layers: dict[str, Layer] = {}
    order: list[str] = []
    hooks = []
    names = {m: n for n, m in model.named_modules()}

    def hook(mod: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        name = names[mod]
        order.append(name)
        if name in layers:  # a module called again (weight sharing) computes its MACs again
            again = _positions(mod, out)
            layers[name] = replace(layers[name], positions=layers[name].positions + again)
            return
        if isinstance(mod, CONV_TYPES):
            layers[name] = Layer(
                name, "conv", mod.in_channels, mod.out_channels, mod.groups,
                int(torch.tensor(mod.kernel_size).prod()), _positions(mod, out),
                mod.bias is not None,
            )  # fmt: skip
        else:
            assert isinstance(mod, nn.Linear)
            layers[name] = Layer(
                name, "linear", mod.in_features, mod.out_features, 1, 1, _positions(mod, out),
                mod.bias is not None,
            )  # fmt: skip

    for m in model.modules():
        if isinstance(m, CONV_TYPES + LINEAR_TYPES):
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad(), no_fastpath(), FunctionalCalls(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [layers[n] for n in dict.fromkeys(order)], order


def trace_units(
    model: nn.Module,
    input_size: tuple[int, int, int],
    granularity: Granularity = "channel",
    model_name: str = "model",
    *,
    verify: bool = True,
) -> UnitGraph:
    """Trace `model` once and return its units, layers and the parameters nothing scales.

    At channel granularity every unit is then verified (`autoprune.graph.verify`): one that
    cannot be slimmed, or whose slimmed model differs from the masked one or is priced wrong, is
    frozen (kept whole and listed in `UnitGraph.frozen` with its reason), never an error.
    """
    if granularity not in GRANULARITIES:
        raise UsageError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}")
    was_training = model.training
    model.eval()
    try:
        layers, order = _record_layers(model, example_input(input_size))
    except Exception as err:  # the user's model refuses this input: say so on one line
        shape = "x".join(map(str, input_size))
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise UsageError(
            f"model {model_name!r} fails on a {shape} input ({type(err).__name__}: {first}); "
            "pass the input size it expects"
        ) from None
    finally:
        model.train(was_training)
    if not layers:
        raise UsageError(f"model {model_name!r} has no conv or linear layer to prune")
    classifier = order[-1]
    norms, other = _fixed_parts(model, {lay.name for lay in layers})
    size = cast(tuple[int, int, int], tuple(input_size))  # callers may pass a list
    graph = UnitGraph(model_name, size, granularity, [], layers, norms, other, classifier, order)
    if granularity == "weight":
        graph.units = [Unit(f"{lay.name}.weight", "weight", lay.weights) for lay in layers]
        return graph
    # imported here: channels and verify import this module (and verify the cost model)
    from autoprune.graph.channels import channel_units

    channel_units(model, graph)
    if verify:
        from autoprune.graph.verify import verify_units

        verify_units(model, graph)
    return graph


def _fixed_parts(model: nn.Module, layer_names: set[str]) -> tuple[dict[str, tuple[int, int]], int]:
    """Norm modules (channels, parameters per channel) and the parameter count of the rest."""
    norms: dict[str, tuple[int, int]] = {}
    other = 0
    for name, mod in model.named_modules():
        own = sum(p.numel() for p in mod.parameters(recurse=False))
        if name in layer_names or own == 0:
            continue
        if isinstance(mod, NORM_TYPES):
            channels = _norm_channels(mod)
            norms[name] = (channels, own // channels)
        else:
            other += own
    return norms, other


def _norm_channels(mod: nn.Module) -> int:
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    if isinstance(mod, nn.LayerNorm):
        return int(torch.tensor(mod.normalized_shape).prod())
    if isinstance(mod, nn.PReLU):
        return mod.num_parameters
    return int(cast(int, mod.num_features))
