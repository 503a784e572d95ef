"""Apply an allocation to a model: element masks (parametrize) or physical slimming.

A channel unit is masked by zeroing every parameter slice that *produces* its channels (conv and
linear output rows, their biases, norm scales and shifts), so a masked model computes exactly what
the slimmed model computes. A weight unit is masked element by element.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from autoprune.graph.importance import score_units, top_k
from autoprune.graph.renorm import forget, renormalise
from autoprune.graph.slimming import slim_channels
from autoprune.graph.units import UnitGraph


class ElementMask(nn.Module):
    """Parametrization w -> w * mask; the mask is a buffer broadcast against the parameter."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def select_kept(
    model: nn.Module, graph: UnitGraph, keep: Sequence[int] | np.ndarray, importance: str = "l1"
) -> list[torch.Tensor]:
    """Indices each unit keeps: its `keep` most important elements."""
    scores = score_units(model, graph.units, importance)
    return [top_k(s, k) for s, k in zip(scores, keep, strict=True)]


ParamKey = tuple[str, str]  # (module name, parameter name)


def param_key(path: str) -> ParamKey:
    """("block", "gamma") for the parameter "block.gamma"; ("", "scale") for a top-level one."""
    module, _, name = path.rpartition(".")
    return module, name


@dataclass(frozen=True)
class ElementSlices:
    """The part of one parameter that one unit controls.

    `rows` is None for a weight unit (the whole tensor, one element per weight); otherwise
    `rows[j]` is an index along the parameter's first dim owned by unit element `elements[j]`.
    """

    unit: int
    rows: torch.Tensor | None = None
    elements: torch.Tensor | None = None


class UnitMap:
    """Unit elements -> the parameter slices they produce; turns per-unit vectors into masks.

    A channel element owns the output rows (weight, bias, norm scale and shift) of every member
    that produces it; a weight element owns one weight. Backends keep one vector per unit (0/1,
    or a differentiable gate) and let `masks` expand it onto the parameters.
    """

    def __init__(self, model: nn.Module, graph: UnitGraph) -> None:
        self.sizes = [u.size for u in graph.units]
        self.slices: dict[ParamKey, list[ElementSlices]] = {}
        self.shapes: dict[ParamKey, torch.Size] = {}
        # the dim a parameter's rows run along: 0, except for free parameters (graph.free_params)
        self.axes: dict[ParamKey, int] = {}
        for u, unit in enumerate(graph.units):
            if unit.kind == "weight":
                key = (unit.name.removesuffix(".weight"), "weight")
                self._add(model, key, ElementSlices(u))
                continue
            for mem in unit.members:
                if mem.dim != "out":
                    continue
                rows, elements = torch.tensor(mem.idxs), torch.tensor(mem.root_idxs)
                if mem.module in graph.free_params:  # the parameter itself produces the channel
                    key = param_key(mem.module)
                    self.axes[key] = graph.free_params[mem.module]
                    self._add(model, key, ElementSlices(u, rows, elements))
                    continue
                for pname in ("weight", "bias"):
                    p = getattr(model.get_submodule(mem.module), pname, None)
                    if p is not None and p.dim() > 0:
                        self._add(model, (mem.module, pname), ElementSlices(u, rows, elements))

        # parameters whose rows are one unit's elements in order: their mask's gradient is the
        # unit's as it is (no gather and scatter per step)
        self.direct = {
            key: len(p) == 1 and self._in_order(key, p[0]) for key, p in self.slices.items()
        }

    def _in_order(self, key: ParamKey, piece: ElementSlices) -> bool:
        """Whether `piece` maps every row of `key` onto its unit's elements, in order."""
        if piece.rows is None or piece.elements is None:
            return False
        order = torch.arange(self.shapes[key][self.axes.get(key, 0)])
        return (
            len(order) == self.sizes[piece.unit]
            and torch.equal(piece.rows, order)
            and torch.equal(piece.elements, order)
        )

    def _add(self, model: nn.Module, key: ParamKey, piece: ElementSlices) -> None:
        self.slices.setdefault(key, []).append(piece)
        self.shapes[key] = getattr(model.get_submodule(key[0]), key[1]).shape

    def masks(
        self, vectors: Sequence[torch.Tensor], fill: float = 1.0
    ) -> dict[ParamKey, torch.Tensor]:
        """Masks shaped to broadcast against each parameter; differentiable in `vectors`.

        Rows of a parameter that no unit owns get `fill` (1: untouched by a mask; 0 for maps of
        per-element coefficients such as penalty strengths).
        """
        out: dict[ParamKey, torch.Tensor] = {}
        for key, pieces in self.slices.items():
            out[key] = self.mask(key, vectors, pieces, fill)
        return out

    def mask(
        self,
        key: ParamKey,
        vectors: Sequence[torch.Tensor] | Mapping[int, torch.Tensor],
        pieces: list[ElementSlices] | None = None,
        fill: float = 1.0,
    ) -> torch.Tensor:
        """The mask of one parameter; `vectors` needs entries only for the units of `key`."""
        shape, axis = self.shapes[key], self.axes.get(key, 0)
        m: torch.Tensor | None = None
        for piece in pieces if pieces is not None else self.slices[key]:
            v = vectors[piece.unit]
            if piece.rows is None:
                return v.reshape(shape)
            if m is None:
                m = torch.full((shape[axis],), fill, dtype=v.dtype, device=v.device)
            m = m.index_put((piece.rows,), v[piece.elements])
        assert m is not None
        return m.view([-1 if d == axis else 1 for d in range(len(shape))])

    def mask_grad(self, key: ParamKey, grad: torch.Tensor) -> dict[int, torch.Tensor]:
        """The gradient `mask` passes back to each unit's vector, given that of its mask.

        The same operations, in the same order, as autograd through `mask`, without recording
        a graph of indexing ops for every step (a gate-trained backend calls it per parameter).
        """
        pieces = self.slices[key]
        if pieces[0].rows is None or self.direct[key]:
            return {pieces[0].unit: grad.reshape(self.sizes[pieces[0].unit])}
        rows_grad = grad.reshape(-1)
        out: dict[int, torch.Tensor] = {}
        for i in range(len(pieces) - 1, -1, -1):  # index_put's backward, last piece first
            piece = pieces[i]
            assert piece.rows is not None and piece.elements is not None
            values = rows_grad[piece.rows.to(grad.device)]
            if i:  # the rows this piece wrote get no gradient from the pieces before it
                rows_grad = rows_grad.index_put((piece.rows.to(grad.device),), values.new_zeros(()))
            g = values.new_zeros(self.sizes[piece.unit])
            g.index_put_((piece.elements.to(grad.device),), values, accumulate=True)
            out[piece.unit] = out[piece.unit] + g if piece.unit in out else g
        return out

    def units_of(self, key: ParamKey) -> list[int]:
        return sorted({piece.unit for piece in self.slices[key]})

    def reduce(self, tensors: dict[ParamKey, torch.Tensor]) -> list[torch.Tensor]:
        """Per unit, per element: the sum of `tensors` over the slices that element owns."""
        # on the device of `tensors` (backends call this every step on --device)
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        scores = [torch.zeros(n, dtype=torch.float64, device=device) for n in self.sizes]
        for key, pieces in self.slices.items():
            t = tensors[key].detach().double()
            for piece in pieces:
                if piece.rows is None:
                    scores[piece.unit] += t.flatten()
                    continue
                assert piece.elements is not None
                rows = t.movedim(self.axes.get(key, 0), 0)
                per_row = rows.reshape(rows.shape[0], -1).sum(dim=1)
                index, rows = piece.elements.to(device), piece.rows.to(device)
                scores[piece.unit].index_add_(0, index, per_row[rows])
        return scores

    def parameters(self, model: nn.Module) -> dict[ParamKey, torch.Tensor]:
        """The current (masked, if parametrized) value of every parameter the units control."""
        return {key: getattr(model.get_submodule(key[0]), key[1]) for key in self.slices}

    def alive(self, model: nn.Module) -> list[torch.Tensor]:
        """Per unit, which elements still have a nonzero value in some slice they own."""
        magnitudes = {k: v.abs() for k, v in self.parameters(model).items()}
        return [s > 0 for s in self.reduce(magnitudes)]


def keep_vectors(
    sizes: Sequence[int], kept: Sequence[torch.Tensor], dtype: torch.dtype
) -> list[torch.Tensor]:
    """0/1 vectors, one per unit, with ones at the kept indices."""
    vectors = []
    for n, idx in zip(sizes, kept, strict=True):
        v = torch.zeros(n, dtype=dtype, device=idx.device)
        v[idx] = 1.0
        vectors.append(v)
    return vectors


def element_masks(
    model: nn.Module, graph: UnitGraph, kept: Sequence[torch.Tensor]
) -> dict[ParamKey, torch.Tensor]:
    """0/1 masks shaped like each affected parameter, keyed by (module name, parameter name)."""
    umap = UnitMap(model, graph)
    dtype = next(model.parameters()).dtype
    return umap.masks(keep_vectors(umap.sizes, kept, dtype))


def apply_masks(model: nn.Module, masks: dict[tuple[str, str], torch.Tensor]) -> None:
    """Register an ElementMask parametrization for every mask (replacing an earlier one)."""
    for (mod_name, pname), m in masks.items():
        module = model.get_submodule(mod_name)
        if parametrize.is_parametrized(module, pname):
            parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
        parametrize.register_parametrization(
            module, pname, ElementMask(m.to(getattr(module, pname).device))
        )
        if pname == "weight":
            renormalise(module)  # a LayerNorm: statistics over the kept channels only


def remove_masks(model: nn.Module, *, bake: bool) -> None:
    """Drop every parametrization; with `bake` the masked (zeroed) values stay in the weights."""
    for module in model.modules():
        forget(module)
        if parametrize.is_parametrized(module):
            for pname in list(cast(nn.ModuleDict, module.parametrizations).keys()):
                parametrize.remove_parametrizations(module, pname, leave_parametrized=bake)


def mask_model(
    model: nn.Module, graph: UnitGraph, keep: Sequence[int], importance: str = "l1"
) -> list[torch.Tensor]:
    """Mask `model` in place to the allocation `keep`; returns the kept indices per unit."""
    kept = select_kept(model, graph, keep, importance)
    apply_masks(model, element_masks(model, graph, kept))
    return kept


def slim(
    model: nn.Module,
    graph: UnitGraph,
    kept: Sequence[torch.Tensor],
    release: Callable[[str], None] | None = None,
) -> nn.Module:
    """Physically apply kept indices: channels removed (`graph.slimming`), or weights zeroed.
    `release` is `slim_channels`'s (told when a module has had its last cut)."""
    remove_masks(model, bake=False)
    if graph.granularity == "weight":
        with torch.no_grad():
            for (mod_name, pname), m in element_masks(model, graph, kept).items():
                getattr(model.get_submodule(mod_name), pname).mul_(m)
        return model
    slim_channels(model, graph, kept, release)
    return model
