"""model.apq: round trip (bit-exact codes, equal outputs), size as predicted, bad files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.cost.model import CostModel
from autoprune.errors import CheckpointError
from autoprune.graph.masking import mask_model, remove_masks
from autoprune.graph.units import UnitGraph, trace_units
from autoprune.models import build_model
from autoprune.quant.artifact import load_artifact, write_artifact
from autoprune.quant.bits import BitAllocation, artifact_bytes
from autoprune.quant.fake import add_act_quant, add_weight_quant, quantize

SIZE = (1, 28, 28)


def _quantised(
    granularity: str, bits_of: object
) -> tuple[nn.Module, UnitGraph, BitAllocation, dict, np.ndarray]:
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    graph = trace_units(model, SIZE, granularity, "lenet5")  # type: ignore[arg-type]
    keep = np.maximum(
        1, np.array(graph.sizes) // (np.array([5, 12, 100, 8]) if granularity == "weight" else 3)
    )
    kept = mask_model(model, graph, keep)
    remove_masks(model, bake=True)  # dense shapes, pruned weights zero
    bits = BitAllocation(
        {lay.name: tuple(bits_of(k) for k in range(lay.out_channels)) for lay in graph.layers},  # type: ignore[operator]
        {lay.name: 32 if i == 0 else 6 for i, lay in enumerate(graph.layers)},
    )
    add_weight_quant(model, graph, bits)
    remove_masks(model, bake=True)
    hooks = add_act_quant(model, graph, bits)
    model.train()
    with torch.no_grad():
        model(torch.randn(64, *SIZE))  # calibrates the activation scales
    model.eval()
    del kept
    return model, graph, bits, {k: h.scale for k, h in hooks.items()}, keep


MIXED = lambda k: (1, 2, 3, 4, 5, 8, 32)[k % 7]  # noqa: E731


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_round_trip(tmp_path: Path, granularity: str) -> None:
    model, graph, bits, scales, _ = _quantised(granularity, MIXED)
    path = tmp_path / "model.apq"
    enc = write_artifact(
        path, model, graph, bits, num_classes=10, mean=[0.1307], std=[0.3081], act_scales=scales
    )
    assert path.stat().st_size == enc.bytes == artifact_bytes(graph, bits, enc.counts)
    back, meta = load_artifact(path)
    assert (
        meta["bits"] == bits
        and meta["counts"] == enc.counts
        and meta["mean"] == pytest.approx([0.1307])
    )
    for lay in graph.layers:
        b = torch.tensor(bits.weight[lay.name])
        w0 = model.get_submodule(lay.name).weight.detach()
        w1 = back.get_submodule(lay.name).weight.detach()
        assert torch.equal(quantize(w0, b)[0], quantize(w1, b)[0])  # bit-exact codes
        assert torch.equal(w0 != 0, w1 != 0)  # the same sparsity pattern
    x = torch.randn(16, *SIZE)
    with torch.no_grad():
        assert (model(x) - back(x)).abs().max() < 1e-5
        assert torch.equal(back.classifier[0].bias, model.classifier[0].bias)


def test_cost_model_predicts_the_file(tmp_path: Path) -> None:
    """Exact given the real per-kernel counts (test_round_trip); the search-time estimate, which
    only knows per-layer keeps, is exact at uniform bits but for the scales of kernels that end
    up empty (it assumes none does)."""
    model, graph, bits, scales, keep = _quantised("weight", lambda k: 4)
    enc = write_artifact(tmp_path / "a.apq", model, graph, bits, num_classes=10, mean=[0.1],
                         std=[0.3], act_scales=scales)  # fmt: skip
    estimate = CostModel(graph).with_bits(bits).metric("size", keep)
    empty = sum(n == 0 for counts in enc.counts.values() for n in counts)
    assert estimate - enc.bytes == 4 * empty
    assert abs(estimate - enc.bytes) / enc.bytes < 0.01
    assert enc.code_bytes == keep.sum() * 4 / 8


def _bytes(tmp_path: Path) -> bytes:
    model, graph, bits, scales, _ = _quantised("weight", MIXED)
    write_artifact(
        tmp_path / "ok.apq",
        model,
        graph,
        bits,
        num_classes=10,
        mean=[0.1],
        std=[0.3],
        act_scales=scales,
    )
    return (tmp_path / "ok.apq").read_bytes()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "truncated or corrupt"),
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:3], "bad magic"),
    ],
)
def test_bad_artifacts_give_one_line_errors(tmp_path: Path, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.apq"
    bad.write_bytes(mutate(_bytes(tmp_path)))
    with pytest.raises(CheckpointError, match=match) as e:
        load_artifact(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "missing.apq")
