"""Growing regularisation (GReg-1, Wang et al. 2021): an L2 penalty on the elements to prune grows
until they are negligible, so hard pruning at the end removes almost nothing the network uses.

The elements to prune are chosen once, at the start, by the configured importance (magnitude by
default); the penalty on them grows linearly and reaches its ceiling at `ramp` of the pruning
phase. The loop then fixes the mask and fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import param_dtype, top_keep
from autoprune.backends.loop import MaskTrainer
from autoprune.graph.importance import score_units
from autoprune.graph.masking import UnitMap, keep_vectors


@dataclass
class GregOptions:
    ceiling: float = 1.0  # GReg's tau: at lr 0.01 a penalised weight then shrinks 1% per step
    every: int = 10  # steps between growths of the penalty (GReg's K_u)
    ramp: float = 0.6  # the penalty reaches its ceiling at this fraction of the pruning phase


@BACKENDS.register("greg")
class Greg(MaskTrainer):
    Options = GregOptions

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        self.opts: GregOptions = opts
        scores = score_units(model, self.graph.units, cfg.importance)
        self.kept = [top_keep(s, k) for s, k in zip(scores, keep, strict=True)]
        masks = umap.masks(keep_vectors(umap.sizes, self.kept, param_dtype(model)))
        self.params = umap.parameters(model)
        self.pruned = {key: (1.0 - m).to(self.params[key].device) for key, m in masks.items()}
        growths = max(1.0, opts.ramp * self.total_steps / opts.every)
        self.delta = opts.ceiling / growths
        self.penalty_now = 0.0

    def after_backward(self, step: int) -> None:
        if self.penalty_now == 0.0:
            return
        for key, p in self.params.items():
            if p.grad is not None:
                p.grad.addcmul_(p.detach(), self.pruned[key], value=self.penalty_now)

    def after_step(self, step: int) -> None:
        if (step + 1) % self.opts.every == 0:
            self.penalty_now = min(self.opts.ceiling, self.penalty_now + self.delta)

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return self.kept

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            pruned = sum(float((p * self.pruned[k]).square().sum()) for k, p in self.params.items())
            total = sum(float(p.square().sum()) for p in self.params.values())
        return {
            "penalty": self.penalty_now,
            "pruned_norm_share": (pruned / max(total, 1e-12)) ** 0.5,
        }

    def state(self) -> dict[str, Any]:
        return {"penalty": self.penalty_now}

    def load_state(self, state: dict[str, Any]) -> None:
        self.penalty_now = float(state["penalty"])
