"""Independent measurements of a built model: FlopCounterMode MACs, parameter counts, latency."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from autoprune.graph.units import CONV_TYPES, LINEAR_TYPES, macs_counter, no_fastpath


def count_macs(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor], input_size: tuple[int, ...]
) -> int:
    """Multiply-accumulates of one sample, as torch's FlopCounterMode counts them (FLOPs / 2).

    Works on modules and on exported programs (whose modules refuse `.eval()`; they are
    exported in eval mode already).
    """
    x = torch.zeros(1, *input_size)
    restore = None
    if isinstance(model, nn.Module) and not _is_exported(model):
        restore = model.training
        model.eval()
    with torch.no_grad(), no_fastpath(), macs_counter() as counter:
        model(x)
    if restore is not None:
        model.train(restore)  # type: ignore[union-attr]
    return counter.get_total_flops() // 2


def _is_exported(model: nn.Module) -> bool:
    return isinstance(model, torch.fx.GraphModule)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_weights(model: nn.Module, *, nonzero: bool = False) -> int:
    """Weights of conv and linear layers (biases excluded: the compression-ratio convention)."""
    total = 0
    for m in model.modules():
        if isinstance(m, CONV_TYPES + LINEAR_TYPES):
            w = m.weight.detach()
            total += int(torch.count_nonzero(w)) if nonzero else w.numel()
    return total


def count_nonzero_params(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def measure_latency(
    fn: Callable[[torch.Tensor], object],
    x: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 3.0,
) -> float:
    """Median wall time of fn(x) in seconds, after warm-up runs.

    Stops early (after at least 3 timed runs) once `max_seconds` are spent, so a big model on a
    small machine does not turn a run into minutes of timing.
    """
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times: list[float] = []
        while len(times) < repeats and (len(times) < 3 or sum(times) < max_seconds):
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]
