"""Is the proxy's mis-ranking noise or bias? Re-scores every allocation trained at the mixed budget
with the benchmark's evaluator (100 SGD steps at 0.1, BN recalibrated, 600 validation images) at
evaluator seeds 0-3 (four fine-tune batch orders), and prints the Spearman rank correlation with
final test accuracy of each order alone and of their mean. Run from the repository root:
  python results/alloc-resnet20-fmnist/proxy_study_orders.py OUT.json
(~20 minutes on two idle cores; the 2026-12-08 run is proxy-study-orders-mixed.json)."""

import json
import sys
import time
from pathlib import Path

import numpy as np

from autoprune.bench.alloc_resnet20 import Recipe, subset_folder
from autoprune.bench.alloc_runs import collect_rows
from autoprune.bench.search_report import spearman
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.search.evaluator import MaskEvaluator

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2, 3)
recipe = Recipe()
rows = collect_rows(HERE / "runs" / "mixed")
loaded = load_model_and_data(model=None, dataset=recipe.dataset, data_dir=subset_folder(HERE, recipe, "../shared/data"),
                             checkpoint=str(HERE / "dense" / "checkpoint.pt"))
graph, _ = trace(loaded, recipe.granularity)
names = [Path(r["run"]).name for r in rows]
final = [r["test_accuracy"] for r in rows]
scores: dict[int, dict[str, list[float]]] = {}
for seed in SEEDS:
    ev = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, recipe.evaluator_for(seed))
    t0 = time.perf_counter()
    res = [ev.evaluate(np.array(r["keep"])) for r in rows]
    scores[seed] = {"acc": [r.accuracy for r in res], "loss": [r.loss for r in res]}
    print(f"order {seed}: Spearman acc {spearman(scores[seed]['acc'], final):.2f} "
          f"-loss {spearman([-v for v in scores[seed]['loss']], final):.2f} "
          f"({(time.perf_counter() - t0) / len(rows):.1f} s a call)", flush=True)
    mean = np.mean([scores[s]["acc"] for s in scores], axis=0)
    mloss = np.mean([scores[s]["loss"] for s in scores], axis=0)
    print(f"  mean of {len(scores)} orders: acc {spearman(list(mean), final):.2f} "
          f"-loss {spearman(list(-mloss), final):.2f}", flush=True)
    Path(sys.argv[1]).write_text(json.dumps(
        {"names": names, "keep": [r["keep"] for r in rows], "final": final,
         "scores": {str(s): v for s, v in scores.items()}}, indent=1))
