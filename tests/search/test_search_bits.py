"""Search with bits (`--bits`): every method's allocation meets every budget at its widths."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from autoprune.cli.main import main
from autoprune.cost.kernel_counts import KernelCounts
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.errors import UsageError
from autoprune.graph.importance import kernel_importance
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.quant.bits import BIT_CHOICES, BitAllocation
from autoprune.quant.fake import on_levels
from autoprune.search import SEARCH_METHODS, SearchProblem
from autoprune.search.base import SearchContext, SearchMethod, SearchResult
from autoprune.search.bit_space import (
    BitSpace,
    fit_bits,
    fits_at_min_keep,
    layer_bits,
    smallest_bits,
    uniform_bits,
)
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator
from autoprune.search.testing import SyntheticEvaluator
from autoprune.train.data import load_dataset

LENET = (1, 28, 28)
METHODS = {"uniform": {}, "random": {"trials": 4}, "optuna": {"trials": 6, "artifacts": False}}


@cache
def lenet_cost_model(granularity: str = "channel") -> CostModel:
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    return CostModel(trace_units(model, LENET, granularity, "lenet5"))  # type: ignore[arg-type]


def limits_between(cm: CostModel, space: BitSpace, fractions: dict[str, float]) -> dict[str, float]:
    """Budgets a fraction of the way from the smallest model at the smallest widths to dense."""
    lo = min_keeps(cm.sizes, ProjectionConfig())
    small = cm.with_bits(smallest_bits(cm.graph, space))
    return {
        m: small.metric(m, lo) + f * (cm.metric(m, cm.sizes) - small.metric(m, lo))
        for m, f in fractions.items()
    }


def bits_problem(
    fractions: dict[str, float], space: BitSpace | None = None, seed: int = 0
) -> SearchProblem:
    cm = lenet_cost_model()
    space = space or BitSpace(act=(4, 8))
    return SearchProblem(
        cm,
        limits_between(cm, space, fractions),
        SyntheticEvaluator(cm.sizes),
        seed=seed,
        bits=space,
    )


def assert_meets(problem: SearchProblem, keep: np.ndarray, bits: BitAllocation) -> None:
    model = problem.costed(bits)
    for metric, limit in problem.limits.items():
        assert model.metric(metric, keep) <= limit + 1e-6, (
            metric,
            model.metric(metric, keep),
            limit,
        )
    assert problem.bits is not None
    for name, kernels in bits.weight.items():
        assert set(kernels) <= set(problem.bits.weight), name
        assert bits.act[name] in problem.bits.act


# --- the bit space and its helpers ---------------------------------------------------------------
def test_bit_space_parses_flags_and_rejects_bad_widths() -> None:
    space = BitSpace.parse("8,4,4", "6")
    assert space.weight == (4, 8) and space.act == (6,)
    assert BitSpace.parse(None, None) == BitSpace(BIT_CHOICES, (32,))
    with pytest.raises(UsageError, match="--weight-bits 16"):
        BitSpace.parse("16", None)
    with pytest.raises(UsageError, match="comma-separated"):
        BitSpace.parse(None, "four")


@pytest.mark.parametrize(
    "fractions", [{"size": 0.0003}, {"size": 0.0005, "bops": 0.0002}, {"bops": 0.0002}]
)
def test_fit_bits_lowers_widths_until_the_smallest_keeps_fit(fractions: dict[str, float]) -> None:
    problem = bits_problem(fractions)
    n = len(problem.cost_model.graph.layers)
    assert not fits_at_min_keep(problem, layer_bits(problem.cost_model.graph, [8] * n, [8] * n))
    bits = fit_bits(problem, BitSpace(act=(4, 8)), [8] * n, [8] * n)
    assert fits_at_min_keep(problem, bits)
    assert_meets(problem, problem.project(np.full(len(problem.sizes), 0.5), bits), bits)


def test_uniform_bits_takes_the_largest_widths_a_macs_budget_allows_and_fewer_under_size() -> None:
    cm = lenet_cost_model()
    ratios = np.full(len(cm.sizes), 0.5)
    macs_only = SearchProblem(cm, {"macs": 0.2 * cm.metric("macs", cm.sizes)}, bits=BitSpace())
    assert set(uniform_bits(macs_only, BitSpace(), ratios).weight["features.0"]) == {8}
    tight = bits_problem({"size": 0.001}, BitSpace())
    bits = uniform_bits(tight, BitSpace(), ratios)
    (width,) = {b for kernels in bits.weight.values() for b in kernels}
    assert width < 8


# --- every method with bits ----------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(
    "fractions", [{"size": 0.003}, {"size": 0.01, "macs": 0.2}, {"bops": 0.002, "params": 0.3}]
)
def test_every_method_chooses_bits_that_meet_every_budget(
    method: str, fractions: dict[str, float]
) -> None:
    problem = bits_problem(fractions)
    result = SEARCH_METHODS.get(method)(**METHODS[method]).search(problem)
    assert result.bits is not None
    assert_meets(problem, result.keep, result.bits)
    for trial in result.trials:
        assert trial.bits is not None
        assert_meets(problem, trial.keep, trial.bits)
    # the budget binds: little room is left in the tightest one
    model = problem.cost_model.with_bits(result.bits)
    assert max(model.metric(m, result.keep) / lim for m, lim in problem.limits.items()) > 0.9


def test_optuna_searches_activation_widths_per_layer_only_when_asked() -> None:
    fixed = SEARCH_METHODS.get("optuna")(trials=4, artifacts=False).search(
        bits_problem({"size": 0.005}, BitSpace(act=(8,)))
    )
    assert fixed.bits is not None and set(fixed.bits.act.values()) == {8}
    searched = SEARCH_METHODS.get("optuna")(trials=6, artifacts=False).search(
        bits_problem({"size": 0.005})
    )
    acts = {b for t in searched.trials if t.bits for b in t.bits.act.values()}
    assert acts == {4, 8}


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("uniform", {}),
        ("random", {"trials": 2}),
        ("optuna", {"trials": 3, "artifacts": False}),
        ("rl", {"episodes": 2, "warmup": 1}),
        ("dsa", {"steps": 4, "batch_size": 16}),
    ],
)
def test_every_method_with_bits_meets_the_budgets_scored_by_the_real_evaluator(
    method: str, options: dict[str, object]
) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    graph = trace_units(model, LENET, "channel", "lenet5")
    data = load_dataset("fake", input_size=LENET, limit=64)
    cm, space = CostModel(graph), BitSpace(act=(4, 8))
    evaluate = MaskEvaluator.from_splits(model, graph, data, EvaluatorConfig(bn_batches=1))
    problem = SearchProblem(
        cm, limits_between(cm, space, {"size": 0.003, "macs": 0.3}), evaluate, bits=space,
        context=SearchContext(model, graph, data.train, data.val),
        kernel_counts=KernelCounts(cm, evaluate.scores),
    )  # fmt: skip
    result = SEARCH_METHODS.get(method)(**options).search(problem)
    assert result.bits is not None
    assert_meets(problem, result.keep, result.bits)  # priced exactly, kernel by kernel
    assert result.score == evaluate(result.keep, result.bits)  # scored quantised, as chosen
    assert all(isinstance(key[0], tuple) for key in evaluate.cache)  # every call carried bits
    model_at = problem.costed(result.bits)
    assert max(model_at.metric(m, result.keep) / v for m, v in problem.limits.items()) > 0.9


def test_optuna_notes_the_widths_and_keeps_studies_with_and_without_bits_apart(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search = SEARCH_METHODS.get("optuna")(trials=2, artifacts=False, storage=url, study="s")
    search.search(bits_problem({"size": 0.005}))
    study = optuna.load_study(study_name="s", storage=url)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    trial_id = study.trials[0]._trial_id
    note = "".join(
        v for k, v in sorted(attrs.items()) if k.startswith(f"dashboard:{trial_id}:note_str")
    )
    assert "| layer | weight bits | mean | activation bits |" in note and "| features.0 |" in note
    plain = bits_problem({"size": 0.005})
    plain.bits = None
    with pytest.raises(UsageError, match="bits"):
        search.search(plain)


# --- scoring with bits ---------------------------------------------------------------------------
def test_evaluator_scores_quantised_allocations_and_caches_them_apart() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    with torch.no_grad():  # large logits: an untrained net's loss then follows its weights
        model.get_submodule("classifier.2").weight.mul_(30)
    graph = trace_units(model, LENET, "channel", "lenet5")
    data = load_dataset("fake", input_size=LENET, limit=64)
    evaluate = MaskEvaluator.from_splits(model, graph, data, EvaluatorConfig(bn_batches=0))
    keep = np.array(graph.sizes) // 2
    plain = evaluate.evaluate(keep)
    narrow_bits = BitAllocation.uniform(graph, 2, 2)
    narrow = evaluate.evaluate(keep, narrow_bits)
    # what was scored: masked weights on their kernels' 2-bit levels
    scored = evaluate.prepared(keep, narrow_bits)
    for lay in graph.layers:
        w = scored.get_submodule(lay.name).weight.detach()
        assert on_levels(w, narrow_bits.weight[lay.name])
        assert len(torch.unique((w[0][w[0] != 0] * 1e5).round())) <= 4  # 2^2 levels
    wide = evaluate.evaluate(keep, BitAllocation.uniform(graph, 8, 8))
    assert evaluate.calls == 3 and len(evaluate.cache) == 3
    # 8-bit weights and calibrated 8-bit activations barely move the loss; 2 bits do
    assert abs(wide.loss - plain.loss) < 0.02 * plain.loss
    assert abs(narrow.loss - plain.loss) > 0.02 * plain.loss
    assert evaluate.evaluate(keep).loss == plain.loss  # cached
    evaluate.cache.clear()
    assert evaluate.evaluate(keep).loss == pytest.approx(plain.loss, rel=1e-6)  # weights restored
    assert not any(m._forward_pre_hooks for m in evaluate.model.modules())  # activation hooks gone


def test_kernel_importance_is_the_l1_norm_of_each_output_row() -> None:
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    graph = lenet_cost_model().graph
    imp = kernel_importance(model, graph)
    w = model.get_submodule("features.0").weight
    assert np.allclose(imp["features.0"], w.detach().abs().sum(dim=(1, 2, 3)).numpy(), rtol=1e-5)
    assert {k: len(v) for k, v in imp.items()} == {
        lay.name: lay.out_channels for lay in graph.layers
    }


# --- the command line ----------------------------------------------------------------------------
@pytest.mark.slow  # ~8 s: the run is exported and its latency measured
def test_cli_search_with_bits_writes_bits_that_meet_the_size_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", "lenet5", "--dataset", "fake", "--limit", "32",
            "--dense-epochs", "0", "--method", "random", "--trials", "2", "--bits",
            "--weight-bits", "2,4,8", "--budget-size", "12KB", "--budget-flops", "30%",
            "--no-prune", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    alloc = json.loads((out / "allocation.json").read_text())
    assert set(alloc["act_bits"].values()) == {32}
    assert all(set(k) <= {2, 4, 8} for k in alloc["weight_bits"].values())
    assert alloc["predicted"]["size"] <= 12_000
    assert alloc["provenance"]["bit_space"] == {"weight": [2, 4, 8], "act": [32]}
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 2 and all("bits" in t for t in trials)


class KeepsOnly(SearchMethod):
    name = "keeps-only"

    def search(self, problem: SearchProblem) -> SearchResult:
        raise AssertionError("never reached: --bits is refused first")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--act-bits", "8"], "add --bits"),
        (["--bits", "--method", "keeps-only"], "does not choose bits"),
        (["--bits", "--weight-bits", "0"], "--weight-bits 0"),
    ],
)
def test_cli_rejects_bits_flags_it_cannot_honour(
    extra: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every built-in method chooses bits; a user's method may not
    monkeypatch.setitem(SEARCH_METHODS._items, "keeps-only", KeepsOnly)
    argv = ["search", "--model", "lenet5", "--dataset", "fake", "--limit", "16",
            "--dense-epochs", "0", "--budget-flops", "50%", "--no-prune", "--quiet",
            "--out", str(tmp_path / "r"), *extra]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
