"""Fake quantisation: codes and scales per kernel, the straight-through gradient, QAT backends."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

import autoprune.backends  # noqa: F401  (registers the built-in backends)
from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.graph.masking import UnitMap
from autoprune.pipeline.load import trace
from autoprune.quant.bits import BitAllocation
from autoprune.quant.fake import ActQuant, dequantize, fake_quant, on_levels, quantize

SIZE = (1, 16, 16)


def test_codes_scales_and_levels() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, 5, 5)
    w[2] = 0.0  # an empty kernel
    w[1, 0] = 0.0  # pruned weights inside a kernel
    bits = torch.tensor([2, 4, 8, 32, 1])
    codes, s = quantize(w, bits)
    assert codes[0].min() >= -2 and codes[0].max() <= 1  # 2 bits: 4 nonzero levels
    assert int(codes[0].flatten()[w[0].abs().argmax()]) in (-2, 1)  # the largest on the outermost
    assert codes[1].min() >= -8 and codes[1].max() <= 7 and (codes[1, 0] == 0).all()
    assert torch.allclose(s[:2], w[:2].abs().flatten(1).amax(1) / torch.tensor([1.5, 7.5]))
    back = dequantize(codes, s, bits, w)
    assert torch.equal(back[3], w[3])  # 32 bits: float, untouched
    assert torch.equal(back[2], w[2]) and torch.equal(back[1, 0], w[1, 0])  # zeros stay zeros
    assert ((back[1] != 0) == (w[1] != 0)).all()  # and nonzeros stay nonzero
    assert (back[1] - w[1]).abs().max() <= s[1] / 2 + 1e-7  # the nearest level
    assert back[0].abs().max() == pytest.approx(w[0].abs().max())  # outer levels at max|w|
    assert torch.allclose(back[4].abs(), w[4].abs().mean().expand_as(w[4]))  # binary: mean |w|
    assert on_levels(back, bits.tolist()) and not on_levels(w, bits.tolist())


def test_straight_through_gradient() -> None:
    w = torch.randn(3, 8, requires_grad=True)
    c = torch.randn(3, 8)
    (fake_quant(w, torch.tensor([2, 3, 4])) * c).sum().backward()
    assert w.grad is not None and torch.allclose(w.grad, c)


def test_act_quant_fixed_in_eval() -> None:
    layer = torch.nn.Linear(4, 2)
    hook = ActQuant(4)
    layer.register_forward_pre_hook(hook)
    layer(torch.full((2, 4), 3.5))  # training: the running max starts at 3.5
    assert hook.scale == pytest.approx(3.5 / 7)
    layer.eval()
    x = torch.linspace(-5, 5, 16).reshape(4, 4)
    seen = {}
    layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    layer(x)
    grid = seen["x"] / hook.scale
    assert torch.allclose(grid, grid.round(), atol=1e-5) and grid.abs().max() <= 7


@pytest.fixture(scope="module")
def dense(digits_lenet: Any) -> Any:
    return digits_lenet


@pytest.mark.parametrize(
    ("name", "granularity"),
    [("reweighted", "weight"), ("admm", "weight"), ("reweighted", "channel")],
)
def test_backend_with_bits_ends_on_levels(dense: Any, name: str, granularity: str) -> None:
    loaded = copy.copy(dense)
    loaded.model = copy.deepcopy(dense.model)
    graph, _ = trace(loaded, granularity)  # type: ignore[arg-type]
    keep = np.maximum(1, (np.array(graph.sizes) * 0.3).astype(np.int64))
    layers = graph.layers
    weight = {lay.name: tuple(3 + (k % 3) for k in range(lay.out_channels)) for lay in layers}
    bits = BitAllocation(weight, {lay.name: 32 if i == 0 else 6 for i, lay in enumerate(layers)})
    cfg = BackendConfig(epochs=1, finetune_epochs=1, batch_size=32, progress=False, bits=bits)
    res = BACKENDS.get(name)().run(loaded.model, graph, keep, loaded.data, cfg)
    for lay in layers:
        w = res.model.get_submodule(lay.name).weight.detach()
        assert on_levels(w, weight[lay.name])
    alive = UnitMap(res.model, graph).alive(res.model)
    for a, idx in zip(alive, res.kept, strict=True):
        outside = torch.ones_like(a)
        outside[idx] = False
        assert not (a & outside).any()  # pruned elements stay exactly zero under quantisation
    scales = res.info["act_scales"]
    assert set(scales) == {lay.name for lay in layers[1:]} and all(s > 0 for s in scales.values())
