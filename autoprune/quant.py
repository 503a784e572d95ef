"""Fake quantisation: per-kernel symmetric uniform weight codes, per-layer activation codes.

A kernel (one output filter of a conv, one output row of a linear layer) with b bits stores
integer codes q in [-(2^(b-1) - 1), 2^(b-1) - 1] and one scale s = max|w| / (2^(b-1) - 1), and
stands for the weights q x s; 32 bits means float (no codes). Training sees the quantised weights
in the forward pass and passes gradients straight through (the STE of BinaryConnect / DoReFa),
as a parametrization stacked on any mask, so masked weights stay exactly zero (round(0) = 0).

A layer's input activations with a < 32 bits are fake-quantised by a forward pre-hook, symmetric
with a scale from a running max of |x| while training and fixed in eval (and in the artifact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from autoprune.bits import FLOAT_BITS, BitAllocation
from autoprune.units import UnitGraph


def qmax(bits: int) -> int:
    """Largest code magnitude of symmetric `bits`-bit codes."""
    return int(2 ** (bits - 1) - 1)


def _qmax(bits: Tensor) -> Tensor:
    return torch.pow(2, bits - 1) - 1


def _per_kernel(t: Tensor, shape: torch.Size) -> Tensor:
    return t.reshape(-1, *([1] * (len(shape) - 1)))


def kernel_scales(w: Tensor, bits: Tensor) -> Tensor:
    """One scale per kernel (dim 0 of `w`): max|w| / qmax; 1 for float and all-zero kernels."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    s = amax / _qmax(bits.to(w.device)).to(w.dtype)
    return torch.where((bits.to(w.device) < FLOAT_BITS) & (amax > 0), s, torch.ones_like(s))


def quantize(w: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """Integer codes (int64, shaped like `w`; float kernels get 0) and per-kernel scales."""
    s = kernel_scales(w, bits)
    q = _per_kernel(_qmax(bits.to(w.device)), w.shape)
    codes = torch.clamp(torch.round(w.detach() / _per_kernel(s, w.shape)), -q, q)
    quantised = _per_kernel(bits.to(w.device) < FLOAT_BITS, w.shape)
    return torch.where(quantised, codes, torch.zeros_like(codes)).to(torch.int64), s


def dequantize(codes: Tensor, scales: Tensor, bits: Tensor, w: Tensor) -> Tensor:
    """codes x scale for quantised kernels; float kernels keep their values from `w`."""
    quantised = _per_kernel(bits.to(w.device) < FLOAT_BITS, w.shape)
    return torch.where(quantised, codes.to(w.dtype) * _per_kernel(scales, w.shape), w)


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
