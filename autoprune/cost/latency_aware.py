"""Latency-aware allocation: trade MACs between units until a budget buys as much speed as it can.

The same MAC count runs at very different speeds depending on where it sits: a depthwise or an
early high-resolution layer moves more memory per multiply-accumulate than a wide late one, so
its MACs cost more time. Starting from a projected allocation (every budget met from below),
`trade_for_speed` repeatedly takes one step of channels from the unit whose last step saves the
most predicted time per MAC and spends the freed budget, step by step, on the units whose next
step costs the least time per MAC. A trade is kept only when the predicted latency falls and the
allocation keeps (almost) all of its MACs, so the binding budget stays as tight as it was; every
limit is checked on every addition, so budgets are still met from below. With `spread` each unit
stays within that factor of its starting keep, so the allocation keeps the shape the search chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from autoprune.cost.model import CostModel
from autoprune.errors import UsageError

LATENCY = "latency"


@dataclass(frozen=True)
class TradeConfig:
    """How far and how finely MACs may move between units."""

    # A unit keeps between start / spread and start * spread; None: anywhere above the
    # projection's floor. Measured on mobilenet_v2 @224 at 50% MACs (1 thread, batch 1), speed-up
    # per MAC reduction 0.69 uniform, 0.79-0.82 at spread 4, 0.80-0.83 at 8, 0.82-0.86 unbounded
    # (Torch-Pruning's global ranking also takes its first blocks to 3-16% of their channels).
    spread: float | None = None
    steps_per_unit: int = 16  # a trade moves 1/16 of a unit: coarse enough to see past noise
    # MACs the trades may give up in total, as a fraction of the start's: the fill after a trade
    # lands a step short of the limit at worst, and a budget that stops buying speed should not
    # be spent on nothing.
    mac_slack: float = 0.002
    max_trades: int = 2000


def _latency(model: CostModel) -> None:
    if LATENCY not in model.metrics:
        raise UsageError(
            "latency-aware allocation needs a latency table: pass --latency-table FILE (from "
            "`autoprune latency-table`) or let the run measure one"
        )


def trade_for_speed(
    keep: np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    floor: np.ndarray,
    cfg: TradeConfig | None = None,
    step_grid: int = 1,
) -> np.ndarray:
    """`keep` with MACs moved between units to lower the predicted latency; every limit holds."""
    cfg = cfg or TradeConfig()
    _latency(model)
    sizes = model.sizes
    start = np.asarray(keep, dtype=np.int64).copy()
    g = step_grid  # keeps stay multiples of it (or the whole unit): --round-to
    lo, hi = floor.astype(np.int64), sizes.copy()
    if cfg.spread is not None:
        lo = np.maximum(lo, np.ceil(start / cfg.spread).astype(np.int64))
        hi = np.minimum(sizes, np.floor(start * cfg.spread).astype(np.int64))
    lo = np.minimum(sizes, -(-lo // g) * g)
    hi = np.where(hi >= sizes, sizes, np.maximum(hi // g * g, lo))
    step = np.maximum(g, sizes // cfg.steps_per_unit // g * g)
    macs0 = model.metric("macs", start)
    k = start.copy()
    lat = model.metric(LATENCY, k)
    exhausted = np.zeros(len(k), dtype=bool)
    for _ in range(cfg.max_trades):
        donor = _best_donor(k, model, lo, step, lat, exhausted)
        if donor is None:
            break
        trial = k.copy()
        trial[donor] = max(lo[donor], k[donor] - step[donor])
        trial = fill_cheapest(trial, model, limits, hi, step, g, exclude=donor)
        new = model.metric(LATENCY, trial)
        if new < lat * (1 - 1e-9) and model.metric("macs", trial) >= macs0 * (1 - cfg.mac_slack):
            k, lat = trial, new
            exhausted[:] = False
        else:
            exhausted[donor] = True
    return k


def _best_donor(
    k: np.ndarray,
    model: CostModel,
    lo: np.ndarray,
    step: np.ndarray,
    lat: float,
    exhausted: np.ndarray,
) -> int | None:
    """The unit whose last step saves the most predicted time per MAC (None: no unit can give)."""
    macs = model.metric("macs", k)
    best, best_u = 0.0, None
    for u in np.flatnonzero((k > lo) & ~exhausted):
        trial = k.copy()
        trial[u] = max(lo[u], k[u] - step[u])
        freed = macs - model.metric("macs", trial)
        saved = lat - model.metric(LATENCY, trial)
        if freed > 0 and saved / freed > best:
            best, best_u = saved / freed, int(u)
    return best_u


def fill_cheapest(
    k: np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    hi: np.ndarray,
    step: np.ndarray,
    grid: int = 1,
    exclude: int | None = None,
) -> np.ndarray:
    """Add steps, cheapest in predicted time per MAC first, while every limit holds.

    A unit whose step no longer fits tries half of it (down to `grid`), so the binding budget
    ends as tight as the keep grid allows after a few coarse steps rather than many fine ones.
    """
    k, step = k.copy(), step.copy()
    blocked = np.zeros(len(k), dtype=bool)
    if exclude is not None:
        blocked[exclude] = True
    while True:
        macs, lat = model.metric("macs", k), model.metric(LATENCY, k)
        best, best_k, halved = np.inf, None, False
        for u in np.flatnonzero((k < hi) & ~blocked):
            trial = k.copy()
            trial[u] = min(hi[u], k[u] + step[u])
            if not model.fits(trial, limits):
                if step[u] > grid:
                    step[u], halved = max(grid, step[u] // 2 // grid * grid), True
                else:
                    blocked[u] = True  # a bigger step of it will not fit later either
                continue
            added = model.metric("macs", trial) - macs
            price = (model.metric(LATENCY, trial) - lat) / added if added > 0 else np.inf
            if price < best:
                best, best_k = price, trial
        if best_k is not None:
            k = best_k
        elif not halved:
            return k
