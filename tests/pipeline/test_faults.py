"""Faults: a killed run resumes to the weights of an uninterrupted one; an unwritable or full
--out, a corrupt or foreign study, a second search on the same --out and a run directory edited
after export each end in one line (exit 2), with nothing half-written.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from autoprune.backends import BACKENDS
from autoprune.backends.base import BackendConfig
from autoprune.cli.main import main
from autoprune.pipeline.load import Loaded, trace
from autoprune.pipeline.stages import EPOCH_CHECKPOINT, run_backend
from autoprune.rundir import partial_dir


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    unequal = [k for k in a if not torch.equal(a[k], b[k])]
    assert not unequal, f"weights differ: {unequal}"


# --- kill -9 during prune, then --resume ---------------------------------------------------------
@pytest.mark.slow
def test_prune_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(
    allocation_file: Path, tmp_path: Path
) -> None:
    prune = ["prune", "--allocation", str(allocation_file), "--epochs", "2",
             "--finetune-epochs", "1", "--limit", "300", "--quiet"]  # fmt: skip
    out = tmp_path / "run"
    last = partial_dir(out) / EPOCH_CHECKPOINT
    proc = subprocess.Popen([sys.executable, "-m", "autoprune", *prune, "--out", str(out)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # killed the moment its first epoch is saved: two epochs and the export are left
        while not last.is_file() and proc.poll() is None:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists(), "it finished before the kill"
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert killed_at < 2, "killed after its last epoch: nothing was left to resume"

    assert main([*prune, "--out", str(out), "--resume"]) == 0
    assert main([*prune, "--out", str(tmp_path / "clean")]) == 0
    assert_equal_weights(_weights(out), _weights(tmp_path / "clean"))
    assert not partial_dir(out).exists()


def _with_dropout(loaded: Loaded) -> Loaded:
    """A copy of the digits LeNet-5 with dropout before its last layer: each step draws a mask."""
    out = copy.copy(loaded)
    out.model = copy.deepcopy(loaded.model)
    head: Any = out.model.classifier
    out.model.classifier = nn.Sequential(*head[:-1], nn.Dropout(0.5), head[-1])
    return out


@pytest.mark.slow
def test_a_resumed_backend_draws_the_dropout_masks_of_an_uninterrupted_one(
    digits_lenet: Loaded, tmp_path: Path, ctrl_c_in_second_epoch: Any
) -> None:
    loaded = _with_dropout(digits_lenet)
    graph, _ = trace(loaded, "channel")
    keep = np.maximum(1, np.array(graph.sizes) // 2)
    cfg = BackendConfig(epochs=2, finetune_epochs=1, batch_size=32, progress=False)

    def run(stage: Path) -> dict[str, torch.Tensor]:
        fresh = _with_dropout(digits_lenet)
        stage.mkdir(exist_ok=True)
        res = run_backend(BACKENDS.build("reweighted"), fresh, graph, keep, cfg, stage)
        return res.model.state_dict()

    clean = run(tmp_path / "clean")
    with ctrl_c_in_second_epoch():
        run(tmp_path / "killed")
    assert torch.load(tmp_path / "killed" / EPOCH_CHECKPOINT, weights_only=True)["epoch"] == 0
    torch.manual_seed(12345)  # a new process: the global generators are anywhere
    assert_equal_weights(run(tmp_path / "killed"), clean)
