"""The default backend: trainable gates per element, reweighted L1 and incremental regularisation.

Every prunable element (a channel of a channel unit, one weight of a weight unit) gets an
auxiliary parameter `a`; the element is on while `a > 0` and the mask's gradient passes straight
through to `a` (AutoPrune, Xiao et al. 2019), so the loss itself says which elements it needs and
a masked element can come back. The gates are pushed down by a reweighted L1 term (weights
1 / (|a| + eps), refreshed every few hundred steps, as in the reweighted unified framework) whose
per-element factors grow only for elements ranked below their unit's current target (IncReg,
Wang et al. 2019); the targets follow a cubic ramp from dense to `keep`. At the end the `keep`
highest gates of each unit win and the loop fine-tunes with that mask fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.loop import MOMENTUM, MaskTrainer, cubic_keep, top_keep
from autoprune.masking import ParamKey, UnitMap


@dataclass
class ReweightedOptions:
    # SGD step of the gates' loss term. At the weights' lr a gate moves as |w| would; 5x that (at
    # lr 0.01) weighs where the loss pushes a weight over its size (movement pruning), which
    # measured better on LeNet-5 / MNIST. 0: the weights' lr.
    aux_lr: float = 0.05
    reg_rate: float = 0.01  # regulariser step per unit of factor: a gate at 1 closes in ~100 steps
    refreshes: int = 50  # refreshes of the reweighting and IncReg factors over the ramp
    increment: float = 1.0  # IncReg: factor added per refresh to each element below its target
    eps: float = 0.1  # reweighting 1 / (|a| + eps): small gates are pushed hardest
    base: float = 0.0  # reweighted L1 on every gate, on top of IncReg (0: IncReg alone)
    ramp: float = 0.6  # the targets reach `keep` at this fraction of the pruning phase
    clamp: float = 3.0  # gates live in [-1, clamp]
    # Masked weights still get their gradient (Lin et al. 2020) while the targets ramp down. Off by
    # default: a masked weight drifts without bound and a gate that reopens lets it into the
    # network at once (LeNet-5 at 71x diverged to NaN, after the ramp and, distilling, within it).
    feedback: bool = False


_MAX_FACTOR = 10.0  # IncReg factors stop growing here: the gate is at the floor long before


class _StraightThroughStep(torch.autograd.Function):
    """Forward: step(a) = 1 where a > 0; backward: the gradient passes unchanged (AutoPrune)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor) -> Tensor:
        return (a > 0).to(a.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class _GatedWeight(torch.autograd.Function):
    """w * m, with AutoPrune's sign-consistent gate gradient dL/dm = dL/dw' * sign(w) / scale.

    Summed over steps, SGD on the gate then follows the change |w| would make under the same
    loss (in units of the layer's mean magnitude), so a gate ranks elements by a magnitude that
    keeps learning while masked; with `feedback` the masked weights themselves learn too.
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor, m: Tensor, inv_scale: float, feedback: bool) -> Tensor:
        ctx.save_for_backward(w, m)
        ctx.inv_scale, ctx.feedback = inv_scale, feedback
        return w * m

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        w, m = ctx.saved_tensors
        grad_w = grad if ctx.feedback else grad * m
        grad_m = torch.sign(w).mul_(grad)
        if grad_m.shape != m.shape:  # a channel mask broadcasts over its rows
            dims = [d for d in range(grad_m.dim()) if m.shape[d] == 1]
            grad_m = grad_m.sum(dim=dims, keepdim=True)
        return grad_w, grad_m.mul_(ctx.inv_scale), None, None


class _Gates:
    """The auxiliary parameters of every unit and their straight-through 0/1 masks."""

    def __init__(
        self, aux: list[Tensor], scale: list[float], umap: UnitMap, feedback: bool
    ) -> None:
        self.aux, self.scale, self.umap, self.feedback = aux, scale, umap, feedback

    def vector(self, u: int) -> Tensor:
        return _StraightThroughStep.apply(self.aux[u])  # type: ignore[no-any-return]


class GateMask(nn.Module):
    """Parametrization w -> w * step(a) on the slices of `key`; the gates live outside the model."""

    def __init__(self, gates: _Gates, key: ParamKey) -> None:
        super().__init__()
        self._gates = gates  # a plain object: the gates are not model parameters
        self.key = key
        self.units = gates.umap.units_of(key)

    def forward(self, w: Tensor) -> Tensor:
        g = self._gates
        m = g.umap.mask(self.key, {u: g.vector(u) for u in self.units}).to(w.dtype)
        inv_scale = 1.0 / g.scale[self.units[0]]  # slices of one parameter share a unit in practice
        return _GatedWeight.apply(w, m, inv_scale, g.feedback)


@BACKENDS.register("reweighted")
class Reweighted(MaskTrainer):
    name = "reweighted"
    Options = ReweightedOptions
    quantise_while_pruning = True  # with bits, the gates learn on fake-quantised weights (QAT)

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        self.opts: ReweightedOptions = opts
        self.keep = keep
        # Gates start on at each element's magnitude in units of the unit's mean magnitude.
        scores = umap.reduce({k: v.abs() for k, v in umap.parameters(model).items()})
        aux, scale = [], []
        for s in scores:
            scale.append(float(s.mean().clamp_min(1e-12)))
            aux.append((s / scale[-1]).float().clamp(1e-3, opts.clamp).requires_grad_(True))
        self.gates = _Gates(aux, scale, umap, opts.feedback)
        # Plain SGD with the weights' momentum, so a gate integrates what |w| would do (fused:
        # one pass over the gates per step keeps the step overhead small on CPUs).
        self.aux_opt = torch.optim.SGD(aux, lr=opts.aux_lr or cfg.lr, momentum=MOMENTUM, fused=True)
        self.factor = [torch.zeros_like(a) for a in aux]
        self.coef = [torch.zeros_like(a) for a in aux]  # (factor + base) / (|a| + eps), per refresh
        ramp_steps = opts.ramp * self.total_steps
        self.refresh_every = max(1, int(ramp_steps / max(1, opts.refreshes)))
        self.ramp_steps = ramp_steps
        for key in umap.slices:
            parametrize.register_parametrization(
                model.get_submodule(key[0]), key[1], GateMask(self.gates, key)
            )
        self._refresh(0)

    def _refresh(self, step: int) -> None:
        progress = step / max(1.0, self.opts.ramp * self.total_steps)
        for u, a in enumerate(self.gates.aux):
            a = a.detach()
            target = cubic_keep(a.numel(), self.keep[u], progress)
            # Below the target-th largest gate (a selection, not a sort: this runs every refresh).
            below = a < torch.kthvalue(a, a.numel() - target + 1).values
            inc = self.opts.increment
            # Grow below the target, relax inside it: an element comes back only by outranking
            # one inside the target.
            f = self.factor[u]
            f.copy_(torch.where(below, (f + inc).clamp_max(_MAX_FACTOR), (f - inc).clamp_min(0.0)))
            reweight = (1.0 + self.opts.eps) / (a.abs() + self.opts.eps)
            self.coef[u] = (f + self.opts.base) * reweight

    def after_step(self, step: int) -> None:
        self.aux_opt.step()  # the loss's say
        self.aux_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for a, coef in zip(self.gates.aux, self.coef, strict=True):
                # The regulariser, reweighted L1 of each gate's height above the floor -1, as a
                # decoupled step (as AdamW decays weights): it moves a gate at a predictable rate
                # whatever the scale of its loss gradient, and it goes on below zero, so a closed
                # gate rests far from the threshold instead of flickering across it.
                a.add_(coef, alpha=-self.opts.reg_rate).clamp_(-1.0, self.opts.clamp)
        if (step + 1) % self.refresh_every == 0:
            self._refresh(step + 1)
        self.gates.feedback = self.opts.feedback and step + 1 < self.ramp_steps

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return [top_keep(a.detach(), k) for a, k in zip(self.gates.aux, self.keep, strict=True)]

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return {"gates_on": [int((a > 0).sum()) for a in self.gates.aux],
                "mean_factor": [float(f.mean()) for f in self.factor]}  # fmt: skip

    def state(self) -> dict[str, Any]:
        return {"aux": [a.detach().clone() for a in self.gates.aux], "aux_opt": self.aux_opt.state_dict(),
                "factor": self.factor, "coef": self.coef}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for a, saved in zip(self.gates.aux, state["aux"], strict=True):
                a.copy_(saved)
        self.aux_opt.load_state_dict(state["aux_opt"])
        self.factor = [t.clone() for t in state["factor"]]
        self.coef = [t.clone() for t in state["coef"]]
