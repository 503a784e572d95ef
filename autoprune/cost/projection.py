"""The one projection every search method uses: proposed keep ratios -> integer keeps within budget.

Ratios are scaled by a common factor (found by bisection) so the allocation keeps its shape while
meeting every budget from below; then elements are added greedily, most under-served unit
first, while every budget still holds, so the binding budget ends as tight as granularity allows.

With `round_to` N > 1 (channel units), every keep is a multiple of N or the whole unit: CPU and
GPU kernels run widths on such a grid faster than the widths just above them, so a MAC budget
buys more speed. The grid is coarser, so the binding budget is met from below less tightly.

With `latency_aware` (and a `latency` metric from a table) the projected keeps are then traded
between units by predicted time per MAC (`autoprune.cost.latency_aware`), every limit still met.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.cost.latency_aware import TradeConfig, trade_for_speed
from autoprune.cost.model import CostModel
from autoprune.errors import BudgetError


@dataclass(frozen=True)
class ProjectionConfig:
    # keep at least 5% of each unit: a layer pruned to nothing breaks the net
    min_ratio: float = 0.05
    min_keep: int = 1  # and at least one element, whatever the ratio
    bisection_steps: int = 60  # enough for the scale to be exact in double precision
    max_fill_steps: int = 100_000  # greedy additions after bisection (bounded by the slack anyway)
    # Channel keeps on a grid of this many channels (or the whole unit); 1: any width. Off by
    # default although this CPU has a staircase (results/speed/staircase.md, 1 thread, batch 1:
    # a depthwise 3x3 at 56x56 runs ~30% faster at every multiple of 8 than one channel narrower,
    # 52% of off-grid widths of five resnet18 / mobilenet_v2 layers are slower than the multiple
    # of 8 above them; whole models at 50% MACs gained 3-15% with --round-to 8, load average 8):
    # the grid leaves units under 8 channels unprunable and binding budgets looser by up to one
    # step of the widest unit, which small models and exact budgets pay for. Use --round-to 8 for
    # wide CPU models.
    round_to: int = 1
    # Move MACs between units by the latency table's time per MAC (autoprune.cost.latency_aware)
    # until the budgets buy as much predicted speed as they can; needs a `latency` metric.
    latency_aware: bool = False
    # a unit stays within this factor of its projected keep; None: anywhere above min_ratio
    latency_spread: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise BudgetError(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.latency_spread is not None and not self.latency_spread >= 1.0:
            raise BudgetError(f"latency_spread must be at least 1, got {self.latency_spread!r}")

    def step(self, model: CostModel) -> int:
        """The keep grid of `model`'s units: round_to for channel units, 1 for weights."""
        return self.round_to if model.graph.granularity == "channel" else 1


def on_grid(keep: np.ndarray, sizes: np.ndarray, step: int) -> np.ndarray:
    """`keep` rounded down to a multiple of `step` (at least `step`), or the whole unit."""
    if step == 1:
        return keep
    down = np.maximum(keep // step * step, np.minimum(step, sizes))
    return np.where(keep >= sizes, sizes, np.minimum(down, sizes)).astype(np.int64)


def min_keeps(sizes: np.ndarray, cfg: ProjectionConfig, step: int = 1) -> np.ndarray:
    """The smallest keep of every unit: min_ratio of it, at least min_keep, on the keep grid."""
    low = np.clip(np.ceil(sizes * cfg.min_ratio).astype(np.int64), cfg.min_keep, sizes)
    if step > 1:
        low = np.minimum(-(-low // step) * step, sizes)
    return low


def project(
    ratios: Sequence[float] | np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    cfg: ProjectionConfig | None = None,
) -> np.ndarray:
    """Integer keeps close to `ratios` that meet every limit (metric -> absolute bound)."""
    cfg = cfg or ProjectionConfig()
    keep = _project(ratios, model, limits, cfg)
    if not cfg.latency_aware:
        return keep
    trade = TradeConfig(spread=cfg.latency_spread)
    step = cfg.step(model)
    return trade_for_speed(keep, model, limits, min_keeps(model.sizes, cfg, step), trade, step)


def _project(
    ratios: Sequence[float] | np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    cfg: ProjectionConfig,
) -> np.ndarray:
    sizes = model.sizes
    r = np.clip(np.asarray(ratios, dtype=np.float64), 0.0, 1.0)
    if r.shape != sizes.shape:
        raise ValueError(f"expected {len(sizes)} ratios, got {r.shape}")
    step = cfg.step(model)
    lo_keep = min_keeps(sizes, cfg, step)
    if not model.fits(lo_keep, limits):
        worst = {m: model.metric(m, lo_keep) for m in limits}
        raise BudgetError(
            f"no allocation meets the budgets {dict(limits)}; the smallest model costs {worst}"
        )
    r = np.maximum(r, 1e-9)

    def at(scale: float) -> np.ndarray:
        raw = np.floor(scale * r * sizes + 1e-9).astype(np.int64)
        return np.clip(on_grid(raw, sizes, step), lo_keep, sizes)

    lo, hi = 0.0, 1.0 / float(r.min())
    if model.fits(at(hi), limits):
        return at(hi)
    for _ in range(cfg.bisection_steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model.fits(at(mid), limits) else (lo, mid)
    keep = at(lo)
    if step > 1:
        return _fill_steps(keep, lo * r, model, limits, cfg, step)
    return _fill(keep, lo * r, model, limits, cfg)


def _fill(
    keep: np.ndarray,
    target: np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    cfg: ProjectionConfig,
) -> np.ndarray:
    """Add one element at a time to the most under-served unit that still fits every limit."""
    sizes = model.sizes
    keep = keep.copy()
    for _ in range(cfg.max_fill_steps):
        room = keep < sizes
        for metric, lim in limits.items():
            slack = lim - model.metric(metric, keep)
            room &= model.increments(metric, keep) <= slack
        if not room.any():
            break
        deficit = np.where(room, target - keep / sizes, -np.inf)
        u = int(np.argmax(deficit))
        keep[u] += 1
    return keep


def _fill_steps(
    keep: np.ndarray,
    target: np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    cfg: ProjectionConfig,
    step: int,
) -> np.ndarray:
    """`_fill` on the keep grid: each addition is the next grid width of one unit."""
    sizes = model.sizes
    keep = keep.copy()
    for _ in range(cfg.max_fill_steps):
        nxt = np.minimum((keep // step + 1) * step, sizes)
        room = keep < sizes
        for unit in np.flatnonzero(room):
            trial = keep.copy()
            trial[unit] = nxt[unit]
            room[unit] = model.fits(trial, limits)
        if not room.any():
            break
        deficit = np.where(room, target - keep / sizes, -np.inf)
        u = int(np.argmax(deficit))
        keep[u] = nxt[u]
    return keep


def snap(
    keep: np.ndarray, model: CostModel, limits: Mapping[str, float], cfg: ProjectionConfig
) -> np.ndarray:
    """An allocation a method chose by other means, put on the keep grid (within every limit)."""
    step = cfg.step(model)
    keep = np.asarray(keep, dtype=np.int64)
    if step == 1 or np.array_equal(on_grid(keep, model.sizes, step), keep):
        return keep
    return project(ratios_of(keep, model.sizes), model, limits, cfg)


def ratios_of(keep: Sequence[int] | np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.asarray(keep, dtype=np.float64) / sizes
