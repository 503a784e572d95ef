"""The stages `search` and `prune` share: dense training, a backend run, the kept elements.

Each stage is a function over the run's dataclasses; `search.py` and `prune.py` read as the
sequence load -> trace -> price -> search -> train -> export built from them.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.backends.base import BackendConfig, BackendResult
from autoprune.pipeline.load import Loaded, eval_loader
from autoprune.quant.bit_match import PricedKernels
from autoprune.quant.bits import BitAllocation
from autoprune.search.evaluator import EvaluatorConfig
from autoprune.train.augment import training_batches
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
    kernels take the priced bits), checkpointing every epoch into the staging folder (resumed if
    present)."""
    cfg = dataclasses.replace(cfg, bits=bits, match_priced=match)
    last = stage / "epochs" / "last.pt"

    def on_epoch_end(epoch: int, state: dict[str, Any]) -> None:
        last.parent.mkdir(exist_ok=True)
        tmp = last.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(last)

    resume = torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None
    return backend.run(
        loaded.model, graph, keep, loaded.data, cfg, on_epoch_end=on_epoch_end, resume=resume
    )


def calibration_batches(loaded: Loaded, ev: EvaluatorConfig) -> list[torch.Tensor]:
    """The training batches the evaluator calibrates activation scales on."""
    loader = make_loader(loaded.data.train, batch_size=ev.batch_size, shuffle=True, seed=ev.seed)
    return [x for x, _ in itertools.islice(loader, max(ev.bn_batches, 1))]
