"""Search strategies that propose allocations (installed as autoprune.search).

Importing this package registers every built-in method in SEARCH_METHODS.
"""

from autoprune.search import dsa as _dsa  # noqa: F401  (registers dsa)
from autoprune.search import heuristics as _heuristics  # noqa: F401  (registers global, lamp, erk)
from autoprune.search import optuna_search as _optuna_search  # noqa: F401  (registers optuna)
from autoprune.search import rl as _rl  # noqa: F401  (registers rl)
from autoprune.search import uniform as _uniform  # noqa: F401  (registers uniform, random)
from autoprune.search.base import (
    SEARCH_METHODS,
    Evaluator,
    SearchMethod,
    SearchProblem,
    SearchResult,
    Trial,
)
from autoprune.search.bit_space import BitSpace

__all__ = [
    "SEARCH_METHODS",
    "BitSpace",
    "Evaluator",
    "SearchMethod",
    "SearchProblem",
    "SearchResult",
    "Trial",
]
