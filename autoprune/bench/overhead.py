"""The cost of a training step with a backend's masks over a dense step, timed in one process."""

from __future__ import annotations

import copy
import statistics
from typing import Any

import numpy as np
import torch

from autoprune.backends import BACKENDS
from autoprune.backends.base import BackendConfig
from autoprune.graph.units import UnitGraph
from autoprune.pipeline.load import Loaded
from autoprune.train.data import make_loader
from autoprune.train.device import current
from autoprune.train.loop import train_epoch


def step_overhead(
    loaded: Loaded,
    graph: UnitGraph,
    keep: np.ndarray,
    *,
    backend: str = "reweighted",
    epochs: int = 12,
    steps: int = 60,
    rounds: int = 5,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Median seconds per step, dense and masked, over `rounds` alternating blocks of `steps`.

    Both models see the same batches with the same optimiser; the masked one also runs the
    backend's per-step hooks (gates, penalty, regulariser refresh), so the ratio is the whole
    price of pruning while training.
    """
    loader = make_loader(loaded.data.train, batch_size=batch_size, shuffle=True, seed=0)
    batches = []
    for x, y in loader:
        batches.append((x, y))
        if len(batches) == steps:
            break
    # throwaway copies on the runtime's --device: the backend's state is made where steps run
    dense, masked = (copy.deepcopy(loaded.model).to(current().device) for _ in range(2))
    # The pruning phase as a real run schedules it, so periodic work (regulariser refreshes)
    # comes at its real rate.
    cfg = BackendConfig(epochs=epochs, progress=False)
    steps_per_epoch = -(-len(loaded.data.train) // batch_size)  # type: ignore[arg-type]
    hooks = BACKENDS.build(backend).prepare(masked, graph, keep, cfg, steps_per_epoch)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for m in (dense, masked)}
    for m, h in ((dense, {}), (masked, hooks)):  # warm-up: allocator, autograd graph caches
        train_epoch(m, batches[:3], opts[id(m)], progress=False, **h)
    times: dict[str, list[float]] = {"dense": [], "masked": []}
    for r in range(rounds):
        order = [("dense", dense, {}), ("masked", masked, hooks)]
        for name, m, h in order if r % 2 == 0 else order[::-1]:
            stats = train_epoch(m, batches, opts[id(m)], progress=False, **h)
            times[name].append(stats.seconds / stats.steps)
    dense_s, masked_s = statistics.median(times["dense"]), statistics.median(times["masked"])
    return {
        "backend": backend, "granularity": graph.granularity, "dense_step_s": dense_s,
        "masked_step_s": masked_s, "ratio": masked_s / dense_s, "steps": len(batches),
        "rounds": rounds, "batch_size": batch_size, "threads": torch.get_num_threads(),
    }  # fmt: skip
