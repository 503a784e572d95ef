"""What an interrupted search leaves in its staging folder, and how a resumed search reuses it.

`autoprune search` works in `.OUT.partial` beside `--out` and renames it at the end. The default
Optuna study (`study.db`), the dense checkpoint it trained (when none was given) and the
backend's per-epoch checkpoint live there, so Ctrl-C or kill -9 loses no finished trial. Running
the same command again with `--study NAME` keeps the folder and continues: finished trials are
kept, the dense model is reloaded rather than retrained, and the backend resumes from its last
epoch if the search picks the same allocation again. Without `--study` (or `--force`) an
interrupted study is never silently discarded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from torch import nn

from autoprune.errors import UsageError
from autoprune.rundir import STUDY_DB, partial_dir
from autoprune.train.checkpoint import load_checkpoint

DENSE = Path("dense") / "checkpoint.pt"
CHOSEN = "chosen_keep.json"  # the allocation the backend was started on
EPOCHS = "epochs"  # the backend's resumable state (see compress._run_backend)


def refuse_interrupted(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Error if `out`'s staging folder holds a study and the user neither resumes nor forces."""
    db = partial_dir(out) / STUDY_DB
    if resume or overwrite or not db.is_file():
        return
    names = _study_names(db)
    hint = f"--study {names[0]}" if len(names) == 1 else "--study NAME"
    raise UsageError(
        f"an interrupted search of {out} left its study in {db} "
        f"({', '.join(names) or 'no study'}); "
        f"run the same command with {hint} to resume it, or pass --force to discard it"
    )


def _study_names(db: Path) -> list[str]:
    try:
        import optuna

        return list(optuna.get_all_study_names(f"sqlite:///{db.resolve()}"))
    except Exception:  # an unreadable database: the message still names the file
        return []


def restore_dense(model: nn.Module, stage: Path) -> bool:
    """Load the dense model an interrupted run trained, if its staging folder holds one."""
    path = stage / DENSE
    if not path.is_file():
        return False
    state, _ = load_checkpoint(path)
    model.load_state_dict(state)
    return True


def forget_stale_backend(stage: Path, keep: np.ndarray) -> None:
    """Drop the backend's resumable state when it was trained towards another allocation."""
    chosen = stage / CHOSEN
    now = [int(k) for k in keep]
    if chosen.is_file() and json.loads(chosen.read_text()) != now:
        shutil.rmtree(stage / EPOCHS, ignore_errors=True)
    chosen.write_text(json.dumps(now))
