"""Baselines: the same keep ratio in every unit (uniform), and random ratios (random)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoprune.search.base import SEARCH_METHODS, SearchMethod, SearchProblem, SearchResult, Trial, best_of


@SEARCH_METHODS.register("uniform")
@dataclass
class Uniform(SearchMethod):
    """One ratio for every unit, scaled by the projection until the binding budget is tight."""

    name = "uniform"
    needs_evaluator = False

    def search(self, problem: SearchProblem) -> SearchResult:
        keep = problem.project(np.full(len(problem.sizes), 0.5))
        score = problem.evaluate(keep) if problem.evaluate is not None else None
        return SearchResult(keep, score, [Trial(0, keep, score, problem.costs(keep))])


@SEARCH_METHODS.register("random")
@dataclass
class RandomSearch(SearchMethod):
    """Independent uniform ratios per unit, projected onto the budgets; the best of `trials`."""

    name = "random"
    trials: int = 20

    def search(self, problem: SearchProblem) -> SearchResult:
        if problem.evaluate is None:
            raise ValueError("random search needs an evaluator")
        rng = np.random.default_rng(problem.seed)
        history = []
        for i in range(self.trials):
            keep = problem.project(rng.uniform(problem.projection.min_ratio, 1.0, len(problem.sizes)))
            history.append(Trial(i, keep, problem.evaluate(keep), problem.costs(keep)))
        best = best_of(history)
        return SearchResult(best.keep, best.score, history)
