"""A dense LeNet-5 checkpoint and an allocation of it, for the tests that run `prune`; a Ctrl-C
that stops a backend after its first epoch is saved."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoprune.allocation import Allocation
from autoprune.backends.reweighted import Reweighted
from autoprune.pipeline.load import CHECKPOINT_KIND_DENSE, Loaded, checkpoint_meta, trace
from autoprune.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def allocation_file(tmp_path_factory: pytest.TempPathFactory, digits_lenet: Loaded) -> Path:
    """RUN/allocation.json keeping a third of every unit of the (untrained) digits LeNet-5."""
    root = tmp_path_factory.mktemp("alloc")
    meta = checkpoint_meta(digits_lenet, CHECKPOINT_KIND_DENSE, 0)
    save_checkpoint(root / "dense.pt", state_dict=digits_lenet.model.state_dict(), meta=meta)
    graph, _ = trace(digits_lenet, "channel")
    keep = np.maximum(1, np.array(graph.sizes) // 3)
    alloc = Allocation.from_keep(graph, keep, num_classes=10, dataset="digits",
                                 checkpoint=str(root / "dense.pt"))  # fmt: skip
    alloc.save(root / "allocation.json")
    return root / "allocation.json"


@pytest.fixture
def ctrl_c_in_second_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[], AbstractContextManager[None]]:
    """A block in which a reweighted backend is stopped by Ctrl-C in its second pruning epoch
    (its first is saved); the block must end in that KeyboardInterrupt."""

    @contextmanager
    def interrupting() -> Iterator[None]:
        original, calls = Reweighted.epoch_metrics, {"n": 0}

        def stop_in_second_epoch(self: Reweighted, model: Any) -> dict[str, Any]:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return original(self, model)

        with monkeypatch.context() as m:
            m.setattr(Reweighted, "epoch_metrics", stop_in_second_epoch)
            with pytest.raises(KeyboardInterrupt):
                yield

    return interrupting
