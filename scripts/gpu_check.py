"""Check the runs of scripts/gpu-check.sh: every budget met, re-measured on the exported model.pt2.

    python scripts/gpu_check.py RUNS_DIR OUT_DIR

For each run directory with an allocation: the MACs budget is re-counted on model.pt2 (on the CPU,
FlopCounterMode) and the parameter budget on checkpoint.pt, both against the limits in
allocation.json; the metrics.json of every run is copied to OUT_DIR/RUN.metrics.json and a summary
(device, amp, accuracy, costs, checks) is written to OUT_DIR/summary.json. Exit 1 on any failure.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from autoprune.allocation import Allocation
from autoprune.cost.measure import count_macs
from autoprune.export.program import load_program


def check(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    row: dict[str, Any] = {"run": run.name, "accuracy": metrics["final"]["accuracy"],
                           "recipe": metrics.get("recipe") or metrics.get("info", {}).get("recipe"),
                           "wall_time_s": metrics.get("wall_time_s")}  # fmt: skip
    if not (run / "allocation.json").is_file():
        return row
    alloc = Allocation.load(run / "allocation.json")
    program = load_program(run / "model.pt2")
    size = tuple(alloc.input_size)
    macs = count_macs(program, size)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm's, not params
    nonzero = sum(int(torch.count_nonzero(t)) for k, t in state.items() if not k.endswith(buffers))
    checks = {}
    for b in alloc.budgets:
        limit = b.limit(alloc.dense[b.metric]) if b.metric != "latency" else None
        if b.metric == "macs":
            checks["macs"] = {"limit": limit, "measured_on_program": macs, "met": macs <= limit}
        elif b.metric == "params":
            checks["params"] = {"limit": limit, "nonzero": nonzero, "met": nonzero <= limit}
        else:
            checks[b.metric] = metrics["budgets"][b.metric]  # as the run measured it
    row |= {"macs": macs, "nonzero_params": nonzero, "checks": checks,
            "met": all(c["met"] for c in checks.values())}  # fmt: skip
    return row


def main() -> int:
    runs, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in sorted(p for p in runs.iterdir() if (p / "metrics.json").is_file()):
        rows.append(check(run))
        shutil.copy(run / "metrics.json", out / f"{run.name}.metrics.json")
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "wall_time_s"}))
    summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "runs": rows}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    failed = [r["run"] for r in rows if r.get("met") is False]
    print("all budgets met on the exported models" if not failed else f"FAILED: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
