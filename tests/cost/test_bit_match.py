"""Budgets with kernel-wise bits hold on the exported artifact, whatever kernels a backend keeps.

A contrary backend keeps each unit's least important elements, so it never keeps what the search
priced; the bits are spread so that those kernels are the expensive ones (a synthetic worst case:
rl gives more bits to important kernels, but a backend that disagrees with the evaluator moves
nonzeros onto kernels of other widths all the same).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from autoprune.allocation import Allocation
from autoprune.backends.base import BACKENDS, BackendConfig
from autoprune.backends.common import param_dtype
from autoprune.backends.loop import MaskTrainer
from autoprune.cli.main import main
from autoprune.cost.bit_match import PricedKernels, kept_counts, match_rows
from autoprune.cost.budgets import Budget
from autoprune.cost.kernel_counts import KernelCounts, priced
from autoprune.errors import BudgetBrokenError
from autoprune.graph.importance import kernel_importance, score_units
from autoprune.graph.masking import UnitMap, apply_masks, keep_vectors
from autoprune.pipeline import finish as runs
from autoprune.pipeline.load import CHECKPOINT_KIND_DENSE, Loaded, load_model_and_data, trace
from autoprune.pipeline.load import checkpoint_meta as _meta
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.quant.bits import BitAllocation, artifact_bytes
from autoprune.train.checkpoint import save_checkpoint

LIMIT = 96


@dataclass
class NoOptions:
    pass


def lowest_l1(model: nn.Module, graph: Any, keep: list[int]) -> list[Tensor]:
    """Each unit's `keep` least important elements (l1), sorted."""
    scores = score_units(model, graph.units)
    return [
        torch.argsort(s, stable=True)[:k].sort().values for s, k in zip(scores, keep, strict=True)
    ]


class Contrary(MaskTrainer):
    """Keeps every unit's lowest-l1 elements: never what the search priced."""

    name = "contrary"
    Options = NoOptions

    def setup(self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: Any, opts: Any) -> None:
        self.current = lowest_l1(model, self.graph, keep)
        apply_masks(model, umap.masks(keep_vectors(umap.sizes, self.current, param_dtype(model))))

    def final_kept(self, model: nn.Module) -> list[Tensor]:
        return self.current


@pytest.fixture(autouse=True)
def no_latency(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latency is not under test here, and timing it is most of a run's seconds."""

    def fake(dense: nn.Module, final: nn.Module, input_size: Any, **kw: Any) -> dict[str, Any]:
        return {"dense_s": 1e-3, "final_s": 1e-3, "speedup": 1.0, "batch": 1, "machine": {}}

    monkeypatch.setattr(runs, "measure_run_latency", fake)


@pytest.fixture
def contrary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS._items, "contrary", Contrary)


def expensive_where_unimportant(loaded: Loaded, graph: Any) -> BitAllocation:
    """8 bits on each layer's least important third of kernels, 3 and 2 on the others."""
    importance = kernel_importance(loaded.model, graph)
    weight = {}
    for name, imp in importance.items():
        rank = np.argsort(np.argsort(imp, kind="stable"), kind="stable")  # 0 = least important
        weight[name] = tuple(
            8 if 3 * r < len(imp) else 3 if 3 * r < 2 * len(imp) else 2 for r in rank
        )
    return BitAllocation(weight, {name: 8 for name in weight})


def write_allocation(
    tmp_path: Path, granularity: str
) -> tuple[Path, dict[str, float], BitAllocation]:
    """A dense checkpoint and an allocation whose size/BOPs budgets are exactly its priced costs."""
    loaded = load_model_and_data(model="lenet5", dataset="digits", limit=LIMIT)
    ckpt = tmp_path / "dense.pt"
    save_checkpoint(
        ckpt, state_dict=loaded.model.state_dict(), meta=_meta(loaded, CHECKPOINT_KIND_DENSE, 0)
    )
    graph, cm = trace(loaded, granularity)  # type: ignore[arg-type]
    keep = np.array([max(1, u.size // (2 if granularity == "channel" else 5)) for u in graph.units])
    bits = expensive_where_unimportant(loaded, graph)
    costs = priced(cm, bits, KernelCounts(cm, score_units(loaded.model, graph.units)))
    predicted = {m: costs.metric(m, keep) for m in ("size", "bops")}
    dense = {m: costs.metric(m, cm.dense_keep) for m in ("size", "bops")}
    budgets = [Budget("size", predicted["size"]), Budget("bops", predicted["bops"])]
    alloc = Allocation.from_keep(graph, keep, num_classes=loaded.num_classes, budgets=budgets,
                                 predicted=predicted, dense=dense, dataset="digits",
                                 checkpoint=str(ckpt), bits=bits)  # fmt: skip
    path = tmp_path / "allocation.json"
    alloc.save(path)
    return path, predicted, bits


def prune(path: Path, out: Path, epochs: int = 1) -> dict[str, Any]:
    """`autoprune prune` with the contrary backend: one batch per phase, the last one QAT."""
    cfg = BackendConfig(epochs=epochs, finetune_epochs=epochs, batch_size=LIMIT, progress=False)
    return run_prune(PruneRun(allocation=str(path), out=str(out), backend="contrary",
                              backend_cfg=cfg, limit=LIMIT, progress=False))  # fmt: skip


@pytest.mark.parametrize("granularity", ["channel", "weight"])
def test_artifact_meets_budgets_priced_on_other_kernels(
    granularity: str, tmp_path: Path, contrary: None
) -> None:
    path, predicted, bits = write_allocation(tmp_path, granularity)
    metrics = prune(path, tmp_path / "run")
    art = metrics["artifact"]
    assert all(c["met"] for c in metrics["budgets"].values())
    assert art["bytes"] == (tmp_path / "run" / "model.apq").stat().st_size == predicted["size"]
    assert art["bops"] == pytest.approx(predicted["bops"], rel=1e-12)
    saved = json.loads((tmp_path / "run" / "allocation.json").read_text())["weight_bits"]
    for name, b in bits.weight.items():  # kernels trade bits within a layer, never gain any
        assert sorted(saved[name]) == sorted(b)
    if granularity == "weight":  # the nonzeros per kernel are the priced ones
        loaded = load_model_and_data(model="lenet5", dataset="digits", limit=LIMIT)
        graph, cm = trace(loaded, "weight")
        counts = KernelCounts(cm, score_units(loaded.model, graph.units))(
            Allocation.load(path).keep
        )
        assert art["kernel_nonzeros"] == counts


def test_a_budget_broken_on_the_artifact_fails_and_writes_nothing(
    tmp_path: Path, contrary: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _, _ = write_allocation(tmp_path, "channel")

    def unmatched(counts: KernelCounts, keep: Any, model: nn.Module) -> Any:
        return lambda kept, model, bits: (kept, bits)

    monkeypatch.setattr(PricedKernels, "at", staticmethod(unmatched))
    with pytest.raises(BudgetBrokenError, match=r"size .* > .*model\.apq") as err:
        prune(path, tmp_path / "run", epochs=0)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["allocation.json", "dense.pt"]


def test_match_rows_keeps_the_priced_count_per_kernel_backend_choices_first() -> None:
    loaded = load_model_and_data(model="lenet5", dataset="digits", limit=LIMIT)
    graph, cm = trace(loaded, "weight")
    keep = [u.size // 4 for u in graph.units]
    wanted = KernelCounts(cm, score_units(loaded.model, graph.units))(keep)
    backend = [torch.randperm(u.size, generator=torch.Generator().manual_seed(i))[:k].sort().values
               for i, (u, k) in enumerate(zip(graph.units, keep, strict=True))]  # fmt: skip
    kept = match_rows(graph, backend, wanted, loaded.model)
    assert kept_counts(cm, kept) == wanted
    for unit, before, after, k in zip(graph.units, backend, kept, keep, strict=True):
        assert len(after) == k and len(set(after.tolist())) == k
        # each kernel keeps as many of the backend's choices as its quota allows
        quota = torch.tensor(wanted[unit.name.removesuffix(".weight")])
        per_row = unit.size // len(quota)
        ours = torch.bincount(before // per_row, minlength=len(quota))
        both = torch.tensor(sorted(set(after.tolist()) & set(before.tolist())), dtype=torch.int64)
        assert torch.bincount(both // per_row, minlength=len(quota)).equal(
            torch.minimum(ours, quota)
        )
    assert match_rows(graph, kept, wanted, loaded.model)[0].equal(kept[0])  # idempotent (resume)


def test_match_bits_prices_the_kept_kernels_as_the_search_did() -> None:
    loaded = load_model_and_data(model="lenet5", dataset="digits", limit=LIMIT)
    graph, cm = trace(loaded, "channel")
    keep = [u.size // 2 for u in graph.units]
    bits = expensive_where_unimportant(loaded, graph)
    priced_kernels = PricedKernels.at(
        KernelCounts(cm, score_units(loaded.model, graph.units)), keep, loaded.model
    )
    lowest = lowest_l1(loaded.model, graph, keep)
    actual = kept_counts(cm, lowest)
    priced_bytes = artifact_bytes(graph, bits, priced_kernels.counts)
    assert artifact_bytes(graph, bits, actual) > priced_bytes  # the defect being fixed
    same, matched = priced_kernels(lowest, loaded.model, bits)
    assert same is lowest
    assert artifact_bytes(graph, matched, actual) == priced_bytes


def test_search_no_prune_calibrates_activations_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["search", "--model", "lenet5", "--dataset", "digits", "--limit", str(LIMIT),
            "--dense-epochs", "0", "--method", "uniform", "--bits", "--act-bits", "8",
            "--budget-size", "20KB", "--no-prune", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "model.apq").is_file() and (out / "model.pt2").is_file()
    scales = metrics["artifact"]["act_scales"]
    assert set(scales) == {"features.0", "features.2", "classifier.0", "classifier.2"}
    assert all(s > 0 and s != 1.0 for s in scales.values())  # calibrated, not the default
    assert metrics["budgets"]["size"]["met"]
    assert metrics["artifact"]["bytes"] == metrics["predicted"]["size"]
