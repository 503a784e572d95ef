"""Summary of results/search-bits-lenet5-mnist/runs: one row per method and size budget.

Every allocation is scored again here by one evaluator (the search's default: l1 importance,
BatchNorm recalibration on 4 training batches, validation split), fake-quantised at its bits, so
methods that search without an evaluator (uniform, dsa) get a comparable number.
"""

import json
from pathlib import Path

import numpy as np
import torch

from autoprune.allocation import Allocation
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.quant.bits import artifact_bytes
from autoprune.cost.kernel_counts import KernelCounts
from autoprune.search.evaluator import MaskEvaluator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
torch.set_num_threads(2)
loaded = load_model_and_data(model=None, dataset="mnist", data_dir=str(ROOT.parent / "shared" / "data"),
                             checkpoint=str(ROOT / "results/lenet5-mnist/dense/checkpoint.pt"))
graph, cost_model = trace(loaded, "channel")
evaluate = MaskEvaluator.from_splits(loaded.model, graph, loaded.data)
counts = KernelCounts(cost_model, evaluate.scores)
dense = evaluate.evaluate(graph.sizes).accuracy
rows = []
for run in sorted((HERE / "runs").iterdir()):
    alloc = Allocation.load(run / "allocation.json")
    metrics = json.loads((run / "metrics.json").read_text())
    bits = alloc.bit_allocation(graph)
    widths = np.concatenate([np.asarray(v) for v in bits.weight.values()])
    rows.append({
        "run": run.name,
        "method": alloc.provenance["method"],
        "budget": alloc.budgets[0].text,
        "val_accuracy_quantised": evaluate(alloc.keep, bits),
        "search_proxy_accuracy": alloc.provenance.get("proxy_accuracy"),
        "predicted_size_bytes": alloc.predicted["size"],
        # the slim artifact of the kernels the evaluator keeps, counted here independently
        "exact_size_bytes": artifact_bytes(graph, bits, counts(alloc.keep)),
        "estimate_size_bytes": cost_model.with_bits(bits).metric("size", alloc.keep),
        "kept_weights": alloc.predicted["weights"],
        "mean_weight_bits": float(widths.mean()),
        "weight_bits_per_layer": {k: sorted(set(v)) for k, v in bits.weight.items()},
        "keep": {u.name: f"{u.keep}/{u.total}" for u in alloc.units},
        "search_seconds": metrics["wall_time_s"]["search"],
    })
(HERE / "summary.json").write_text(json.dumps({"dense_val_accuracy": dense, "runs": rows}, indent=2) + "\n")
lines = [
    "# Search with bits: LeNet-5 / MNIST, size budgets of the packed artifact",
    "",
    "Produced by `flock /work/logs/cpu.lock bash results/search-bits-lenet5-mnist/run.sh` "
    "(allocations only, `--no-prune`). Accuracy is the search's proxy, the same evaluator for "
    "every row: the masked dense model fake-quantised at the allocation's bits, BatchNorm "
    f"recalibrated, on the validation split, no training (dense: {100 * dense:.2f}%). "
    "Bytes: the search's prediction of the packed artifact (model.apq), the exact size of the "
    "slim artifact of the kernels the evaluator keeps, and CostModel.with_bits's per-layer "
    "estimate (which under-prices bits spread by importance).",
    "",
    "| budget | method | val acc (quantised proxy) | predicted bytes | exact | estimate | kept weights | mean weight bits | keeps | search s |",
    "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
]
for r in sorted(rows, key=lambda r: (r["budget"], r["method"])):
    keeps = ", ".join(r["keep"].values())
    lines.append(
        f"| {r['budget']} | {r['method']} | {100 * r['val_accuracy_quantised']:.2f}% | "
        f"{r['predicted_size_bytes']:.0f} | {r['exact_size_bytes']} | {r['estimate_size_bytes']:.0f} | "
        f"{r['kept_weights']:.0f} | {r['mean_weight_bits']:.2f} | "
        f"{keeps} | {r['search_seconds']:.0f} |"
    )
(HERE / "README.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
