"""Weights the user has: torchvision's from a local hub cache (--weights), plain state dicts
(--checkpoint with --model), and a one-line error naming the first key that does not fit.

Nothing downloads: the hub cache is a folder the test fills with a state dict of its own, under
the file name torchvision would download (the basename of the weights' URL).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoprune.cli.main import main
from autoprune.errors import CheckpointError, UnknownNameError, UsageError
from autoprune.models import build_model
from autoprune.models.pretrained import cached_file, load_pretrained, weights_entry
from autoprune.train.checkpoint import fit_state, read_weights

TV = "squeezenet1_1"  # the smallest torchvision classifier (1.2M parameters)
TV_RUN = ["--model", TV, "--dataset", "fake", "--input-size", "3x32x32", "--limit", "32",
          "--quiet"]  # fmt: skip
LENET = ["--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16", "--limit", "96",
         "--quiet"]  # fmt: skip


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME at an empty folder: torch.hub.get_dir() is TORCH_HOME/hub."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def _cache(hub: Path) -> dict[str, torch.Tensor]:
    """A state dict of TV's own (seeded, ImageNet's 1000 classes) where torchvision keeps it."""
    torch.manual_seed(7)
    state = build_model(TV, num_classes=1000, input_size=(3, 32, 32)).state_dict()
    path = cached_file(weights_entry(TV, "DEFAULT"))
    assert path.parent == hub and path.name == "squeezenet1_1-b8a52dc0.pth"  # torchvision's name
    hub.mkdir(parents=True)
    torch.save(state, path)
    return state


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]


def test_weights_load_from_the_hub_cache_whole_or_with_a_fresh_classifier(hub: Path) -> None:
    state = _cache(hub)
    same = build_model(TV, num_classes=1000, input_size=(3, 32, 32))
    assert load_pretrained(same, TV, "IMAGENET1K_V1") == []  # DEFAULT is IMAGENET1K_V1 here
    assert all(torch.equal(same.state_dict()[k], v) for k, v in state.items())
    other = build_model(TV, num_classes=10, input_size=(3, 32, 32))
    fresh = load_pretrained(other, TV, "DEFAULT")
    assert fresh == ["classifier.1.weight", "classifier.1.bias"]
    got = other.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if k not in fresh)
    assert got["classifier.1.weight"].shape[0] == 10


def test_train_from_weights_and_a_search_that_would_rank_an_untrained_head(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _cache(hub)
    out = tmp_path / "tuned"
    assert main(["train", *TV_RUN, "--weights", "DEFAULT", "--epochs", "0", "--out", str(out)]) == 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in state.items() if not k.startswith("classifier"))
    # search defaults to no dense training with --weights: a fresh head must be trained first
    run = tmp_path / "search"
    code = main(["search", *TV_RUN, "--weights", "DEFAULT", "--budget-flops", "50%",
                 "--method", "uniform", "--no-prune", "--out", str(run)])  # fmt: skip
    err = _errors(capsys)
    assert code == 2 and len(err) == 1 and not run.exists()
    assert "classifier.1.weight, classifier.1.bias start untrained" in err[0]
    assert "--dense-epochs" in err[0]


def test_missing_or_unknown_weights_are_one_line_errors(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", *TV_RUN, "--epochs", "0", "--out", str(out)]
    assert main([*argv, "--weights", "DEFAULT"]) == 2
    (line,) = _errors(capsys)
    assert "put squeezenet1_1-b8a52dc0.pth from https://download.pytorch.org" in line
    assert f"into {hub}" in line and "never downloads" in line and not out.exists()
    with pytest.raises(UnknownNameError, match=r"has no weights 'IMAGENET1K_V9'.*IMAGENET1K_V1"):
        weights_entry(TV, "IMAGENET1K_V9")
    assert main(["train", *LENET, "--weights", "DEFAULT", "--epochs", "0", "--out", str(out)]) == 2
    (line,) = _errors(capsys)
    assert "'lenet5' is not a torchvision model" in line and "--checkpoint" in line


def test_a_plain_state_dict_goes_through_checkpoint_with_model(tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = build_model("lenet5", input_size=(1, 16, 16)).state_dict()
    plain = tmp_path / "mine.pth"
    torch.save(state, plain)
    run = tmp_path / "search"
    assert main(["search", *LENET, "--checkpoint", str(plain), "--budget-flops", "40%",
                 "--method", "uniform", "--no-prune", "--out", str(run)]) == 0  # fmt: skip
    # the run saves the plain weights as its own dense checkpoint, which prune can replay
    allocation = json.loads((run / "allocation.json").read_text())
    dense = Path(allocation["checkpoint"])
    assert dense == (run / "dense" / "checkpoint.pt").resolve()
    saved = torch.load(dense, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in state.items())
    tuned = tmp_path / "tuned"
    assert main(["train", *LENET, "--checkpoint", str(plain), "--epochs", "0",
                 "--out", str(tuned)]) == 0  # fmt: skip
    again = torch.load(tuned / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in state.items())


def test_training_scripts_layouts_are_read(tmp_path: Path) -> None:
    state = build_model("lenet5", input_size=(1, 16, 16)).state_dict()
    path = tmp_path / "ddp.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    got, meta = read_weights(path, "lenet5")
    assert meta == {"model": "lenet5", "plain": True} and got.keys() == state.keys()
    with pytest.raises(CheckpointError, match=r"plain state dict .* pass --model NAME"):
        read_weights(path, None)
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="neither an autoprune checkpoint nor a state dict"):
        read_weights(path, "lenet5")


def test_the_first_key_that_does_not_fit_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model("lenet5", input_size=(1, 16, 16))
    state = model.state_dict()
    first, *_ = state
    bad = {**state, first: torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=rf"'{first}' is 3x3 there and .* in the model"):
        fit_state(model, bad, source="x")
    missing = {k: v for k, v in state.items() if k != first}
    with pytest.raises(CheckpointError, match=rf"it lacks '{first}'"):
        fit_state(model, missing, source="x")
    with pytest.raises(CheckpointError, match=r"'extra.weight' \(and 1 more\) is not in the model"):
        fit_state(model, {**state, "extra.weight": torch.zeros(1), "z": torch.zeros(1)}, source="x")
    # through the command line: exit 2, one line naming the key, nothing written
    plain = tmp_path / "other.pth"
    torch.save(build_model("lenet5", num_classes=7, input_size=(1, 16, 16)).state_dict(), plain)
    out = tmp_path / "run"
    code = main(["search", *LENET, "--checkpoint", str(plain), "--budget-flops", "40%",
                 "--method", "uniform", "--no-prune", "--out", str(out)])  # fmt: skip
    (line,) = _errors(capsys)
    assert code == 2 and not out.exists()
    assert "does not fit" in line and "is 7x" in line and "there and 10x" in line
    with pytest.raises(UsageError, match="--checkpoint or --weights, not both"):
        from autoprune.pipeline.load import load_model_and_data

        load_model_and_data(model="lenet5", dataset="digits", checkpoint=str(plain),
                            weights="DEFAULT")  # fmt: skip
