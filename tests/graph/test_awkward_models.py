"""Every awkward topology is prunable with exact costs: slimmed = masked, priced = measured.

Fast tests drive the library directly (trace, uniform projection at 50% MACs, slim, measure);
the slow ones run `autoprune search` with uniform and optuna and measure the exported program.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import awkward
import numpy as np
import pytest
import torch

from autoprune.cli.main import main
from autoprune.cost.measure import count_macs, count_params
from autoprune.cost.model import CostModel
from autoprune.cost.projection import project
from autoprune.graph.masking import apply_masks, element_masks, select_kept, slim
from autoprune.graph.units import trace_units

SIZE = (3, 16, 16)
# What stays frozen, and why: nn.MultiheadAttention's projections (and the head layout its
# attention scale depends on) are outside the cost model, so the residual stream that feeds
# it is kept whole; the MLP hidden widths stay prunable, the attention's MACs a priced constant.
FROZEN = {"TinyViT": {"encoder.layers.1.linear2"}}
# the budget each model can meet: the ViT's frozen stream and attention are 57% of its MACs
BUDGET = {"TinyViT": 0.7}


@pytest.mark.parametrize("name", awkward.MODELS)
def test_units_are_prunable_or_frozen_as_documented(name: str) -> None:
    graph = trace_units(getattr(awkward, name)(), SIZE, "channel", name)
    assert {f.name for f in graph.frozen} == FROZEN.get(name, set())
    assert graph.units and all(u.size >= 2 for u in graph.units)
    if name in FROZEN:
        assert all("MultiheadAttention" in f.reason for f in graph.frozen)
        assert graph.unpriced_macs > 0  # the attention matmuls, priced as a constant


@pytest.mark.parametrize("name", awkward.MODELS)
def test_half_the_macs_slims_to_exactly_the_priced_model(name: str) -> None:
    model = getattr(awkward, name)().eval()
    graph = trace_units(model, SIZE, "channel", name)
    cm = CostModel(graph)
    dense = cm.costs(cm.dense_keep)
    assert dense.macs == count_macs(model, SIZE) and dense.params == count_params(model)
    budget = BUDGET.get(name, 0.5) * dense.macs
    keep = project(np.full(len(graph.units), 0.5), cm, {"macs": budget})
    assert (keep < cm.sizes).any()
    kept = select_kept(model, graph, keep)
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    masked = copy.deepcopy(model)
    apply_masks(masked, element_masks(masked, graph, kept))
    slimmed = slim(copy.deepcopy(model), graph, kept).eval()
    with torch.no_grad():
        want, got = masked(x), slimmed(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert count_macs(slimmed, SIZE) == cm.costs(keep).macs <= budget
    assert count_params(slimmed) == cm.costs(keep).params


def test_grouped_convolution_keeps_its_groups_and_prunes_positions() -> None:
    model = awkward.Grouped()
    graph = trace_units(model, SIZE, "channel", "grouped")
    sizes = {u.name: u.size for u in graph.units}
    assert sizes == {"proj.0": 24, "group.0": 8, "stem.0": 4}  # 32 / 4 groups, 16 / 4 groups
    kept = [torch.arange(u.size // 2) for u in graph.units]
    slimmed = slim(copy.deepcopy(model), graph, kept)
    assert slimmed.group[0].groups == 4 and slimmed.group[0].weight.shape[:2] == (16, 2)


def test_group_norm_loses_whole_groups() -> None:
    graph = trace_units(awkward.GroupNormNet(), SIZE, "channel", "gn")
    assert {u.name: u.size for u in graph.units}["conv"] == 4  # the 4 groups of 6 channels
    slimmed = slim(awkward.GroupNormNet(), graph, [torch.arange(2), torch.arange(16)])
    assert (slimmed.norm.num_groups, slimmed.norm.num_channels) == (2, 12)


def _search(tmp: Path, name: str, method: str, budget: str, *extra: str) -> dict:
    out = tmp / f"{name}-{method}"
    args = ["search", "--model", f"awkward:{name}", "--dataset", "fake", "--input-size",
            "3x16x16", "--method", method, "--budget-flops", budget, "--no-prune", "--quiet",
            "--limit", "64", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("name", awkward.MODELS)
def test_uniform_and_optuna_exports_are_priced_exactly(tmp_path: Path, name: str) -> None:
    share = BUDGET.get(name, 0.5)
    for method, extra in (("uniform", ()), ("optuna", ("--trials", "4"))):
        metrics = _search(tmp_path, name, method, f"{100 * share:g}%", *extra)
        assert metrics["final"]["macs"] == metrics["predicted"]["macs"]
        assert metrics["final"]["params"] == metrics["predicted"]["params"]
        assert metrics["final"]["macs"] <= share * metrics["dense"]["macs"]


@pytest.mark.parametrize("name", ["Swin", "SwinV2", "MaxViT"])
def test_attention_heads_are_units_and_their_matmuls_are_priced(name: str) -> None:
    model = getattr(awkward, name)().eval()
    graph = trace_units(model, SIZE, "channel", name)
    heads = {u.name.removesuffix(".heads"): u for u in graph.units if u.name.endswith(".heads")}
    assert heads and set(heads) == set(graph.matmuls)
    assert graph.unpriced_macs == 0  # every attention matmul is priced per head
    # one head kept in every attention module, half of every other unit
    keep = [1 if u.name.endswith(".heads") else u.size // 2 for u in graph.units]
    kept = [torch.arange(k) + (u.size - k) for u, k in zip(graph.units, keep, strict=True)]
    masked = copy.deepcopy(model)
    apply_masks(masked, element_masks(masked, graph, kept))
    slimmed = slim(copy.deepcopy(model), graph, kept).eval()
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = masked(x), slimmed(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    for path in heads:
        attn = slimmed.get_submodule(path)
        assert getattr(attn, "num_heads", getattr(attn, "n_heads", None)) == 1
    cm = CostModel(graph)
    one_head = sum(per for _, per in graph.matmuls.values())
    assert cm.attention_macs(keep) == one_head < cm.attention_macs(cm.dense_keep)
    assert count_macs(slimmed, SIZE) == cm.costs(keep).macs
    assert count_params(slimmed) == cm.costs(keep).params
    exported = torch.export.export(slimmed, (torch.zeros(1, *SIZE),)).module()
    assert count_macs(exported, SIZE) == cm.costs(keep).macs
