"""Latency measured on this machine: building a layer-by-layer table and the `latency` metric on it.

Every conv/linear layer is timed alone (a fresh layer of the kept shape on an input of the shape it
sees in the model) over a grid of kept widths; the cost model's affine width maps turn any keep
vector into per-layer widths, so the table predicts any allocation without building it.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.cost.budgets import Budget, format_value
from autoprune.cost.latency_table import (
    FORMS,
    LatencyPredictor,
    LatencyTable,
    LayerTiming,
    block_start,
    fit_calibrated,
    fit_rest,
)
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.cost.timing import (
    OtherJobs,
    TimingConfig,
    compare_latency,
    machine_info,
    record_layer_inputs,
    time_layer,
)
from autoprune.errors import UsageError
from autoprune.graph.masking import slim
from autoprune.graph.units import UnitGraph
from autoprune.rundir import partial_dir
from autoprune.train.device import current

TABLE_FILE = "latency_table.json"
MISS_TOLERANCE = 0.10  # `search` warns when the measured latency exceeds its budget by more
BUSY_WARNING_CORES = 0.5  # other jobs' CPU use while measuring that makes a table suspect


@dataclass(frozen=True)
class LatencyConfig:
    """How a table is measured."""

    # Points between the narrowest reachable width (every unit keeping one channel) and the dense
    # width; denser near the top, where budgets of 30-70% put most layers.
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0)
    # Channels the CPU's conv kernels process as one block: a layer's time steps up once every
    # `block` channels and is flat in between (resnet18 @224 on this 2-core EPYC: 2.2 ms for 49
    # and 64 output channels, 1.3 ms for 33 and 41). Interior grid points sit at block starts and
    # the table prices a width as its block's start; on the 2026-11-21 tables this cut resnet18's
    # error on 20 random allocations from 8.0% to 6.4% (bias +0.84 -> +0.03 ms), mobilenet_v2's
    # from 5.0% to 3.3%, against 7.2% / 4.0% with 8. 1: plain interpolation between widths.
    block: int = 16
    batch: int = 1  # the latency of one image is what a deployment budget usually means
    timing: TimingConfig = field(default_factory=TimingConfig)
    # Random allocations timed whole, beside the dense and the smallest model, to fit the
    # layers' scale and the between-layers term (`fit_calibrated`); 0: those two models only.
    # Half of them lopsided (random_keeps' `independent`). With 6 (all around a common ratio)
    # a deployed mobilenet_v2 table missed 20 random allocations by 11-16% (MAPE, 1 thread,
    # 2026-12-07); with 24, by 2.8%. Whole models cost little next to the layer grid.
    calibration: int = 24
    calibration_seed: int = 1_000_003  # not a seed a benchmark's own random allocations use
    # Time what model.pt2 runs (BatchNorm folded into the convs, the exported layout, the input
    # normalisation in front) rather than the modules as built: on 2026-12-07 the exported
    # resnet18 at 50% MACs ran 1.5x faster than the same modules, and a table of the modules
    # sent --latency-aware to allocations slower than uniform's (results/speed).
    deployed: bool = True
    channels_last: bool | None = None  # with `deployed`: None, the dense model's faster layout


def _grid(
    lo: float, hi: float, fractions: Sequence[float], multiple: int, block: int = 1
) -> list[int]:
    """Widths to time between `lo` and `hi` (rounded to `multiple`, for grouped convs).

    CPU kernels vectorise over blocks of channels: a width that is a multiple of 8 often runs
    faster than its neighbours, and the dense width may even take another algorithm than every
    pruned one. Pruned models have arbitrary widths, so interior points are moved to the first
    width of their `block` (with block 1: off multiples of 8, upwards; either way the table errs
    towards slower) and the widest pruned width, hi - 1, is timed too.
    """
    lo_w, hi_w = max(multiple, round(lo)), max(multiple, round(hi))
    widths = {lo_w, hi_w}
    for f in fractions:
        w = max(multiple, round((lo + f * (hi - lo)) / multiple) * multiple)
        if multiple == 1 and block > 1:
            w = block_start(w, block)
        elif multiple == 1 and w % 8 == 0 and lo_w < w < hi_w - 1:
            w += 1
        widths.add(min(max(w, lo_w), hi_w))
    if multiple == 1 and hi_w - 1 > lo_w:
        widths.add(hi_w - 1)
    return sorted(widths)


def measure_table(
    model: nn.Module,
    graph: UnitGraph,
    cost_model: CostModel,
    cfg: LatencyConfig | None = None,
    *,
    progress: bool = False,
) -> LatencyTable:
    """Time every layer of `model` over the width grid and fit the between-layers term."""
    cfg = cfg or LatencyConfig()
    if graph.granularity != "channel":
        raise UsageError("a latency table needs channel units (--granularity channel)")
    device = current().device  # timed where the run computes (--device)
    threads = cfg.timing.threads or torch.get_num_threads()
    t0 = time.perf_counter()
    info: dict[str, Any] = {
        "machine_before": machine_info(threads),
        "fractions": list(cfg.fractions),
    }
    inputs = record_layer_inputs(model, graph)
    form, biased = _form(model, graph, cfg)
    channels_last = form == DEPLOYED_LAST
    lo_out, lo_in = cost_model.layer_widths(np.ones(len(graph.units), dtype=np.int64))
    hi_out, hi_in = cost_model.layer_widths(cost_model.dense_keep)
    layers = []
    with OtherJobs() as others:
        for i, lay in enumerate(graph.layers):
            mod, shape = inputs[lay.name]
            multiple = 1 if lay.depthwise else lay.groups  # grouped: widths divisible by groups
            outs = _grid(lo_out[i], hi_out[i], cfg.fractions, multiple, cfg.block)
            ins = (
                [max(1, round(o * lay.in_channels / lay.out_channels)) for o in outs]
                if lay.depthwise
                else _grid(lo_in[i], hi_in[i], cfg.fractions, multiple, cfg.block)
            )
            secs = time_layer(mod, shape, outs, ins, lay.depthwise, cfg.batch, cfg.timing, device,
                              bias=biased.get(lay.name), channels_last=channels_last)  # fmt: skip
            what = f"{type(mod).__name__} input {list(shape)}"
            layers.append(LayerTiming(lay.name, outs, ins, secs, lay.depthwise, what))
            if progress:
                grid = f"{len(outs)}x{1 if lay.depthwise else len(ins)}"
                dense = format_value("latency", secs[-1][-1])
                # stderr, beside the other progress output: stdout may carry --json
                print(f"  {lay.name}: {grid} widths, dense {dense}", file=sys.stderr, flush=True)
        g = graph
        table = LatencyTable(g.model_name, g.input_size, g.signature, cfg.batch, threads, layers,
                             0.0, 0.0, info, device=str(device), block=cfg.block,
                             form=form)  # fmt: skip
        _fit_rest(table, model, graph, cost_model, cfg)
    info.update(machine_after=machine_info(threads), others_cores=others.cores,
                seconds_to_measure=round(time.perf_counter() - t0, 2))  # fmt: skip
    if others.cores is not None and others.cores > BUSY_WARNING_CORES:
        warnings.warn(f"other jobs kept {others.cores:.1f} CPU cores busy while the latency table "
                      "was measured; its timings may be inflated: re-measure on an idle machine",
                      stacklevel=2)  # fmt: skip
    return table


PLAIN, DEPLOYED, DEPLOYED_LAST = FORMS


def _form(model: nn.Module, graph: UnitGraph, cfg: LatencyConfig) -> tuple[str, dict[str, bool]]:
    """The table's form (LatencyTable.form) and, when deployed, which layers have a bias there
    (a folded BatchNorm leaves one in the conv before it)."""
    from autoprune.export.program import Normalized, deployed

    if not cfg.deployed:
        return PLAIN, {}
    form, info = deployed(model, graph.input_size, cfg.channels_last)
    modules = dict(form.named_modules())
    prefix = "net." if isinstance(form, Normalized) else ""  # the input normalisation's wrapper
    biased = {}
    for lay in graph.layers:
        mod = modules.get(prefix + lay.name)
        if mod is not None:
            biased[lay.name] = getattr(mod, "bias", None) is not None
    return (DEPLOYED_LAST if info["channels_last"] else DEPLOYED), biased


def timed_copy(
    model: nn.Module, graph: UnitGraph, keep: np.ndarray | None, form: str = PLAIN
) -> nn.Module:
    """`model` slimmed to `keep` (None: dense), in the form a table of `form` timed: what its
    predictions are to be compared with."""
    from autoprune.export.program import deployed

    net = model if keep is None else slimmed_copy(model, graph, keep)
    if form == PLAIN:
        return net
    return deployed(net, graph.input_size, channels_last=form == DEPLOYED_LAST)[0]


def table_for(
    model: str,
    *,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    cfg: LatencyConfig | None = None,
    progress: bool = False,
) -> LatencyTable:
    """Build `model` by name (untrained weights time the same) and measure its table."""
    from autoprune.graph.units import trace_units
    from autoprune.models import build_model, default_input_size, default_num_classes

    size = tuple(input_size) if input_size else default_input_size(model)
    classes = num_classes if num_classes is not None else default_num_classes(model)
    net = build_model(model, num_classes=classes, input_size=size)  # type: ignore[arg-type]
    graph = trace_units(net, size, "channel", model)  # type: ignore[arg-type]
    table = measure_table(net, graph, CostModel(graph), cfg, progress=progress)
    table.info["num_classes"] = classes
    return table


def slimmed_copy(model: nn.Module, graph: UnitGraph, keep: np.ndarray) -> nn.Module:
    """A slimmed copy of `model` keeping the first `keep[i]` channels of unit i, in eval mode
    (what a timing needs: the architecture of an allocation, not which channels it keeps)."""
    return slim(copy.deepcopy(model), graph, [torch.arange(int(k)) for k in keep]).eval()


def random_keeps(
    cost_model: CostModel, n: int, seed: int, *, independent: bool = False
) -> list[np.ndarray]:
    """Allocations of every size: a global ratio in [0.1, 1], varied by +-40% per unit; with
    `independent`, every other one draws each unit's ratio on its own in [0.05, 1] instead (the
    lopsided shapes searches and --latency-aware reach: some units whole, others nearly gone)."""
    rng = np.random.default_rng(seed)
    lo = ProjectionConfig().min_ratio
    sizes = cost_model.sizes
    keeps = []
    for i in range(n):
        if independent and i % 2 == 1:
            ratios = np.clip(rng.uniform(0.05, 1.0, len(sizes)), lo, 1.0)
        else:
            ratios = np.clip(rng.uniform(0.1, 1.0) * rng.uniform(0.6, 1.4, len(sizes)), lo, 1.0)
        keeps.append(np.clip(np.round(ratios * sizes), 1, sizes).astype(np.int64))
    return keeps


def _fit_rest(
    table: LatencyTable,
    model: nn.Module,
    graph: UnitGraph,
    cost_model: CostModel,
    cfg: LatencyConfig,
) -> None:
    """Time whole models (the dense, the smallest, `cfg.calibration` random allocations) and fit
    what the layers timed alone do not explain: their scale and the rest."""
    small_keep = min_keeps(cost_model.sizes, ProjectionConfig())
    keeps = [cost_model.dense_keep, small_keep]
    keeps += random_keeps(cost_model, cfg.calibration, cfg.calibration_seed, independent=True)
    models = {"dense": timed_copy(model, graph, None, table.form)} | {
        f"k{i}": timed_copy(model, graph, keep, table.form)
        for i, keep in enumerate(keeps[1:], start=1)
    }
    timed = compare_latency(models, graph.input_size, batch=cfg.batch, cfg=cfg.timing)
    measured = [timed["dense"]] + [timed[f"k{i}"] for i in range(1, len(keeps))]
    predictor = LatencyPredictor(table, cost_model)  # rest still zero, scale 1: layers only
    positions = np.array([lay.positions for lay in graph.layers], dtype=np.float64)
    layers = [float(predictor.layer_seconds(k).sum()) for k in keeps]
    acts = [float(cost_model.layer_widths(k)[0] @ positions) for k in keeps]
    fitted = fit_calibrated(measured, layers, acts)
    if fitted is None:
        fitted = fit_rest((measured[0], measured[1]), (layers[0], layers[1]), (acts[0], acts[1]))
    table.layer_scale, table.rest_const, table.rest_per_activation = fitted
    table.info.update(
        dense_model_s=measured[0],
        small_model_s=measured[1],
        small_keep=[int(k) for k in small_keep],
        calibration_s=measured[2:],
        calibration_layers_s=layers[2:],
    )


def register_latency(
    cost_model: CostModel, table: LatencyTable, *, source: str = "latency table"
) -> LatencyPredictor:
    """Check that `table` belongs to the cost model's network and add the `latency` metric."""
    here = current().device
    if torch.device(table.device).type != here.type:
        raise UsageError(
            f"{source} was measured on {table.device} and this run computes on {here}; "
            f"measure one there with `autoprune latency-table --device {here.type}`"
        )
    if table.signature != cost_model.graph.signature:
        size = "x".join(map(str, table.input_size))
        raise UsageError(
            f"{source} was measured for {table.model} at {size} (signature {table.signature}), "
            f"not this model ({cost_model.graph.signature}); rebuild it with `autoprune "
            "latency-table` for this model, input size and number of classes"
        )
    if table.form == PLAIN:
        warnings.warn(
            f"{source} timed the modules as built, while runs measure the exported form "
            "(BatchNorm folded, its layout); rebuild it with `autoprune latency-table` for "
            "predictions of what is measured",
            stacklevel=2,
        )
    if table.threads != torch.get_num_threads():
        warnings.warn(
            f"{source} was measured with {table.threads} threads, torch now uses "
            f"{torch.get_num_threads()}; its predictions may be off",
            stacklevel=2,
        )
    predictor = LatencyPredictor(table, cost_model)
    floor = predictor(np.ones(len(cost_model.sizes), dtype=np.int64))  # monotone: the minimum
    if not floor > 0.0:
        raise UsageError(
            f"{source} predicts {floor * 1e3:.3g} ms for a model that keeps one element per "
            "unit: its layers add up to more than the measured model (timed while other jobs "
            "ran?); rebuild it with `autoprune latency-table`"
        )
    cost_model.register_metric("latency", predictor)
    return predictor


def attach_latency(
    budgets: Sequence[Budget],
    model: nn.Module,
    graph: UnitGraph,
    cost_model: CostModel,
    *,
    table_path: str | None,
    run_dir: str | Path | None,
    cfg: LatencyConfig | None = None,
    progress: bool = False,
    needed: bool = False,
) -> LatencyTable | None:
    """Register `latency` on the cost model when a budget, a table or `needed` asks for it.

    `needed`: the projection prices allocations by latency (--latency-aware) without a budget.

    The table comes from `table_path`, else from an earlier attempt at the same run directory
    (a finished or interrupted one, when it fits), else it is measured now (tens of seconds).
    """
    wanted = any(b.metric == "latency" for b in budgets)
    if not wanted and not needed and table_path is None:
        return None
    if graph.granularity != "channel":
        if wanted or needed:
            flag = "--budget-latency" if wanted else "--latency-aware"
            raise UsageError(
                f"{flag} needs --granularity channel: zeroed weights do not make dense "
                "kernels faster"
            )
        return None
    cfg = cfg or LatencyConfig()
    if table_path is not None:
        table, source = LatencyTable.load(table_path), f"latency table {table_path!r}"
    else:
        table = _cached(run_dir, graph, cfg) or measure_table(
            model, graph, cost_model, cfg, progress=progress
        )
        source = "the measured latency table"
    register_latency(cost_model, table, source=source)
    return table


def _cached(
    run_dir: str | Path | None, graph: UnitGraph, cfg: LatencyConfig
) -> LatencyTable | None:
    if run_dir is None:
        return None
    threads = cfg.timing.threads or torch.get_num_threads()
    for path in (Path(run_dir) / TABLE_FILE, partial_dir(run_dir) / TABLE_FILE):
        try:
            table = LatencyTable.load(path)
        except UsageError:
            continue
        fits = (table.signature, table.batch, table.threads, table.device) == (
            graph.signature,
            cfg.batch,
            threads,
            str(current().device),
        )
        if cfg.deployed:
            layouts = {None: (DEPLOYED, DEPLOYED_LAST), True: (DEPLOYED_LAST,)}
            forms = layouts.get(cfg.channels_last, (DEPLOYED,))
        else:
            forms = (PLAIN,)
        same = table.info.get("fractions") == list(cfg.fractions) and table.block == cfg.block
        if fits and same and table.form in forms:
            return table
    return None


def latency_check(budget: Budget, dense_s: float, final_s: float) -> dict[str, Any]:
    """A latency budget against measured times (a relative one of the measured dense model)."""
    limit = budget.value * dense_s if budget.relative else budget.value
    return {
        "limit": limit,
        "measured": final_s,
        "met": final_s <= limit,
        "miss": final_s / limit - 1.0,
        "text": budget.text,
    }


def latency_warning(metrics: dict[str, Any]) -> str | None:
    """One line when the measured latency misses its budget by more than MISS_TOLERANCE."""
    check = metrics.get("budgets", {}).get("latency")
    if not check or check["miss"] <= MISS_TOLERANCE:
        return None
    predicted = metrics.get("predicted", {}).get("latency")
    pred = f", predicted {format_value('latency', predicted)}" if predicted is not None else ""
    measured, limit = (
        format_value("latency", check["measured"]),
        format_value("latency", check["limit"]),
    )
    return (
        f"warning: measured latency {measured} misses --budget-latency {check['text']} (limit "
        f"{limit}{pred}) by {100 * check['miss']:.0f}%; the machine may be loaded or the latency "
        "table stale (rebuild it with `autoprune latency-table`)"
    )
