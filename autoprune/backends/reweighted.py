"""The default backend: trainable gates per element, reweighted L1 and incremental regularisation.

Every prunable element (a channel of a channel unit, one weight of a weight unit) gets an
auxiliary parameter `a`, a gate whose mask gradient passes straight through to `a` (AutoPrune,
Xiao et al. 2019), so the loss itself says which elements it needs and a masked element can come
back. The gates are pushed down by a reweighted L1 term (weights 1 / (|a| + eps), refreshed every
few dozen steps, as in the reweighted unified framework) whose per-element factors grow only for
elements ranked below their unit's current target (IncReg, Wang et al. 2019); the targets follow
a cubic ramp from dense to `keep`. By default (`sync`) the mask is redrawn at each refresh as the
target-highest gates and held in between, and the weights still on but outside the final `keep`
shrink over the ramp (`shrink`), so an element is small when it is cut. At the end the `keep`
highest gates of each unit win and the loop fine-tunes with that mask fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import MOMENTUM, cubic_keep, top_keep
from autoprune.backends.loop import MaskTrainer
from autoprune.graph.masking import ParamKey, UnitMap


@dataclass
class ReweightedOptions:
    # SGD step of the gates' loss term; 0: the weights' lr, at which a gate moves as |w| would.
    # More weighs where the loss pushes a weight over its size (movement pruning): 5x at lr 0.01
    # measured worse on LeNet-5 / MNIST at 71x with `sync` and `shrink` (99.17% vs 99.24%).
    aux_lr: float = 0.0
    reg_rate: float = 0.01  # regulariser step per unit of factor: a gate at 1 closes in ~100 steps
    refreshes: int = 50  # refreshes of the reweighting and IncReg factors over the ramp
    increment: float = 1.0  # IncReg: factor added per refresh to each element below its target
    eps: float = 0.1  # reweighting 1 / (|a| + eps): small gates are pushed hardest
    base: float = 0.0  # reweighted L1 on every gate, on top of IncReg (0: IncReg alone)
    ramp: float = 0.6  # the targets reach `keep` at this fraction of the pruning phase
    # Gates live in [-1, clamp] without `sync` (a gate far above zero would take long to close).
    # With `sync` there is no ceiling: the mask is a ranking and ties at a ceiling rank at random.
    clamp: float = 3.0
    # Masked weights still get their gradient (Lin et al. 2020) while the targets ramp down. Off by
    # default: a masked weight drifts without bound and a gate that reopens lets it into the
    # network at once (LeNet-5 at 71x diverged to NaN, after the ramp and, distilling, within it).
    feedback: bool = False
    # The mask is redrawn at each refresh as the target-highest gates of each unit and held in
    # between (the gates go on learning); it follows the schedule exactly. Off: step(a) at every
    # step, whose count lags the schedule (fc1 at 92% of the ramp: 9,879 on for a target of
    # 3,803) and then prunes in a rush at the end of the ramp (LeNet-5 at 71x: training loss
    # 0.036 vs magnitude pruning's 0.022 after a 3-epoch prune).
    sync: bool = True
    # IncReg on the weights too: while the targets ramp down, each element that is still on but
    # ranked below its unit's final `keep` shrinks at a rate growing linearly over the ramp, so
    # it is already small when it is cut. The value is the total in e-folds (3: to e^-3 = 5% of
    # its size) for an element doomed all ramp long. 0: off. On LeNet-5 / MNIST at 71x, 3 cut the
    # training loss after a 3-epoch prune + 1-epoch fine-tune from 0.0194 to 0.0166.
    shrink: float = 3.0


_MAX_FACTOR = 10.0  # IncReg factors stop growing here: the gate is at the floor long before


class _GatedWeight(torch.autograd.Function):
    """w * m for one parameter, with AutoPrune's sign-consistent gate gradient.

    dL/dm = dL/dw' * sign(w) / scale, passed straight through the 0/1 mask to the gates of the
    parameter's units (`UnitMap.mask_grad`). Summed over steps, SGD on a gate then follows the
    change |w| would make under the same loss (in units of the layer's mean magnitude), so a gate
    ranks elements by a magnitude that keeps learning while masked; with `feedback` the masked
    weights themselves learn too. The mask is a constant here (drawn from the gates outside the
    graph), so a step builds no per-element graph between the gates and the weight.
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor, m: Tensor, gate: GateMask, *aux: Tensor) -> Tensor:
        ctx.save_for_backward(w, m)
        ctx.gate, ctx.feedback = gate, gate.gates.feedback
        return w * m

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        w, m = ctx.saved_tensors
        gate: GateMask = ctx.gate
        grad_w = grad if ctx.feedback else grad * m
        grad_m = torch.sign(w).mul_(grad)
        if grad_m.shape != m.shape:  # a channel mask broadcasts over its rows
            dims = [d for d in range(grad_m.dim()) if m.shape[d] == 1]
            grad_m = grad_m.sum(dim=dims, keepdim=True)
        grads = gate.gates.umap.mask_grad(gate.key, grad_m.mul_(gate.inv_scale))
        aux = [grads[u].to(gate.gates.aux[u].dtype) for u in gate.units]
        return grad_w, None, None, *aux


class _Gates:
    """The auxiliary parameters of every unit and their 0/1 masks (straight-through to `aux`)."""

    def __init__(
        self, aux: list[Tensor], scale: list[float], umap: UnitMap, feedback: bool
    ) -> None:
        self.aux, self.scale, self.umap, self.feedback = aux, scale, umap, feedback
        self._held: list[Tensor] | None = None
        self._masks: dict[ParamKey, Tensor] = {}  # per parameter, while `held` stands

    @property
    def held(self) -> list[Tensor] | None:
        """With `sync`: the masks drawn at the last refresh."""
        return self._held

    @held.setter
    def held(self, held: list[Tensor] | None) -> None:
        self._held, self._masks = held, {}

    def on(self) -> list[Tensor]:
        if self.held is not None:
            return self.held
        return [a.detach() > 0 for a in self.aux]

    def mask(self, key: ParamKey, like: Tensor) -> Tensor:
        """The 0/1 mask of parameter `key` in the dtype of `like`: expanded once per refresh
        while the mask is held (without `sync` the step of the gates changes every step)."""
        m = self._masks.get(key)
        if m is None or m.dtype != like.dtype or m.device != like.device:
            with torch.no_grad():
                vectors = [o.to(a.dtype) for o, a in zip(self.on(), self.aux, strict=True)]
                m = self.umap.mask(key, vectors).to(like)
            if self.held is not None:
                self._masks[key] = m
        return m

    def hold(self, targets: list[int]) -> None:
        """Hold the `targets[u]` highest gates of each unit on until the next call."""
        held = []
        for a, k in zip(self.aux, targets, strict=True):
            on = torch.zeros(a.shape, dtype=torch.bool, device=a.device)
            on[top_keep(a.detach(), k)] = True
            held.append(on)
        self.held = held


class GateMask(nn.Module):
    """Parametrization w -> w * step(a) on the slices of `key`; the gates live outside the model."""

    def __init__(self, gates: _Gates, key: ParamKey) -> None:
        super().__init__()
        self._gates = gates  # a plain object: the gates are not model parameters
        self.key = key
        self.units = gates.umap.units_of(key)
        self.inv_scale = 1.0 / gates.scale[self.units[0]]  # a parameter's slices share a unit

    @property
    def gates(self) -> _Gates:
        return self._gates

    def forward(self, w: Tensor) -> Tensor:
        g = self._gates
        return _GatedWeight.apply(w, g.mask(self.key, w), self, *(g.aux[u] for u in self.units))


@BACKENDS.register("reweighted")
class Reweighted(MaskTrainer):
    Options = ReweightedOptions
    quantise_while_pruning = True  # with bits, the gates learn on fake-quantised weights (QAT)

    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        self.opts: ReweightedOptions = opts
        self.keep = keep
        # Gates start on at each element's magnitude in units of the unit's mean magnitude.
        self.ceiling = None if opts.sync else opts.clamp
        scores = umap.reduce({k: v.abs() for k, v in umap.parameters(model).items()})
        aux, scale = [], []
        for s in scores:
            scale.append(float(s.mean().clamp_min(1e-12)))
            aux.append((s / scale[-1]).float().clamp(1e-3, self.ceiling).requires_grad_(True))
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
        self.model = model
        self.doomed = [torch.zeros_like(a) for a in aux]  # on, but outside the final keep
        self.doomed_masks: dict[ParamKey, Tensor] = {}  # `doomed` on each parameter, per refresh
        self._refresh(0)

    def _targets(self, step: int) -> list[int]:
        progress = step / max(1.0, self.ramp_steps)
        sizes = [a.numel() for a in self.gates.aux]
        return [cubic_keep(n, k, progress) for n, k in zip(sizes, self.keep, strict=True)]

    def _refresh(self, step: int) -> None:
        targets = self._targets(step)
        for u, (a, target) in enumerate(zip(self.gates.aux, targets, strict=True)):
            a = a.detach()
            # Below the target-th largest gate (a selection, not a sort: this runs every refresh).
            below = a < torch.kthvalue(a, a.numel() - target + 1).values
            inc = self.opts.increment
            # Grow below the target, relax inside it: an element comes back only by outranking
            # one inside the target.
            f = self.factor[u]
            f.copy_(torch.where(below, (f + inc).clamp_max(_MAX_FACTOR), (f - inc).clamp_min(0.0)))
            reweight = (1.0 + self.opts.eps) / (a.abs() + self.opts.eps)
            self.coef[u] = (f + self.opts.base) * reweight
        if self.opts.sync:
            self.gates.hold(targets)
        if self.opts.shrink:
            for u, (a, on) in enumerate(zip(self.gates.aux, self.gates.on(), strict=True)):
                final = torch.zeros_like(on)
                final[top_keep(a.detach(), self.keep[u])] = True
                self.doomed[u] = (on & ~final).to(a.dtype)
            self._expand_doomed()

    def _expand_doomed(self) -> None:
        # once per refresh, not per step: `_shrink` runs on every step of the ramp
        self.doomed_masks = {
            key: self.umap.mask(key, self.doomed, fill=0.0) for key in self.umap.slices
        }

    def after_step(self, step: int) -> None:
        self.aux_opt.step()  # the loss's say
        self.aux_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            # The regulariser, reweighted L1 of each gate's height above the floor -1, as a
            # decoupled step (as AdamW decays weights): it moves a gate at a predictable rate
            # whatever the scale of its loss gradient, and it goes on below zero, so a closed
            # gate rests far from the threshold instead of flickering across it. (One call over
            # every unit's gates: the per-unit loop was a measurable share of a small step.)
            torch._foreach_add_(self.gates.aux, self.coef, alpha=-self.opts.reg_rate)
            torch._foreach_clamp_min_(self.gates.aux, -1.0)
            if self.ceiling is not None:
                torch._foreach_clamp_max_(self.gates.aux, self.ceiling)
        if self.opts.shrink and step < self.ramp_steps:
            self._shrink(2.0 * self.opts.shrink * step / self.ramp_steps**2)
        if (step + 1) % self.refresh_every == 0:
            self._refresh(step + 1)
        self.gates.feedback = self.opts.feedback and step + 1 < self.ramp_steps

    @torch.no_grad()
    def _shrink(self, rate: float) -> None:
        """Scale the weights of the doomed elements by (1 - rate)."""
        for key, doomed in self.doomed_masks.items():
            raw = getattr(self.model.get_submodule(key[0]).parametrizations, key[1]).original
            raw.mul_(1.0 - rate * doomed.to(raw.dtype))

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return [top_keep(a.detach(), k) for a, k in zip(self.gates.aux, self.keep, strict=True)]

    def trainables(self) -> list[Tensor]:
        return list(self.gates.aux)  # aux_opt steps them in after_step

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        g = self.gates
        on = [int(o.sum()) for o in g.on()]
        return {"gates_on": on, "mean_factor": [float(f.mean()) for f in self.factor]}

    def state(self) -> dict[str, Any]:
        aux = [a.detach().clone() for a in self.gates.aux]
        return {"aux": aux, "aux_opt": self.aux_opt.state_dict(), "factor": self.factor,
                "coef": self.coef, "held": self.gates.held, "doomed": self.doomed}  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for a, saved in zip(self.gates.aux, state["aux"], strict=True):
                a.copy_(saved)
        self.aux_opt.load_state_dict(state["aux_opt"])
        self.factor = [t.clone() for t in state["factor"]]
        self.coef = [t.clone() for t in state["coef"]]
        self.gates.held = state["held"]
        self.doomed = [t.clone() for t in state["doomed"]]
        if self.opts.shrink:
            self._expand_doomed()
