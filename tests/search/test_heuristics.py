"""Heuristic allocators (global, lamp, erk): budgets met as the projection promises, each one's
defining property, granularity refusals."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.cli.main import main
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.errors import UsageError
from autoprune.graph.importance import score_units
from autoprune.graph.units import UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.base import SearchContext
from autoprune.search.bit_space import BitSpace
from autoprune.search.heuristics import (
    erk_densities,
    lamp_scores,
    normalised,
    ranked_keeps,
    tensor_shapes,
)
from autoprune.search.testing import SyntheticEvaluator
from autoprune.search.uniform import uniform_trial

LENET = (1, 28, 28)
TINY_FLOOR = ProjectionConfig(min_ratio=0.001)  # weight budgets at 1% sit below a 5% floor
HEURISTICS = {"global": ("channel", "weight"), "lamp": ("channel", "weight"), "erk": ("weight",)}


@cache
def lenet(granularity: str) -> tuple[torch.nn.Module, UnitGraph, CostModel]:
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    graph = trace_units(model, LENET, granularity, "lenet5")  # type: ignore[arg-type]
    return model, graph, CostModel(graph)


def problem_at(granularity: str, fractions: dict[str, float], **kw: object) -> SearchProblem:
    model, graph, cm = lenet(granularity)
    limits = {m: f * cm.metric(m, cm.sizes) for m, f in fractions.items()}
    return SearchProblem(cm, limits, SyntheticEvaluator(cm.sizes), projection=TINY_FLOOR,
                         context=SearchContext(model, graph, [], []), **kw)  # type: ignore[arg-type]  # fmt: skip


def full(problem: SearchProblem, keep: np.ndarray) -> bool:
    """The projection's promise: every budget holds and no unit can take one more element."""
    model = problem.cost_model
    if not model.fits(keep, problem.limits):
        return False
    grown = [
        keep + np.eye(len(keep), dtype=np.int64)[u] for u in np.flatnonzero(keep < model.sizes)
    ]
    return not any(model.fits(g, problem.limits) for g in grown)


CASES = [
    pytest.param(name, gran, fr, id=f"{name}-{gran}-{'+'.join(fr)}")
    for name, grans in HEURISTICS.items()
    for gran in grans
    for fr in ({"params": 0.01}, {"macs": 0.2}, {"params": 0.03, "macs": 0.1})
]


@pytest.mark.parametrize(("name", "granularity", "fractions"), CASES)
def test_every_budget_is_met_and_the_binding_one_is_full(
    name: str, granularity: str, fractions: dict[str, float]
) -> None:
    problem = problem_at(granularity, fractions)
    result = SEARCH_METHODS.build(name, {}).search(problem)
    assert full(problem, result.keep)
    assert np.all(result.keep >= min_keeps(problem.sizes, problem.projection))
    assert result.score == problem.evaluate(result.keep)  # type: ignore[misc]
    assert [t.source for t in result.trials] == [name]
    again = SEARCH_METHODS.build(name, {}).search(problem_at(granularity, fractions))
    assert np.array_equal(again.keep, result.keep)


def test_global_magnitude_keeps_the_largest_weights_of_the_whole_model() -> None:
    problem = problem_at("weight", {"params": 0.02})
    model, graph, cm = lenet("weight")
    keep = SEARCH_METHODS.build("global", {}).search(problem).keep
    # every weight costs one parameter: the budget buys exactly keep.sum() weights, the largest
    biases = cm.metric("params", cm.sizes) - cm.metric("weights", cm.sizes)
    assert keep.sum() == int(problem.limits["params"] - biases)
    flat = torch.cat([s for s in score_units(model, graph.units)]).numpy()
    unit_of = np.repeat(np.arange(len(keep)), cm.sizes)
    top = unit_of[np.argsort(-flat, kind="stable")[: keep.sum()]]
    assert keep.tolist() == np.bincount(top, minlength=len(keep)).tolist()


def test_global_channels_rank_mean_normalised_scores_and_the_projection_only_adds() -> None:
    problem = problem_at("channel", {"macs": 0.15})
    scores = [normalised(s.numpy(), "mean") for s in problem.element_scores()]
    ranked = ranked_keeps(problem, scores, None)
    # the ranked keeps are the top elements of one ranking: nothing dropped outranks a kept one
    low = min_keeps(problem.sizes, problem.projection)
    kept, dropped = [], []
    for s, k, lo in zip(scores, ranked, low, strict=True):
        order = np.sort(s)[::-1]
        if k > lo:  # above its floor a unit keeps exactly its elements above the threshold
            kept.append(order[k - 1])
        dropped.append(order[k] if k < len(s) else -np.inf)
    assert min(kept) > max(dropped)
    # and as many as fit: the next element of the ranking would break the budget
    assert problem.cost_model.fits(ranked, problem.limits)
    grown = ranked + np.eye(len(ranked), dtype=np.int64)[int(np.argmax(dropped))]
    assert not problem.cost_model.fits(grown, problem.limits)
    result = SEARCH_METHODS.build("global", {}).search(problem)
    assert np.all(result.keep >= ranked) and full(problem, result.keep)
    assert np.array_equal(result.keep, problem.project(ranked / problem.sizes))


def test_lamp_score_on_a_hand_computed_example() -> None:
    # ascending 1, 2, 3: squares 1, 4, 9; the mass of each and every larger one 14, 13, 9
    assert np.allclose(lamp_scores(np.array([3.0, 1.0, 2.0])), [9 / 9, 1 / 14, 4 / 13])
    assert np.allclose(lamp_scores(np.zeros(3)), 0.0)
    # the largest element of every unit scores 1: a unit is never emptied first
    rng = np.random.default_rng(0)
    assert all(lamp_scores(rng.random(n)).max() == 1.0 for n in (1, 5, 50))


def test_lamp_ranks_by_lamp_scores_of_the_magnitudes() -> None:
    problem = problem_at("weight", {"params": 0.01})
    keep = SEARCH_METHODS.build("lamp", {}).search(problem).keep
    model, graph, _ = lenet("weight")
    lamp = [lamp_scores(s.numpy()) for s in score_units(model, graph.units)]
    assert np.array_equal(keep, problem.project(ranked_keeps(problem, lamp, None) / problem.sizes))
    plain = SEARCH_METHODS.build("global", {}).search(problem_at("weight", {"params": 0.01}))
    assert not np.array_equal(keep, plain.keep)  # the normalisation changes the allocation


def test_erk_densities_follow_the_erdos_renyi_kernel_scaling() -> None:
    problem = problem_at("weight", {"params": 0.01})
    shapes = tensor_shapes(problem)
    assert shapes == [(20, 1, 5, 5), (50, 20, 5, 5), (500, 800), (10, 500)]
    raw = erk_densities(shapes)
    assert raw[0] == pytest.approx((20 + 1 + 5 + 5) / (20 * 1 * 5 * 5))
    assert raw[2] == pytest.approx((500 + 800) / (500 * 800))
    keep = SEARCH_METHODS.build("erk", {}).search(problem).keep
    scale = keep / problem.sizes / raw  # one common factor, up to rounding to whole weights
    assert scale.max() / scale.min() - 1 <= 1.0 / keep.min()
    no_model = SearchProblem(problem.cost_model, problem.limits, projection=TINY_FLOOR)
    assert tensor_shapes(no_model) == shapes  # square kernels: the traced layers say as much


def test_erk_keeps_a_tensor_dense_once_its_density_would_pass_one() -> None:
    problem = problem_at("weight", {"params": 0.05})
    keep = SEARCH_METHODS.build("erk", {}).search(problem).keep
    sizes = problem.sizes
    assert keep[3] == sizes[3]  # the classifier's 5,000 weights: ERK density > 1 at 5%
    scale = (keep / sizes / erk_densities(tensor_shapes(problem)))[:3]
    assert scale.max() / scale.min() - 1 <= 1.0 / keep[:3].min()  # the rest scale on together


@pytest.mark.parametrize("name", sorted(HEURISTICS))
def test_with_bits_heuristics_take_uniforms_widths_and_meet_the_budgets(name: str) -> None:
    granularity = HEURISTICS[name][-1]
    problem = problem_at(granularity, {"params": 0.05}, bits=BitSpace.parse("2,4,8", None))
    _, _, cm = lenet(granularity)
    problem.limits = {**problem.limits, "size": 0.02 * cm.metric("size", cm.sizes)}
    result = SEARCH_METHODS.build(name, {}).search(problem)
    assert result.bits is not None and result.bits == uniform_trial(problem).bits
    assert problem.costed(result.bits).fits(result.keep, problem.limits)


def test_erk_refuses_channels_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"'erk' allocates weight units.*--granularity weight"):
        SEARCH_METHODS.build("erk", {}).search(problem_at("channel", {"macs": 0.3}))
    with pytest.raises(UsageError, match="normalise 'median'"):
        SEARCH_METHODS.build("global", {"normalise": "median"})
    with pytest.raises(UsageError, match="lamp ranks by LAMP"):
        SEARCH_METHODS.build("lamp", {"normalise": "mean"})


def test_cli_refuses_erk_at_channel_granularity_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--model", "lenet5", "--dataset", "fake", "--limit", "16", "--method",
            "erk", "--budget-params", "10%", "--no-prune", "--quiet",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'erk' allocates weight units" in err.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())


def test_heuristics_need_the_models_weights_but_erk_only_its_shapes() -> None:
    _, _, cm = lenet("weight")
    bare = SearchProblem(cm, {"params": 0.1 * cm.metric("params", cm.sizes)})
    with pytest.raises(UsageError, match="needs the model's weights"):
        SEARCH_METHODS.build("global", {}).search(bare)
    assert SEARCH_METHODS.build("erk", {}).search(bare).score is None  # no evaluator: unscored
