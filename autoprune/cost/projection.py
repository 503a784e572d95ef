"""The one projection every search method uses: proposed keep ratios -> integer keeps within budget.

Ratios are scaled by a common factor (found by bisection) so the allocation keeps its shape while
meeting every budget from below; then single elements are added greedily, most under-served unit
first, while every budget still holds, so the binding budget ends as tight as granularity allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from autoprune.cost.model import CostModel
from autoprune.errors import BudgetError


@dataclass(frozen=True)
class ProjectionConfig:
    # keep at least 5% of each unit: a layer pruned to nothing breaks the net
    min_ratio: float = 0.05
    min_keep: int = 1  # and at least one element, whatever the ratio
    bisection_steps: int = 60  # enough for the scale to be exact in double precision
    max_fill_steps: int = 100_000  # greedy additions after bisection (bounded by the slack anyway)


def min_keeps(sizes: np.ndarray, cfg: ProjectionConfig) -> np.ndarray:
    return np.clip(np.ceil(sizes * cfg.min_ratio).astype(np.int64), cfg.min_keep, sizes)


def project(
    ratios: Sequence[float] | np.ndarray,
    model: CostModel,
    limits: Mapping[str, float],
    cfg: ProjectionConfig | None = None,
) -> np.ndarray:
    """Integer keeps close to `ratios` that meet every limit (metric -> absolute bound)."""
    cfg = cfg or ProjectionConfig()
    sizes = model.sizes
    r = np.clip(np.asarray(ratios, dtype=np.float64), 0.0, 1.0)
    if r.shape != sizes.shape:
        raise ValueError(f"expected {len(sizes)} ratios, got {r.shape}")
    lo_keep = min_keeps(sizes, cfg)
    if not model.fits(lo_keep, limits):
        worst = {m: model.metric(m, lo_keep) for m in limits}
        raise BudgetError(
            f"no allocation meets the budgets {dict(limits)}; the smallest model costs {worst}"
        )
    r = np.maximum(r, 1e-9)

    def at(scale: float) -> np.ndarray:
        return np.clip(np.floor(scale * r * sizes + 1e-9).astype(np.int64), lo_keep, sizes)

    lo, hi = 0.0, 1.0 / float(r.min())
    if model.fits(at(hi), limits):
        return at(hi)
    for _ in range(cfg.bisection_steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if model.fits(at(mid), limits) else (lo, mid)
    keep = at(lo)
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


def ratios_of(keep: Sequence[int] | np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.asarray(keep, dtype=np.float64) / sizes
