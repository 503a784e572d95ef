"""`autoprune bench torchvision-coverage`: every torchvision classifier, uniform 50% MACs, exported.

Each model runs the command a user would (`autoprune search --model M --dataset fake
--input-size 3xSxS --method uniform --budget-flops 50% --no-prune`) in its own process
(`python -m autoprune.bench.coverage --worker M S RUN`), so its peak memory is measured
(/proc VmHWM) and capped (the worker is killed above the cap) and a blow-up cannot end the
benchmark. The worker then measures the exported model.pt2 with FlopCounterMode against an
untouched torchvision model of the same input and class count, and lists the units prunable
and frozen. Rows of finished models are reused unless --force; `--only a,b` runs just those;
--quick runs three small models at 64x64.

Where that input is reduced, a second worker (`--trace NAME`) traces and verifies the model as
built by default (`autoprune.models.default_input_size`, 1000 classes): the memory promise is
made at the default input, and its peak is that process's own.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.bench.base import BENCHMARKS, BenchConfig
from autoprune.bench.coverage_report import write_report

NAME = "torchvision-coverage"
QUICK_MODELS = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_x_400mf")
BUDGET = "50%"


@dataclass(frozen=True)
class Limits:
    """What one model may take before it is stopped and reported as such."""

    # resident memory of the worker: vit_h_14 (2.5 GB of weights) passed 12 GB in its search and
    # export (a dense copy, the slimmed model, its export, the loaded program); the machine has 24
    memory_gb: float = 20.0
    timeout_s: float = 3600.0
    poll_s: float = 0.25


def input_size(name: str, quick: bool) -> int:
    """Reduced inputs where the architecture allows; transformers at their 224 (MaxViT's
    window partition and Swin's windows are laid out for it)."""
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224
    if quick:
        return 64
    return 299 if name == "inception_v3" else 96


def search_args(name: str, size: int, run: Path) -> list[str]:
    return [
        "search", "--model", name, "--dataset", "fake", "--input-size", f"3x{size}x{size}",
        "--method", "uniform", "--budget-flops", BUDGET, "--no-prune", "--limit", "8",
        "--quiet", "--force", "--out", str(run),
    ]  # fmt: skip


def classifiers() -> list[str]:
    import torchvision.models

    return list(torchvision.models.list_models(module=torchvision.models))


@BENCHMARKS.register(NAME)
def torchvision_coverage(cfg: BenchConfig, limits: Limits | None = None) -> dict[str, Any]:
    """Run (or reuse) every model's row; write rows/, summary.json and README.md."""
    limits = limits or Limits()
    out = Path(cfg.out or Path("results") / NAME)
    names = list(QUICK_MODELS) if cfg.quick else classifiers()
    if cfg.only:
        unknown = sorted(set(cfg.only) - set(classifiers()))
        if unknown:
            from autoprune.errors import UsageError

            raise UsageError(f"--only: no torchvision classifier named {', '.join(unknown)}")
        names = [n for n in names if n in cfg.only] or list(cfg.only)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out / "rows" / f"{name}.json"
        row = json.loads(path.read_text()) if path.is_file() and not cfg.force else None
        if row is None:
            if cfg.progress:
                print(f"{name} ...", file=sys.stderr, flush=True)
            row = run_model(name, input_size(name, cfg.quick), out / "runs" / name, limits)
            path.write_text(json.dumps(row, indent=1) + "\n")
            _keep_json_only(out / "runs" / name)
        if "default" not in row and not cfg.quick:
            if cfg.progress:
                print(f"{name} at its default input ...", file=sys.stderr, flush=True)
            row["default"] = default_trace(name, out / "logs", limits)
            path.write_text(json.dumps(row, indent=1) + "\n")
    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    command = shlex.join(["autoprune", "bench", NAME, *(["--quick"] if cfg.quick else [])])
    return write_report(out, rows, command=command, budget=BUDGET, limits=limits.__dict__)


def _keep_json_only(run: Path) -> None:
    """Drop a measured run's weights (checkpoint.pt, model.pt2): 80 models' take 16 GB, and the
    row holds what was measured on them; the run's JSON files stay."""
    for path in run.glob("*") if run.is_dir() else ():
        if path.is_file() and path.suffix != ".json":
            path.unlink()


def default_trace(name: str, logs: Path, limits: Limits) -> dict[str, Any]:
    """Trace + verification of `name` at its default input and class count, in its own watched
    process (also where the row's own trace ran at that input: the row's model has 10 classes
    and its process goes on to search)."""
    from autoprune.models import default_input_size

    size = default_input_size(name)[-1]
    args = ["--trace", name, str(size)]
    return _watched(args, f"{name}.default", logs, limits, {"input": size})


def run_model(name: str, size: int, run: Path, limits: Limits) -> dict[str, Any]:
    """One worker process for `name`, watched for memory and time; its row (or why it failed)."""
    logs = run.parent.parent / "logs"  # beside the run folder: the search replaces that one
    args = ["--worker", name, str(size), str(run)]
    return _watched(args, name, logs, limits, {"model": name, "input": size})


def _watched(
    args: list[str], log: str, logs: Path, limits: Limits, blank: dict[str, Any]
) -> dict[str, Any]:
    """Run `python -m autoprune.bench.coverage ARGS`, killed above the memory or time limit;
    its last JSON line with wall time and peak memory (`blank` and the error if it had none)."""
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "autoprune.bench.coverage", *args]
    t0 = time.perf_counter()
    # output to files, not pipes: a chatty worker must not block on a full pipe
    stdout, stderr = logs / f"{log}.out", logs / f"{log}.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        # verdicts cached by an earlier run would hide the verification's time and memory
        env = {**os.environ, "AUTOPRUNE_CACHE_DIR": ""}
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        stopped, peak = None, 0.0
        while True:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            peak = max(peak, _memory_gb(proc.pid, "VmHWM"))
            if _memory_gb(proc.pid, "VmRSS") > limits.memory_gb:
                stopped = f"stopped: resident memory passed {limits.memory_gb:g} GB"
            elif time.perf_counter() - t0 > limits.timeout_s:
                stopped = f"stopped: ran past {limits.timeout_s:g} s"
            if stopped:
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(limits.poll_s)
    lines = [ln for ln in stdout.read_text().splitlines() if ln.startswith("{")]
    row: dict[str, Any] = json.loads(lines[-1]) if lines else dict(blank)
    if stopped or not lines:
        tail = [ln for ln in stderr.read_text().splitlines() if ln.strip()]
        row["error"] = stopped or (tail[-1][:300] if tail else f"exit code {proc.returncode}")
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    row.setdefault("peak_gb", round(peak, 2))  # the worker's own last word if it finished
    return row


def _memory_gb(pid: int | str, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, from /proc: the peak of the program it runs,
    not of the parent it was forked from (which rusage's ru_maxrss would include)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    except OSError:  # gone already
        pass
    return 0.0


def trace_worker(name: str, size: int) -> dict[str, Any]:
    """Inside the `--trace` worker: build `name` at SxS with its default class count, trace and
    verify its units; time, peak memory, units."""
    from autoprune.models import default_num_classes

    classes = default_num_classes(name)
    row: dict[str, Any] = {"input": size, "classes": classes}
    _trace(name, size, classes, row)
    return row


def _trace(name: str, size: int, classes: int, row: dict[str, Any]) -> Any:
    """Build and trace `name` (a fresh process's first work: its own time and peak), filling
    `row`; the model, or None with row["error"] set."""
    from autoprune.errors import AutoPruneError
    from autoprune.graph.units import trace_units
    from autoprune.models import build_model

    t0 = time.perf_counter()
    try:
        model = build_model(name, num_classes=classes, input_size=(3, size, size))
        graph = trace_units(model, (3, size, size), "channel", name)
    except AutoPruneError as err:
        row["error"] = str(err)
        return None
    row["trace_s"] = round(time.perf_counter() - t0, 1)
    row["trace_peak_gb"] = round(_memory_gb("self", "VmHWM"), 2)
    row["units"] = len(graph.units)
    row["frozen"] = [{"name": f.name, "size": f.size, "reason": f.reason} for f in graph.frozen]
    row["unpriced_macs"] = graph.unpriced_macs
    return model


def worker(name: str, size: int, run: Path) -> dict[str, Any]:
    """Inside the worker: the units traced and verified (time, peak memory), the search a user
    would run, then its exported program measured against the untouched model."""
    import torch

    from autoprune.cli.main import main
    from autoprune.cost.measure import count_macs

    row: dict[str, Any] = {"model": name, "input": size}
    shape = (3, size, size)
    dense = _trace(name, size, 10, row)
    if dense is None:
        return row
    t0 = time.perf_counter()
    rc = main(search_args(name, size, run))  # traces again: the verdict comes from memory
    row["search_s"] = round(time.perf_counter() - t0, 1)
    if rc != 0:
        row["error"] = f"autoprune search exited {rc}"
        return row
    metrics = json.loads((run / "metrics.json").read_text())
    program = torch.export.load(str(run / "model.pt2")).module()
    exported, untouched = count_macs(program, shape), count_macs(dense, shape)
    row.update(
        untouched_macs=untouched, exported_macs=exported, macs_ratio=exported / untouched,
        predicted_macs=metrics["predicted"]["macs"],
        predicted_equals_measured=round(metrics["predicted"]["macs"]) == exported,
        budget_met=exported <= 0.5 * untouched * (1 + 1e-9),
    )  # fmt: skip
    row["peak_gb"] = round(_memory_gb("self", "VmHWM"), 2)
    return row


def main(argv: list[str] | None = None) -> None:
    """`python -m autoprune.bench.coverage --worker NAME SIZE RUN` (one model's row) or
    `--trace NAME SIZE` (its trace at that input): one JSON line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "--worker":
        row = worker(args[1], int(args[2]), Path(args[3]))
    elif len(args) == 3 and args[0] == "--trace":
        row = trace_worker(args[1], int(args[2]))
    else:
        raise SystemExit(
            "usage: python -m autoprune.bench.coverage --worker NAME SIZE RUN | --trace NAME SIZE"
        )
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
