"""The final round: a search's best few allocations re-scored on fresh fine-tune orders.

A proxy score is one short fine-tune's validation accuracy, and the maximum of a search's ~20-40
noisy scores is mostly the luckiest fine-tune, not the best allocation: on resnet20 /
Fashion-MNIST the allocations searches picked for proxy scores 2-3 points above global's trained
to no better than global (results/alloc-resnet20-fmnist/NOTES.md). So the `finalists` best
distinct trials, and the best of the starts a search was handed (uniform, the heuristics), are
scored again by evaluators that fine-tune on `orders` other batch orders, and the one with the
highest mean over those fresh scores wins. The score that made a trial a finalist is left out of
its mean: it is the lucky one the round is there to discount. Every finalist meets the budgets
already, and since the best start a search scored is always a finalist, a search never returns
an allocation whose fresh mean is below that start's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import UsageError
from autoprune.search.base import Evaluator, SearchResult, Trial, best_of
from autoprune.search.evaluator import bits_key

# Order i of a run with evaluator seed s draws its batches with seed s + ORDER_STRIDE * (i + 1):
# runs at seeds 0, 1, 2 ... then share no order, so their final rounds are independent repeats.
ORDER_STRIDE = 10_000


@dataclass(frozen=True)
class FinalRound:
    """How many of a search's best allocations are re-scored, on how many fresh batch orders."""

    finalists: int = 0  # 0: no final round, the search's best single score wins
    # one order's score moves ~1.9 points from another's on resnet20 / Fashion-MNIST, as much as
    # the gaps among good allocations: a mean of 3 halves that
    orders: int = 3

    def __post_init__(self) -> None:
        for flag, value in (("--finalists", self.finalists), ("--final-orders", self.orders)):
            if not isinstance(value, int) or value < 0:
                raise UsageError(f"{flag} must be an integer >= 0, got {value!r}")
        if self.finalists and not self.orders:
            raise UsageError("--finalists re-scores on fresh fine-tune orders: give --final-orders "
                             ">= 1, or --finalists 0 for none")  # fmt: skip

    @property
    def active(self) -> bool:
        return self.finalists > 0

    def order_seeds(self, seed: int) -> list[int]:
        """The batch-order seeds of a run whose evaluator has `seed`."""
        return [seed + ORDER_STRIDE * (i + 1) for i in range(self.orders)]


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


def final_round(
    result: SearchResult, reorder: Callable[[int], Evaluator], cfg: FinalRound
) -> SearchResult:
    """`result` with its allocation chosen among its finalists by the mean score over `cfg.orders`
    fresh evaluators (`reorder(i)` builds the i-th; one at a time, each scoring every finalist,
    so only one is held). What was scored goes into info["final_round"], and info["best_trial"]
    (optuna's) names the winner; a method's other keys (rl's best_episode, dsa's
    returned_start) describe its choice before the round. Unchanged when the round is off, has
    fewer than two finalists, or the search picked from a Pareto front."""
    if not cfg.active or "pareto" in result.info:
        return result  # a Pareto pick (optuna --multi-objective) trades accuracy away on purpose
    round_ = finalists(result.trials, cfg.finalists)
    if len(round_) < 2:
        return result
    fresh: list[list[float]] = [[] for _ in round_]
    for i in range(cfg.orders):
        evaluate = reorder(i)
        for scores, t in zip(fresh, round_, strict=True):
            scores.append(_score(evaluate, t))
    means = [float(np.mean(s)) for s in fresh]
    w = max(range(len(round_)), key=lambda j: (means[j], -round_[j].number))
    winner = round_[w]
    info = dict(result.info)
    info["final_round"] = {
        "orders": cfg.orders,
        "finalists": [
            {"trial": t.number, "source": t.source, "search_score": t.score, "scores": s,
             "mean": m}
            for t, s, m in zip(round_, fresh, means, strict=True)
        ],
        "chosen": winner.number,
        "search_best": best_of(result.trials).number,
    }  # fmt: skip
    if "best_trial" in info:
        info["best_trial"] = winner.number
    return dataclasses.replace(result, keep=winner.keep.copy(), score=means[w], info=info,
                               bits=winner.bits)  # fmt: skip


def _score(evaluate: Evaluator, t: Trial) -> float:
    return float(evaluate(t.keep) if t.bits is None else evaluate(t.keep, bits=t.bits))


def _key(t: Trial) -> Any:
    return tuple(int(k) for k in t.keep), None if t.bits is None else bits_key(t.bits)
