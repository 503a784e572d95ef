"""Nonzero weights of every kernel when elements are kept by importance, for exact search costs.

`CostModel.with_bits` prices an allocation from per-layer widths alone, so it must guess how a
layer's nonzeros spread over its kernels. With kernel-wise bits that guess is biased: kernels that
get more bits (the important ones) are also the ones that keep their weights. Given the unit
scores the evaluator keeps elements by, `KernelCounts` knows each kernel's nonzero count for any
keep vector, and `priced` turns that into the exact `size` (bytes of model.apq, via
`bits.artifact_bytes`) and `bops` of the allocation the evaluator scores. A backend that picks
other elements while training ends near, not exactly at, these numbers.

Channel granularity: a kernel survives when its output channel is in its unit's top-k, and then
keeps every input that survives (the cost model's inputs per output x kernel elements). Weight
granularity: a layer's kept weights are its top-k by score, counted per output row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from autoprune.cost.model import CostModel
from autoprune.quant.bits import BitAllocation, artifact_bytes


class KernelCounts:
    """keep vector -> {layer: nonzero weights of each dense kernel}, elements kept by `scores`."""

    def __init__(self, cost_model: CostModel, scores: Sequence[torch.Tensor]) -> None:
        self.cost_model = cost_model
        graph = cost_model.graph
        self.layers = graph.layers
        # Descending score order, ties to the lower index: the order `importance.top_k` keeps.
        self.order = [np.argsort(-s.detach().cpu().double().numpy(), kind="stable") for s in scores]
        index = {lay.name: i for i, lay in enumerate(graph.layers)}
        self.rows: list[list[tuple[int, np.ndarray, np.ndarray]]] = [[] for _ in graph.layers]
        self.row_of: dict[int, tuple[int, np.ndarray]] = {}  # weight units: layer, row per rank
        for u, unit in enumerate(graph.units):
            if unit.kind == "weight":
                i = index[unit.name.removesuffix(".weight")]
                per_row = self.layers[i].weights // self.layers[i].out_channels
                self.row_of[u] = (i, self.order[u] // per_row)
                continue
            for mem in unit.members:
                if mem.dim == "out" and mem.module in index:
                    rows, channels = np.array(mem.idxs), np.array(mem.root_idxs)
                    self.rows[index[mem.module]].append((u, rows, channels))

    def __call__(self, keep: Sequence[int] | np.ndarray) -> dict[str, list[int]]:
        k = np.asarray(keep, dtype=np.int64)
        if self.cost_model.graph.granularity == "weight":
            counts = {
                lay.name: [lay.weights // lay.out_channels] * lay.out_channels
                for lay in self.layers
            }
            for u, (i, rows) in self.row_of.items():
                lay = self.layers[i]
                counts[lay.name] = np.bincount(rows[: k[u]], minlength=lay.out_channels).tolist()
            return counts
        terms = self.cost_model.channel_terms()
        inputs = np.rint(terms.a_in @ k + terms.b_in).astype(np.int64)
        counts = {}
        for i, lay in enumerate(self.layers):
            alive = np.ones(lay.out_channels, dtype=bool)
            for u, rows, channels in self.rows[i]:
                kept = np.zeros(len(self.order[u]), dtype=bool)
                kept[self.order[u][: k[u]]] = True
                alive[rows] &= kept[channels]
            counts[lay.name] = np.where(alive, inputs[i] * lay.kernel, 0).tolist()
        return counts


def priced(cost_model: CostModel, bits: BitAllocation, counts: KernelCounts) -> CostModel:
    """`cost_model.with_bits(bits)` with exact `size` and `bops` for the kernels `counts` keeps."""
    graph = cost_model.graph
    model = cost_model.with_bits(bits)
    weight_bits = {n: np.asarray(b, dtype=np.float64) for n, b in bits.weight.items()}

    def size(keep: np.ndarray) -> float:
        return float(artifact_bytes(graph, bits, counts(keep)))

    def bops(keep: np.ndarray) -> float:
        per_layer = counts(keep)
        return float(
            sum(
                float(np.dot(per_layer[lay.name], weight_bits[lay.name]))
                * lay.positions
                * bits.act[lay.name]
                for lay in graph.layers
            )
        )

    model.register_metric("size", size)
    model.register_metric("bops", bops)
    return model
