"""Same seed, same result: `train` and `search` give identical weights, allocation and metrics.

Each repeat starts from a disturbed global random state (in one process) or from a fresh process
(whose torch seed, NumPy seed and hash seed are all random), so anything drawn before the run
seeds it shows up as a difference. Timing fields are the only ones allowed to differ.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from autoprune.cli.main import main

# fields that measure time (or name the run's own folder), not the computation
UNSTABLE = {
    "seconds",
    "wall_time_s",
    "latency_s",
    "latency",
    "speedup",
    "created",
    "checkpoint",
    "layout_seconds",
    "channels_last",
}  # model.pt2's layout: the one timed faster
TINY = ["--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16", "--limit", "96"]
SEARCH = [*TINY, "--dense-epochs", "1", "--budget-flops", "30%", "--epochs", "1",
          "--finetune-epochs", "1", "--quiet"]  # fmt: skip


def stable(obj: Any) -> Any:
    """`obj` without its timing fields, recursively."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in UNSTABLE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def _disturb(seed: int) -> None:
    """Move every global generator somewhere else, as earlier work in the process would."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"]


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    unequal = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not unequal, f"weights differ: {unequal}"
    for name in ("metrics.json", "allocation.json", "trials.json"):
        if (a / name).is_file() or (b / name).is_file():
            assert stable(_json(a / name)) == stable(_json(b / name)), name


def test_train_twice_with_one_seed_gives_identical_weights_another_seed_others(
    tmp_path: Path,
) -> None:
    runs = {}
    for name, seed, disturbance in (("a", 1, 10), ("b", 1, 20), ("c", 2, 10)):
        _disturb(disturbance)
        out = tmp_path / name
        assert main(["train", *TINY, "--epochs", "1", "--seed", str(seed), "--quiet",
                     "--out", str(out)]) == 0  # fmt: skip
        runs[name] = out
    assert_same_run(runs["a"], runs["b"])
    wa, wc = _weights(runs["a"]), _weights(runs["c"])
    assert all(not torch.equal(wa[k], wc[k]) for k in wa if k.endswith(".weight"))
    metrics = _json(runs["a"] / "metrics.json")
    assert metrics["seed"] == 1 and metrics["threads"] == torch.get_num_threads()


def test_search_twice_in_one_process_gives_identical_run(tmp_path: Path) -> None:
    for name, disturbance in (("a", 10), ("b", 20)):
        _disturb(disturbance)
        argv = ["search", *SEARCH, "--method", "optuna", "--trials", "3", "--seed", "1",
                "--out", str(tmp_path / name)]  # fmt: skip
        assert main(argv) == 0
    assert_same_run(tmp_path / "a", tmp_path / "b")
    metrics = _json(tmp_path / "a" / "metrics.json")
    assert metrics["seed"] == 1 and metrics["threads"] == torch.get_num_threads()


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [["optuna", "--trials", "3"], ["rl", "--episodes", "4"], ["dsa", "--steps", "8"]]
)
def test_search_twice_in_fresh_processes_gives_identical_run(
    tmp_path: Path, method: list[str]
) -> None:
    # Both at once, each on one thread: the thread count is part of what must match.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "autoprune", "search", *SEARCH, "--method", *method,
            "--seed", "4", "--out"]  # fmt: skip
    procs = [
        subprocess.Popen([*argv, str(tmp_path / n)], env=env, stderr=subprocess.PIPE, text=True)
        for n in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    assert_same_run(tmp_path / "a", tmp_path / "b")
    units = [_json(tmp_path / n / "allocation.json")["units"] for n in ("a", "b")]
    assert units[0] == units[1]
    assert _json(tmp_path / "a" / "metrics.json")["threads"] == 1
