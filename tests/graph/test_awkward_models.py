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
from autoprune.models.attention import pack_attention

SIZE = (3, 16, 16)
BUDGET = 0.5  # of the dense MACs: every model meets it (every unit is prunable)


def build(name: str) -> torch.nn.Module:
    """An awkward model as `build_model` gives it: nn.MultiheadAttention packed."""
    return pack_attention(getattr(awkward, name)())


@pytest.mark.parametrize("name", awkward.MODELS)
def test_every_unit_is_prunable(name: str) -> None:
    graph = trace_units(build(name), SIZE, "channel", name)
    assert graph.frozen == []
    assert graph.units and all(u.size >= 2 for u in graph.units)
    assert graph.unpriced_macs == 0  # attention matmuls are priced per head


def test_raw_multihead_attention_freezes_the_stream_and_packed_prunes_heads() -> None:
    """nn.MultiheadAttention's own projection is no layer: the stream through it stays whole
    (with the reason said); packed, the stream and every head are units."""
    raw = trace_units(awkward.TinyViT(), SIZE, "channel", "raw")
    assert {f.name for f in raw.frozen} == {"encoder.layers.1.linear2"}
    assert all("MultiheadAttention" in f.reason for f in raw.frozen)
    assert not raw.matmuls and raw.unpriced_macs > 0  # its projections, a constant
    packed = trace_units(build("TinyViT"), SIZE, "channel", "packed")
    names = {u.name for u in packed.units}
    assert {"encoder.layers.1.linear2", "encoder.layers.0.self_attn.heads"} <= names


@pytest.mark.parametrize("name", awkward.MODELS)
def test_half_the_macs_slims_to_exactly_the_priced_model(name: str) -> None:
    model = build(name).eval()
    graph = trace_units(model, SIZE, "channel", name)
    cm = CostModel(graph)
    dense = cm.costs(cm.dense_keep)
    assert dense.macs == count_macs(model, SIZE) and dense.params == count_params(model)
    budget = BUDGET * dense.macs
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
    share = BUDGET
    for method, extra in (("uniform", ()), ("optuna", ("--trials", "4"))):
        metrics = _search(tmp_path, name, method, f"{100 * share:g}%", *extra)
        assert metrics["final"]["macs"] == metrics["predicted"]["macs"]
        assert metrics["final"]["params"] == metrics["predicted"]["params"]
        assert metrics["final"]["macs"] <= share * metrics["dense"]["macs"]


@pytest.mark.parametrize("name", ["Swin", "SwinV2", "MaxViT", "TinyViT", "ViT"])
def test_attention_heads_are_units_and_their_matmuls_are_priced(name: str) -> None:
    model = build(name).eval()
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
    assert cm.attention_macs(keep) == one_head
    # the bmm of Swin and MaxViT, and the scaled-dot-product kernel of packed multi-head
    # attention (macs_counter gives its CPU kernel a formula), in the model and its export alike
    assert one_head > 0
    assert count_macs(slimmed, SIZE) == cm.costs(keep).macs
    assert count_params(slimmed) == cm.costs(keep).params
    exported = torch.export.export(slimmed, (torch.zeros(1, *SIZE),)).module()
    assert count_macs(exported, SIZE) == cm.costs(keep).macs
