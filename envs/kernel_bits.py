"""KernelBits: an episode sets, layer by layer, a keep ratio and bit widths under every budget.

Hierarchical as in AutoQ (Lou et al. 2019): each step is one conv/linear layer, in execution
order. Its high-level action picks the keep ratio of the units that layer describes (LayerBudget's
units; a layer that describes none, like the classifier, only gets bits), the layer's activation
bits and its mean weight bits; its low-level action spreads that mean over the layer's kernels by
importance (`spread_bits`: kernels at higher importance quantiles get more bits, the mean held).
One agent emits both levels as one 4-vector in [0, 1]: keep, activation bits, mean weight bits,
spread.

Budgets are enforced as in LayerBudget, with bits: the action wall clips each choice so that the
layers still to come, at minimum keep and minimum bits, can meet every budget (keep first, with
this layer at its smallest widths; then activation bits; then the weight-bit mean, by bisection).
The finished allocation therefore meets every budget at its widths; by default its keeps then go
through the shared projection with the cost model of those widths. The reward, at the last step,
is the evaluator's accuracy of the fake-quantised allocation (or AMC's -error x log(MACs)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.cost.kernel_counts import KernelCounts, priced
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.envs.layer_budget import (
    Reward,
    budget_features,
    checked_limits,
    episode_reward,
    largest_fitting,
    layer_shapes,
    unit_layers,
)
from autoprune.errors import BudgetError, UsageError
from autoprune.quant.bits import BIT_CHOICES, FLOAT_BITS, BitAllocation

STATIC_FEATURES = 9  # index, is_conv, in, out, kernel, positions, layer MACs, weights, owns units
DYNAMIC_FEATURES = 8  # MACs removed, still removable, previous action (4), keep floor, keep wall
ACTION = ("keep", "act_bits", "weight_bits", "spread")
BISECTION_STEPS = 12  # of the weight-bit mean: (8 - 2) / 2^12 bits is far below one choice step


class KernelBitsEnv(gym.Env[np.ndarray, np.ndarray]):
    """One episode allocates keeps and bits for every layer of `cost_model` under `limits`.

    `evaluate(keep, bits=BitAllocation)` scores an allocation (search.base.Evaluator); it is
    called once per episode, at the end. `importance` gives each layer's kernels an importance
    (default: all equal); `kernel_counts` prices allocations exactly (autoprune.cost.kernel_counts;
    default: `CostModel.with_bits`'s estimate); `weight_bits` and `act_bits` the widths to choose
    from (one activation width fixes it; 32: float). `info` of every step holds the layer, its
    widths and walls; the last step's adds the allocation, bits, costs and accuracy.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's own annotation)

    def __init__(
        self,
        cost_model: CostModel,
        limits: Mapping[str, float],
        evaluate: Callable[..., float],
        *,
        weight_bits: Sequence[int] = BIT_CHOICES,
        act_bits: Sequence[int] = (FLOAT_BITS,),
        importance: Mapping[str, np.ndarray] | None = None,
        kernel_counts: KernelCounts | None = None,
        projection: ProjectionConfig | None = None,
        reward: Reward = "accuracy",
        project_final: bool = True,
    ) -> None:
        self.limits = checked_limits(cost_model, limits, reward, "KernelBits")
        self.cost_model, self.evaluate = cost_model, evaluate
        self.kernel_counts = kernel_counts
        if not weight_bits or not act_bits:
            raise UsageError("KernelBits needs at least one weight and one activation width")
        self.weight_choices = tuple(sorted(set(weight_bits)))
        self.act_choices = tuple(sorted(set(act_bits)))
        self.projection = projection or ProjectionConfig()
        self.reward_kind, self.project_final = reward, project_final
        graph = cost_model.graph
        self.layers = graph.layers
        self.n = len(self.layers)
        self.importance = {
            lay.name: np.asarray(
                importance[lay.name] if importance else np.ones(lay.out_channels), np.float64
            )
            for lay in self.layers
        }
        for lay in self.layers:
            if self.importance[lay.name].shape != (lay.out_channels,):
                raise UsageError(
                    f"importance of layer {lay.name!r} has shape {self.importance[lay.name].shape};"
                    f" give one value per kernel ({lay.out_channels})"
                )
        self.sizes = cost_model.sizes.astype(np.int64)
        self.min_keep = min_keeps(self.sizes, self.projection)
        owner = np.array(unit_layers(graph))
        self.owned = [np.flatnonzero(owner == i) for i in range(self.n)]
        self._reset_state()
        if not self._fits(self.min_keep, self._bits()):
            costs = {m: self._model(self._bits()).metric(m, self.min_keep) for m in self.limits}
            raise BudgetError(
                f"no allocation meets {self.limits} at the smallest widths "
                f"({self.weight_choices[0]}-bit weights, {self.act_choices[0]}-bit activations); "
                f"the smallest model costs {costs}"
            )
        self._dense = {
            m: cost_model.metric(m, self.sizes) for m in {"macs", "params", *self.limits}
        }
        # Budgets are shown against the dense model at the widest widths: a size budget of a few
        # KB is a vanishing share of the float model, but not of the 8-bit one.
        widest = self._model(
            BitAllocation.uniform(graph, self.weight_choices[-1], self.act_choices[-1])
        )
        self._scale = {m: widest.metric(m, self.sizes) for m in self.limits}
        self._static = self._static_features()
        dim = STATIC_FEATURES + DYNAMIC_FEATURES + 2 * len(self.limits)
        self.observation_space = spaces.Box(0.0, 1.0, (dim,), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (len(ACTION),), np.float32)

    # --- state -------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._t = 0
        self._keep = self.min_keep.copy()  # undecided units sit at their minimum
        self._weight = {
            lay.name: (self.weight_choices[0],) * lay.out_channels for lay in self.layers
        }
        self._act = {lay.name: self.act_choices[0] for lay in self.layers}
        self._prev = np.ones(len(ACTION))

    def _bits(self) -> BitAllocation:
        """Decided layers as decided, the rest at the smallest widths."""
        return BitAllocation(dict(self._weight), dict(self._act))

    def _model(self, bits: BitAllocation) -> CostModel:
        if self.kernel_counts is None:
            return self.cost_model.with_bits(bits)
        return priced(self.cost_model, bits, self.kernel_counts)

    def _fits(self, keep: np.ndarray, bits: BitAllocation) -> bool:
        return self._model(bits).fits(keep, self.limits)

    # --- features ----------------------------------------------------------------------------
    def _static_features(self) -> np.ndarray:
        """Shape and dense cost of every layer, each column scaled by its largest value."""
        lays = self.layers
        index = np.arange(self.n, dtype=np.float64)[:, None] / max(self.n - 1, 1)
        costs = np.array([[lay.macs, lay.weights] for lay in lays], dtype=np.float64)
        owns = np.array([[len(o) > 0] for o in self.owned], dtype=np.float64)
        table = np.hstack([index, layer_shapes(self.cost_model.graph), costs, owns])
        return table / np.maximum(table.max(axis=0), 1e-12)

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.n - 1)
        bits = self._bits()
        dense_rest = self._keep.copy()
        undecided = np.concatenate(self.owned[self._t :]) if self._t < self.n else np.array([], int)
        dense_rest[undecided.astype(np.int64)] = self.sizes[undecided.astype(np.int64)]
        macs = self._dense["macs"]
        cur = self.cost_model.metric("macs", dense_rest)
        removable = cur - self.cost_model.metric("macs", self._keep)
        units = self.owned[t]
        floor = wall = 1.0
        if len(units) and self._t < self.n:
            u = int(units[0])
            floor = self.min_keep[u] / self.sizes[u]
            wall = self._keep_wall(u, bits) / self.sizes[u]
        dynamic = [(macs - cur) / macs, removable / macs, *self._prev, floor, wall]
        budgets = budget_features(self.limits, self._scale, self._model(bits), self._keep)
        obs = np.concatenate([self._static[t], dynamic, budgets])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # --- the action walls --------------------------------------------------------------------
    def _keep_wall(self, u: int, bits: BitAllocation) -> int:
        """The largest keep of unit u with which, at `bits`, every budget can still be met."""
        k = self._keep.copy()

        def fits(keep: int) -> bool:
            k[u] = keep
            return self._fits(k, bits)

        return largest_fitting(int(self.min_keep[u]), int(self.sizes[u]), fits)

    def _act_bits(self, name: str, proposed: int) -> int:
        """The widest activation choice up to `proposed` that leaves every budget reachable."""
        choices = [a for a in self.act_choices if a <= proposed] or [self.act_choices[0]]
        for a in reversed(choices):
            trial = self._bits()
            trial.act[name] = a
            if self._fits(self._keep, trial):
                return a
        return self.act_choices[0]

    def _weight_bits(self, name: str, mean: float, spread: float) -> tuple[int, ...]:
        """Kernel widths spread around the largest mean up to `mean` that keeps every budget
        reachable (bisection over the mean; the smallest mean fits by induction)."""
        imp, choices = self.importance[name], self.weight_choices

        def at(m: float) -> tuple[int, ...]:
            return spread_bits(imp, m, spread, choices)

        def fits(m: float) -> bool:
            trial = self._bits()
            trial.weight[name] = at(m)
            return self._fits(self._keep, trial)

        lo, hi = float(choices[0]), float(np.clip(mean, choices[0], choices[-1]))
        if fits(hi):
            return at(hi)
        for _ in range(BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return at(lo)

    # --- gymnasium API -----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_state()
        return self._observation(), {"layer": self.layers[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.n:
            raise RuntimeError("the episode has ended; call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)[: len(ACTION)]
        a = np.clip(np.where(np.isfinite(a), a, 1.0), 0.0, 1.0)
        t, lay = self._t, self.layers[self._t]
        lo = self.projection.min_ratio
        ratio = lo + a[0] * (1.0 - lo)
        walls = {}
        for u in self.owned[t]:  # keeps first, with this layer still at its smallest widths
            wall = self._keep_wall(int(u), self._bits())
            self._keep[u] = int(np.clip(round(ratio * self.sizes[u]), self.min_keep[u], wall))
            walls[self.cost_model.graph.units[u].name] = wall
        acts = self.act_choices
        self._act[lay.name] = self._act_bits(lay.name, acts[round(a[1] * (len(acts) - 1))])
        w_lo, w_hi = self.weight_choices[0], self.weight_choices[-1]
        mean = w_lo + a[2] * (w_hi - w_lo)
        self._weight[lay.name] = self._weight_bits(lay.name, mean, float(a[3]))
        self._prev = a
        self._t += 1
        info: dict[str, Any] = {
            "layer": lay.name,
            "keep": {
                self.cost_model.graph.units[u].name: int(self._keep[u]) for u in self.owned[t]
            },
            "wall": walls,
            "act_bits": self._act[lay.name],
            "mean_weight_bits": float(np.mean(self._weight[lay.name])),
        }
        if self._t < self.n:
            return self._observation(), 0.0, False, False, info
        return self._finish(info)

    def _finish(self, info: dict[str, Any]) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        bits = self._bits()
        model = self._model(bits)
        allocation = self._keep.copy()
        if self.project_final:
            allocation = project(allocation / self.sizes, model, self.limits, self.projection)
        accuracy = float(self.evaluate(allocation, bits=bits))
        costs = {m: model.metric(m, allocation) for m in self._dense}
        info.update(
            allocation=allocation, proposed=self._keep.copy(), bits=bits, costs=costs,
            accuracy=accuracy,
        )  # fmt: skip
        reward = episode_reward(self.reward_kind, accuracy, costs["macs"])
        return self._observation(), reward, True, False, info


def spread_bits(
    importance: np.ndarray, mean: float, spread: float, choices: Sequence[int]
) -> tuple[int, ...]:
    """Kernel widths from `choices` whose mean is at most `mean`, the important kernels the widest.

    The low-level action of KernelBits: kernel i at importance quantile q_i (0: least, 1: most
    important) aims at mean + spread x (max - min choice) x (q_i - 1/2), rounded to the nearest
    choice; then, to hold the mean, kernels step down one choice at a time (least important first)
    while the mean is too high, and up (most important first) while it stays within `mean`.
    """
    ch = np.asarray(sorted(choices), dtype=np.float64)
    n = len(importance)
    lo, hi = float(ch[0]), float(ch[-1])
    mean = float(np.clip(mean, lo, hi))
    order = np.argsort(np.asarray(importance, dtype=np.float64), kind="stable")  # least first
    q = np.empty(n)
    q[order] = (np.arange(n) + 0.5) / n
    aim = mean + float(np.clip(spread, 0.0, 1.0)) * (hi - lo) * (q - 0.5)
    idx = np.abs(aim[:, None] - ch[None, :]).argmin(axis=1)
    budget = mean * n + 1e-9
    # One choice step per kernel per round keeps the widths close together; the order (least
    # important first down, most important first up) keeps them sorted by importance.
    while ch[idx].sum() > budget:
        for i in order:
            if idx[i] > 0 and ch[idx].sum() > budget:
                idx[i] -= 1
    changed = True
    while changed:
        changed = False
        for i in order[::-1]:
            if idx[i] + 1 < len(ch) and ch[idx].sum() - ch[idx[i]] + ch[idx[i] + 1] <= budget:
                idx[i] += 1
                changed = True
    return tuple(int(b) for b in ch[idx])
