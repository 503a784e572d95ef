"""The stages `search` and `prune` share: dense training, a backend run, the kept elements.

Each stage is a function over the run's dataclasses; `search.py` and `prune.py` read as the
sequence load -> trace -> price -> search -> train -> export built from them.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.backends.base import BackendConfig, BackendResult
from autoprune.cost.bit_match import PricedKernels
from autoprune.errors import UsageError
from autoprune.pipeline.load import Loaded, eval_loader
from autoprune.quant.bits import BitAllocation
from autoprune.rundir import torch_writes
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.train.augment import training_batches
from autoprune.train.checkpoint import state_hash
from autoprune.train.data import make_loader
from autoprune.train.loop import TrainConfig, fit, set_seed


def train_dense(loaded: Loaded, train: TrainConfig, progress: bool) -> None:
    """Train the dense model in place (nothing for zero epochs: the initialisation is kept)."""
    if train.epochs <= 0:
        return
    set_seed(train.seed)
    loader = training_batches(loaded.data, batch_size=train.batch_size, seed=train.seed,
                              augment=train.augment)  # fmt: skip
    fit(loaded.model, loader, eval_loader(loaded.data.val), train, progress=progress)


def run_backend(
    backend: Any,
    loaded: Loaded,
    graph: Any,
    keep: np.ndarray,
    cfg: BackendConfig,
    stage: Path,
    *,
    bits: BitAllocation | None = None,
    match: PricedKernels | None = None,
) -> BackendResult:
    """Run the backend (quantisation-aware when the allocation has bits; with `match`, the kept
    kernels take the priced bits), checkpointing every epoch into the staging folder.

    An epoch checkpoint there is resumed only if it was trained with the same backend, keeps,
    recipe, options, bits and dense weights; otherwise it is discarded with a note (a resumed
    search that picked or trains something else starts its training afresh; `prune --resume`
    refuses such a checkpoint before it gets here, see `refuse_other_training`).
    """
    cfg = dataclasses.replace(cfg, bits=bits, match_priced=match)
    last = stage / EPOCH_CHECKPOINT
    key = resume_key(backend.name, keep, cfg, loaded.model)

    def on_epoch_end(epoch: int, state: dict[str, Any]) -> None:
        last.parent.mkdir(exist_ok=True)
        tmp = last.with_suffix(".tmp")
        with tmp.open("wb") as handle, torch_writes(tmp):  # a full disk is an OSError
            torch.save({**state, RESUME_KEY: key}, handle)
        tmp.replace(last)

    resume = torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None
    if resume is not None:
        differ = _differences(resume.get(RESUME_KEY), key)
        if differ:
            print(f"note: {last} was trained with other settings ({differ}); training starts "
                  "afresh", file=sys.stderr)  # fmt: skip
            resume = None
    return backend.run(
        loaded.model, graph, keep, loaded.data, cfg, on_epoch_end=on_epoch_end, resume=resume
    )


EPOCH_CHECKPOINT = Path("epochs") / "last.pt"  # a backend's resumable state in a staging folder
RESUME_KEY = "trained_with"  # in a backend's epoch checkpoint: what it is a checkpoint of
# every BackendConfig field that changes the weights (progress bars do not)
RECIPE = ("epochs", "finetune_epochs", "batch_size", "lr", "finetune_lr", "weight_decay",
          "distill", "distill_temperature", "augment", "label_smoothing", "optimizer",
          "importance", "seed", "options")  # fmt: skip


def resume_key(name: str, keep: np.ndarray, cfg: BackendConfig, dense: nn.Module) -> dict[str, Any]:
    """What a backend's epoch checkpoint depends on, in plain types (weights_only-loadable)."""
    return {
        "backend": name,
        "keep": [int(k) for k in keep],
        **{f: getattr(cfg, f) for f in RECIPE},
        "bits": None if cfg.bits is None else cfg.bits.to_json(),
        "dense_weights": state_hash(dense.state_dict()),
    }


def refuse_other_training(
    stage: Path,
    backend: Any,
    loaded: Loaded,
    keep: np.ndarray,
    cfg: BackendConfig,
    bits: BitAllocation | None = None,
) -> None:
    """`--resume`: a one-line error, before anything is touched, if the epoch checkpoint in `stage`
    was trained with another backend, keep, recipe, options, bits or dense model than asked now."""
    last = stage / EPOCH_CHECKPOINT
    if not last.is_file():
        return
    theirs = torch.load(last, map_location="cpu", weights_only=True).get(RESUME_KEY)
    mine = resume_key(backend.name, keep, dataclasses.replace(cfg, bits=bits), loaded.model)
    differ = _differences(theirs, mine)
    if differ:
        raise UsageError(
            f"cannot resume {last}: it was trained with other settings ({differ}); resume with "
            "the flags it was started with, or run without --resume to start over"
        )


def _differences(theirs: dict[str, Any] | None, mine: dict[str, Any]) -> str:
    """The settings a checkpoint was trained with that this run changes, named ('' if none)."""
    if theirs is None:
        return "not recorded: it was written by an older autoprune"
    shown = ("keep", "bits", "dense_weights")  # too long to print: named only
    return "; ".join(
        k if k in shown else f"{k} {theirs.get(k)!r} then, {mine[k]!r} now"
        for k in mine
        if theirs.get(k, "?") != mine[k]
    )


def calibration_batches(loaded: Loaded, ev: EvaluatorConfig) -> list[torch.Tensor]:
    """The training batches the evaluator calibrates activation scales on."""
    loader = make_loader(loaded.data.train, batch_size=ev.batch_size, shuffle=True, seed=ev.seed)
    return [x for x, _ in itertools.islice(loader, max(ev.bn_batches, 1))]
