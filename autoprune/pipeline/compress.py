"""`search` and `prune` end to end: budgets -> allocation -> backend -> exported run directory."""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoprune.allocation import Allocation, write_json_atomic
from autoprune.backends.base import BACKENDS, BackendConfig, BackendResult
from autoprune.cost.budgets import Budget
from autoprune.cost.latency import TABLE_FILE, LatencyConfig, attach_latency
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig
from autoprune.errors import UsageError
from autoprune.export.program import model_metrics
from autoprune.export.quant import calibrate_activations
from autoprune.graph.importance import score_units
from autoprune.graph.masking import select_kept
from autoprune.graph.units import Granularity
from autoprune.pipeline.report import write_search_report
from autoprune.pipeline.runs import (
    CHECKPOINT_KIND_DENSE,
    Loaded,
    _loader,
    _meta,
    _refuse_existing,
    finish_run,
    load_model_and_data,
    resolve_limits,
    trace,
)
from autoprune.pipeline.staging import forget_stale_backend, refuse_interrupted, restore_dense
from autoprune.quant.bit_match import PricedKernels
from autoprune.quant.bits import BitAllocation
from autoprune.quant.kernel_counts import KernelCounts
from autoprune.rundir import staged_run_dir
from autoprune.search import SEARCH_METHODS, SearchMethod, SearchProblem
from autoprune.search.base import SearchContext
from autoprune.search.bit_space import BitSpace, smallest_bits
from autoprune.search.evaluator import EvaluatorConfig, MaskEvaluator
from autoprune.train.checkpoint import save_checkpoint
from autoprune.train.data import make_loader
from autoprune.train.loop import TrainConfig, fit, set_seed


@dataclass
class SearchRun:
    """Everything `autoprune search` needs; the CLI fills it, scripts may too."""

    dataset: str
    out: str
    budgets: list[Budget]
    model: str | None = None
    data_dir: str | None = None
    checkpoint: str | None = None
    input_size: tuple[int, int, int] | None = None
    method: str = "uniform"
    method_options: dict[str, Any] = field(default_factory=dict)
    # continue an interrupted run in its staging folder (see autoprune.pipeline.staging)
    resume: bool = False
    granularity: Granularity = "channel"
    seed: int = 0
    no_prune: bool = False
    backend: str = "reweighted"
    backend_cfg: BackendConfig = field(default_factory=BackendConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    dense_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=0))
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False
    latency_table: str | None = None  # without one, a latency budget measures a table here
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    bits: BitSpace | None = None  # --bits: the method chooses weight/activation widths too


def make_method(name: str, options: dict[str, Any]) -> SearchMethod:
    """Instantiate a registered method, rejecting options it does not take."""
    cls = SEARCH_METHODS.get(name)
    allowed = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UsageError(
            f"search method {name!r} takes no option {', '.join(unknown)}; "
            f"it takes {sorted(allowed)}"
        )
    return cls(**options)


def get_backend(name: str) -> Any:
    import autoprune.backends  # noqa: F401  (registers the built-in backends)

    return BACKENDS.get(name)


def run_search(cfg: SearchRun) -> dict[str, Any]:
    """Search an allocation under cfg.budgets, train it with the backend, export cfg.out."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    loaded = load_model_and_data(model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                 checkpoint=cfg.checkpoint, input_size=cfg.input_size,
                                 limit=cfg.limit)  # fmt: skip
    graph, cost_model = trace(loaded, cfg.granularity)
    latency = attach_latency(cfg.budgets, loaded.model, graph, cost_model,
                             table_path=cfg.latency_table, run_dir=cfg.out, cfg=cfg.latency,
                             progress=cfg.progress)  # fmt: skip
    smallest = None if cfg.bits is None else cost_model.with_bits(smallest_bits(graph, cfg.bits))
    limits, dense_costs = resolve_limits(
        cfg.budgets, cost_model, cfg.projection, smallest_model=smallest
    )
    method = make_method(cfg.method, cfg.method_options)
    if cfg.bits is not None and not method.supports_bits:
        bit_methods = sorted(
            n for n in SEARCH_METHODS.names() if SEARCH_METHODS.get(n).supports_bits
        )
        raise UsageError(
            f"--bits: search method {cfg.method!r} does not choose bits; use one of {bit_methods}"
        )
    backend = None if cfg.no_prune else get_backend(cfg.backend)()
    _refuse_existing(cfg.out, cfg.overwrite)
    refuse_interrupted(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    timings["trace"] = time.perf_counter() - t0
    set_seed(cfg.seed)

    with staged_run_dir(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume) as stage:
        if latency is not None:
            latency.save(stage / TABLE_FILE)
        checkpoint = cfg.checkpoint
        # no dense checkpoint given: train one (or keep the init) and keep it
        if checkpoint is None:
            t = time.perf_counter()
            if not (cfg.resume and restore_dense(loaded.model, stage)):
                _train_dense(loaded, cfg.dense_train, cfg.progress)
            (stage / "dense").mkdir(exist_ok=True)
            save_checkpoint(stage / "dense" / "checkpoint.pt", state_dict=loaded.model.state_dict(),
                            meta=_meta(loaded, CHECKPOINT_KIND_DENSE, cfg.seed))  # fmt: skip
            checkpoint = str((Path(cfg.out) / "dense" / "checkpoint.pt").resolve())
            timings["dense_train"] = time.perf_counter() - t
        else:
            checkpoint = str(Path(checkpoint).resolve())

        t = time.perf_counter()
        evaluate = None
        if method.needs_evaluator:
            evaluate = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg.evaluator)
        context = SearchContext(loaded.model, graph, loaded.data.train, loaded.data.val)
        problem = SearchProblem(
            cost_model, limits, evaluate, cfg.seed, cfg.projection, workdir=stage,
            progress=cfg.progress, context=context, bits=cfg.bits,
            kernel_counts=_kernel_counts(cfg, loaded, cost_model, evaluate),
        )  # fmt: skip
        result = method.search(problem)
        timings["search"] = time.perf_counter() - t

        keep = np.asarray(result.keep, dtype=np.int64)
        priced = problem.costed(result.bits)
        predicted = {m: priced.metric(m, keep) for m in priced.metrics if m in dense_costs}
        bit_info = {} if cfg.bits is None else {"bit_space": cfg.bits.to_json()}
        allocation = Allocation.from_keep(
            graph, keep, num_classes=loaded.num_classes, budgets=cfg.budgets, predicted=predicted,
            dense=dense_costs, method=cfg.method, seed=cfg.seed, dataset=cfg.dataset,
            checkpoint=checkpoint,
            extra={"proxy_accuracy": result.score, "trials": len(result.trials), **bit_info},
            bits=result.bits,
        )  # fmt: skip
        dense_metrics = model_metrics(
            loaded.model, loaded.input_size, _loader(loaded.data.test), latency=False
        )
        model, kept, history, t = loaded.model, None, [], time.perf_counter()
        bits = allocation.bit_allocation(graph)
        match = None
        if bits is not None and problem.kernel_counts is not None:
            match = PricedKernels.at(problem.kernel_counts, keep, loaded.model)
        if backend is None:
            kept = select_kept(model, graph, keep, cfg.backend_cfg.importance)
            if bits is not None:  # no backend trained activation scales: calibrate them here
                if match is not None:
                    kept, bits = match(kept, model, bits)
                calibrate_activations(model, graph, kept, bits, _calibration(loaded, cfg.evaluator))
        else:
            forget_stale_backend(stage, keep)
            res = _run_backend(backend, loaded, graph, keep, cfg.backend_cfg, stage,
                               bits=bits, match=match)  # fmt: skip
            model, kept, history, bits = res.model, res.kept, res.history, res.bits
        if bits is not None:  # the kept kernels' bits (permuted to what the search priced)
            allocation.set_bits(bits)
        timings["prune"] = time.perf_counter() - t
        extra = {
            "method": cfg.method, "backend": None if backend is None else cfg.backend,
            "search": {"trials": len(result.trials), "proxy_accuracy": result.score,
                       "seconds": timings["search"], **result.info},
            "history": history, "wall_time_s": timings,
        }  # fmt: skip
        metrics = finish_run(stage, loaded, graph, allocation, model, kept,
                             dense_metrics=dense_metrics, extra=extra, seed=cfg.seed,
                             latency_batch=latency.batch if latency else 1)  # fmt: skip
        _write_trials(stage, result)
        write_search_report(stage, graph=graph, result=result, keep=keep, limits=limits,
                            metrics=metrics, method=cfg.method)  # fmt: skip
    return metrics


def _kernel_counts(
    cfg: SearchRun, loaded: Loaded, cost_model: CostModel, evaluate: MaskEvaluator | None
) -> KernelCounts | None:
    """With bits: nonzeros per kernel as the evaluator keeps them (its scores; l1 without one)."""
    if cfg.bits is None:
        return None
    if evaluate is not None:
        return KernelCounts(cost_model, evaluate.scores)
    return KernelCounts(cost_model, score_units(loaded.model, cost_model.graph.units))


def _calibration(loaded: Loaded, ev: EvaluatorConfig) -> list[torch.Tensor]:
    """The training batches the evaluator calibrates activation scales on."""
    loader = make_loader(loaded.data.train, batch_size=ev.batch_size, shuffle=True, seed=ev.seed)
    return [x for x, _ in itertools.islice(loader, max(ev.bn_batches, 1))]


def _train_dense(loaded: Loaded, train: TrainConfig, progress: bool) -> None:
    if train.epochs <= 0:
        return
    set_seed(train.seed)
    loader = make_loader(
        loaded.data.train, batch_size=train.batch_size, shuffle=True, seed=train.seed
    )
    fit(loaded.model, loader, _loader(loaded.data.val), train, progress=progress)


def _run_backend(
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


def _write_trials(stage: Path, result: Any) -> None:
    rows = [{"number": t.number, "score": t.score, "keep": [int(k) for k in t.keep],
             "costs": t.costs, **({} if t.bits is None else {"bits": t.bits.to_json()})}
            for t in result.trials]  # fmt: skip
    write_json_atomic(stage / "trials.json", rows)


# ------------------------------------------------------------------------------------------ prune
@dataclass
class PruneRun:
    """`autoprune prune`: replay an allocation on its dense checkpoint with a backend."""

    allocation: str
    out: str
    backend: str = "reweighted"
    backend_cfg: BackendConfig = field(default_factory=BackendConfig)
    data_dir: str | None = None
    dataset: str | None = None
    checkpoint: str | None = None
    limit: int | None = None
    progress: bool = True
    overwrite: bool = False
    resume: bool = False


def run_prune(cfg: PruneRun) -> dict[str, Any]:
    alloc = Allocation.load(cfg.allocation)
    checkpoint = cfg.checkpoint or alloc.checkpoint
    if checkpoint is None:
        raise UsageError(f"{cfg.allocation} names no dense checkpoint; pass --checkpoint")
    dataset = cfg.dataset or alloc.dataset
    if dataset is None:
        raise UsageError(f"{cfg.allocation} names no dataset; pass --dataset")
    loaded = load_model_and_data(model=None, dataset=dataset, data_dir=cfg.data_dir,
                                 checkpoint=checkpoint, limit=cfg.limit)  # fmt: skip
    graph, cost_model = trace(loaded, alloc.granularity)  # type: ignore[arg-type]
    alloc.check_fits(graph)
    bits = alloc.bit_allocation(graph)
    match = None
    if bits is not None:  # priced as `search` prices without an evaluator (l1 importance)
        counts = KernelCounts(cost_model, score_units(loaded.model, graph.units))
        match = PricedKernels.at(counts, alloc.keep, loaded.model)
    backend = get_backend(cfg.backend)()
    if not cfg.resume:
        _refuse_existing(cfg.out, cfg.overwrite)
    set_seed(cfg.backend_cfg.seed)
    alloc.provenance["backend"] = cfg.backend
    alloc.provenance["backend_seed"] = cfg.backend_cfg.seed  # "seed": the search's, if any
    with staged_run_dir(cfg.out, overwrite=cfg.overwrite, resume=cfg.resume) as stage:
        dense_metrics = model_metrics(
            loaded.model, loaded.input_size, _loader(loaded.data.test), latency=False
        )
        t = time.perf_counter()
        res = _run_backend(backend, loaded, graph, alloc.keep, cfg.backend_cfg, stage,
                           bits=bits, match=match)  # fmt: skip
        if res.bits is not None:
            alloc.set_bits(res.bits)
        extra = {"backend": cfg.backend, "history": res.history, "info": res.info,
                 "wall_time_s": {"prune": time.perf_counter() - t}}  # fmt: skip
        return finish_run(stage, loaded, graph, alloc, res.model, res.kept,
                          dense_metrics=dense_metrics, extra=extra,
                          seed=cfg.backend_cfg.seed)  # fmt: skip
