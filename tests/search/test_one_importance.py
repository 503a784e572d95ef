"""One importance, recorded: taylor without gradients raises, the search's importance is the one
an export and the bit pricing use, and the evaluator carries nothing from one call to the next."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoprune.allocation import Allocation
from autoprune.cli.main import main
from autoprune.errors import AllocationError, UsageError
from autoprune.graph.importance import score_units, top_k
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.pipeline.load import Loaded, trace
from autoprune.pipeline.prune import _recorded_scores
from autoprune.quant.bits import BitAllocation
from autoprune.search.evaluator import (
    EvaluatorConfig,
    MaskEvaluator,
    accumulate_gradients,
    element_scores,
    first_batches,
)

LENET = (1, 28, 28)


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_taylor_without_gradients_raises_instead_of_keeping_the_first_elements(
    granularity: str, digits_lenet: Loaded
) -> None:
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    graph = trace_units(model, LENET, granularity, "lenet5")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"taylor.*has no gradients.*--importance l1"):
        score_units(model, graph.units, "taylor")
    # with gradients (as the evaluator accumulates them) every unit scores
    graph, _ = trace(digits_lenet, granularity)  # type: ignore[arg-type]
    net = digits_lenet.model
    scores = element_scores(net, graph, "taylor", digits_lenet.data.train)
    assert all(float(s.sum()) > 0 and len(torch.unique(s)) > 1 for s in scores)
    assert all(p.grad is None for p in net.parameters())  # on a copy: the model is left alone


def test_element_scores_equal_the_evaluators_own(digits_lenet: Loaded) -> None:
    graph, _ = trace(digits_lenet, "channel")
    cfg = EvaluatorConfig(importance="taylor", seed=3, bn_batches=1)
    ev = MaskEvaluator.from_splits(digits_lenet.model, graph, digits_lenet.data, cfg)
    scores = element_scores(digits_lenet.model, graph, "taylor", digits_lenet.data.train, cfg)
    assert all(torch.equal(a, b) for a, b in zip(ev.scores, scores, strict=True))
    other = EvaluatorConfig(importance="taylor", seed=4)  # other batches, other gradients
    moved = element_scores(digits_lenet.model, graph, "taylor", digits_lenet.data.train, other)
    assert not all(torch.equal(a, b) for a, b in zip(ev.scores, moved, strict=True))


def test_an_evaluator_call_leaves_nothing_for_the_next(digits_lenet: Loaded) -> None:
    graph, _ = trace(digits_lenet, "channel")
    cfg = EvaluatorConfig(finetune_steps=3, bn_batches=2, physical=True)
    sizes = np.array(graph.sizes)
    half, third = sizes // 2, np.maximum(1, sizes // 3)
    fresh = MaskEvaluator.from_splits(digits_lenet.model, graph, digits_lenet.data, cfg)
    expected = fresh.evaluate(third)
    used = MaskEvaluator.from_splits(digits_lenet.model, graph, digits_lenet.data, cfg)
    dense = {k: v.clone() for k, v in used.model.state_dict().items()}
    used.evaluate(half, BitAllocation.uniform(graph, 2, 8))  # fine-tunes and quantises a copy
    used.evaluate(half)
    after = used.evaluate(third)  # the physical path slims the dense model, not the last one
    assert (after.accuracy, after.loss) == (expected.accuracy, expected.loss)
    assert all(torch.equal(v, dense[k]) for k, v in used.model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in used.model.modules())


@pytest.mark.slow  # ~15 s: a search run exported end to end
def test_no_prune_exports_the_elements_the_proxy_scored(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", "lenet5", "--dataset", "fake", "--limit", "32",
            "--dense-epochs", "0", "--method", "random", "--trials", "2",
            "--eval-importance", "l2", "--importance", "l1", "--budget-flops", "30%",
            "--no-prune", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    alloc = Allocation.load(out / "allocation.json")
    assert alloc.importance == "l2"
    assert json.loads((out / "allocation.json").read_text())["importance"] == "l2"
    dense = torch.load(out / "dense" / "checkpoint.pt", weights_only=True)["state_dict"]
    final = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    model = build_model("lenet5", num_classes=10, input_size=LENET)
    model.load_state_dict(dense)
    graph = trace_units(model, LENET, "channel", "lenet5")
    unit = [u.name for u in graph.units].index("classifier.0")
    keep = int(alloc.keep[unit])
    by = {imp: top_k(score_units(model, graph.units, imp)[unit], keep) for imp in ("l1", "l2")}
    assert not torch.equal(by["l1"], by["l2"])  # the two measures disagree here
    # the classifier's inputs are classifier.0's kept outputs: the l2 ones, as scored
    assert torch.equal(final["classifier.2.weight"], dense["classifier.2.weight"][:, by["l2"]])


def test_prune_prices_bits_by_the_recorded_importance(digits_lenet: Loaded, tmp_path: Path) -> None:
    graph, _ = trace(digits_lenet, "channel")
    keep = np.array(graph.sizes) // 2
    for recorded, expected in ((None, "l1"), ("l2", "l2"), ("taylor", "taylor")):
        alloc = Allocation.from_keep(graph, keep, num_classes=10, importance=recorded, seed=2)
        alloc.save(tmp_path / "a.json")
        scores = _recorded_scores(Allocation.load(tmp_path / "a.json"), digits_lenet, graph)
        cfg = EvaluatorConfig(importance=expected, seed=2)
        want = element_scores(digits_lenet.model, graph, expected, digits_lenet.data.train, cfg)
        assert all(torch.equal(a, b) for a, b in zip(scores, want, strict=True)), recorded
    data = alloc.to_dict() | {"importance": "l3"}
    with pytest.raises(AllocationError, match="importance 'l3'"):
        Allocation.from_dict(data)


def test_first_batches_are_a_prefix_of_the_evaluators_order(digits_lenet: Loaded) -> None:
    cfg = EvaluatorConfig(batch_size=16, seed=5)
    two, four = (first_batches(digits_lenet.data.train, cfg, n) for n in (2, 4))
    assert len(four) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(two, four, strict=False))
    model = build_model("lenet5", num_classes=10, input_size=(1, 16, 16))
    accumulate_gradients(model, two)
    assert all(p.grad is not None for p in model.parameters())
