"""Faults: a killed run resumes to the weights of an uninterrupted one; an unwritable or full
--out, a corrupt or foreign study, a second search on the same --out and a run directory edited
after export each end in one line (exit 2), with nothing half-written.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from autoprune.backends import BACKENDS
from autoprune.backends.base import BackendConfig
from autoprune.cli.main import main
from autoprune.pipeline.load import Loaded, trace
from autoprune.pipeline.stages import EPOCH_CHECKPOINT, run_backend
from autoprune.rundir import out_lock, partial_dir


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


# --- an unwritable or full --out -----------------------------------------------------------------
def assert_one_line_error(rc: int, err: str, out: Path, *needles: str, code: int = 2) -> None:
    """Exit `code`, one line on stderr naming `needles`, and nothing left at or beside `out`."""
    lines = [ln for ln in err.splitlines() if ln.startswith("autoprune ")]  # not torch's warnings
    assert rc == code and len(lines) == 1 and ": error: " in lines[0], err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists() and not partial_dir(out).exists(), "something was left half-written"


TRAIN = ["train", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
         "--limit", "96", "--epochs", "0", "--quiet"]  # fmt: skip


def test_an_out_below_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("a file, where --out wants a folder")
    out = tmp_path / "notes.txt" / "run"
    rc = main([*TRAIN, "--out", str(out)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, out, str(tmp_path / "notes.txt"), "is a file")
    rc = main([*TRAIN, "--out", str(tmp_path / "notes.txt")])
    assert_one_line_error(rc, capsys.readouterr().err, tmp_path / "nothing", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder whatever its mode")
def test_an_out_in_a_read_only_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    out = locked / "deeper" / "run"
    try:
        rc = main([*TRAIN, "--out", str(out)])
    finally:
        locked.chmod(0o700)
    assert_one_line_error(rc, capsys.readouterr().err, out, str(locked), "not writable")


def test_a_disk_full_midway_leaves_nothing_and_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import autoprune.pipeline.train as train

    def full_disk(path: Path, **_: Any) -> None:
        Path(path).write_bytes(b"half a checkpoint")  # written in part, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(train, "save_checkpoint", full_disk)
    out = tmp_path / "run"
    rc = main([*TRAIN, "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, out, str(out), "No space left on device",
                          code=1)  # fmt: skip


def test_a_file_cut_short_by_the_file_system_is_one_line(tmp_path: Path) -> None:
    """A real short write: the file size limit (RLIMIT_FSIZE, as a quota or a full disk would)
    stops torch's archive writer midway. torch swallowed the OSError and raised RuntimeError
    'unexpected pos' as a traceback (seen when the disk filled during the coverage benchmark)."""
    import resource

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune", *TRAIN, "--out", str(out)],
        capture_output=True, text=True, preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, out, "File too large", str(out), code=1)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to write to")
def test_a_real_write_error_of_an_epoch_checkpoint_is_one_line(
    allocation_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The epoch checkpoint's temporary file is /dev/full: torch's own writer fails for real."""
    out = tmp_path / "run"
    (partial_dir(out) / "epochs").mkdir(parents=True)
    (partial_dir(out) / "epochs" / "last.tmp").symlink_to("/dev/full")
    rc = main(["prune", "--allocation", str(allocation_file), "--epochs", "1",
               "--finetune-epochs", "1", "--limit", "96", "--quiet", "--out", str(out),
               "--resume"])  # fmt: skip
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, tmp_path / "nothing", "No space left on device", code=1)
    assert not out.exists() and not (partial_dir(out) / EPOCH_CHECKPOINT).exists()


# --- a corrupt or foreign study -----------------------------------------------------------------
SEARCH = ["search", "--model", "lenet5", "--dataset", "digits", "--input-size", "1x16x16",
          "--limit", "96", "--budget-flops", "30%", "--trials", "2", "--no-prune",
          "--quiet"]  # fmt: skip


def _garbage(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path.read_bytes()


def _foreign(path: Path) -> bytes:
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
        db.commit()
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "named"),
    [(_garbage, "is not a SQLite database"), (_foreign, "of something else than Optuna")],
)
def test_a_damaged_or_foreign_sqlite_storage_is_refused_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, named: str
) -> None:
    db = tmp_path / "theirs.db"
    before = make(db)
    out = tmp_path / "run"
    rc = main([*SEARCH, "--storage", f"sqlite:///{db}", "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, out, str(db), named)
    assert db.read_bytes() == before


def test_a_damaged_study_of_an_interrupted_search_is_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    db = partial_dir(out) / "study.db"
    before = _garbage(db)
    rc = main([*SEARCH, "--study", "autoprune", "--out", str(out)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, tmp_path / "nothing", "study.db", "is not a SQLite database")
    assert not out.exists() and db.read_bytes() == before  # the user's file, for them to look at


@pytest.mark.slow
def test_resuming_a_study_of_another_budget_is_refused_and_keeps_its_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    url = f"sqlite:///{partial_dir(out) / 'study.db'}"  # as an interrupted search of `out` left it
    partial_dir(out).mkdir()
    assert main([*SEARCH, "--storage", url, "--study", "s", "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()

    def trials() -> list[tuple[int, Any, Any]]:
        study = optuna.load_study(study_name="s", storage=url)
        return [(t.number, t.state, t.values) for t in study.get_trials()]

    before = trials()
    rc = main([*SEARCH, "--budget-flops", "20%", "--study", "s", "--out", str(out)])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, tmp_path / "nothing", "searched or scored otherwise", "limits")
    assert not out.exists()
    assert trials() == before and sum(t[1] == TrialState.COMPLETE for t in before) == 2


# --- two runs on the same --out ------------------------------------------------------------------
HOLD = """import sys, time
from autoprune.rundir import out_lock
with out_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_and_a_killed_ones_lock_is_gone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:  # a first run writing `out`, as far as the lock can tell
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        rc = main([*SEARCH, "--out", str(out)])
        err = capsys.readouterr().err
        assert_one_line_error(rc, err, out, "another autoprune run is writing", str(out))
    finally:
        holder.kill()  # kill -9: the lock must not outlive it
        holder.wait()
    with out_lock(out):
        assert (tmp_path / ".run.lock").is_file()
    assert not list(tmp_path.iterdir()), "the lock file is left behind"


# --- a run directory edited after it was written -------------------------------------------------
@pytest.fixture(scope="module")
def pruned_run(allocation_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pruned") / "run"
    assert (
        main(
            [
                "prune",
                "--allocation",
                str(allocation_file),
                "--epochs",
                "1",
                "--finetune-epochs",
                "1",
                "--limit",
                "96",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out  # fmt: skip


def _edit_allocation(run: Path) -> None:
    alloc = json.loads((run / "allocation.json").read_text())
    alloc["units"][0]["keep"] += 1  # a keep changed by hand
    (run / "allocation.json").write_text(json.dumps(alloc))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "named"),
    [(_edit_allocation, "allocation.json differs"),
     (lambda run: (run / "model.pt2").write_bytes(b"not a program"), "model.pt2 differs"),
     (lambda run: (run / "checkpoint.pt").unlink(), "checkpoint.pt differs"),
     (lambda run: None, None)],
    ids=["allocation-edited", "program-replaced", "checkpoint-removed", "untouched"],
)  # fmt: skip
def test_eval_refuses_a_run_whose_files_were_edited_after_it_was_written(
    pruned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, named: Any
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(pruned_run, run)
    edit(run)
    rc = main(["eval", str(run), "--limit", "96"])
    out, err = capsys.readouterr()
    if named is None:  # untouched: evaluated as before
        assert rc == 0 and "accuracy=" in out, err
        return
    lines = [ln for ln in err.splitlines() if ln.startswith("autoprune ")]
    assert rc == 2 and len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    assert "accuracy" not in out
