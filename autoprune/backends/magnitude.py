"""Gradual magnitude pruning (Zhu & Gupta 2017): the baseline every other backend must beat.

Each unit's mask shrinks on a cubic schedule from dense to `keep`, recomputed every few hundred
steps from the current (masked) weights by the configured importance (magnitude by default), so
a pruned element never returns. The loop then fine-tunes with the final mask fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import cubic_keep, param_dtype, top_keep
from autoprune.backends.loop import MaskTrainer
from autoprune.graph.importance import score_units
from autoprune.graph.masking import UnitMap, apply_masks, keep_vectors


@dataclass
class MagnitudeOptions:
    prune_every: int = 100  # steps between mask updates (Zhu & Gupta's delta t)
    ramp: float = 0.6  # the masks reach `keep` at this fraction of the pruning phase


@BACKENDS.register("magnitude")
class Magnitude(MaskTrainer):
    Options = MagnitudeOptions

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        self.opts: MagnitudeOptions = opts
        self.model, self.keep, self.importance = model, keep, cfg.importance
        self.current = [torch.arange(n) for n in umap.sizes]
        apply_masks(model, umap.masks(keep_vectors(umap.sizes, self.current, param_dtype(model))))
        if self.total_steps == 0:
            self._update(1.0)

    def _update(self, progress: float) -> None:
        scores = score_units(self.model, self.graph.units, self.importance)
        current = []
        for s, k, idx in zip(scores, self.keep, self.current, strict=True):
            s = torch.full_like(s, -torch.inf).index_copy_(0, idx, s[idx])  # pruned stays pruned
            current.append(top_keep(s, cubic_keep(len(s), k, progress)))
        self.current = current
        masks = self.umap.masks(keep_vectors(self.umap.sizes, current, param_dtype(self.model)))
        with torch.no_grad():
            for (mod, pname), m in masks.items():
                getattr(self.model.get_submodule(mod).parametrizations, pname)[0].mask.copy_(m)

    def after_step(self, step: int) -> None:
        if (step + 1) % self.opts.prune_every == 0 or step + 1 == self.total_steps:
            self._update((step + 1) / max(1.0, self.opts.ramp * self.total_steps))

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return self.current

    def state(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state(self, state: dict[str, Any]) -> None:
        self.current = [t.clone() for t in state["current"]]
