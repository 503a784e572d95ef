"""Does a longer proxy rank allocations better? Re-scores every trained allocation of a budget
(the landscape and every method's run) with evaluators that fine-tune longer than the
benchmark's, and measures each one's Spearman rank correlation with the final test accuracy.
Run from the repository root: python results/alloc-resnet20-fmnist/proxy_study.py [BUDGET]
Writes proxy-study-BUDGET.json beside this file (the NOTES.md reading quotes it)."""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from autoprune.bench.alloc_resnet20 import Recipe
from autoprune.bench.alloc_runs import collect_rows
from autoprune.bench.search_report import code_version, spearman
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.search.evaluator import MaskEvaluator

HERE = Path(__file__).resolve().parent
POINT = sys.argv[1] if len(sys.argv) > 1 else "mixed"
STEPS = (20, 100, 300)  # fine-tune steps before scoring; 20 is the benchmark's proxy

recipe = Recipe()
rows = collect_rows(HERE / "runs" / POINT)
loaded = load_model_and_data(model=None, dataset=recipe.dataset, data_dir=str(HERE / "data"),
                             checkpoint=str(HERE / "dense" / "checkpoint.pt"))  # fmt: skip
graph, _ = trace(loaded, recipe.granularity)
final = [r["test_accuracy"] for r in rows]
study = []
for steps in STEPS:
    torch.manual_seed(0)
    cfg = replace(recipe.evaluator_for(0), finetune_steps=steps)
    evaluator = MaskEvaluator.from_splits(loaded.model, graph, loaded.data, cfg)
    t0 = time.perf_counter()
    proxies = [float(evaluator(np.array(r["keep"]))) for r in rows]
    seconds = (time.perf_counter() - t0) / len(rows)
    rho = spearman(proxies, final)
    study.append({"finetune_steps": steps, "spearman": rho, "seconds_per_call": seconds,
                  "proxies": proxies})  # fmt: skip
    print(f"{steps} steps: Spearman {rho:.2f} over {len(rows)} ({seconds:.1f} s a call)")
out = {"point": POINT, "code": code_version(), "evaluator": vars(recipe.evaluator_for(0)),
       "allocations": [{"run": Path(r["run"]).name, "keep": r["keep"],
                        "test_accuracy": r["test_accuracy"]} for r in rows],
       "study": study}  # fmt: skip
(HERE / f"proxy-study-{POINT}.json").write_text(json.dumps(out, indent=1) + "\n")
