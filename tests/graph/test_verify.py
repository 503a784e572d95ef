"""Verified units: a unit that slims wrong, fails or is priced wrong is frozen, never a crash."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import awkward
import pytest
import torch
from torch import nn

from autoprune.cli.main import main
from autoprune.cost.model import CostModel
from autoprune.errors import OutputError, UsageError
from autoprune.graph import stash as stash_module
from autoprune.graph import tp_graph, verify, verify_cache
from autoprune.graph.stash import Restoring, read_tensor, write_tensor
from autoprune.graph.units import trace_units
from autoprune.graph.verify import prunable_share, randomized

SIZE = (3, 16, 16)


def test_unverifiable_units_are_frozen_with_their_reason_and_the_rest_stays_prunable() -> None:
    graph = trace_units(awkward.Unverifiable(), SIZE, "channel", "unverifiable")
    assert [u.name for u in graph.units] == ["stem.0"]
    reasons = {f.name: f.reason for f in graph.frozen}
    assert set(reasons) == {"mid", "late"}
    assert "differs from the masked one's" in reasons["mid"]  # slims, but computes another thing
    assert reasons["late"].startswith("the slimmed model fails: RuntimeError")
    assert all("\n" not in r for r in reasons.values())
    # the frozen part is priced at full width: pruning the stem alone cannot go below it
    share = prunable_share(CostModel(graph))
    assert 0.3 < share["macs"] < 0.6


def test_search_prunes_the_verified_unit_exactly_and_refuses_budgets_below_the_frozen_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["search", "--model", "awkward:Unverifiable", "--dataset", "fake", "--input-size",
            "3x16x16", "--method", "uniform", "--no-prune", "--quiet", "--limit", "64"]  # fmt: skip
    assert main([*args, "--budget-flops", "30%", "--out", str(tmp_path / "low")]) == 2
    assert "smallest feasible" in capsys.readouterr().err
    assert not (tmp_path / "low").exists()
    assert main([*args, "--budget-flops", "70%", "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    alloc = json.loads((tmp_path / "run" / "allocation.json").read_text())
    assert [u["name"] for u in alloc["units"]] == ["stem.0"]
    assert alloc["units"][0]["keep"] < alloc["units"][0]["total"]
    assert (
        metrics["final"]["macs"] == metrics["predicted"]["macs"] <= 0.7 * metrics["dense"]["macs"]
    )
    assert metrics["final"]["params"] == metrics["predicted"]["params"]


def test_verdict_depends_on_the_architecture_not_the_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = awkward.Unverifiable()
    first = trace_units(model, SIZE, "channel", "u")
    trained = awkward.Unverifiable()
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(-3.0)
    verify_cache.clear_memory()  # the disk cache answers now; then nothing may verify again
    monkeypatch.setattr(verify, "_Verifier", None)
    again = trace_units(trained, SIZE, "channel", "u")
    assert again.signature == first.signature
    assert again.frozen == first.frozen


def test_a_torn_cache_file_is_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = trace_units(awkward.Unverifiable(), SIZE, "channel", "u")
    folder = verify_cache.cache_dir()
    assert folder is not None
    (file,) = folder.glob("*.json")
    file.write_text("[[1, ")
    verify_cache.clear_memory()
    assert trace_units(awkward.Unverifiable(), SIZE, "channel", "u").frozen == graph.frozen
    monkeypatch.setenv("AUTOPRUNE_CACHE_DIR", "")
    assert verify_cache.cache_dir() is None


def test_randomized_in_place_gives_the_model_back_whole() -> None:
    model = awkward.GroupNormNet().train()
    model.conv.weight.data = (
        model.conv.weight.data.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    )  # strided
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with randomized(model) as work:
        assert work is model and not model.training
        assert not torch.equal(before["conv.weight"], model.conv.weight)
        drawn = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    with pytest.raises(RuntimeError, match="midway"), randomized(model):
        raise RuntimeError("midway")  # a failing check restores it too
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with randomized(awkward.GroupNormNet()) as other:  # the draw depends on the shapes only
        assert all(torch.equal(drawn[k], v) for k, v in other.state_dict().items())


def test_a_model_that_refuses_the_input_is_a_one_line_usage_error() -> None:
    with pytest.raises(UsageError, match=r"fails on a 3x8x8 input \(RuntimeError: .*\); pass"):
        trace_units(awkward.FlattenLinear(), (3, 8, 8), "channel", "flat")  # built for 16x16


@pytest.fixture
def checker() -> Iterator[verify._Verifier]:
    """A verifier of ChunkCat (chunk, cat, grouped conv, squeeze-excite), randomised in place."""
    model = awkward.ChunkCat()
    graph = trace_units(model, SIZE, "channel", "chunk", verify=False)
    with randomized(model) as work:
        yield verify._Verifier(work, graph)


def test_checks_slim_the_verification_copy_in_place_and_restore_it(
    checker: verify._Verifier,
) -> None:
    before = {k: v.clone() for k, v in checker.base.state_dict().items()}
    assert checker.check(list(range(len(checker.graph.units))), "smallest") is None
    after = checker.base.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert checker.base.group.in_channels == 24 and checker.base.dw[0].groups == 8


def test_a_check_moves_the_uncut_tensors_out_while_the_slimmed_model_runs(
    checker: verify._Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = dict(checker.base.named_parameters())
    before = {k: v.clone() for k, v in params.items()}
    seen: dict[str, int] = {}
    run = verify._run

    def spy(m: nn.Module, x: torch.Tensor) -> tuple[object, int]:
        seen.update({k: p.numel() for k, p in params.items()})
        return run(m, x)

    monkeypatch.setattr(verify, "_run", spy)
    assert checker.check(list(range(len(checker.graph.units))), "half") is None
    # while the slimmed model ran, the cut layers' uncut weights were out of memory ...
    assert seen["stem.0.weight"] == 0 and seen["group.weight"] == 0
    # ... and what no cut replaced stayed (the classifier's bias: only its inputs are cut)
    assert seen["head.2.bias"] == before["head.2.bias"].numel()
    after = dict(checker.base.named_parameters())
    assert all(after[k] is params[k] and torch.equal(after[k], before[k]) for k in params)


def test_a_tensor_two_modules_hold_stays_in_memory_when_one_is_cut() -> None:
    model = awkward.ChunkCat()
    graph = trace_units(model, SIZE, "channel", "chunk", verify=False)
    shared = nn.Parameter(torch.randn(16))
    model.stem[1].weight = model.full[1].weight = shared  # one tensor, two modules
    weight = model.stem[0].weight
    values = weight.detach().clone()
    restoring = Restoring(model, graph)
    model.stem[0].weight = nn.Parameter(weight[:8].detach().clone())  # as a cut does
    model.stem[1].weight = nn.Parameter(shared[:8].detach().clone())
    restoring.release("stem.0")
    restoring.release("stem.1")
    assert weight.numel() == 0  # moved out
    assert shared.numel() == 16  # full.1 still reads it
    restoring.restore()
    assert model.stem[0].weight is weight and torch.equal(weight, values)
    assert model.stem[1].weight is shared and model.full[1].weight is shared


def test_the_dependency_graph_pass_keeps_no_activations() -> None:
    seen: list[str] = []

    class Peek(nn.Module):  # reads what the conv's autograd node saved for backward
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            try:
                seen.append(str(tuple(y.grad_fn._saved_input.shape)))  # type: ignore[union-attr]
            except RuntimeError as err:
                seen.append(str(err))
            return self.head(y.mean((2, 3)))

    tp_graph.build_dependency_graph(Peek(), (3, 8, 8))
    assert seen == ["the dependency graph's forward pass keeps no tensors for backward"]
    Peek()(torch.randn(1, 3, 8, 8))  # outside it, the node keeps its input as usual
    assert seen[-1] == "(1, 3, 8, 8)"


def test_a_slimming_that_fails_midway_leaves_the_model_whole(
    checker: verify._Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = dict(checker.base.named_parameters())
    before = {k: v.clone() for k, v in params.items()}

    def half_a_cut(model: nn.Module, graph: object, kept: object, release: object) -> None:
        stem = model.get_submodule("stem.0")
        stem.weight = nn.Parameter(stem.weight[:2].detach().clone())  # as a cut does
        release("stem.0")  # type: ignore[operator]
        assert params["stem.0.weight"].numel() == 0  # moved out ...
        raise IndexError("index 9 is out of bounds")

    monkeypatch.setattr(verify, "slim", half_a_cut)
    reason = checker.check(list(range(len(checker.graph.units))), "half")
    assert reason == "slimming fails: IndexError: index 9 is out of bounds"
    after = dict(checker.base.named_parameters())  # ... and back: same objects, same values
    assert all(after[k] is params[k] and torch.equal(after[k], before[k]) for k in params)


def test_a_failing_temporary_file_is_no_verdict_on_the_unit(
    checker: verify._Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(stash: object, t: torch.Tensor) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stash_module, "write_tensor", full)
    # not "slimming fails" (nothing cached): the one-line error the CLI prints, exit 1
    with pytest.raises(OutputError, match=r"cannot park weights in .*No space left"):
        checker.check(list(range(len(checker.graph.units))), "half")
    assert checker.base.stem[0].weight.shape == (16, 3, 3, 3)  # restored all the same


def test_parked_tensors_come_back_with_their_layout_and_a_short_file_is_an_error() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    conv = conv.to(memory_format=torch.channels_last)
    weight = conv[0].weight
    values = weight.detach().clone()
    graph = trace_units(conv, (3, 8, 8), "channel", "c", verify=False)
    with Restoring(conv, graph) as restoring:
        conv[0].weight = nn.Parameter(weight[:4].detach().clone())
        restoring.release("0")
        assert weight.numel() == 0
    assert conv[0].weight is weight and torch.equal(weight, values)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    with tempfile.TemporaryFile() as f:
        write_tensor(f, torch.ones(3))
        f.seek(0)
        with pytest.raises(OSError, match="gave back 12 of 16 bytes"):
            read_tensor(f, torch.empty(4))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv(x))


def test_normalised_copy_gives_activations_their_own_statistics() -> None:
    blocks = [_Residual() for _ in range(30)]
    deep = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *blocks, nn.Dropout(0.5))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with randomized(deep) as work:
        wild = float(work(x).abs().max())
        before = {k: v.clone() for k, v in work.state_dict().items()}
        rng = torch.get_rng_state()
        normed = verify.normalised(work, (3, 16, 16))
        assert normed is not None and not normed.training
        assert torch.equal(torch.get_rng_state(), rng)  # the train-mode pass drew nothing visible
        assert all(torch.equal(before[k], v) for k, v in work.state_dict().items())
        tame = float(normed(x).abs().max())
    assert tame < 100 and wild > 1000 * tame  # random statistics let the scale run away
    assert verify.normalised(nn.Sequential(nn.Conv2d(3, 4, 1)), (3, 4, 4)) is None


def test_a_difference_that_goes_with_normalised_statistics_is_rounding(
    checker: verify._Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []

    def fake(subset: list[int], level: str, net: nn.Module, x: torch.Tensor) -> str | None:
        seen.append(net)
        return None if net is checker.normed64 else f"{verify.DIFFERS} by 1e-3 of its scale"

    monkeypatch.setattr(checker, "_check", fake)
    assert checker.check([0], "half") is None
    assert seen == [checker.base, checker.base64, checker.normed64]
    monkeypatch.setattr(checker, "_check", lambda *a: "slimming fails: E")
    assert checker.check([0], "half") == "slimming fails: E"  # only differences get a look
