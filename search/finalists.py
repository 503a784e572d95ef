"""The final round: a search's best few allocations re-scored on more fine-tune orders, then chosen.

A proxy score is one short fine-tune's validation accuracy, and the maximum of a search's ~20-40
noisy scores is mostly the luckiest fine-tune, not the best allocation: on resnet20 /
Fashion-MNIST the allocations searches picked for proxy scores 2-3 points above global's trained
to no better than global (results/alloc-resnet20-fmnist/NOTES.md). So the `finalists` best
distinct trials, and the best of the starts a search was handed (uniform, the heuristics), are
scored again by evaluators that fine-tune on other batch orders, and the one with the highest
mean over all its scores wins. Every finalist meets the budgets already, and since the best start
a search scored is always a finalist, a search still never returns an allocation scored below it
(now by the mean).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import UsageError
from autoprune.search.base import Evaluator, SearchResult, Trial, best_of
from autoprune.search.evaluator import bits_key


@dataclass(frozen=True)
class FinalRound:
    """How many of a search's best allocations are re-scored, on how many more batch orders."""

    finalists: int = 0  # 0: no final round, the search's best single score wins
    # 2 more orders: each finalist's mean is over 3 fine-tunes, whose spread on resnet20 /
    # Fashion-MNIST (~1 point) is as wide as the proxy's spread among good allocations
    orders: int = 2

    def __post_init__(self) -> None:
        for name in ("finalists", "orders"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise UsageError(f"final round {name} must be an integer >= 0, got {value!r}")
        if self.finalists and not self.orders:
            raise UsageError("--finalists re-scores on more fine-tune orders: give --final-orders "
                             ">= 1, or --finalists 0 for none")  # fmt: skip

    @property
    def active(self) -> bool:
        return self.finalists > 0


def finalists(trials: Sequence[Trial], k: int) -> list[Trial]:
    """The `k` best distinct scored trials, then the best start among them (a trial with a
    `source`: uniform or a heuristic a search was handed) if it is not one of those."""
    ranked = sorted((t for t in trials if t.score is not None),
                    key=lambda t: (-(t.score or 0.0), t.number))  # fmt: skip
    chosen: dict[Any, Trial] = {}
    for t in ranked:
        if len(chosen) < k:
            chosen.setdefault(_key(t), t)
    starts = [t for t in ranked if t.source is not None]
    if starts:
        chosen.setdefault(_key(starts[0]), starts[0])
    return list(chosen.values())


def final_round(result: SearchResult, orders: Sequence[Evaluator], cfg: FinalRound) -> SearchResult:
    """`result` with its allocation chosen by the mean score over the search's evaluator and
    `orders` (evaluators of other fine-tune orders), among its finalists; what was re-scored
    goes into info["final_round"]. Unchanged when the round is off, has nothing to compare, or
    the search picked from a Pareto front."""
    if not cfg.active or not orders or "pareto" in result.info:
        return result  # a Pareto pick (optuna --multi-objective) trades accuracy away on purpose
    round_ = finalists(result.trials, cfg.finalists)
    if len(round_) < 2:
        return result
    rows = [(t, [float(t.score or 0.0), *(_score(evaluate, t) for evaluate in orders)])
            for t in round_]  # fmt: skip
    winner, scores = max(rows, key=lambda row: (float(np.mean(row[1])), -row[0].number))
    info = dict(result.info)
    info["final_round"] = {
        "orders": len(orders),
        "finalists": [
            {"trial": t.number, "source": t.source, "scores": s, "mean": float(np.mean(s))}
            for t, s in rows
        ],
        "chosen": winner.number,
        "search_best": best_of(result.trials).number,
    }
    return dataclasses.replace(result, keep=winner.keep.copy(), score=float(np.mean(scores)),
                               info=info, bits=winner.bits)  # fmt: skip


def _score(evaluate: Evaluator, t: Trial) -> float:
    return float(evaluate(t.keep) if t.bits is None else evaluate(t.keep, bits=t.bits))


def _key(t: Trial) -> Any:
    return tuple(int(k) for k in t.keep), None if t.bits is None else bits_key(t.bits)
