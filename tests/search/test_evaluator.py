"""The shared evaluator: validation only, importance from the registry, BN recalibration, cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from autoprune.errors import UsageError
from autoprune.graph.units import UnitGraph
from autoprune.pipeline.load import Loaded, load_model_and_data, trace
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator


class _Forbidden(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A test split that fails on any access."""

    def __len__(self) -> int:
        raise AssertionError("the evaluator read the test split")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("the evaluator read the test split")


def _loaded(model: str, size: tuple[int, int, int]) -> tuple[Loaded, UnitGraph]:
    loaded = load_model_and_data(model=model, dataset="fake", input_size=size)
    graph, _ = trace(loaded, "channel")
    return loaded, graph


@pytest.fixture(scope="module")
def lenet() -> tuple[Loaded, UnitGraph]:
    return _loaded("lenet5", (1, 28, 28))


def test_never_reads_the_test_split(lenet: tuple[Loaded, UnitGraph]) -> None:
    loaded, graph = lenet
    data = dataclasses.replace(loaded.data, test=_Forbidden())
    for importance in ("l1", "taylor"):
        cfg = EvaluatorConfig(importance=importance, finetune_steps=2, bn_batches=1)
        ev = MaskEvaluator.from_splits(loaded.model, graph, data, cfg)
        result = ev.evaluate(np.array(graph.sizes) // 2)
        assert (
            result.n == len(loaded.data.val) and 0.0 <= result.accuracy <= 1.0 and result.loss > 0
        )


def test_scores_are_cached_and_the_dense_model_is_untouched(
    lenet: tuple[Loaded, UnitGraph], monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded, graph = lenet
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    cfg = EvaluatorConfig(val_limit=20)
    ev = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg)
    sizes = np.array(graph.sizes)
    small_keep = np.maximum(1, sizes // 10)
    dense, small = ev.evaluate(sizes), ev.evaluate(small_keep)
    assert dense.n == 20 and (small.accuracy, small.loss) != (dense.accuracy, dense.loss)

    # a second look is answered from the cache: the scorer is not called again
    def no_rescoring(*args: object) -> None:
        raise AssertionError("a cached allocation was scored again")

    monkeypatch.setattr(ev, "_score", no_rescoring)
    assert ev.evaluate(sizes) == dense and ev(small_keep) == small.accuracy and ev.calls == 2
    # and what it stored is the allocation's own score, as a fresh evaluator computes it
    fresh = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg)
    assert fresh.evaluate(small_keep) == small and fresh.evaluate(sizes) == dense
    # the dense score is the unpruned model's own accuracy
    x, y = next(iter(torch.utils.data.DataLoader(loaded.data.val, batch_size=20)))
    with torch.no_grad():
        assert dense.accuracy == pytest.approx(
            float((loaded.model.eval()(x).argmax(1) == y).float().mean())
        )
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_taylor_ranks_by_gradients_and_leaves_none_behind(lenet: tuple[Loaded, UnitGraph]) -> None:
    loaded, graph = lenet
    l1 = MaskEvaluator.from_splits(
        loaded.model, graph, loaded.data, EvaluatorConfig(importance="l1")
    )
    taylor = MaskEvaluator.from_splits(
        loaded.model, graph, loaded.data, EvaluatorConfig(importance="taylor")
    )
    assert any(
        not torch.equal(a.argsort(), b.argsort())
        for a, b in zip(l1.scores, taylor.scores, strict=True)
    )
    assert all(p.grad is None for p in taylor.model.parameters())


def test_bn_recalibration_and_physical_scoring_agree() -> None:
    loaded, graph = _loaded("resnet20", (3, 32, 32))
    keep = np.maximum(1, np.array(graph.sizes) // 3)
    scores = {}
    for physical in (False, True):
        cfg = EvaluatorConfig(bn_batches=1, batch_size=64, physical=physical)
        ev = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg)
        assert ev.physical is physical
        scores[physical] = ev.evaluate(keep)
    assert scores[True].accuracy == scores[False].accuracy
    assert scores[True].loss == pytest.approx(scores[False].loss, rel=1e-4)
    without = MaskEvaluator.from_splits(
        loaded.model, graph, loaded.data, EvaluatorConfig(bn_batches=0)
    )
    assert without.evaluate(keep).loss != pytest.approx(scores[False].loss, rel=1e-4)


def test_bad_config_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown importance measure 'l3'"):
        EvaluatorConfig(importance="l3")
    with pytest.raises(UsageError, match="bn_batches must be an integer >= 0, got -1"):
        EvaluatorConfig(bn_batches=-1)
