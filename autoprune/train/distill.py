"""Knowledge distillation from a frozen teacher: the objective a backend may train on."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Distill"]


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation from a frozen teacher (Hinton et al. 2015): the objective becomes
    (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student) at temperature T."""

    teacher: nn.Module
    alpha: float
    temperature: float = 4.0

    def objective(self, logits: Tensor, x: Tensor, ce: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1),
                      log_target=True, reduction="batchmean")  # fmt: skip
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl
