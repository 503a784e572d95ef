"""Differentiable soft masks for DSA: keep probabilities from importance ranks, applied by hooks.

Each unit's elements are ranked by importance; element i keeps with probability
p_i = sigmoid((s_i - tau) / T), s_i its normalised rank in (0, 1), and the per-unit threshold tau
is solved (bisection) so that mean(p) equals the unit's keep ratio exactly. The gradient of p
with respect to the ratio follows from the implicit function theorem: dp_i/dratio =
n q_i / sum(q), q = p (1 - p), so it flows to the elements at the unit's pruning boundary.
Masks are sampled from p and passed straight through (Ning et al. 2020, DSA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from autoprune.graph.units import UnitGraph

BISECTION_STEPS = 50  # the threshold to ~1e-15 of the search interval: mean(p) exact in float64
_EPS = 1e-12


def normalised_ranks(scores: Tensor) -> Tensor:
    """(rank + 0.5) / n in (0, 1): 0 for the least important element, ties by lower index first."""
    n = scores.numel()
    order = torch.argsort(scores.flatten().double(), stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    return (ranks + 0.5) / n


def keep_probabilities(ranks: Tensor, ratio: Tensor, temperature: float) -> Tensor:
    """Per-element keep probabilities whose mean is `ratio`, differentiable in `ratio`."""
    r = float(ratio.detach().clamp(1e-9, 1 - 1e-9))
    t = float(temperature)
    lo, hi = -30.0 * t, 1.0 + 30.0 * t  # mean(p) is ~1 at lo and ~0 at hi for ranks in (0, 1)
    with torch.no_grad():
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if float(torch.sigmoid((ranks - mid) / t).mean()) > r:
                lo = mid
            else:
                hi = mid
        p = torch.sigmoid((ranks - 0.5 * (lo + hi)) / t)
        q = p * (1 - p) + _EPS
        slope = q / q.mean()  # implicit d p_i / d ratio; sums to n, as d(sum p)/d ratio must
    delta = ratio.to(p.dtype) - ratio.detach().to(p.dtype)
    return p + slope * delta


def straight_through(
    p: Tensor, *, sample: bool, generator: torch.Generator | None = None
) -> Tensor:
    """A 0/1 mask drawn from `p` whose gradient is that of `p` (or `p` itself without sampling)."""
    if not sample:
        return p
    hard = torch.bernoulli(p.detach().clamp(0, 1), generator=generator)
    return hard + p - p.detach()


def _channel_dim(module: nn.Module, ndim: int) -> int:
    # Linear and LayerNorm act on the last dimension; convolutions and norms on dim 1.
    return ndim - 1 if isinstance(module, (nn.Linear, nn.LayerNorm)) or ndim == 1 else 1


class _WeightGate(nn.Module):
    """Parametrization w -> w * mask of one weight unit, read from its `SoftMasks` at call time."""

    def __init__(self, owner: SoftMasks, unit: int) -> None:
        super().__init__()
        self._owner = [owner]  # a list, so nn.Module does not register or copy the owner
        self.unit = unit

    def forward(self, w: Tensor) -> Tensor:
        m = self._owner[0].values[self.unit]
        return w if m is None else w * m.to(w.device, w.dtype).view_as(w)


class SoftMasks:
    """Installs per-unit masks on a model: forward hooks on every module producing a channel unit
    (its output times the mask, as masking.py's parameter masks compute), parametrizations on the
    weights of weight units. `set` the masks before each forward; `remove` when done."""

    def __init__(self, model: nn.Module, graph: UnitGraph) -> None:
        self.values: list[Tensor | None] = [None] * len(graph.units)
        self._handles: list[RemovableHandle] = []
        self._params: list[nn.Module] = []
        pieces: dict[str, list[tuple[int, Tensor, Tensor]]] = {}
        for u, unit in enumerate(graph.units):
            if unit.kind == "weight":
                module = model.get_submodule(unit.name.removesuffix(".weight"))
                parametrize.register_parametrization(module, "weight", _WeightGate(self, u))
                self._params.append(module)
                continue
            for mem in unit.members:
                if mem.dim == "out":
                    rows, elements = torch.tensor(mem.idxs), torch.tensor(mem.root_idxs)
                    pieces.setdefault(mem.module, []).append((u, rows, elements))
        for name, parts in pieces.items():
            self._handles.append(model.get_submodule(name).register_forward_hook(self._hook(parts)))

    def _hook(
        self, parts: list[tuple[int, Tensor, Tensor]]
    ) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor | None]:
        def hook(module: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
            if all(self.values[u] is None for u, _, _ in parts):
                return None
            dim = _channel_dim(module, out.dim())
            gate = torch.ones(out.shape[dim], dtype=out.dtype, device=out.device)
            for u, rows, elements in parts:
                v = self.values[u]
                if v is not None:
                    gate = gate.index_put((rows,), v[elements].to(out.device, out.dtype))
            shape = [1] * out.dim()
            shape[dim] = -1
            return out * gate.view(shape)

        return hook

    def set(self, masks: Sequence[Tensor | None]) -> None:
        if len(masks) != len(self.values):
            raise ValueError(f"expected {len(self.values)} masks, got {len(masks)}")
        self.values = list(masks)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        for module in self._params:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._handles, self._params = [], []
        self.values = [None] * len(self.values)
