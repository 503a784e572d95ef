"""`autoprune prune` as a pipeline: load the allocation -> load -> trace -> train -> export."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from autoprune.allocation import Allocation
from autoprune.backends import BACKENDS, BackendConfig
from autoprune.cost.bit_match import PricedKernels
from autoprune.cost.kernel_counts import KernelCounts
from autoprune.errors import UsageError
from autoprune.export.program import model_metrics
from autoprune.graph.units import UnitGraph
from autoprune.pipeline.finish import finish_run
from autoprune.pipeline.load import (
    Loaded,
    eval_loader,
    load_model_and_data,
    refuse_existing,
    trace,
)
from autoprune.pipeline.stages import refuse_other_training, run_backend
from autoprune.rundir import partial_dir, staged_run_dir, writes_out
from autoprune.search.evaluator import EvaluatorConfig, element_scores
from autoprune.train.loop import set_seed


@dataclass(kw_only=True)
class PruneRun:
    """`autoprune prune`: replay an allocation on its dense checkpoint with a backend."""

    allocation: str
    out: str
    backend: str = "reweighted"
    backend_cfg: BackendConfig = field(default_factory=BackendConfig)
    data_dir: str | None = None
    dataset: str | None = None  # default: the allocation's
    checkpoint: str | None = None  # default: the dense checkpoint the allocation names
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False
    resume: bool = False


@writes_out  # --out is checked and locked before any work
def run_prune(cfg: PruneRun) -> dict[str, Any]:
    """Train the allocation's dense checkpoint to exactly its keeps; export cfg.out."""
    alloc = Allocation.load(cfg.allocation)
    checkpoint = cfg.checkpoint or alloc.checkpoint
    if checkpoint is None:
        raise UsageError(f"{cfg.allocation} names no dense checkpoint; pass --checkpoint")
    dataset = cfg.dataset or alloc.dataset
    if dataset is None:
        raise UsageError(f"{cfg.allocation} names no dataset; pass --dataset")
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=cfg.data_dir,
                                 checkpoint=checkpoint, limit=cfg.limit,
                                 seed=cfg.backend_cfg.seed)  # fmt: skip
    graph, cost_model = trace(loaded, alloc.granularity)  # type: ignore[arg-type]
    alloc.check_fits(graph)
    bits = alloc.bit_allocation(graph)
    match = None
    if bits is not None:  # priced as `search` priced them: by the allocation's importance
        counts = KernelCounts(cost_model, _recorded_scores(alloc, loaded, graph))
        match = PricedKernels.at(counts, alloc.keep, loaded.model)
    backend = BACKENDS.build(cfg.backend)
    BACKENDS.parse_options(cfg.backend, cfg.backend_cfg.options)  # wrong options fail now
    if cfg.resume:
        refuse_other_training(partial_dir(cfg.out), backend, loaded, alloc.keep, cfg.backend_cfg,
                              bits)  # fmt: skip
    else:
        refuse_existing(cfg.out, cfg.overwrite)
    set_seed(cfg.backend_cfg.seed)
    alloc.provenance["backend"] = cfg.backend
    alloc.provenance["backend_seed"] = cfg.backend_cfg.seed  # "seed": the search's, if any
    with staged_run_dir(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume) as stage:
        dense_metrics = model_metrics(
            loaded.model, loaded.input_size, eval_loader(loaded.data.test), latency=False
        )
        t = time.perf_counter()
        res = run_backend(backend, loaded, graph, alloc.keep, cfg.backend_cfg, stage,
                          bits=bits, match=match)  # fmt: skip
        if res.bits is not None:
            alloc.set_bits(res.bits)
        extra = {"backend": cfg.backend, "history": res.history, "info": res.info,
                 "wall_time_s": {"prune": time.perf_counter() - t}}  # fmt: skip
        return finish_run(stage, loaded, graph, alloc, res.model, res.kept,
                          dense_metrics=dense_metrics, extra=extra,
                          seed=cfg.backend_cfg.seed)  # fmt: skip


def _recorded_scores(alloc: Allocation, loaded: Loaded, graph: UnitGraph) -> list[torch.Tensor]:
    """The element scores of the importance the allocation was searched with (l1 in files from
    before it was recorded); taylor's gradients come from the evaluator's first training batches
    at the search's seed, so they match the search's when the data is the same."""
    importance = alloc.importance or "l1"
    cfg = EvaluatorConfig(importance=importance, seed=int(alloc.provenance.get("seed", 0)))
    return element_scores(loaded.model, graph, importance, loaded.data.train, cfg)
