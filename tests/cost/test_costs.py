"""The cost model is exact: predicted MACs and params equal FlopCounterMode on the slimmed model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from autoprune.cost.measure import count_macs, count_params, count_weights
from autoprune.cost.model import CostModel
from autoprune.graph.masking import mask_model, slim
from autoprune.graph.units import trace_units
from autoprune.models import build_model

MODELS = [
    ("lenet5", (1, 28, 28)),
    ("resnet20", (3, 32, 32)),
    ("resnet18", (3, 64, 64)),
    ("mobilenet_v2", (3, 64, 64)),
    pytest.param("densenet121", (3, 64, 64), marks=pytest.mark.slow),  # also in test_search_uniform
    ("vgg16", (3, 32, 32)),
]


def _random_keep(cm: CostModel, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.floor(cm.sizes * rng.uniform(0.1, 1.0, len(cm.sizes)))).astype(np.int64)


@pytest.mark.parametrize(("name", "size"), MODELS)
def test_channel_costs_equal_the_slimmed_model(name: str, size: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, input_size=size).eval()
    graph = trace_units(model, size, "channel", name)
    cm = CostModel(graph)
    dense = cm.costs(cm.dense_keep)
    assert dense.macs == count_macs(model, size)
    assert dense.params == count_params(model)

    keep = _random_keep(cm, seed=1)
    predicted = cm.costs(keep)
    x = torch.randn(3, *size)
    masked = copy.deepcopy(model)
    kept = mask_model(masked, graph, keep)
    with torch.no_grad():
        y_masked = masked(x)
    slimmed = slim(masked, graph, kept).eval()
    with torch.no_grad():
        y_slim = slimmed(x)
    assert count_macs(slimmed, size) == predicted.macs
    assert count_params(slimmed) == predicted.params
    assert count_weights(slimmed) == predicted.weights
    # Masking is the same computation as removing the channels.
    torch.testing.assert_close(y_masked, y_slim, atol=1e-4, rtol=1e-4)


def test_weight_granularity_counts_nonzeros() -> None:
    model = build_model("lenet5").eval()
    graph = trace_units(model, (1, 28, 28), "weight", "lenet5")
    cm = CostModel(graph)
    assert [u.size for u in graph.units] == [500, 25_000, 400_000, 5_000]
    keep = np.array([100, 2_000, 3_600, 350])
    kept = mask_model(model, graph, keep)
    slimmed = slim(model, graph, kept)
    assert count_weights(slimmed, nonzero=True) == cm.costs(keep).weights == keep.sum()
    per_layer_positions = np.array([24 * 24, 8 * 8, 1, 1])
    assert cm.costs(keep).macs == float((keep * per_layer_positions).sum())


@pytest.mark.parametrize("metric", ["macs", "params", "weights", "size", "bops"])
def test_increments_are_exact(metric: str) -> None:
    model = build_model("mobilenet_v2", num_classes=10, input_size=(3, 32, 32))
    cm = CostModel(trace_units(model, (3, 32, 32), "channel", "mobilenet_v2"))
    keep = _random_keep(cm, seed=3)
    inc = cm.increments(metric, keep)
    base = cm.metric(metric, keep)
    for u in range(0, len(keep), 5):
        bumped = keep.copy()
        bumped[u] += 1
        assert inc[u] == pytest.approx(cm.metric(metric, bumped) - base, rel=1e-9)


def test_signature_depends_on_model_and_input() -> None:
    a = trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5").signature
    b = trace_units(build_model("lenet5"), (1, 28, 28), "channel", "lenet5").signature
    c = trace_units(build_model("lenet300"), (1, 28, 28), "channel", "lenet300").signature
    d = trace_units(build_model("lenet5"), (1, 28, 28), "weight", "lenet5").signature
    assert a == b and len({a, c, d}) == 3
