"""The global random generators' states, saved with an epoch checkpoint and restored on resume.

Batches are drawn from per-epoch seeded generators, but dropout (and anything else drawing from
the global generators) moves torch's, NumPy's and Python's states from epoch to epoch. A resumed
run that only reseeded would draw other dropout masks than the uninterrupted one; restoring the
states saved at the end of the last finished epoch makes the two runs' weights equal.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """The global generators' states, in types `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    mt = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), mt, int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any] | None) -> None:
    """Put the global generators back where `rng_state` found them (None: leave them)."""
    if state is None:  # a checkpoint from before the states were saved
        return
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
