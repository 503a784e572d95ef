"""Fake quantisation: per-kernel symmetric uniform weight codes, per-layer activation codes.

A kernel (one output filter of a conv, one output row of a linear layer) with b bits stores one
step size s and, per nonzero weight, a code k in [-2^(b-1), 2^(b-1) - 1] for the level
(k + 1/2) s; 32 bits means float (no codes). Pruned weights are zeros that the sparse index
encodes, so the levels need no zero and b = 1 is a per-kernel binary (+-s/2) weight. Training
sees the quantised weights in the forward pass and passes gradients straight through (the STE of
BinaryConnect / DoReFa), as a parametrization stacked on any mask, so masked weights stay
exactly zero.

A layer's input activations with a < 32 bits are fake-quantised by a forward pre-hook, symmetric
with a scale from a running max of |x| while training and fixed in eval (and in the artifact).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import FLOAT_BITS, BitAllocation


def qmax(bits: int) -> int:
    """Largest code magnitude of symmetric mid-tread `bits`-bit activation codes."""
    return int(2 ** (bits - 1) - 1)


def _per_kernel(t: Tensor, shape: torch.Size) -> Tensor:
    return t.reshape(-1, *([1] * (len(shape) - 1)))


def kernel_scales(w: Tensor, bits: Tensor) -> Tensor:
    """One step size per kernel (dim 0 of `w`) over its nonzero weights.

    b >= 2: the outermost levels +-(2^(b-1) - 1/2) s sit at +-max|w|. b = 1: the two levels
    +-s/2 sit at the mean |w| (the least-squares binary fit). Float and empty kernels get 1.
    """
    flat = w.detach().abs().reshape(w.shape[0], -1)
    b = bits.to(w.device)
    amax = flat.amax(dim=1)
    nonzero = (flat > 0).sum(dim=1).clamp_min(1)
    half = torch.pow(2.0, (b - 1).to(w.dtype))
    s = torch.where(b == 1, 2 * flat.sum(dim=1) / nonzero, amax / (half - 0.5))
    return torch.where((b < FLOAT_BITS) & (amax > 0), s, torch.ones_like(s))


def quantize(w: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """Signed codes k (int64, shaped like `w`) and per-kernel step sizes s.

    Nonzero weights of a b-bit kernel map to the level (k + 1/2) s, k in [-2^(b-1), 2^(b-1) - 1]
    (mid-rise: no zero level, since zeros are pruned weights and the sparse index says where
    they are, all 2^b codes name a nonzero value). Zeros and float kernels get code 0.
    """
    s = kernel_scales(w, bits)
    b = _per_kernel(bits.to(w.device), w.shape)
    half = torch.pow(2.0, (b - 1).to(w.dtype))
    k = torch.minimum(
        torch.maximum(torch.floor(w.detach() / _per_kernel(s, w.shape)), -half), half - 1
    )
    keep = (b < FLOAT_BITS) & (w != 0)
    return torch.where(keep, k, torch.zeros_like(k)).to(torch.int64), s


def dequantize(codes: Tensor, scales: Tensor, bits: Tensor, w: Tensor) -> Tensor:
    """(code + 1/2) x step where `w` is nonzero in quantised kernels; float kernels keep `w`."""
    quantised = _per_kernel(bits.to(w.device) < FLOAT_BITS, w.shape)
    levels = (codes.to(w.dtype) + 0.5) * _per_kernel(scales, w.shape)
    return torch.where(quantised, torch.where(w != 0, levels, torch.zeros_like(w)), w)


def fake_quant(w: Tensor, bits: Tensor) -> Tensor:
    """Quantised values forward, identity gradient backward (straight-through estimator)."""
    codes, s = quantize(w, bits)
    return w + (dequantize(codes, s, bits, w.detach()) - w).detach()


class WeightFakeQuant(nn.Module):
    """Parametrization w -> per-kernel fake-quantised w (stack it after a mask)."""

    def __init__(self, bits: Sequence[int]) -> None:
        super().__init__()
        # Not a buffer: state dicts of a model under training stay as they are.
        self.bits = torch.tensor(list(bits), dtype=torch.int64)

    def forward(self, w: Tensor) -> Tensor:
        return fake_quant(w, self.bits)


def add_weight_quant(model: nn.Module, graph: UnitGraph, bits: BitAllocation) -> None:
    """Stack a WeightFakeQuant on the weight of every conv/linear layer (on top of any mask)."""
    for lay in graph.layers:
        parametrize.register_parametrization(
            model.get_submodule(lay.name), "weight", WeightFakeQuant(bits.weight[lay.name])
        )


def on_levels(w: Tensor, bits: Sequence[int]) -> bool:
    """Whether every weight of `w` is (to float rounding) codes x its kernel's scale."""
    b = torch.tensor(list(bits), dtype=torch.int64)
    codes, s = quantize(w, b)
    back = dequantize(codes, s, b, w)
    return bool(torch.allclose(back, w, rtol=1e-6, atol=1e-12))


class ActQuant:
    """Forward pre-hook: a layer's first input fake-quantised to `bits`, symmetric.

    While the layer trains, the scale follows an exponential running max of |x| per batch; in
    eval (and once `scale` is given) it is fixed.
    """

    def __init__(self, bits: int, scale: float | None = None, momentum: float = 0.1) -> None:
        self.bits, self.momentum = bits, momentum
        self.running = None if scale is None else torch.tensor(float(scale) * qmax(bits))

    @property
    def scale(self) -> float:
        if self.running is None:
            return 1.0
        return float(self.running) / float(qmax(self.bits))

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        if module.training:
            amax = x.detach().abs().amax().cpu()
            prev = self.running
            self.running = amax if prev is None else torch.lerp(prev, amax, self.momentum)
        s = self.scale
        q = float(qmax(self.bits))
        xq = torch.clamp(torch.round(x / s), -q, q) * s
        return (x + (xq - x).detach(), *args[1:])


def add_act_quant(
    model: nn.Module, graph: UnitGraph, bits: BitAllocation, scales: dict[str, float] | None = None
) -> dict[str, ActQuant]:
    """Install an ActQuant on every layer whose input bits are below 32; returns them by layer."""
    hooks = {}
    for lay in graph.layers:
        a = bits.act[lay.name]
        if a == FLOAT_BITS:
            continue
        hook = ActQuant(a, None if scales is None else scales[lay.name])
        model.get_submodule(lay.name).register_forward_pre_hook(hook)
        hooks[lay.name] = hook
    return hooks


@contextmanager
def quantised_inputs(
    model: nn.Module, graph: UnitGraph, bits: BitAllocation, calibration: Sequence[torch.Tensor]
) -> Iterator[None]:
    """Inputs of every conv/linear layer below 32 bits fake-quantised while inside.

    Each layer's scale is calibrated first, from a running max of |input| over `calibration`.
    An ActQuant follows the range only while its layer is in train mode, so only those layers
    are: BatchNorm statistics and dropout stay as they were.
    """
    names = [lay.name for lay in graph.layers if bits.act[lay.name] < FLOAT_BITS]
    layers = [model.get_submodule(name) for name in names]
    handles = [
        m.register_forward_pre_hook(ActQuant(bits.act[name]))
        for m, name in zip(layers, names, strict=True)
    ]
    try:
        if handles:
            was_training = model.training
            model.eval()
            for m in layers:
                m.train()
            with torch.no_grad():
                for x in calibration:
                    model(x)
            model.train(was_training)
        yield
    finally:
        for h in handles:
            h.remove()
