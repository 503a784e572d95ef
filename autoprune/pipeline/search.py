"""`autoprune search` as a pipeline: load -> trace -> price -> dense -> search -> train -> export.

Each stage is a function over dataclasses (`SearchRun` in, `Priced` and `Searched` between
stages); `run_search` only sequences them inside the staged run directory.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.allocation import Allocation
from autoprune.backends import BACKENDS, BackendConfig
from autoprune.cost.bit_match import PricedKernels
from autoprune.cost.budgets import Budget
from autoprune.cost.kernel_counts import KernelCounts
from autoprune.cost.latency import TABLE_FILE, LatencyConfig, LatencyTable, attach_latency
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, snap
from autoprune.errors import BudgetError, UsageError
from autoprune.export.program import model_metrics
from autoprune.export.quant import calibrate_activations
from autoprune.graph.importance import top_k
from autoprune.graph.units import Granularity, UnitGraph
from autoprune.graph.verify import unit_summary
from autoprune.pipeline.finish import finish_run
from autoprune.pipeline.load import (
    CHECKPOINT_KIND_DENSE,
    Loaded,
    checkpoint_meta,
    eval_loader,
    load_model_and_data,
    refuse_existing,
    resolve_limits,
    trace,
)
from autoprune.pipeline.report import write_search_report
from autoprune.pipeline.stages import calibration_batches, run_backend, train_dense
from autoprune.pipeline.staging import forget_stale_backend, refuse_interrupted, restore_dense
from autoprune.rundir import staged_run_dir, write_json_atomic, writes_out
from autoprune.search import SEARCH_METHODS, SearchMethod, SearchProblem, SearchResult
from autoprune.search.base import SearchContext
from autoprune.search.bit_space import BitSpace, smallest_bits
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator, element_scores
from autoprune.search.finalists import FinalRound, final_round
from autoprune.train import distributed
from autoprune.train.augment import recipe_record
from autoprune.train.checkpoint import save_checkpoint
from autoprune.train.loop import TrainConfig, set_seed


@dataclass(kw_only=True)
class SearchRun:
    """Everything `autoprune search` needs; the CLI fills what the user set, scripts may too."""

    dataset: str
    out: str
    budgets: list[Budget]
    model: str | None = None
    data_dir: str | None = None
    checkpoint: str | None = None
    weights: str | None = None  # torchvision's pretrained weights (DEFAULT, IMAGENET1K_V1, ...)
    input_size: tuple[int, int, int] | None = None
    method: str = "optuna"  # the default search; uniform and the heuristics need no evaluator
    method_options: dict[str, Any] = field(default_factory=dict)
    # continue an interrupted run in its staging folder (see autoprune.pipeline.staging)
    resume: bool = False
    granularity: Granularity = "channel"
    seed: int = 0
    no_prune: bool = False
    backend: str = "reweighted"
    backend_cfg: BackendConfig = field(default_factory=BackendConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    final_round: FinalRound = field(default_factory=FinalRound)  # re-score the best few
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    dense_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0))
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False
    latency_table: str | None = None  # without one, a latency budget measures a table here
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    bits: BitSpace | None = None  # --bits: the method chooses weight/activation widths too


@dataclass
class Priced:
    """A loaded model with its units traced and every budget turned into a limit."""

    loaded: Loaded
    graph: UnitGraph
    cost_model: CostModel
    limits: dict[str, float]
    dense_costs: dict[str, float]
    latency: LatencyTable | None


@dataclass
class Searched:
    """What the search stage found, and the problem it solved (for its exact prices)."""

    problem: SearchProblem
    result: SearchResult
    keep: np.ndarray


@writes_out  # --out is checked and locked before any work
def run_search(cfg: SearchRun) -> dict[str, Any]:
    """Search an allocation under cfg.budgets, train it with the backend, export cfg.out."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    priced = price(cfg)
    method = build_method(cfg)
    backend = None if cfg.no_prune else BACKENDS.build(cfg.backend)
    if backend is not None:
        BACKENDS.parse_options(cfg.backend, cfg.backend_cfg.options)  # wrong options fail now
    refuse_existing(cfg.out, cfg.overwrite)
    refuse_interrupted(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    timings["trace"] = time.perf_counter() - t0
    set_seed(cfg.seed)

    with staged_run_dir(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume) as stage:
        if priced.latency is not None:
            priced.latency.save(stage / TABLE_FILE)
        checkpoint = dense_stage(cfg, priced.loaded, stage, timings)
        searched = search_stage(cfg, priced, method, stage, timings)
        allocation = allocation_of(cfg, priced, searched, checkpoint)
        loaded = priced.loaded
        dense_metrics = model_metrics(
            loaded.model, loaded.input_size, eval_loader(loaded.data.test), latency=False
        )
        t = time.perf_counter()
        model, kept, history = train_stage(cfg, priced, searched, allocation, backend, stage)
        timings["prune"] = time.perf_counter() - t
        result = searched.result
        extra = {
            "method": cfg.method, "backend": None if backend is None else cfg.backend,
            "search": {"trials": len(result.trials), "proxy_accuracy": result.score,
                       "seconds": timings["search"], **result.info},
            "history": history, "wall_time_s": timings,
            "recipe": {"dense": recipe_record(cfg.dense_train.augment, cfg.dataset,
                                              loaded.input_size),
                       "backend": recipe_record(cfg.backend_cfg.augment, cfg.dataset,
                                                loaded.input_size)},
        }  # fmt: skip
        batch = priced.latency.batch if priced.latency else 1
        metrics = finish_run(stage, loaded, priced.graph, allocation, model, kept,
                             dense_metrics=dense_metrics, extra=extra, seed=cfg.seed,
                             latency_batch=batch)  # fmt: skip
        _write_trials(stage, result)
        write_search_report(stage, graph=priced.graph, result=result, keep=searched.keep,
                            limits=priced.limits, metrics=metrics, method=cfg.method)  # fmt: skip
    return metrics


def price(cfg: SearchRun) -> Priced:
    """Load, trace and price: the budgets as limits, refused when infeasible."""
    loaded = load_model_and_data(model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                 checkpoint=cfg.checkpoint, input_size=cfg.input_size,
                                 limit=cfg.limit, seed=cfg.seed, weights=cfg.weights)  # fmt: skip
    if loaded.fresh and cfg.dense_train.epochs == 0:
        raise UsageError(
            f"--weights {cfg.weights} of {loaded.name} are for another number of classes than "
            f"{cfg.dataset}'s {loaded.num_classes}, so {', '.join(loaded.fresh)} start untrained; "
            "pass --dense-epochs N to train them before the search ranks anything"
        )
    graph, cost_model = trace(loaded, cfg.granularity)
    latency = attach_latency(cfg.budgets, loaded.model, graph, cost_model,
                             table_path=cfg.latency_table, run_dir=cfg.out, cfg=cfg.latency,
                             progress=cfg.progress,
                             needed=cfg.projection.latency_aware)  # fmt: skip
    smallest = None if cfg.bits is None else cost_model.with_bits(smallest_bits(graph, cfg.bits))
    units = unit_summary(graph, cost_model)
    if cfg.progress and graph.granularity == "channel":
        print(units, file=sys.stderr, flush=True)
    try:
        limits, dense_costs = resolve_limits(
            cfg.budgets, cost_model, cfg.projection, smallest_model=smallest
        )
    except BudgetError as err:
        if not graph.frozen:
            raise
        raise BudgetError(f"{err}; {units}") from None  # what makes the floor that high
    return Priced(loaded, graph, cost_model, limits, dense_costs, latency)


def build_method(cfg: SearchRun) -> SearchMethod:
    """The registered search method with its options checked; --bits needs one that picks bits."""
    method: SearchMethod = SEARCH_METHODS.build(cfg.method, cfg.method_options)
    method.check_granularity(cfg.granularity)  # erk allocates weights only: say so before work
    if cfg.final_round.active and not method.needs_evaluator:
        raise UsageError(f"--finalists re-scores a search's proposals; {cfg.method!r} scores none: "
                         "drop --finalists or use a search (optuna, random, rl, dsa)")  # fmt: skip
    if cfg.final_round.active and cfg.method_options.get("multi_objective"):
        raise UsageError("--finalists picks by accuracy alone; with --multi-objective --pick "
                         "chooses from the Pareto front: drop one of them")  # fmt: skip
    if cfg.bits is not None and not method.supports_bits:
        bit_methods = sorted(
            n for n in SEARCH_METHODS.names() if SEARCH_METHODS.get(n).supports_bits
        )
        raise UsageError(
            f"--bits: search method {cfg.method!r} does not choose bits; use one of {bit_methods}"
        )
    return method


def dense_stage(cfg: SearchRun, loaded: Loaded, stage: Path, timings: dict[str, float]) -> str:
    """The dense checkpoint the allocation names: the given one, or one trained (and kept) here."""
    if loaded.checkpoint is not None:  # an autoprune checkpoint (a plain state dict is saved)
        return str(Path(loaded.checkpoint).resolve())
    t = time.perf_counter()
    if not (cfg.resume and restore_dense(loaded.model, stage)):
        train_dense(loaded, cfg.dense_train, cfg.progress)
    (stage / "dense").mkdir(exist_ok=True)
    save_checkpoint(stage / "dense" / "checkpoint.pt", state_dict=loaded.model.state_dict(),
                    meta=checkpoint_meta(loaded, CHECKPOINT_KIND_DENSE, cfg.seed))  # fmt: skip
    timings["dense_train"] = time.perf_counter() - t
    return str((Path(cfg.out) / "dense" / "checkpoint.pt").resolve())


def search_stage(
    cfg: SearchRun, priced: Priced, method: SearchMethod, stage: Path, timings: dict[str, float]
) -> Searched:
    """Run the method on the problem (its evaluator scores on the validation split only)."""
    t = time.perf_counter()
    loaded, graph = priced.loaded, priced.graph
    evaluate = None
    if method.needs_evaluator:
        evaluate = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg.evaluator)
    context = SearchContext(loaded.model, graph, loaded.data.train, loaded.data.val)
    # One importance for the proxy, the heuristics, the bit pricing and a --no-prune export.
    importance = cfg.evaluator.importance
    scores = evaluate.scores if evaluate is not None else element_scores(
        loaded.model, graph, importance, loaded.data.train, cfg.evaluator)  # fmt: skip
    counts = None if cfg.bits is None else KernelCounts(priced.cost_model, scores)
    problem = SearchProblem(
        priced.cost_model, priced.limits, evaluate, cfg.seed, cfg.projection, workdir=stage,
        progress=cfg.progress, context=context, bits=cfg.bits, kernel_counts=counts,
        importance=importance, scores=scores,
    )  # fmt: skip
    result = method.search(problem)
    if evaluate is not None and cfg.final_round.active:
        seeds = cfg.final_round.order_seeds(cfg.evaluator.seed)
        result = final_round(result, lambda i: evaluate.reordered(seeds[i]), cfg.final_round)
    result = distributed.agree(result)  # under torchrun: rank 0's, everywhere
    timings["search"] = time.perf_counter() - t
    keep = np.asarray(result.keep, dtype=np.int64)
    if result.bits is None:  # --round-to: on the keep grid whichever way the method chose it
        keep = snap(keep, priced.cost_model, priced.limits, cfg.projection)
    return Searched(problem, result, keep)


def allocation_of(
    cfg: SearchRun, priced: Priced, searched: Searched, checkpoint: str
) -> Allocation:
    """The allocation file's content: keeps, bits, exact predicted costs and provenance."""
    result, keep = searched.result, searched.keep
    costed = searched.problem.costed(result.bits)
    predicted = {m: costed.metric(m, keep) for m in costed.metrics if m in priced.dense_costs}
    bit_info = {} if cfg.bits is None else {"bit_space": cfg.bits.to_json()}
    return Allocation.from_keep(
        priced.graph, keep, num_classes=priced.loaded.num_classes, budgets=cfg.budgets,
        predicted=predicted, dense=priced.dense_costs, method=cfg.method, seed=cfg.seed,
        dataset=cfg.dataset, checkpoint=checkpoint,
        extra={"proxy_accuracy": result.score, "trials": len(result.trials), **bit_info},
        bits=result.bits, importance=searched.problem.importance,
    )  # fmt: skip


def train_stage(
    cfg: SearchRun,
    priced: Priced,
    searched: Searched,
    allocation: Allocation,
    backend: Any,
    stage: Path,
) -> tuple[nn.Module, list[torch.Tensor], list[dict[str, Any]]]:
    """Train to the allocation with the backend, or (--no-prune) keep the important elements.

    With bits the kept kernels take the bits the search priced, and the allocation records them.
    """
    loaded, graph, keep = priced.loaded, priced.graph, searched.keep
    model, history = loaded.model, []
    bits = allocation.bit_allocation(graph)
    counts = searched.problem.kernel_counts
    match = None
    if bits is not None and counts is not None:
        match = PricedKernels.at(counts, keep, loaded.model)
    if backend is None:
        # the elements the proxy scored: the search's importance, not the backend's
        scores = searched.problem.element_scores()
        kept = [top_k(s, int(k)) for s, k in zip(scores, keep, strict=True)]
        if bits is not None:  # no backend trained activation scales: calibrate them here
            if match is not None:
                kept, bits = match(kept, model, bits)
            batches = calibration_batches(loaded, cfg.evaluator)
            calibrate_activations(model, graph, kept, bits, batches)
    else:
        forget_stale_backend(stage, keep)
        res = run_backend(backend, loaded, graph, keep, cfg.backend_cfg, stage,
                          bits=bits, match=match)  # fmt: skip
        model, kept, history, bits = res.model, res.kept, res.history, res.bits
    if bits is not None:  # the kept kernels' bits (permuted to what the search priced)
        allocation.set_bits(bits)
    return model, kept, history


def _write_trials(stage: Path, result: SearchResult) -> None:
    rows = [{"number": t.number, "score": t.score, "keep": [int(k) for k in t.keep],
             "costs": t.costs, **({} if t.bits is None else {"bits": t.bits.to_json()}),
             **({} if t.source is None else {"source": t.source})}
            for t in result.trials]  # fmt: skip
    write_json_atomic(stage / "trials.json", rows)
