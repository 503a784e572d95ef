"""The run directory's file names and its staging: nothing half-written ever lands at `out`.

A run writes into `.NAME.partial` beside `out` and renames it to `out` when it finishes; an
interrupted one keeps that folder for `--resume`. Under torchrun only rank 0 writes there; the
other ranks run the same stages into a throwaway folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STUDY_DB = "study.db"  # the default Optuna storage's file inside a search's work folder
ARTIFACTS = "artifacts"  # the Optuna artifact store's folder inside a search's work folder


@contextmanager
def staged_run_dir(
    out: str | Path, *, overwrite: bool = False, resume: bool = False
) -> Iterator[Path]:
    """A staging directory that becomes `out` only if the block finishes without error.

    Nothing half-written is ever left at `out`. On an error the staging folder is removed; on
    Ctrl-C it is kept (as `.NAME.partial` beside `out`) so that `resume=True` can continue from the
    per-epoch checkpoints in it.
    """
    from autoprune.train import distributed

    distributed.barrier()  # every rank has checked `out` before rank 0 stages into it
    if not distributed.is_writer():
        with tempfile.TemporaryDirectory(prefix=".autoprune-rank-") as scratch:
            if resume and partial_dir(out).is_dir():  # resume from rank 0's epoch checkpoints
                shutil.copytree(partial_dir(out), scratch, dirs_exist_ok=True)
            distributed.barrier()
            yield Path(scratch)
        return
    distributed.barrier()  # the other ranks have copied what a resumed run continues from
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = partial_dir(final)
    if stage.exists() and not resume:
        shutil.rmtree(stage)
    stage.mkdir(exist_ok=True)
    try:
        yield stage
    except KeyboardInterrupt:
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if final.exists():
        if not overwrite:
            shutil.rmtree(stage, ignore_errors=True)
            raise FileExistsError(final)
        shutil.rmtree(final)
    stage.rename(final)


def partial_dir(out: str | Path) -> Path:
    """Where an unfinished run to `out` keeps its files (resumable with --resume)."""
    final = Path(out)
    return final.parent / f".{final.name}.partial"


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so a reader never sees half a file (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; run files are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
