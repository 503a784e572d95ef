"""The fastest equivalent form of a model to export: BatchNorm folded, channels-last when faster.

Both are decided on this machine at export: folding is always kept when the outputs agree (one
convolution instead of a convolution and a per-channel affine pass: measured 10-15% of resnet18's
and mobilenet_v2's time at batch 1, one thread); channels-last is timed against the default
layout and kept only where it is faster, because it is not always: measured here (1 thread,
batch 1, thread CPU time, load average 7), resnet18 slimmed to 50% MACs ran 34 ms channels-last
against 42 ms, while mobilenet_v2 slimmed to 50% ran 15.6 ms against 15.0 ms.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.cost.timing import no_grad_call, thread_seconds

FORMAT_TOLERANCE = 1e-5  # outputs in another layout must agree within this, relative to scale


@dataclass(frozen=True)
class FastExportConfig:
    """What `fastest_form` may change in a model before it is exported."""

    fold_bn: bool = True
    # True / False: force the layout; None: time both on this machine and keep the faster
    channels_last: bool | None = None
    batch: int = 1  # the latency of one image, what the latency budget and table mean
    rounds: int = 11  # interleaved rounds per layout (odd: the median is one real round)
    # channels-last is kept only when it is this much faster: a tie on a loaded machine keeps
    # the layout every runtime expects
    margin: float = 0.97


def _has_images(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _agrees(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(a.abs().max()) or 1.0
    return float((a - b).abs().max()) <= FORMAT_TOLERANCE * scale


def fastest_form(
    model: nn.Module, input_size: Sequence[int], cfg: FastExportConfig | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """`model` (eval, unchanged) as it should be exported, and what was done to it.

    The returned info holds `bn_folded` (how many BatchNorms) and `channels_last` (the layout
    kept), with the timings behind the layout choice when it was measured.
    """
    from autoprune.export.program import fold_batchnorm

    cfg = cfg or FastExportConfig()
    model = model.eval()
    info: dict[str, Any] = {"bn_folded": 0, "channels_last": False}
    if cfg.fold_bn:
        model, info["bn_folded"] = fold_batchnorm(model, input_size)
    wanted = cfg.channels_last
    if wanted is False or not _has_images(model) or len(input_size) != 3:
        return model, info
    other = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.rand(cfg.batch, *input_size, generator=torch.Generator().manual_seed(0))
    xl = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = model(x), other(xl)
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        return model, info
    if not _agrees(want, got):
        return model, info
    if wanted is None:
        fns = [no_grad_call(model, x), no_grad_call(other, xl)]
        default_s, last_s = thread_seconds(fns, cfg.rounds)
        info["layout_seconds"] = {"default": default_s, "channels_last": last_s}
        wanted = last_s < cfg.margin * default_s
    if wanted:
        info["channels_last"] = True
        return other, info
    return model, info
