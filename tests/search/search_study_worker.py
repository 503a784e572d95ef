"""A search for tests/test_search_study.py to kill: `python search_study_worker.py URL TRIALS`.

It runs the optuna method on LeNet-5 (traced, no data) with a slow synthetic evaluator, so the
test can SIGKILL it between trials.
"""

from __future__ import annotations

import sys

from autoprune.search.optuna_search import OptunaSearch
from autoprune.search.testing import SyntheticEvaluator

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_search import lenet5_problem

if __name__ == "__main__":
    url, trials = sys.argv[1], int(sys.argv[2])
    problem = lenet5_problem()
    problem.evaluate = SyntheticEvaluator(problem.sizes, delay_s=0.2)
    OptunaSearch(trials=trials, storage=url, study="killed", heartbeat_s=1, artifacts=False).search(
        problem
    )
