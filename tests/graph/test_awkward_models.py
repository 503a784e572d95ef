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
# What stays frozen, and why: nn.MultiheadAttention's projections and attention matmuls are
# outside the cost model (it prices conv / linear modules and norms), so every unit that prunes
# one is kept whole. Everything else is prunable.
FROZEN = {"TinyViT": {"encoder.layers.0.linear1", "encoder.layers.1.linear1",
                      "encoder.layers.1.linear2"}}  # fmt: skip
PRUNABLE = [m for m in awkward.MODELS if m not in FROZEN]


@pytest.mark.parametrize("name", awkward.MODELS)
def test_units_are_prunable_or_frozen_as_documented(name: str) -> None:
    graph = trace_units(getattr(awkward, name)(), SIZE, "channel", name)
    assert {f.name for f in graph.frozen} == FROZEN.get(name, set())
    if name in PRUNABLE:
        assert graph.units and all(u.size >= 2 for u in graph.units)


@pytest.mark.parametrize("name", PRUNABLE)
def test_half_the_macs_slims_to_exactly_the_priced_model(name: str) -> None:
    model = getattr(awkward, name)().eval()
    graph = trace_units(model, SIZE, "channel", name)
    cm = CostModel(graph)
    dense = cm.costs(cm.dense_keep)
    assert dense.macs == count_macs(model, SIZE) and dense.params == count_params(model)
    keep = project(np.full(len(graph.units), 0.5), cm, {"macs": 0.5 * dense.macs})
    assert (keep < cm.sizes).any()
    kept = select_kept(model, graph, keep)
    x = torch.randn(2, *SIZE, generator=torch.Generator().manual_seed(1))
    masked = copy.deepcopy(model)
    apply_masks(masked, element_masks(masked, graph, kept))
    slimmed = slim(copy.deepcopy(model), graph, kept).eval()
    with torch.no_grad():
        want, got = masked(x), slimmed(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert count_macs(slimmed, SIZE) == cm.costs(keep).macs <= 0.5 * dense.macs
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


def _search(tmp: Path, name: str, method: str, *extra: str) -> dict:
    out = tmp / f"{name}-{method}"
    args = ["search", "--model", f"awkward:{name}", "--dataset", "fake", "--input-size",
            "3x16x16", "--method", method, "--budget-flops", "50%", "--no-prune", "--quiet",
            "--limit", "64", "--out", str(out), *extra]  # fmt: skip
    assert main(args) == 0
    return dict(json.loads((out / "metrics.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("name", PRUNABLE)
def test_uniform_and_optuna_exports_are_priced_exactly(tmp_path: Path, name: str) -> None:
    for method, extra in (("uniform", ()), ("optuna", ("--trials", "4"))):
        metrics = _search(tmp_path, name, method, *extra)
        assert metrics["final"]["macs"] == metrics["predicted"]["macs"]
        assert metrics["final"]["params"] == metrics["predicted"]["params"]
        assert metrics["final"]["macs"] <= 0.5 * metrics["dense"]["macs"]
