"""Pareto fronts of (accuracy, cost) points and the rules that pick one allocation from a front."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from autoprune.errors import UsageError

Point = tuple[float, float]  # (accuracy: higher is better, cost: lower is better)
PICKS = ("best", "knee", "cheapest")
_TOLERANCE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%")


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, by increasing cost (the first of exact duplicates)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    best_acc = -np.inf
    for i in order:
        if points[i][0] > best_acc:  # cheaper points all have lower accuracy: i is not dominated
            front.append(i)
            best_acc = points[i][0]
    return front


def check_pick(pick: str) -> None:
    """Reject a --pick value that names no rule."""
    if pick not in PICKS and not _TOLERANCE.fullmatch(pick.strip()):
        raise UsageError(
            f"--pick {pick!r} is not a rule; use one of {', '.join(PICKS)} or a tolerance like 1%"
        )


def pick_from_front(points: Sequence[Point], front: Sequence[int], pick: str) -> int:
    """The index `pick` selects among `front` (indices into `points`, as pareto_front returns).

    best: highest accuracy; cheapest: lowest cost; knee: the point farthest from the line joining
    the two ends of the front (both axes scaled to [0, 1]); `D%`: the cheapest point whose accuracy
    is within D percentage points of the best.
    """
    check_pick(pick)
    if not front:
        raise ValueError("empty Pareto front")
    by_cost = sorted(front, key=lambda i: points[i][1])
    best = max(by_cost, key=lambda i: points[i][0])
    if pick == "best":
        return best
    if pick == "cheapest":
        return by_cost[0]
    m = _TOLERANCE.fullmatch(pick.strip())
    if m:
        floor = points[best][0] - float(m.group(1)) / 100.0
        return next(i for i in by_cost if points[i][0] >= floor - 1e-12)
    if len(by_cost) < 3:
        return best
    acc = np.array([points[i][0] for i in by_cost])
    cost = np.array([points[i][1] for i in by_cost])
    a = (acc - acc.min()) / max(float(np.ptp(acc)), 1e-12)
    c = (cost - cost.min()) / max(float(np.ptp(cost)), 1e-12)
    # After scaling the ends are (0, 0) and (1, 1); the knee lies farthest above that diagonal.
    return by_cost[int(np.argmax(a - c))]
