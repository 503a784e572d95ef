"""Kernel-wise bits: BitAllocation validation, allocation round trip, the quantised cost model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoprune.allocation import Allocation
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.errors import AllocationError
from autoprune.graph.units import UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.quant.bits import (
    BitAllocation,
    artifact_bytes,
    estimate_counts,
    index_bits,
)


def _graph(granularity: str = "weight", model: str = "lenet5") -> UnitGraph:
    return trace_units(build_model(model), (1, 28, 28), granularity, model)  # type: ignore[arg-type]


def _mixed(graph: UnitGraph) -> BitAllocation:
    """Bits cycling through 2..8 over each layer's kernels, 8-bit activations, float input."""
    weight = {lay.name: tuple(2 + (k % 7) for k in range(lay.out_channels)) for lay in graph.layers}
    act = {lay.name: 8 for lay in graph.layers}
    act[graph.layers[0].name] = 32
    return BitAllocation(weight, act)


def test_uniform_and_json_round_trip() -> None:
    graph = _graph()
    bits = BitAllocation.uniform(graph, 4, 8)
    assert {k: len(v) for k, v in bits.weight.items()} == {
        lay.name: lay.out_channels for lay in graph.layers
    }
    assert set(bits.act.values()) == {8}
    mixed = _mixed(graph)
    assert BitAllocation.from_json(mixed.to_json(), graph) == mixed


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["weight"].pop("features.0"), "miss \\['features.0'\\]"),
        (lambda d: d["act"].update(nope=8), "lacks"),
        (lambda d: d["weight"]["classifier.2"].append(4), "give one per kernel \\(10\\)"),
        (lambda d: d["weight"]["classifier.2"].__setitem__(0, 16), "bits must be one of"),
        (
            lambda d: d["act"].__setitem__("features.0", 7.5),
            "activation bits of 'features.0' is 7.5",
        ),
    ],
)
def test_bad_bits_are_refused(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    graph = _graph()
    d = BitAllocation.uniform(graph, 4).to_json()
    mutate(d)
    with pytest.raises(AllocationError, match=match):
        BitAllocation.from_json(d, graph)
    with pytest.raises(AllocationError, match="bits must be one of"):
        BitAllocation.uniform(graph, 0)


def test_allocation_carries_bits(tmp_path: Path) -> None:
    graph = _graph()
    keep = np.maximum(1, np.array(graph.sizes) // 10)
    bits = _mixed(graph)
    Allocation.from_keep(graph, keep, num_classes=10, bits=bits).save(tmp_path / "a.json")
    loaded = Allocation.load(tmp_path / "a.json")
    assert loaded.bit_allocation(graph) == bits
    assert Allocation.from_keep(graph, keep, num_classes=10).bit_allocation(graph) is None


def test_index_bits_formula() -> None:
    assert index_bits(0, 500) == 0 and index_bits(500, 500) == 0
    # 10 of 500: low = floor(log2 50) = 5 bits each, plus 10 + (499 >> 5) = 25 unary bits.
    assert index_bits(10, 500) == 10 * 5 + 10 + (499 >> 5)
    assert index_bits(499, 500) == 500  # nearly dense: a bitmap is cheaper
    assert estimate_counts(7, 3) == [3, 2, 2]


def test_cost_model_with_bits() -> None:
    graph = _graph()
    plain = CostModel(graph)
    keep = np.array(graph.sizes) // np.array([5, 12, 100, 8])
    bits8 = plain.with_bits(BitAllocation.uniform(graph, 8, 8))
    assert (
        plain.bits is None and plain.costs(keep).size == 4 * plain.costs(keep).params
    )  # untouched
    # With the same bits everywhere BOPs are exact whatever the spread: MACs x 8 x 8.
    assert bits8.metric("bops", keep) == pytest.approx(plain.metric("macs", keep) * 64)
    assert bits8.metric("macs", keep) == plain.metric("macs", keep)
    mixed = plain.with_bits(_mixed(graph))
    counts = {
        lay.name: estimate_counts(int(k), lay.out_channels)
        for lay, k in zip(graph.layers, keep, strict=True)
    }
    assert mixed.metric("size", keep) == artifact_bytes(graph, _mixed(graph), counts)
    # Fewer bits, fewer bytes; more nonzeros, more bytes.
    assert bits8.metric("size", keep) > plain.with_bits(BitAllocation.uniform(graph, 4, 8)).metric(
        "size", keep
    )
    inc = mixed.increments("size", keep)
    assert (inc > 0).all()


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_projection_meets_a_size_budget_with_bits(granularity: str) -> None:
    graph = _graph(granularity)
    cm = CostModel(graph).with_bits(_mixed(graph))
    limits = {"size": 8000.0, "bops": 0.05 * cm.metric("bops", cm.dense_keep)}
    # Weight granularity reaches 8KB on LeNet-5 only below the default 5% floor per layer.
    keep = project(np.full(len(cm.sizes), 0.5), cm, limits, ProjectionConfig(min_ratio=0.001))
    assert cm.metric("size", keep) <= 8000.0 and cm.metric("bops", keep) <= limits["bops"]
    assert cm.metric("size", keep) > 7000.0  # the fill step leaves little slack
