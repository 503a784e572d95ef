"""Searches start where the heuristics end: the real uniform allocation (bits included) and every
heuristic that applies, built once; no search returns less than the best of them by its proxy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from test_search_bits import bits_problem  # the LeNet-5 problem with bits (tests/search)

from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search import bit_space as bit_space_module
from autoprune.search.base import SearchContext
from autoprune.search.bit_space import BitSpace
from autoprune.search.starts import applicable, best_start, start_trials
from autoprune.search.testing import SyntheticEvaluator
from autoprune.search.uniform import uniform_trial
from autoprune.train.data import load_dataset

LENET = (1, 28, 28)
QUICK = {"optuna": {"trials": 10, "artifacts": False}, "rl": {"episodes": 6, "warmup": 3},
         "dsa": {"steps": 4, "batch_size": 16}}  # fmt: skip


@pytest.mark.parametrize("fractions", [{"macs": 0.3}, {"params": 0.1}])
def test_optuna_with_bits_never_ends_below_uniform(fractions: dict[str, float]) -> None:
    """The issue's case: the warm start enqueued uniform's keep ratios only, the sampler drew the
    widths, and 10 trials ended below uniform_trial on 4 of 4 seeds ({"macs": 0.3}) and 3 of 4
    ({"params": 0.1}). Now the enqueued trial is uniform itself, bits included."""
    for seed in range(4):
        problem = bits_problem(fractions, BitSpace(), seed=seed)
        result = SEARCH_METHODS.build("optuna", QUICK["optuna"]).search(problem)
        uniform = uniform_trial(problem)
        assert result.score is not None and uniform.score is not None
        assert result.score >= uniform.score, seed
        first = result.trials[0]  # trial 0 is uniform exactly: same keeps, same widths
        assert np.array_equal(first.keep, uniform.keep) and first.bits == uniform.bits


def lenet_problem(seed: int = 0, bits: BitSpace | None = None) -> SearchProblem:
    torch.manual_seed(seed)
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    graph = trace_units(model, LENET, "channel", "lenet5")
    data = load_dataset("fake", input_size=LENET, limit=64)
    cm = CostModel(graph)
    dense = {m: cm.metric(m, cm.sizes) for m in ("macs", "params")}
    limits = {"macs": 0.2 * dense["macs"], "params": 0.05 * dense["params"]}
    if bits is not None:
        limits["size"] = 0.01 * cm.metric("size", cm.sizes)
    return SearchProblem(cm, limits, SyntheticEvaluator(cm.sizes, seed=seed), seed,
                         ProjectionConfig(), bits=bits,
                         context=SearchContext(model, graph, data.train, data.val))  # fmt: skip


def test_starts_are_uniform_and_every_applicable_heuristic_scored_once() -> None:
    problem = lenet_problem()
    assert applicable(problem) == ["global", "lamp"]  # erk allocates weights only
    starts = start_trials(problem, first=7)
    assert [t.source for t in starts] == ["uniform", "global", "lamp"]
    assert [t.number for t in starts] == [7, 8, 9]
    for t, name in zip(starts[1:], ("global", "lamp"), strict=True):
        alone = SEARCH_METHODS.build(name, {}).search(problem)
        assert np.array_equal(t.keep, alone.keep) and t.score == alone.score
    calls = problem.evaluate.calls  # type: ignore[union-attr]
    start_trials(problem)
    best_start(problem)
    assert problem.evaluate.calls == calls  # type: ignore[union-attr]  # built and scored once
    assert best_start(problem).score == max(t.score for t in starts)  # type: ignore[type-var]


@pytest.mark.parametrize("name", sorted(QUICK))
@pytest.mark.parametrize("bits", [None, BitSpace.parse("2,4,8", None)], ids=["float", "bits"])
def test_no_search_ends_below_the_best_start(name: str, bits: BitSpace | None) -> None:
    for seed in (0, 1):
        problem = lenet_problem(seed, bits)
        result = SEARCH_METHODS.build(name, QUICK[name]).search(problem)
        best = best_start(problem)
        assert result.score is not None and best.score is not None
        assert result.score >= best.score, (name, seed)
        assert problem.costed(result.bits).fits(result.keep, problem.limits)


def test_optuna_enqueues_the_starts_exactly_best_first(tmp_path: Path) -> None:
    problem = lenet_problem(bits=BitSpace.parse("2,4,8", "4,8"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    opts = {"trials": 4, "artifacts": False, "storage": url, "study": "s"}
    result = SEARCH_METHODS.build("optuna", opts).search(problem)
    starts = sorted(start_trials(problem), key=lambda t: -(t.score or 0.0))
    # the enqueued starts are named in the result (a best-so-far curve of the search's own finds
    # leaves them out); the sampler's proposals carry no source
    assert [t.source for t in result.trials] == [t.source for t in starts] + [None]
    trials = optuna.load_study(study_name="s", storage=url).trials
    for start, trial in zip(starts, trials, strict=False):
        assert trial.user_attrs["keep"] == start.keep.tolist()
        assert start.bits is not None and trial.user_attrs["bits"] == start.bits.to_json()
        assert trial.user_attrs["val_accuracy"] == start.score


def test_the_uniform_allocation_is_built_once_for_every_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built = []
    real = bit_space_module.uniform_bits
    monkeypatch.setattr(
        "autoprune.search.uniform.uniform_bits", lambda *a: built.append(1) or real(*a)
    )
    problem = lenet_problem(bits=BitSpace.parse("2,4,8", None))
    for name in ("uniform", "global", "optuna", "rl", "dsa"):
        SEARCH_METHODS.build(name, QUICK.get(name, {})).search(problem)
    assert len(built) == 1
    problem.limits = {"macs": problem.limits["macs"]}  # other budgets: another uniform allocation
    SEARCH_METHODS.build("uniform", {}).search(problem)
    assert len(built) == 2


def test_rl_reports_which_start_won_and_dsa_starts_from_the_best() -> None:
    problem = lenet_problem()
    rl = SEARCH_METHODS.build("rl", QUICK["rl"]).search(problem)
    sources = [t.source for t in rl.trials if t.source]
    assert sources == ["uniform", "global", "lamp"]
    best = max(rl.trials, key=lambda t: t.score or 0.0)
    assert rl.info["best_start"] == best.source
    dsa = SEARCH_METHODS.build("dsa", QUICK["dsa"]).search(problem)
    assert dsa.info["start"] == best_start(problem).source
    assert dsa.trials[1].source == dsa.info["start"]  # the start, kept beside dsa's own result
