"""Importance measures: a score per element of a unit (channel or weight); higher is kept first."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from autoprune.errors import UsageError
from autoprune.graph.units import Unit, UnitGraph
from autoprune.registry import Registry

ImportanceFn = Callable[[nn.Module, Unit], torch.Tensor]
IMPORTANCE: Registry[ImportanceFn] = Registry("importance measure")


TensorOf = Callable[[nn.Module], "torch.Tensor | None"]


def _abs(m: nn.Module) -> torch.Tensor | None:
    w = getattr(m, "weight", None)
    return None if w is None else w.detach().abs()


def _square(m: nn.Module) -> torch.Tensor | None:
    w = getattr(m, "weight", None)
    return None if w is None else w.detach().square()


def _saliency(m: nn.Module) -> torch.Tensor | None:
    w = getattr(m, "weight", None)
    if w is None or w.grad is None:
        return None
    return (w.detach() * w.grad).abs()


def _scores(model: nn.Module, unit: Unit, tensor_of: TensorOf) -> torch.Tensor:
    """Per-element scores of `unit` from `tensor_of(module)`, a tensor shaped like the weight.

    For a channel unit, consumers' input slices count too (the whole coupled group, as in
    Torch-Pruning's group importance), so a channel nobody reads scores low even if its
    producer's filter is large.
    """
    if unit.kind == "weight":
        t = tensor_of(model.get_submodule(unit.name.removesuffix(".weight")))
        if t is None:
            raise RuntimeError(f"no score for {unit.name}: run a backward pass first (taylor)")
        return t.flatten().double().cpu()
    score = torch.zeros(unit.size, dtype=torch.float64)  # scores live on the CPU, any --device
    for mem in unit.members:
        module = _module(model, mem.module)
        if module is None:  # a free parameter (a layer-scale gamma): its producers score it
            continue
        t = tensor_of(module)
        if t is None:
            continue
        t = t.double()
        if mem.dim == "out":
            per = t.reshape(t.shape[0], -1).sum(dim=1) if t.dim() > 1 else t
        elif getattr(module, "groups", 1) > 1 or t.dim() < 2:
            continue  # a grouped conv's input slice is not indexed by channel
        else:
            per = t.transpose(0, 1).reshape(t.shape[1], -1).sum(dim=1)
        score.index_add_(0, torch.tensor(mem.root_idxs), per.cpu()[torch.tensor(mem.idxs)])
    return score


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


@IMPORTANCE.register("l1")
def l1(model: nn.Module, unit: Unit) -> torch.Tensor:
    """Sum of absolute weights (magnitude)."""
    return _scores(model, unit, _abs)


@IMPORTANCE.register("l2")
def l2(model: nn.Module, unit: Unit) -> torch.Tensor:
    """Sum of squared weights."""
    return _scores(model, unit, _square)


@IMPORTANCE.register("taylor")
def taylor(model: nn.Module, unit: Unit) -> torch.Tensor:
    """First-order Taylor |w * dL/dw|; needs gradients accumulated on the weights beforehand.

    Without them it raises: every score would be 0 and a unit would silently keep its first
    elements.
    """
    names = [m.module for m in unit.members] or [unit.name.removesuffix(".weight")]
    if all(_saliency(m) is None for n in names if (m := _module(model, n)) is not None):
        raise UsageError(
            f"importance 'taylor' scores |w * dL/dw| and {unit.name} has no gradients; run a "
            "backward pass first (the search's evaluator does), or use --importance l1"
        )
    return _scores(model, unit, _saliency)


def score_units(model: nn.Module, units: list[Unit], importance: str = "l1") -> list[torch.Tensor]:
    fn = IMPORTANCE.get(importance)
    return [fn(model, u) for u in units]


def top_k(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` highest scores, sorted ascending (ties broken by lower index)."""
    keep = int(keep)
    order = torch.argsort(-scores, stable=True)
    return torch.sort(order[:keep]).values


def kernel_importance(model: nn.Module, graph: UnitGraph) -> dict[str, np.ndarray]:
    """L1 norm of every kernel (output filter / output row) of every conv/linear layer."""
    out = {}
    with torch.no_grad():
        for lay in graph.layers:
            w: torch.Tensor = model.get_submodule(lay.name).weight  # type: ignore[assignment]
            out[lay.name] = w.detach().abs().reshape(w.shape[0], -1).sum(dim=1).cpu().numpy()
    return out
