"""Once a backend fixes its mask: the kept kernels take the bits and nonzeros the search priced.

A search with bits prices the artifact (bytes of model.apq, BOPs) for the kernels its evaluator
keeps (`autoprune.cost.kernel_counts`). A backend may keep other kernels, and where a layer's
kernels have different bits (rl/KernelBits spreads them by importance) the file then costs more than
the search promised. `PricedKernels` makes the promise hold by construction:

- channel granularity: every kept kernel of a layer has the same nonzero count (kept inputs x
  kernel elements), so size and BOPs depend only on the multiset of bits on the kept kernels.
  `match_bits` permutes each layer's bits: kernels kept by both keep theirs; a kernel the
  backend kept in place of a priced one swaps bits with it (both sides paired by importance).
- weight granularity: `match_rows` reselects each kernel's nonzeros so that it keeps exactly the
  count the search priced: the backend's own choices first, by magnitude, then the largest of
  the rest. Bits stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from autoprune.cost.kernel_counts import KernelCounts
from autoprune.cost.model import CostModel
from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BitAllocation


def kept_counts(cost_model: CostModel, kept: Sequence[Tensor]) -> dict[str, list[int]]:
    """Nonzero weights of every dense kernel when each unit keeps exactly the indices `kept`."""
    units = cost_model.graph.units
    scores = [
        torch.zeros(u.size, dtype=torch.float64).index_fill_(0, k.to(torch.int64), 1.0)
        for u, k in zip(units, kept, strict=True)
    ]
    return KernelCounts(cost_model, scores)([len(k) for k in kept])


def match_bits(
    bits: BitAllocation,
    priced: dict[str, list[int]],
    actual: dict[str, list[int]],
    importance: dict[str, np.ndarray],
) -> BitAllocation:
    """`bits` permuted within each layer so the kernels alive in `actual` carry the bits of the
    kernels alive in `priced` (per-kernel nonzero counts), pairing swaps by importance rank."""
    weight = {}
    for name, layer_bits in bits.weight.items():
        b = list(layer_bits)
        rank = -np.asarray(importance[name], dtype=np.float64)
        p, a = np.asarray(priced[name]) > 0, np.asarray(actual[name]) > 0
        gained = np.flatnonzero(a & ~p)[np.argsort(rank[a & ~p], kind="stable")]
        lost = np.flatnonzero(p & ~a)[np.argsort(rank[p & ~a], kind="stable")]
        for g, q in zip(gained, lost, strict=False):
            b[g], b[q] = b[q], b[g]
        weight[name] = tuple(b)
    return BitAllocation(weight, dict(bits.act))


def match_rows(
    graph: UnitGraph, kept: Sequence[Tensor], priced: dict[str, list[int]], model: nn.Module
) -> list[Tensor]:
    """Weight units reselected so every kernel (row) keeps exactly its priced nonzero count."""
    out = []
    for unit, idx in zip(graph.units, kept, strict=True):
        if unit.kind != "weight":
            out.append(idx)
            continue
        name = unit.name.removesuffix(".weight")
        weight: Tensor = model.get_submodule(name).weight  # type: ignore[assignment]
        w = weight.detach().abs().reshape(-1).double().cpu()
        counts = torch.as_tensor(priced[name], dtype=torch.int64)
        rows = counts.numel()
        # The backend's choices rank above everything else, then magnitude decides.
        key = w + torch.zeros_like(w).index_fill_(0, idx.to(torch.int64).cpu(), float(w.max()) + 1)
        order = key.reshape(rows, -1).argsort(dim=1, descending=True, stable=True)
        per_row = order.shape[1]
        take = torch.arange(per_row).unsqueeze(0) < counts.unsqueeze(1)
        flat = order + torch.arange(rows).unsqueeze(1) * per_row
        out.append(flat[take].sort().values.to(idx.device))
    return out


@dataclass
class PricedKernels:
    """What the search priced: every kernel's nonzeros at the searched keep, and kernel importance.

    Called by a backend once its mask is fixed (`BackendConfig.match_priced`): returns the kept
    elements and bits to fine-tune with, so that the artifact costs exactly what was priced.
    """

    cost_model: CostModel
    counts: dict[str, list[int]]  # layer -> nonzeros of each dense kernel, as priced
    importance: dict[str, np.ndarray]  # layer -> importance of each kernel (pairs the swaps)

    @classmethod
    def at(
        cls, counts: KernelCounts, keep: Sequence[int] | np.ndarray, model: nn.Module
    ) -> PricedKernels:
        from autoprune.graph.importance import kernel_importance

        return cls(
            counts.cost_model, counts(keep), kernel_importance(model, counts.cost_model.graph)
        )

    def __call__(
        self, kept: list[Tensor], model: nn.Module, bits: BitAllocation
    ) -> tuple[list[Tensor], BitAllocation]:
        graph = self.cost_model.graph
        if graph.granularity == "weight":
            kept = match_rows(graph, kept, self.counts, model)
        actual = kept_counts(self.cost_model, kept)
        return kept, match_bits(bits, self.counts, actual, self.importance)
