"""Checkpoints: exact round trips, atomic writes, clear errors for damaged or foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoprune.errors import CheckpointError
from autoprune.models import build_model
from autoprune.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint

META = {
    "model": "lenet5",
    "num_classes": 10,
    "input_size": [1, 16, 16],
    "seed": 3,
    "history": [{"epoch": 0, "val_acc": 0.5}],
    "note": None,
}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = build_model("lenet5", input_size=(1, 16, 16))
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, state_dict=model.state_dict(), meta=META)
    return path, model


def test_round_trip_is_exact(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    state_dict, meta = load_checkpoint(path)
    assert meta == META
    expected = model.state_dict()
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    assert torch.load(path, weights_only=True)["meta"] == META  # readable without autoprune


def test_build_from_checkpoint_restores_the_model(saved: tuple[Path, torch.nn.Module]) -> None:
    path, model = saved
    rebuilt, meta = build_from_checkpoint(path)
    x = torch.randn(2, 1, 16, 16)
    assert meta["seed"] == 3
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_truncated_file_is_a_checkpoint_error(saved: tuple[Path, torch.nn.Module]) -> None:
    path, _ = saved
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*autoprune train") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_is_a_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an autoprune checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_meta_must_hold_plain_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"PosixPath|WindowsPath"):
        save_checkpoint(tmp_path / "c.pt", state_dict={}, meta={"data_dir": tmp_path})
    assert not list(tmp_path.iterdir())


def test_model_mismatches_are_checkpoint_errors(tmp_path: Path) -> None:
    state = build_model("lenet5", input_size=(1, 16, 16)).state_dict()
    save_checkpoint(tmp_path / "a.pt", state_dict=state, meta={**META, "input_size": [1, 28, 28]})
    with pytest.raises(CheckpointError, match=r"does not fit model 'lenet5'.*size mismatch"):
        build_from_checkpoint(tmp_path / "a.pt")
    save_checkpoint(tmp_path / "b.pt", state_dict=state, meta={"model": "lenet5"})
    with pytest.raises(CheckpointError, match="no num_classes, input_size"):
        build_from_checkpoint(tmp_path / "b.pt")
    save_checkpoint(tmp_path / "c.pt", state_dict=state, meta={**META, "model": "lenet6"})
    with pytest.raises(CheckpointError, match="'lenet6'"):
        build_from_checkpoint(tmp_path / "c.pt")


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({k: v for k, v in META.items() if k != "model"}, "no model in its meta"),
        ({**META, "num_classes": "10"}, r"damaged meta .*num_classes '10'"),
        ({**META, "input_size": [1, 16]}, r"damaged meta .*input_size \[1, 16\]"),
        ({**META, "model": 5}, r"damaged meta \(model 5"),
    ],
)
def test_every_reader_refuses_a_damaged_meta(tmp_path: Path, meta: dict, match: str) -> None:
    """load_checkpoint, not only build_from_checkpoint: a meta without 'model' was a KeyError
    traceback in `search --checkpoint` (found by tests/cli/test_fuzz.py)."""
    state = build_model("lenet5", input_size=(1, 16, 16)).state_dict()
    save_checkpoint(tmp_path / "a.pt", state_dict=state, meta=meta)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(tmp_path / "a.pt")
