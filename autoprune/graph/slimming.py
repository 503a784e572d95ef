"""Physical slimming from unit members: every module slice a unit lists is cut, all at once.

Slimming works from the traced members rather than re-tracing the model and replaying
torch-pruning's groups: what is cut is exactly what was verified and priced, the order of units
does not matter (a grouped convolution fed by two units is cut once, with both units' channels),
and a slimmed copy costs no forward pass. A module type not handled here raises, which
verification turns into a frozen unit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import nn

from autoprune.graph.attention import count_heads, count_widths, slim_attention
from autoprune.graph.units import UnitGraph


def slim_channels(
    model: nn.Module,
    graph: UnitGraph,
    kept: Sequence[torch.Tensor],
    release: Callable[[str], None] | None = None,
) -> None:
    """Cut the channels each unit does not keep from every module slice it owns (in place).

    `release(path)` is called once a module (or free parameter) at `path` has had its last cut:
    a caller that keeps the uncut tensors for a restore may move them out of memory then.
    """
    dead: dict[tuple[str, str], set[int]] = defaultdict(set)
    for unit, idx in zip(graph.units, kept, strict=True):
        alive = torch.zeros(unit.size, dtype=torch.bool)
        alive[idx] = True
        for mem in unit.members:
            dead[(mem.module, mem.dim)].update(
                i for i, e in zip(mem.idxs, mem.root_idxs, strict=True) if not alive[e]
            )
    for path in graph.matmuls:  # the stream or the heads may shrink: a forward that follows
        slim_attention(model, path)
    with torch.no_grad():
        # a module's cuts one after the other: its half-cut tensor is gone before the next
        # module's is made (out-cuts first, then in-cuts, held every layer's at once: vit_h_14
        # verification peaked 1.3 GB above its 2.5 GB of weights)
        cuts = sorted(dead.items(), key=lambda item: item[0][0])
        for i, ((path, dim), idxs) in enumerate(cuts):
            if not idxs or path in graph.matmuls:
                pass  # an attention module's heads: its layers and parameters are cut here
            elif path in graph.free_params:
                owner, _, name = path.rpartition(".")
                module = model.get_submodule(owner)
                setattr(module, name, _cut(getattr(module, name), graph.free_params[path], idxs))
            else:
                _slim_module(model.get_submodule(path), dim, idxs)
            if release is not None and (i + 1 == len(cuts) or cuts[i + 1][0][0] != path):
                release(path)
    for path in graph.matmuls:
        count_heads(model, path)
    count_widths(model)


def _keep(n: int, dead: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(n) if i not in dead], dtype=torch.long)


def _cut(t: torch.Tensor, dim: int, dead: set[int]) -> torch.Tensor:
    """`t` without the indices `dead` along `dim`, as a parameter if it was one."""
    index = _keep(t.shape[dim], dead).to(t.device)
    kept = t.detach().index_select(dim, index)  # a new tensor: nothing shared with `t`
    if isinstance(t, nn.Parameter):
        return nn.Parameter(kept, requires_grad=t.requires_grad)
    return kept


def _set(module: nn.Module, name: str, dim: int, dead: set[int]) -> None:
    value = getattr(module, name, None)
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        setattr(module, name, _cut(value, dim, dead))


def _slim_module(module: nn.Module, dim: str, dead: set[int]) -> None:
    if isinstance(module, nn.modules.conv._ConvNd):
        _slim_conv(module, dim, dead)
    elif isinstance(module, nn.Linear):
        if dim == "out":
            _set(module, "weight", 0, dead)
            _set(module, "bias", 0, dead)
            module.out_features -= len(dead)
        else:
            _set(module, "weight", 1, dead)
            module.in_features -= len(dead)
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.PReLU)):
        _slim_norm(module, dead)
    elif isinstance(module, nn.LayerNorm):
        for name in ("weight", "bias"):
            _set(module, name, -1, dead)
        shape = module.normalized_shape
        module.normalized_shape = (*shape[:-1], shape[-1] - len(dead))
    elif isinstance(module, nn.Embedding):
        _set(module, "weight", 1, dead)
        module.embedding_dim -= len(dead)
    else:
        raise NotImplementedError(f"cannot slim {type(module).__name__} modules")


def _slim_conv(conv: nn.modules.conv._ConvNd, dim: str, dead: set[int]) -> None:
    groups, n_in, n_out = conv.groups, conv.in_channels, conv.out_channels
    if conv.transposed and groups > 1:
        raise NotImplementedError("cannot slim a grouped transposed convolution")
    weight_out, weight_in = (1, 0) if conv.transposed else (0, 1)
    if groups > 1 and groups == n_in:  # depthwise: channel i in is channel i out
        if n_out != n_in:
            raise NotImplementedError("cannot slim a depthwise conv with a channel multiplier")
        _set(conv, "weight", 0, dead)
        _set(conv, "bias", 0, dead)
        conv.in_channels = conv.out_channels = conv.groups = n_in - len(dead)
    elif dim == "out":
        if groups > 1:
            _same_count(dead, n_out // groups, groups, "output")
        _set(conv, "weight", weight_out, dead)
        _set(conv, "bias", 0, dead)
        conv.out_channels = n_out - len(dead)
    else:
        width = n_in // groups
        positions = _same_count(dead, width, groups, "input")
        _set(conv, "weight", weight_in, positions)
        conv.in_channels = n_in - len(dead)


def _same_count(dead: set[int], width: int, groups: int, what: str) -> set[int]:
    """The positions cut from every group; it must be the same set in each (ties ensure it)."""
    per_group = [{i - g * width for i in dead if g * width <= i < (g + 1) * width}
                 for g in range(groups)]  # fmt: skip
    if any(p != per_group[0] for p in per_group):
        raise ValueError(f"a grouped convolution would lose different {what} positions per group")
    return per_group[0]


def _slim_norm(norm: nn.Module, dead: set[int]) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        _set(norm, name, 0, dead)
    if isinstance(norm, nn.GroupNorm):
        size = norm.num_channels // norm.num_groups
        if len(dead) % size:
            raise ValueError("GroupNorm would lose part of a group")
        norm.num_groups -= len(dead) // size
        norm.num_channels -= len(dead)
    elif isinstance(norm, nn.PReLU):
        norm.num_parameters -= len(dead)
    else:
        cast(Any, norm).num_features -= len(dead)  # BatchNorm, InstanceNorm
