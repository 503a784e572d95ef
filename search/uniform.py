"""Baselines: the same keep ratio in every unit (uniform), and random ratios (random).

With bits (`SearchProblem.bits`) uniform gives every kernel the same widths (`uniform_bits`: the
largest that still leave reasonable keeps) and random draws widths per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoprune.search.base import (
    SEARCH_METHODS,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
    best_of,
    renumbered,
)
from autoprune.search.bit_space import random_bits, uniform_bits

UNIFORM_RATIO = 0.5  # any equal ratio: the projection scales it until a budget binds


def uniform_trial(problem: SearchProblem, number: int = 0) -> Trial:
    """The uniform allocation as a trial, bits included, scored when the problem has an evaluator.

    Built (and scored) once per problem: every method that starts from it or keeps it as its
    baseline gets this same allocation, renumbered `number`.
    """

    def build() -> Trial:
        ratios = np.full(len(problem.sizes), UNIFORM_RATIO)
        bits = None if problem.bits is None else uniform_bits(problem, problem.bits, ratios)
        keep = problem.project(ratios, bits)
        score = problem.score(keep, bits) if problem.evaluate is not None else None
        return Trial(0, keep, score, problem.costs(keep, bits), bits, source="uniform")

    return renumbered(problem.once("uniform", build), number)


@SEARCH_METHODS.register("uniform")
@dataclass
class Uniform(SearchMethod):
    """One ratio for every unit, scaled by the projection until the binding budget is tight."""

    needs_evaluator = False
    supports_bits = True

    def search(self, problem: SearchProblem) -> SearchResult:
        t = uniform_trial(problem)
        return SearchResult(t.keep, t.score, [t], bits=t.bits)


@SEARCH_METHODS.register("random")
@dataclass
class RandomSearch(SearchMethod):
    """Independent uniform ratios per unit, projected onto the budgets; the best of `trials`."""

    trials: int = 20
    supports_bits = True

    def search(self, problem: SearchProblem) -> SearchResult:
        if problem.evaluate is None:
            raise ValueError("random search needs an evaluator")
        rng = np.random.default_rng(problem.seed)
        history = []
        for i in range(self.trials):
            ratios = rng.uniform(problem.projection.min_ratio, 1.0, len(problem.sizes))
            bits = None if problem.bits is None else random_bits(problem, problem.bits, rng)
            keep = problem.project(ratios, bits)
            history.append(
                Trial(i, keep, problem.score(keep, bits), problem.costs(keep, bits), bits)
            )
        best = best_of(history)
        return SearchResult(best.keep, best.score, history, bits=best.bits)
