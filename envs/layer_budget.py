"""LayerBudget: an episode sets one unit's keep ratio per step, in unit order, under every budget.

The environment of AMC (He et al. 2018) generalised to several budgets at once. Each step shows the
agent an embedding of the current unit (its shape, its MACs and parameters, the MACs removed so
far and still removable, the previous action, the range its action will be clipped to, and each
budget) and takes a keep ratio in [min_ratio, 1]. Before the ratio becomes an integer keep it is
clipped by the action wall: the largest keep for which the units still to come, all at their
minimum keep, can meet every budget (costs are monotone in every keep, so the wall is found by
bisection and is exact). The finished allocation therefore always meets every budget; by default it
is then run through the shared projection, so it is what any other method would get for the same
ratios: as tight as the binding budget allows. The reward, at the last step only, is the
evaluator's accuracy (or AMC's -error x log(MACs)).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps, project
from autoprune.errors import BudgetError, UsageError
from autoprune.graph.units import UnitGraph

Reward = Literal["accuracy", "amc"]
REWARDS: tuple[str, ...] = ("accuracy", "amc")
STATIC_FEATURES = 8  # index, is_conv, in, out, kernel, positions, unit MACs, unit params
DYNAMIC_FEATURES = 5  # MACs removed, MACs still removable, previous action, action floor, wall


class LayerBudgetEnv(gym.Env[np.ndarray, np.ndarray]):
    """One episode allocates every unit of `cost_model` under `limits` (metric -> absolute bound).

    `evaluate` maps integer keeps to a validation accuracy (search.base.Evaluator); it is called
    once per episode, at the end. `info` of every step holds the unit, its keep and the wall; the
    last step's adds the allocation, its costs and its accuracy.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's own annotation)

    def __init__(
        self,
        cost_model: CostModel,
        limits: Mapping[str, float],
        evaluate: Callable[[np.ndarray], float],
        *,
        projection: ProjectionConfig | None = None,
        reward: Reward = "accuracy",
        project_final: bool = True,
    ) -> None:
        self.limits = checked_limits(cost_model, limits, reward, "LayerBudget")
        self.cost_model = cost_model
        self.evaluate = evaluate
        self.projection = projection or ProjectionConfig()
        self.reward_kind = reward
        self.project_final = project_final
        self.sizes = cost_model.sizes.astype(np.int64)
        self.min_keep = min_keeps(self.sizes, self.projection)
        if not self._fits(self.min_keep):
            costs = {m: cost_model.metric(m, self.min_keep) for m in self.limits}
            raise BudgetError(
                f"no allocation meets {self.limits}; the smallest model costs {costs}"
            )
        self.n = len(self.sizes)
        self._dense = {
            m: cost_model.metric(m, self.sizes) for m in {"macs", "params", *self.limits}
        }
        self._static = self._static_features()
        dim = STATIC_FEATURES + DYNAMIC_FEATURES + 2 * len(self.limits)
        self.observation_space = spaces.Box(0.0, 1.0, (dim,), np.float32)
        low = float(self.projection.min_ratio)
        self.action_space = spaces.Box(np.float32(low), np.float32(1.0), (1,), np.float32)
        self._keep = self.sizes.copy()
        self._t = 0
        self._prev = 1.0

    # --- features ----------------------------------------------------------------------------
    def _static_features(self) -> np.ndarray:
        """Shape and dense cost of every unit, each column scaled by its largest value."""
        graph, cm = self.cost_model.graph, self.cost_model
        shape = layer_shapes(graph)[unit_layers(graph)]
        own = np.zeros((self.n, 2))
        for u in range(self.n):  # what the unit costs: dense minus the dense model without it
            k = self.sizes.copy()
            k[u] = 0
            own[u] = [self._dense[m] - cm.metric(m, k) for m in ("macs", "params")]
        own /= np.array([self._dense["macs"], self._dense["params"]])
        index = np.arange(self.n, dtype=np.float64)[:, None] / max(self.n - 1, 1)
        table = np.hstack([index, shape, own])
        return table / np.maximum(table.max(axis=0), 1e-12)

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.n - 1)
        lo_rest = self._with_rest(self.min_keep)
        dense_rest = self._with_rest(self.sizes)
        macs = self._dense["macs"]
        cur = self.cost_model.metric("macs", dense_rest)
        removable = cur - self.cost_model.metric("macs", lo_rest)
        wall = self._wall() / self.sizes[t] if self._t < self.n else self._keep[t] / self.sizes[t]
        dynamic = [
            (macs - cur) / macs,
            removable / macs,
            self._prev,
            self.min_keep[t] / self.sizes[t],
            wall,
        ]
        budgets = budget_features(self.limits, self._dense, self.cost_model, lo_rest)
        obs = np.concatenate([self._static[t], dynamic, budgets])
        return np.clip(obs, 0.0, 1.0).astype(np.float32)

    # --- the action wall ----------------------------------------------------------------------
    def _fits(self, keep: np.ndarray) -> bool:
        return self.cost_model.fits(keep, self.limits)

    def _with_rest(self, rest: np.ndarray) -> np.ndarray:
        """Decided units as decided, the undecided ones (from the current unit on) as in `rest`."""
        k = self._keep.copy()
        k[self._t :] = rest[self._t :]
        return k

    def _wall(self) -> int:
        """The largest keep of the current unit with which every budget can still be met."""
        k = self._with_rest(self.min_keep)

        def fits(keep: int) -> bool:
            k[self._t] = keep
            return self._fits(k)

        # keep lo fits: true at the start by induction over the steps
        return largest_fitting(int(self.min_keep[self._t]), int(self.sizes[self._t]), fits)

    # --- gymnasium API ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._keep = self.sizes.copy()
        self._t = 0
        self._prev = 1.0
        return self._observation(), {"unit": self.cost_model.graph.units[0].name}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._t >= self.n:
            raise RuntimeError("the episode has ended; call reset() before step()")
        ratio = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        ratio = float(np.clip(ratio if np.isfinite(ratio) else 1.0, self.projection.min_ratio, 1.0))
        t, wall = self._t, self._wall()
        keep = int(np.clip(round(ratio * self.sizes[t]), self.min_keep[t], wall))
        self._keep[t] = keep
        self._prev = ratio
        self._t += 1
        info: dict[str, Any] = {
            "unit": self.cost_model.graph.units[t].name,
            "keep": keep,
            "wall": wall,
        }
        if self._t < self.n:
            return self._observation(), 0.0, False, False, info
        allocation = self._keep.copy()
        if self.project_final:
            allocation = project(
                allocation / self.sizes, self.cost_model, self.limits, self.projection
            )
        accuracy = float(self.evaluate(allocation))
        costs = {m: self.cost_model.metric(m, allocation) for m in self._dense}
        info.update(
            allocation=allocation, proposed=self._keep.copy(), costs=costs, accuracy=accuracy
        )
        return self._observation(), self._reward(accuracy, costs["macs"]), True, False, info

    def _reward(self, accuracy: float, macs: float) -> float:
        return episode_reward(self.reward_kind, accuracy, macs)


# --- shared with the other environments (KernelBits) -------------------------------------------
def checked_limits(
    cost_model: CostModel, limits: Mapping[str, float], reward: str, env: str
) -> dict[str, float]:
    """The budgets sorted by metric; errors for an unknown reward or metric or no budget."""
    if reward not in REWARDS:
        raise UsageError(f"unknown reward {reward!r}; use one of {REWARDS}")
    if not limits:
        raise BudgetError(f"{env} needs at least one budget (metric -> absolute limit)")
    unknown = sorted(set(limits) - set(cost_model.metrics))
    if unknown:
        raise BudgetError(f"no cost model for budget {unknown}; known: {list(cost_model.metrics)}")
    return dict(sorted(limits.items()))


def largest_fitting(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest value in [lo, hi] that fits, by bisection; `lo` must fit, and fitting must be
    monotone (every cost grows with the value)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def layer_shapes(graph: UnitGraph) -> np.ndarray:
    """Per conv/linear layer: is_conv, in, out, kernel, positions."""
    rows = [
        [lay.type == "conv", lay.in_channels, lay.out_channels, lay.kernel, lay.positions]
        for lay in graph.layers
    ]
    return np.array(rows, dtype=np.float64)


def unit_layers(graph: UnitGraph) -> list[int]:
    """The layer that describes each unit: its root, else its first conv/linear member."""
    index = {lay.name: i for i, lay in enumerate(graph.layers)}
    out = []
    for unit in graph.units:
        i = index.get(unit.root, index.get(unit.root.removesuffix(".weight")))
        if i is None:  # a group rooted elsewhere (a norm, an add)
            i = next(index[m.module] for m in unit.members if m.module in index)
        out.append(i)
    return out


def budget_features(
    limits: Mapping[str, float], dense: Mapping[str, float], model: CostModel, low: np.ndarray
) -> list[float]:
    """Per budget: the limit and the room left when every undecided unit takes its minimum
    (`low`), both as shares of the dense model's cost."""
    out = []
    for m, lim in limits.items():
        out += [lim / dense[m], (lim - model.metric(m, low)) / dense[m]]
    return out


def episode_reward(kind: str, accuracy: float, macs: float) -> float:
    if kind == "amc":  # AMC's resource-aware reward: -error x log(FLOPs)
        return float(-(1.0 - accuracy) * np.log(max(macs, 1.0)))
    return accuracy
