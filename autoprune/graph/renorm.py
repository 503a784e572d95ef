"""A LayerNorm that normalises over its unmasked channels only, so masking equals slimming.

A masked channel is zero everywhere, but LayerNorm over channels (a transformer's residual
stream, a ConvNeXt block) still counts it in its mean and variance; the slimmed model's norm
does not see it at all. The forward hook below recomputes the norm over the channels its masked
weight keeps, which is exactly what the slimmed LayerNorm computes (a hook, not a new forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_HOOK = "_autoprune_renorm"


def _renormalised(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    chain = getattr(getattr(module, "parametrizations", None), "weight", None)
    mask = getattr(chain[0], "mask", None) if chain is not None else None
    if mask is None or bool((mask != 0).all()):
        return output
    x = args[0]
    # channels last (nn.LayerNorm), or at dim 1 for a subclass that permutes (LayerNorm2d)
    moved = x.shape[-1] != mask.numel() and x.dim() > 2 and x.shape[1] == mask.numel()
    x = x.movedim(1, -1) if moved else x
    alive = (mask != 0).to(x.dtype)
    n = alive.sum()
    mean = (x * alive).sum(-1, keepdim=True) / n
    centred = (x - mean) * alive
    y = centred / torch.sqrt(centred.square().sum(-1, keepdim=True) / n + module.eps)
    y = y * module.weight  # masked: zero on the dead channels
    y = y + module.bias if module.bias is not None else y
    return y.movedim(-1, 1) if moved else y


def renormalise(module: nn.Module) -> None:
    """Hook a LayerNorm over one (channel) dim whose weight is masked; idempotent."""
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        return
    if getattr(module, _HOOK, None) is None:
        setattr(module, _HOOK, module.register_forward_hook(_renormalised))


def forget(module: nn.Module) -> None:
    handle = getattr(module, _HOOK, None)
    if handle is not None:
        handle.remove()
        delattr(module, _HOOK)
