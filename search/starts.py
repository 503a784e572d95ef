"""Where searches start: the uniform allocation and every heuristic that applies, built once.

optuna enqueues them as its first trials, rl scores them beside its episodes and dsa starts from
the best of them, so a search never returns an allocation its own proxy scores below uniform or
the best heuristic. Each is the method's real allocation, bits included, scored once per problem.
"""

from __future__ import annotations

from autoprune.search.base import SEARCH_METHODS, SearchProblem, Trial, best_of, renumbered
from autoprune.search.heuristics import Heuristic
from autoprune.search.uniform import uniform_trial

HEURISTICS = ("global", "lamp", "erk")  # tried in this order after uniform


def applicable(problem: SearchProblem) -> list[str]:
    """The heuristics that can allocate this problem's units with what it holds."""
    granularity = problem.cost_model.graph.granularity
    names = []
    for name in HEURISTICS:
        cls = SEARCH_METHODS.get(name)
        assert issubclass(cls, Heuristic)
        has_scores = problem.scores is not None or problem.context is not None
        if granularity in cls.granularities and (has_scores or not cls.needs_weights):
            names.append(name)
    return names


def start_trials(problem: SearchProblem, first: int = 0) -> list[Trial]:
    """Uniform, then each applicable heuristic, numbered from `first` in that order.

    Without an evaluator nothing ranks them, so only uniform is built (today's default start).
    """

    def build() -> list[Trial]:
        trials = [uniform_trial(problem)]
        if problem.evaluate is None:
            return trials
        for name in applicable(problem):
            result = SEARCH_METHODS.build(name, {}).search(problem)
            trials.append(result.trials[0])
        return trials

    shared: list[Trial] = problem.once("starts", build)
    return [renumbered(t, first + i) for i, t in enumerate(shared)]


def best_start(problem: SearchProblem) -> Trial:
    """The start the problem's evaluator scores highest (uniform among equals, or unscored)."""
    return best_of(start_trials(problem))
