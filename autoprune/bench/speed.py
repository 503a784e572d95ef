"""`autoprune bench speed`: exported models' measured speed-up against their MAC reduction.

For each model and MAC target, side by side in one process: the dense model, autoprune's uniform
allocation, the same on the `--round-to 8` grid, autoprune's latency-aware allocation on that grid
(`--latency-aware --round-to 8`: uniform, then MACs traded between units by the latency table's
time per MAC; the table is results/latency/tables/MODEL.json when it fits, else measured here),
the same at Torch-Pruning's
MAC count where that is lower than the target, and Torch-Pruning's own global magnitude pruning
(MetaPruner, global_pruning=True, stepped until it reaches the same MAC target, as its reproduce
scripts do). Every model is exported as autoprune exports a run (model.pt2, BatchNorm folded,
channels-last where timed faster); its MACs are counted on that program by FlopCounterMode and
its latency is timed interleaved with the others (medians) at 1 and 2 threads, batch 1 and 32.
Each program is also compiled by AOTInductor (`autoprune export --aoti`) and timed beside it,
its speed-up taken against the compiled dense model. The same slim architecture as plain torch
modules is timed beside its program. Weights are the
initial ones: speed does not depend on their values. Writes results/speed/speed.json (rows of
earlier runs for other cases are kept) and README.md.

`--only` picks a part: model names, targets (`50%`) and settings (`t1b1`: 1 thread, batch 1);
`--only resnet18,mobilenet_v2,50%,t1b1` measures the issue's must-show rows in a few minutes, and
`--only staircase` just the time-against-width staircase (autoprune.bench.staircase), which the
full run measures too.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.bench import staircase
from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.report import write_readme
from autoprune.cost.measure import count_macs
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, project
from autoprune.cost.timing import (
    TimingConfig,
    interleaved_medians,
    machine_info,
    no_grad_call,
    thread_seconds,
    torch_threads,
)
from autoprune.errors import UsageError
from autoprune.export.fast import FastExportConfig
from autoprune.export.program import export_program, load_program
from autoprune.graph.masking import slim
from autoprune.graph.units import trace_units
from autoprune.models import build_model
from autoprune.rundir import write_json_atomic

NAME = "speed"
ROUND_TO = 8  # the grid whose widths this CPU's convolutions run fastest (see README)
AWARE = f"autoprune --latency-aware --round-to {ROUND_TO}"  # the flags a user gives for it


@dataclass(frozen=True)
class Plan:
    """What to measure; the defaults are the issue's full table."""

    models: tuple[tuple[str, tuple[int, int, int]], ...] = (
        ("resnet18", (3, 224, 224)),
        ("mobilenet_v2", (3, 224, 224)),
        ("resnet50", (3, 224, 224)),
        ("resnet20", (3, 32, 32)),
    )
    fractions: tuple[float, ...] = (0.5, 0.3)
    settings: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 32), (2, 32))  # threads, batch
    rounds: int = 9
    # one thread, batch 1 times single calls (thread CPU time): cheap, so many more rounds
    # against the 5-10% that one median of 9 moved between runs here
    single_rounds: int = 31
    max_seconds: float = 60.0  # per timing of one (model, target, setting)
    # each program also compiled by AOTInductor (`autoprune export --aoti`), timed beside it
    compiled: bool = True


QUICK = Plan(
    models=(("resnet20", (3, 32, 32)),),
    fractions=(0.5,),
    settings=((1, 1),),
    rounds=3,
    single_rounds=3,
    compiled=False,
)
COMPILED = " (AOTInductor)"  # the suffix of a compiled program's variant name
STAIRS = "staircase"  # the --only name of the time-against-width measurement
TABLES = Path("results") / "latency" / "tables"  # measured on this machine: 1 thread, batch 1


def plan_for(plan: Plan, only: list[str] | None) -> Plan:
    """`plan` narrowed to the models, targets (`50%`) and settings (`t1b1`) named in `only`."""
    if not only:
        return plan
    models = {name for name, _ in plan.models}
    fractions = {f"{round(100 * f)}%": f for f in plan.fractions}
    settings = {f"t{t}b{b}": (t, b) for t, b in plan.settings}
    unknown = [t for t in only if t not in models | set(fractions) | set(settings) | {STAIRS}]
    if unknown:
        raise UsageError(
            f"benchmark {NAME!r} has no case {', '.join(unknown)}; --only takes models "
            f"({', '.join(sorted(models))}), targets ({', '.join(fractions)}) and settings "
            f"({', '.join(settings)}), or {STAIRS}"
        )
    if only == [STAIRS]:
        return replace(plan, models=())

    def pick(all_: tuple[Any, ...], named: dict[str, Any]) -> tuple[Any, ...]:
        chosen = [named[t] for t in only if t in named]
        return tuple(x for x in all_ if x in chosen) if chosen else all_

    chosen_models = [t for t in only if t in models]
    return replace(
        plan,
        models=tuple(m for m in plan.models if not chosen_models or m[0] in chosen_models),
        fractions=pick(plan.fractions, fractions),
        settings=pick(plan.settings, settings),
    )


def latency_model(dense: nn.Module, cm: CostModel, name: str) -> None:
    """Register the `latency` metric on `cm`: the stored table when it fits, else one measured."""
    from autoprune.cost.latency import PLAIN, LatencyConfig, measure_table, register_latency
    from autoprune.cost.latency_table import LatencyTable

    with torch_threads(1):  # the tables' setting: one thread, batch 1
        path = TABLES / f"{name}.json"
        table = LatencyTable.load(path) if path.is_file() else None
        if table is None or table.signature != cm.graph.signature or table.form == PLAIN:
            table = measure_table(copy.deepcopy(dense), cm.graph, cm, LatencyConfig())
        register_latency(cm, table, source=f"latency table for {name}")


def aware_keep(cm: CostModel, limit: float, round_to: int = ROUND_TO) -> np.ndarray:
    """The latency-aware allocation: uniform, then MACs traded by the table's time per MAC.

    On the --round-to grid by default: measured on mobilenet_v2 @224 at Torch-Pruning's 48% MACs
    (1 thread, batch 1, exported, thread CPU time, two runs at load avg 8 and 5) it ran 22.1 /
    26.8 ms against 23.8 / 29.9 ms off the grid (Torch-Pruning global: 22.3 / 27.1 ms).
    """
    cfg = ProjectionConfig(latency_aware=True, round_to=round_to)
    return project(np.ones(len(cm.sizes)), cm, {"macs": limit}, cfg)


def uniform_keep(cm: CostModel, limit: float, round_to: int = 1) -> np.ndarray:
    """The same keep ratio in every unit, projected onto the MAC limit (autoprune's uniform)."""
    cfg = ProjectionConfig(round_to=round_to)
    return project(np.ones(len(cm.sizes)), cm, {"macs": limit}, cfg)


def autoprune_model(dense: nn.Module, size: tuple[int, int, int], keep: np.ndarray) -> nn.Module:
    net = copy.deepcopy(dense)
    graph = trace_units(net, size, "channel", "speed", verify=False)
    return slim(net, graph, [torch.arange(int(k)) for k in keep]).eval()


def torch_pruning_model(dense: nn.Module, size: tuple[int, ...], limit: float) -> nn.Module:
    """Torch-Pruning's global magnitude pruning, stepped until MACs reach `limit`."""
    import torch_pruning as tp

    net = copy.deepcopy(dense).eval()
    example = torch.rand(1, *size)
    classifier = [m for m in net.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MetaPruner(
        net, example, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=0.9, iterative_steps=200, ignored_layers=classifier,
    )  # fmt: skip
    for _ in range(200):
        macs, _ = tp.utils.count_ops_and_params(net, example)
        if macs <= limit:
            break
        pruner.step()
    return net.eval()


def _program(model: nn.Module, size: tuple[int, ...], path: Path) -> tuple[nn.Module, str]:
    """The model exported as a run exports it, loaded back, and the layout export chose."""
    info = export_program(model, size, [0.0] * size[0], [1.0] * size[0], path,
                          fast=FastExportConfig())  # fmt: skip
    return load_program(path), "channels-last" if info["channels_last"] else "default"


def _compiled(path: Path) -> Any:
    """The program at `path` compiled by AOTInductor as `autoprune export --aoti` does."""
    from autoprune.export.compiled import aoti_package

    return aoti_package(torch.export.load(str(path)), path.with_name(f"{path.stem}.aoti.pt2"))


def measure_case(name: str, size: tuple[int, int, int], plan: Plan) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    dense = build_model(name, input_size=size).eval()
    cm = CostModel(trace_units(copy.deepcopy(dense), size, "channel", name, verify=False))
    latency_model(dense, cm, name)
    dense_macs = count_macs(dense, size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for frac in plan.fractions:
            limit = frac * dense_macs
            modules = {
                "dense": dense,
                "autoprune uniform": autoprune_model(dense, size, uniform_keep(cm, limit)),
                f"autoprune --round-to {ROUND_TO}": autoprune_model(
                    dense, size, uniform_keep(cm, limit, ROUND_TO)
                ),
                AWARE: autoprune_model(dense, size, aware_keep(cm, limit)),
                "torch-pruning global": torch_pruning_model(dense, size, limit),
            }
            tp_macs = count_macs(modules["torch-pruning global"], size)
            if tp_macs < limit:  # the same comparison at Torch-Pruning's smaller MAC count
                at_tp = autoprune_model(dense, size, aware_keep(cm, tp_macs))
                modules[f"{AWARE} @ torch-pruning's MACs"] = at_tp
            torch.set_num_threads(1)  # the layout each program keeps is chosen at one thread
            paths = {k: folder / f"{name}-{frac}-{i}.pt2" for i, k in enumerate(modules)}
            exported = {k: _program(m, size, paths[k]) for k, m in modules.items()}
            programs = {k: p for k, (p, _) in exported.items()}
            macs = {k: count_macs(p, size) for k, p in programs.items()}
            timed = {**programs, "autoprune uniform (plain torch)": modules["autoprune uniform"]}
            if plan.compiled:  # the same programs compiled: MACs as their program's
                timed |= {k + COMPILED: _compiled(paths[k]) for k in programs}
            for threads, batch in plan.settings:
                torch.set_num_threads(threads)
                cfg = TimingConfig(rounds=plan.rounds, threads=threads,
                                   max_seconds=plan.max_seconds)  # fmt: skip
                x = torch.rand(batch, *size)
                fns = [no_grad_call(m, x) for m in timed.values()]
                # one thread: each call runs on this thread, so its CPU time is what it costs
                # however loaded the machine is; more threads: wall time in blocks
                if threads == 1:  # single calls: many cheap rounds at batch 1, few at 32
                    medians = thread_seconds(fns, plan.single_rounds if batch == 1 else cfg.rounds)
                else:
                    medians = interleaved_medians(fns, cfg)
                seconds = dict(zip(timed, medians, strict=True))
                for variant, s in seconds.items():
                    program = variant.removesuffix(COMPILED)
                    compiled = variant != program
                    m = macs.get(program, macs["autoprune uniform"])
                    # against the dense model in the same form: compiled against compiled
                    speedup = seconds["dense" + (COMPILED if compiled else "")] / s
                    rows.append({
                        "model": name, "input": "x".join(map(str, size)), "target": frac,
                        "variant": variant, "threads": threads, "batch": batch,
                        "macs": m, "macs_fraction": m / dense_macs,
                        "met": None if program == "dense" else m <= limit,
                        "seconds": s, "speedup": speedup,
                        "speedup_per_mac_reduction": speedup / (dense_macs / m),
                        "layout": exported[program][1] if program in exported else "plain torch",
                        "runtime": "AOTInductor" if compiled else "torch",
                    })  # fmt: skip
    return rows


def _case(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["model"], row["target"], row["threads"], row["batch"]


@BENCHMARKS.register(NAME)
def speed(cfg: BenchConfig) -> dict[str, Any]:
    plan = plan_for(QUICK if cfg.quick else Plan(), cfg.only)
    out = Path(cfg.out or Path("results") / NAME)
    out.mkdir(parents=True, exist_ok=True)
    t0, threads = time.perf_counter(), torch.get_num_threads()
    load = list(os.getloadavg())
    rows: list[dict[str, Any]] = []
    try:
        for name, size in plan.models:
            rows += measure_case(name, size, plan)
        if not cfg.quick and (not cfg.only or STAIRS in cfg.only):
            staircase.write(out)
    finally:
        torch.set_num_threads(threads)
    for r in rows:
        r["loadavg"] = load[0]
    earlier = out / "speed.json"
    if cfg.only and earlier.is_file():  # keep the rows of cases this run did not measure
        done = {_case(r) for r in rows}
        old = json.loads(earlier.read_text()).get("runs", [])
        rows = [r for r in old if _case(r) not in done] + rows
    only = f" --only {','.join(cfg.only)}" if cfg.only else ""
    summary = {
        "runs": rows, "machine": machine_info(threads), "loadavg": load,
        "seconds": time.perf_counter() - t0, "command": f"autoprune bench {NAME}"
        + (" --quick" if cfg.quick else "") + only + (f" --out {cfg.out}" if cfg.out else ""),
    }  # fmt: skip
    if rows:  # `--only staircase` measures no model
        write_json_atomic(out / "speed.json", summary)
        write_readme(out, render(summary))
    return summary


def _met(met: bool | None) -> str:
    return "-" if met is None else "yes" if met else "NO"


def render(summary: dict[str, Any]) -> str:
    """README.md: one table per setting; every number from speed.json."""
    lines = [
        "# Speed: measured speed-up against MAC reduction",
        "",
        f"Made by `{summary['command']}` in {summary['seconds']:.0f} s; load average while it "
        f"ran started at {summary['loadavg'][0]:.2f}. MACs are counted by FlopCounterMode on "
        "each exported model.pt2; times are interleaved medians (1 thread: thread CPU time of "
        "single calls, which other jobs do not inflate; 2 threads: wall time of blocks). "
        "Speed-up per MAC reduction = "
        "(dense time / pruned time) / (dense MACs / pruned MACs): 1.0 means the model is as "
        "much faster as its MACs promise. Time against width, layer by layer: "
        "[staircase.md](staircase.md).",
    ]
    rows = summary["runs"]
    for threads, batch in sorted({(r["threads"], r["batch"]) for r in rows}):
        lines += ["", f"## {threads} thread(s), batch {batch}", "",
                  "| model | target | variant | layout | MACs | met | ms | speed-up "
                  "| per MAC reduction | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            if (r["threads"], r["batch"]) != (threads, batch):
                continue
            lines.append(
                f"| {r['model']} @{r['input']} | {100 * r['target']:.0f}% | {r['variant']} | "
                f"{r.get('layout', '')} | "
                f"{100 * r['macs_fraction']:.1f}% | {_met(r['met'])} | "
                f"{1e3 * r['seconds']:.2f} | {r['speedup']:.2f}x | "
                f"{r['speedup_per_mac_reduction']:.2f} | {r.get('loadavg', float('nan')):.1f} |"
            )
    return "\n".join(lines) + "\n"
