"""`UnitMap.mask_grad` is autograd through `UnitMap.mask`, bit for bit, on awkward topologies."""

from __future__ import annotations

import awkward
import pytest
import torch

from autoprune.graph.masking import ElementSlices, UnitMap
from autoprune.graph.units import trace_units

SIZE = (3, 16, 16)


def _check(umap: UnitMap, seed: int = 0) -> int:
    """Compare every parameter's mask_grad with autograd; returns how many were checked."""
    gen = torch.Generator().manual_seed(seed)
    for key in umap.slices:
        vectors = [torch.rand(n, generator=gen).requires_grad_(True) for n in umap.sizes]
        m = umap.mask(key, vectors)
        grad = torch.randn(m.shape, generator=gen)
        units = umap.units_of(key)
        expected = torch.autograd.grad(m, [vectors[u] for u in units], grad)
        got = umap.mask_grad(key, grad)
        assert sorted(got) == units
        for u, e in zip(units, expected, strict=True):
            assert torch.equal(got[u], e), (key, u)
    return len(umap.slices)


@pytest.mark.parametrize(
    ("name", "granularity"),
    [("Shuffle", "channel"), ("FreeScale", "channel"),
     ("Grouped", "weight")],
)  # fmt: skip
def test_mask_grad_is_autograd_through_mask(name: str, granularity: str) -> None:
    model = getattr(awkward, name)()
    umap = UnitMap(model, trace_units(model, SIZE, granularity, name, verify=False))
    assert _check(umap) > 0
    if granularity == "channel" and name == "Shuffle":
        assert not all(umap.direct.values())  # permuted or partial rows take the general path


def test_mask_grad_with_pieces_that_overwrite_rows() -> None:
    # two units writing one parameter, the second over part of the first's rows, one element
    # owning two rows: later pieces win, as in `mask`, and duplicates accumulate
    umap = UnitMap.__new__(UnitMap)
    umap.sizes, umap.axes = [3, 2], {}
    key = ("layer", "weight")
    umap.shapes = {key: torch.Size([5, 4])}
    umap.slices = {key: [ElementSlices(0, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 2])),
                         ElementSlices(1, torch.tensor([3, 4]), torch.tensor([0, 1]))]}  # fmt: skip
    umap.direct = {key: False}
    assert _check(umap) == 1
