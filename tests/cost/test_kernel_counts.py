"""Exact search-time pricing with bits: kernel nonzeros as the evaluator keeps them, in bytes."""

from __future__ import annotations

import copy
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.cost.kernel_counts import KernelCounts, priced
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.graph.importance import score_units, top_k
from autoprune.graph.masking import apply_masks, element_masks, remove_masks
from autoprune.graph.units import UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.quant.bits import BIT_CHOICES, BitAllocation, artifact_bytes

SIZES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32)}


@cache
def traced(name: str, granularity: str) -> tuple[nn.Module, CostModel]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_size=SIZES[name])
    graph = trace_units(model, SIZES[name], granularity, name)  # type: ignore[arg-type]
    return model, CostModel(graph)


def measured_counts(model: nn.Module, graph: UnitGraph, keep: np.ndarray) -> dict[str, list[int]]:
    """Nonzeros per kernel of the model the evaluator scores, with the inputs that read pruned
    channels zeroed as well (what a slim artifact stores)."""
    m = copy.deepcopy(model)
    scores = score_units(m, graph.units)
    kept = [top_k(s, int(k)) for s, k in zip(scores, keep, strict=True)]
    apply_masks(m, element_masks(m, graph, kept))
    remove_masks(m, bake=True)
    with torch.no_grad():
        for unit, alive in zip(graph.units, kept, strict=True):
            alive_set = set(alive.tolist())
            for mem in unit.members:
                if mem.dim == "in":
                    dead = [
                        i
                        for i, r in zip(mem.idxs, mem.root_idxs, strict=True)
                        if r not in alive_set
                    ]
                    m.get_submodule(mem.module).weight[:, dead] = 0
    return {
        lay.name: (m.get_submodule(lay.name).weight.detach().reshape(lay.out_channels, -1) != 0)
        .sum(dim=1)
        .tolist()
        for lay in graph.layers
    }


def random_bits(graph: UnitGraph, rng: np.random.Generator) -> BitAllocation:
    return BitAllocation(
        {
            lay.name: tuple(int(b) for b in rng.choice(BIT_CHOICES, lay.out_channels))
            for lay in graph.layers
        },
        {lay.name: int(rng.choice((4, 8, 32))) for lay in graph.layers},
    )


@pytest.mark.parametrize(
    ("name", "granularity"), [("lenet5", "channel"), ("lenet5", "weight"), ("resnet20", "channel")]
)
def test_counts_and_exact_size_match_the_model_the_evaluator_scores(
    name: str, granularity: str
) -> None:
    model, cm = traced(name, granularity)
    counts = KernelCounts(cm, score_units(model, cm.graph.units))
    rng = np.random.default_rng(0)
    low = min_keeps(cm.sizes, ProjectionConfig())
    for _ in range(3):
        keep = rng.integers(low, cm.sizes + 1)
        bits = random_bits(cm.graph, rng)
        real = measured_counts(model, cm.graph, keep)
        assert counts(keep) == real
        exact = priced(cm, bits, counts)
        assert exact.metric("size", keep) == artifact_bytes(cm.graph, bits, real)
        bops = sum(
            float(np.dot(real[lay.name], bits.weight[lay.name]))
            * lay.positions
            * bits.act[lay.name]
            for lay in cm.graph.layers
        )
        assert exact.metric("bops", keep) == bops
        assert exact.metric("macs", keep) == cm.metric("macs", keep)  # the rest is unchanged


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_with_one_width_per_layer_the_estimate_equals_the_exact_size(name: str) -> None:
    """Channel granularity: which kernels survive does not change the bytes when a layer's
    kernels share their bits, so the search-time estimate is exact to the byte."""
    model, cm = traced(name, "channel")
    counts = KernelCounts(cm, score_units(model, cm.graph.units))
    rng = np.random.default_rng(1)
    for _ in range(5):
        keep = rng.integers(1, cm.sizes + 1)
        for w in (1, 2, 4, 8, 32):
            bits = BitAllocation.uniform(cm.graph, w)
            assert priced(cm, bits, counts).metric("size", keep) == cm.with_bits(bits).metric(
                "size", keep
            )


def test_importance_spread_bits_cost_more_than_the_even_estimate() -> None:
    """Why exact pricing exists: the kept kernels are the important ones, which get more bits."""
    model, cm = traced("lenet5", "channel")
    scores = score_units(model, cm.graph.units)
    counts = KernelCounts(cm, scores)
    keep = np.array([60, 8, 10])
    rank = {u.name: s.numpy() for u, s in zip(cm.graph.units, scores, strict=True)}
    weight = {}
    for lay in cm.graph.layers:  # 8 bits for the top half of a pruned layer's channels, 2 below
        s = rank.get(lay.name, np.arange(lay.out_channels, dtype=float))
        weight[lay.name] = tuple(int(b) for b in np.where(s >= np.median(s), 8, 2))
    bits = BitAllocation(weight, {lay.name: 32 for lay in cm.graph.layers})
    assert priced(cm, bits, counts).metric("size", keep) > 1.1 * cm.with_bits(bits).metric(
        "size", keep
    )
