"""What the built-in backends share besides the loop: schedules, top-k choice, dtypes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

MOMENTUM = 0.9  # SGD momentum of both phases: the value every pruning paper here trains with


def cubic_keep(size: int, keep: int, progress: float) -> int:
    """Zhu & Gupta's cubic schedule: elements kept after `progress` (0..1) of the pruning ramp."""
    p = min(max(progress, 0.0), 1.0)
    return round(keep + (size - keep) * (1.0 - p) ** 3)


def top_keep(scores: Tensor, keep: int) -> Tensor:
    """Indices of the `keep` largest scores, ascending; ties go to the lower index."""
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[: int(keep)]).values


def param_dtype(model: nn.Module) -> torch.dtype:
    """The dtype masks and gates are made in: that of the model's parameters."""
    return next(model.parameters()).dtype
