"""Differentiable sparsity allocation (dsa): keep ratios learned by gradient under the budgets.

Every unit's keep ratio is a continuous parameter. Its elements get soft masks from their
importance ranks whose mean is the ratio (search/dsa_masks.py), so the training loss is
differentiable in the ratios; the budgets are differentiable too (autoprune/costs_torch.py).
Each step lowers the loss plus an augmented Lagrangian of every budget (relative violation g,
multiplier lambda), and the multipliers rise by dual ascent while a budget is exceeded, so the
ratios settle where the marginal loss of each unit balances its marginal cost (Ning et al. 2020,
who use ADMM for the same constraint). Weights may train with the masks, on a copy of the model.
The shared projection then rounds the ratios so every budget holds exactly.

The ratios start from the best of the uniform allocation and the heuristics (search/starts.py)
by the evaluator, and that start is returned instead when the evaluator scores dsa's own result
below it. With bits (`SearchProblem.bits`) dsa does not learn widths: it takes those of
`uniform --bits` (the same everywhere) and learns the keep ratios under the budgets at those
widths (the artifact size and BOPs linearised around the starting allocation).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from autoprune.cost.projection import min_keeps
from autoprune.cost.torch_model import TorchCostModel
from autoprune.errors import UsageError
from autoprune.graph.importance import IMPORTANCE, score_units
from autoprune.graph.masking import remove_masks
from autoprune.quant.bits import BitAllocation
from autoprune.search.base import (
    SEARCH_METHODS,
    SearchContext,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
    best_of,
    renumbered,
)
from autoprune.search.dsa_masks import (
    SoftMasks,
    keep_probabilities,
    normalised_ranks,
    straight_through,
)
from autoprune.search.evaluator import accumulate_gradients
from autoprune.search.starts import best_start
from autoprune.train.data import make_loader
from autoprune.train.device import current, on_device

HISTORY_POINTS = 20  # rows of the trajectory kept in the result (metrics.json stays small)


@SEARCH_METHODS.register("dsa")
@dataclass
class DSA(SearchMethod):
    """Gradient descent on per-unit keep ratios through soft masks, budgets by dual ascent."""

    # Learns from training batches; the evaluator picks its start and guards its result (without
    # one it starts from uniform and returns what it learned).
    needs_evaluator = True
    supports_bits = True  # widths as uniform chooses them; keeps learned under them
    steps: int = 200  # optimisation steps (mini-batches); LeNet-5 on MNIST settles in ~150
    batch_size: int = 64  # as informative as 128 on LeNet-5 (same allocations), half the time
    lr: float = 0.02  # Adam on the ratios, cosine-decayed to zero so they settle
    temperature: float = 0.05  # width of the keep-probability ramp over normalised ranks
    rho: float = 10.0  # augmented Lagrangian penalty on relative violations (pulls back at once)
    dual_lr: float = 0.1  # multiplier step per relative violation; small, so it cannot overshoot
    train_weights: bool = False  # also adapt the weights (of a copy) to the masks; slower
    weight_lr: float = 0.01  # SGD with momentum 0.9 on the weights
    sample: bool = True  # straight-through Bernoulli masks; False: the expected (soft) masks
    importance: str = "l1"  # ranks elements within a unit; recomputed while weights train
    rank_every: int = 50

    def __post_init__(self) -> None:
        IMPORTANCE.get(self.importance)
        for name in ("steps", "batch_size", "rank_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"dsa {name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "temperature", "rho", "dual_lr", "weight_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise UsageError(f"dsa {name} must be a positive number, got {value!r}")

    def search(self, problem: SearchProblem) -> SearchResult:
        ctx = problem.context
        if ctx is None:
            raise UsageError("dsa trains through the model: give the SearchProblem a context "
                             "(model, graph, train and val data), as run_search does")  # fmt: skip
        torch.manual_seed(problem.seed)
        model = copy.deepcopy(ctx.model)
        remove_masks(model, bake=True)
        start = best_start(problem)  # its widths are `uniform --bits`'s, the same everywhere
        bits = start.bits
        with on_device(model):  # a copy, trained on the runtime's --device
            ratios, history, multipliers = self._optimise(problem, ctx, model, start)
        keep = problem.project(ratios, bits)
        score = problem.score(keep, bits) if problem.evaluate is not None else None
        info: dict[str, Any] = {
            "ratios": [float(r) for r in ratios], "multipliers": multipliers,
            "options": dataclasses.asdict(self), "history": history, "start": start.source,
        }  # fmt: skip
        trial = Trial(0, keep, score, problem.costs(keep, bits), bits)
        trials = [trial, renumbered(start, 1)]
        best = best_of(trials) if score is not None and start.score is not None else trial
        info["returned_start"] = best is not trial
        return SearchResult(best.keep, best.score, trials, info, bits=bits)

    def _optimise(
        self,
        problem: SearchProblem,
        ctx: SearchContext,
        model: nn.Module,
        start: Trial,
    ) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, float]]:
        sizes = problem.sizes.astype(np.float64)
        floor = torch.as_tensor(min_keeps(problem.sizes, problem.projection) / sizes)
        bits = start.bits
        alpha = torch.tensor(start.keep / sizes, dtype=torch.float64, requires_grad=True)
        budgets = Budgets(problem, self.rho, self.dual_lr, bits)
        # A short second-moment memory: a burst of budget gradient must not freeze the ratios after.
        opt = torch.optim.Adam([alpha], lr=self.lr, betas=(0.9, 0.9))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / self.steps))
        )
        for p in model.parameters():
            p.requires_grad_(self.train_weights)
        w_opt = (
            torch.optim.SGD(model.parameters(), lr=self.weight_lr, momentum=0.9)
            if self.train_weights
            else None
        )
        device = current().device
        batches = ((x.to(device), y.to(device))
                   for x, y in _cycle(ctx.train, self.batch_size, problem.seed))  # fmt: skip
        gen = torch.Generator().manual_seed(problem.seed)
        soft = SoftMasks(model, ctx.graph)
        history: list[dict[str, Any]] = []
        log_every = max(1, self.steps // HISTORY_POINTS)
        ranks: list[Tensor] = []
        model.train()
        try:
            for step in tqdm(range(self.steps), desc="dsa", disable=not problem.progress):
                if step % self.rank_every == 0 and (step == 0 or self.train_weights):
                    soft.set([None] * len(sizes))  # score the weights themselves, not masked ones
                    ranks = self._ranks(model, ctx, batches)
                    budgets.anchor_at(alpha.detach().numpy())
                probs = [
                    keep_probabilities(r, alpha[u], self.temperature) for u, r in enumerate(ranks)
                ]
                soft.set([straight_through(p, sample=self.sample, generator=gen) for p in probs])
                x, y = next(batches)
                task = nn.functional.cross_entropy(model(x), y)
                penalty, violation = budgets.penalty(alpha)
                opt.zero_grad(set_to_none=True)
                if w_opt is not None:
                    w_opt.zero_grad(set_to_none=True)
                (task + penalty).backward()
                opt.step()
                sched.step()
                if w_opt is not None:
                    w_opt.step()
                with torch.no_grad():
                    alpha.copy_(torch.maximum(alpha.clamp(max=1.0), floor))
                budgets.ascend(violation)
                if step % log_every == 0 or step == self.steps - 1:
                    history.append({"step": step, "loss": float(task.detach()),
                                    "ratios": alpha.detach().tolist(), "violation": violation,
                                    "multipliers": dict(budgets.multipliers)})  # fmt: skip
        finally:
            soft.remove()
        return alpha.detach().numpy().copy(), history, budgets.multipliers

    def _ranks(
        self, model: nn.Module, ctx: SearchContext, batches: Iterator[tuple[Tensor, Tensor]]
    ) -> list[Tensor]:
        if self.importance == "taylor":
            needs = [p for p in model.parameters() if not p.requires_grad]
            for p in needs:
                p.requires_grad_(True)
            accumulate_gradients(model, [next(batches)])
            for p in needs:
                p.requires_grad_(False)
        scores = score_units(model, ctx.graph.units, self.importance)
        return [normalised_ranks(s) for s in scores]


class Budgets:
    """The augmented Lagrangian of every budget, on relative violations g = cost / limit - 1.

    penalty = sum over budgets of (max(0, lam + rho g)^2 - lam^2) / (2 rho), whose gradient is
    max(0, lam + rho g) dg: the rho term answers a violation at once, the multiplier lam holds
    the force the budget needs at equilibrium. `ascend` is the dual step
    lam <- max(0, lam + dual_lr g); with dual_lr = rho (the textbook method of multipliers) lam
    overshoots on noisy gradients and the ratios swing from the budget to the floor and back.
    """

    def __init__(
        self, problem: SearchProblem, rho: float, dual_lr: float, bits: BitAllocation | None = None
    ) -> None:
        self.costs = TorchCostModel(problem.costed(bits))
        self.limits = {m: float(v) for m, v in problem.limits.items()}
        self.sizes = problem.sizes
        self.rho, self.dual_lr = rho, dual_lr
        self.multipliers = dict.fromkeys(self.limits, 0.0)
        self.anchor = problem.sizes.copy()

    def anchor_at(self, ratios: np.ndarray) -> None:
        """Linearise metrics without a closed form (latency) at the nearest integer keeps."""
        self.anchor = np.clip(np.rint(ratios * self.sizes), 1, self.sizes).astype(np.int64)

    def penalty(self, ratios: Tensor) -> tuple[Tensor, dict[str, float]]:
        keep = ratios * torch.as_tensor(self.sizes, dtype=ratios.dtype)
        total = torch.zeros((), dtype=ratios.dtype)
        violation = {}
        for m, limit in self.limits.items():
            g = self.costs.metric(m, keep, self.anchor) / limit - 1.0
            lam = self.multipliers[m]
            total = total + ((lam + self.rho * g).clamp(min=0) ** 2 - lam**2) / (2 * self.rho)
            violation[m] = float(g.detach())
        return total, violation

    def ascend(self, violation: dict[str, float]) -> None:
        for m, g in violation.items():
            self.multipliers[m] = max(0.0, self.multipliers[m] + self.dual_lr * g)


def _cycle(dataset: Any, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Full mini-batches without end, a new shuffle each pass (BatchNorm needs 2+ images)."""
    if len(dataset) < 2:
        raise UsageError(f"dsa needs at least 2 training images, got {len(dataset)}")
    batch_size = min(batch_size, len(dataset))
    epoch = 0
    while True:
        yield from make_loader(
            dataset, batch_size=batch_size, shuffle=True, seed=seed + epoch, drop_last=True
        )
        epoch += 1
