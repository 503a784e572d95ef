"""A backend's epoch checkpoint is resumed only by the training it belongs to.

`prune --resume` with another backend, keep, epochs, lr, seed or options is refused in one line
naming the difference, before anything is touched; a search whose resumed study now trains
something else discards the old epochs with a note and starts afresh.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoprune.backends import BACKENDS
from autoprune.backends.base import BackendConfig
from autoprune.errors import UsageError
from autoprune.pipeline.load import Loaded, trace
from autoprune.pipeline.prune import PruneRun, run_prune
from autoprune.pipeline.stages import EPOCH_CHECKPOINT, RESUME_KEY, run_backend
from autoprune.rundir import partial_dir

CFG = BackendConfig(epochs=2, finetune_epochs=1, batch_size=32, progress=False)


@pytest.fixture
def interrupted(allocation_file: Path, tmp_path: Path, ctrl_c_in_second_epoch: Any) -> PruneRun:
    """A reweighted prune stopped by Ctrl-C in its second epoch (its first epoch is saved)."""
    cfg = PruneRun(allocation=str(allocation_file), out=str(tmp_path / "run"),
                   backend="reweighted", backend_cfg=CFG, limit=96, progress=False)  # fmt: skip
    with ctrl_c_in_second_epoch():
        run_prune(cfg)
    assert (partial_dir(cfg.out) / EPOCH_CHECKPOINT).is_file()
    return dataclasses.replace(cfg, resume=True)


@pytest.mark.parametrize(
    ("change", "named"),
    [({"epochs": 3}, "epochs 2 then, 3 now"), ({"lr": 0.02}, "lr 0.01 then, 0.02 now"),
     ({"seed": 4}, "seed 0 then, 4 now"),
     ({"options": {"eps": "0.2"}}, "options {} then, {'eps': '0.2'} now")],
)  # fmt: skip
def test_prune_resume_with_other_settings_is_refused_and_keeps_the_checkpoint(
    interrupted: PruneRun, change: dict[str, Any], named: str
) -> None:
    last = partial_dir(interrupted.out) / EPOCH_CHECKPOINT
    saved = last.read_bytes()
    other = dataclasses.replace(interrupted.backend_cfg, **change)
    with pytest.raises(UsageError) as err:
        run_prune(dataclasses.replace(interrupted, backend_cfg=other))
    message = str(err.value)
    assert named in message and "without --resume" in message and "\n" not in message
    assert last.read_bytes() == saved and not Path(interrupted.out).exists()


def test_prune_resume_with_another_backend_is_refused_not_a_key_error(
    interrupted: PruneRun,
) -> None:
    with pytest.raises(UsageError, match="backend 'reweighted' then, 'magnitude' now"):
        run_prune(dataclasses.replace(interrupted, backend="magnitude"))


def test_an_epoch_checkpoint_without_its_settings_is_refused(interrupted: PruneRun) -> None:
    last = partial_dir(interrupted.out) / EPOCH_CHECKPOINT
    state = torch.load(last, weights_only=True)
    del state[RESUME_KEY]  # as an older autoprune wrote it
    torch.save(state, last)
    with pytest.raises(UsageError, match="not recorded"):
        run_prune(interrupted)


def test_prune_resume_with_the_same_settings_continues(interrupted: PruneRun) -> None:
    metrics = run_prune(interrupted)
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2]


def test_a_search_stage_with_other_training_starts_afresh_with_a_note(
    digits_lenet: Loaded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, _ = trace(digits_lenet, "channel")
    keep = np.maximum(1, np.array(graph.sizes) // 2)
    cfg = dataclasses.replace(CFG, epochs=1)

    def run(cfg: BackendConfig) -> Any:
        loaded = copy.copy(digits_lenet)
        loaded.model = copy.deepcopy(digits_lenet.model)
        return run_backend(BACKENDS.build("reweighted"), loaded, graph, keep, cfg, tmp_path)

    first = run(cfg)
    again = run(cfg)  # its epochs are all saved: resumed at the end, nothing retrained
    assert again.history == first.history and "note:" not in capsys.readouterr().err
    fresh = run(dataclasses.replace(cfg, lr=0.05))
    assert "lr 0.01 then, 0.05 now" in capsys.readouterr().err
    assert [row["epoch"] for row in fresh.history] == [0, 1]
    assert [row["lr"] for row in fresh.history] == [0.05, 0.05]
