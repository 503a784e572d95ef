"""Half-space projected gradient (HSPG, OTO: Chen et al. 2021) towards exactly `keep` elements.

Every unit element is a zero-invariant group (a channel with all its producer slices, or one
weight). Groups ranked below their unit's target (a cubic ramp from dense to `keep`) are
candidates: they feel a group-lasso pull x_g / ||x_g||, and after each step a candidate whose
new value leaves the half-space {y : y . x_g >= eps ||x_g||^2} is projected to exactly zero and
stays there. The loop then keeps the `keep` largest groups and fine-tunes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import cubic_keep, param_dtype, top_keep
from autoprune.backends.loop import MaskTrainer
from autoprune.errors import UsageError
from autoprune.graph.masking import UnitMap


@dataclass
class HspgOptions:
    lam: float = 0.05  # group-lasso pull, in units of the unit's mean group norm per unit of lr
    epsilon: float = 0.0  # OTO's half-space margin in [0, 1): larger projects more eagerly
    ramp: float = 0.6  # the candidate set reaches size - keep at this fraction of the phase
    refreshes: int = 50  # re-rankings of the candidates over the ramp


@BACKENDS.register("hspg")
class Hspg(MaskTrainer):
    Options = HspgOptions

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        if not 0.0 <= opts.epsilon < 1.0:
            raise UsageError(f"hspg option epsilon={opts.epsilon!r} must be in [0, 1)")
        self.opts: HspgOptions = opts
        self.keep, self.dtype = keep, param_dtype(model)
        self.params = umap.parameters(model)
        norms = self._norms()
        self.mean_norm = [float(n.mean().clamp_min(1e-12)) for n in norms]
        self.zero = [torch.zeros(len(n), dtype=torch.bool, device=n.device) for n in norms]
        self.every = max(1, int(opts.ramp * self.total_steps / max(1, opts.refreshes)))
        self._rank(0)

    def _norms(self) -> list[Tensor]:
        return [
            s.sqrt()
            for s in self.umap.reduce({k: p.detach().square() for k, p in self.params.items()})
        ]

    def _rank(self, step: int) -> None:
        progress = step / max(1.0, self.opts.ramp * self.total_steps)
        self.candidate = []
        for norm, k in zip(self._norms(), self.keep, strict=True):
            top = top_keep(norm, cubic_keep(len(norm), k, progress))
            c = torch.ones(len(norm), dtype=torch.bool, device=norm.device)
            c[top] = False
            self.candidate.append(c)
        self._coef()

    def _coef(self) -> None:
        """Per parameter: the pull lam * mean_norm / ||x_g|| on live candidates, 0 elsewhere."""
        vectors = []
        for u, norm in enumerate(self._norms()):
            live = self.candidate[u] & ~self.zero[u]
            pull = self.opts.lam * self.mean_norm[u] / norm.clamp_min(1e-12)
            vectors.append(torch.where(live, pull, torch.zeros_like(pull)).to(self.dtype))
        self.coef = self.umap.masks(vectors, fill=0.0)
        self.alive = self.umap.masks([(~z).to(self.dtype) for z in self.zero])

    def after_backward(self, step: int) -> None:
        self.before = {k: p.detach().clone() for k, p in self.params.items()}
        for key, p in self.params.items():
            if p.grad is not None:
                p.grad.addcmul_(p.detach(), self.coef[key])

    def after_step(self, step: int) -> None:
        old = self.before
        dots = self.umap.reduce({k: p.detach() * old[k] for k, p in self.params.items()})
        sq = self.umap.reduce({k: v.square() for k, v in old.items()})
        changed = False
        for u, (d, s) in enumerate(zip(dots, sq, strict=True)):
            leaves = self.candidate[u] & ~self.zero[u] & (d < self.opts.epsilon * s)
            if leaves.any():
                self.zero[u] |= leaves
                changed = True
        if changed:
            self._coef()
        with torch.no_grad():
            for key, p in self.params.items():
                p.mul_(self.alive[key])  # projected groups stay exactly zero
        if (step + 1) % self.every == 0:
            self._rank(step + 1)

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return [top_keep(n, k) for n, k in zip(self._norms(), self.keep, strict=True)]

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return {"groups_zero": [int(z.sum()) for z in self.zero]}

    def state(self) -> dict[str, Any]:
        return {"zero": self.zero, "candidate": self.candidate}

    def load_state(self, state: dict[str, Any]) -> None:
        device = next(iter(self.params.values())).device  # resumed states load on the CPU
        self.zero = [t.to(device, copy=True) for t in state["zero"]]
        self.candidate = [t.to(device, copy=True) for t in state["candidate"]]
        self._coef()
