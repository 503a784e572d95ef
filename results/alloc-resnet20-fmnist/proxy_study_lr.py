"""Which fine-tune makes the proxy rank? Re-scores the 20 allocations trained at the mixed budget
before the searches were re-run (the landscape, uniform, global and the first searches' runs,
listed in proxy-study-lr-mixed.json) with evaluators that differ in fine-tune steps, learning
rate, distillation from the dense model and validation set (the 600 carved validation images, or
5,000 images of Fashion-MNIST's training split outside the benchmark's 6,000), and prints each
one's Spearman rank correlation with final test accuracy: over all 20, over seed 0's 14 (the
seed-1 runs sit ~0.9 points lower at equal allocation), and over the 8 landscape allocations.
Run from the repository root (before the runs it lists were removed, 1cb8fd8^):
  python results/alloc-resnet20-fmnist/proxy_study_lr.py 5000 VARIANT,VARIANT,...
Each invocation writes the scores of its variants as JSON (to /tmp/ps/ at the time; the three
invocations of 2026-12-07 are merged in proxy-study-lr-mixed.json)."""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoprune.bench.alloc_resnet20 import Recipe, stratified_subset
from autoprune.bench.alloc_runs import collect_rows
from autoprune.bench.search_report import spearman
from autoprune.pipeline.load import load_model_and_data, trace
from autoprune.search.evaluator import MaskEvaluator
from autoprune.train.distill import Distill
from autoprune.train.idx import find_idx_files, read_split
from autoprune.train.image_tensors import ImageTensorDataset

HERE = Path(__file__).resolve().parent
recipe = Recipe()
rows = collect_rows(HERE / "runs" / "mixed")
loaded = load_model_and_data(
    model=None,
    dataset=recipe.dataset,
    data_dir=str(HERE / "data"),
    checkpoint=str(HERE / "dense" / "checkpoint.pt"),
)
graph, _ = trace(loaded, recipe.granularity)
final = np.array([r["test_accuracy"] for r in rows])
names = [Path(r["run"]).name for r in rows]
seed0 = np.array([n.endswith("seed0") for n in names])
land = np.array([n.startswith("landscape") for n in names])
files = find_idx_files(Path("../shared/data"), "FashionMNIST/raw")
images, labels = read_split(*files["train"], classes=10)
chosen = set(stratified_subset(labels, 6000, seed=0).tolist())
rest = np.array([i for i in np.random.default_rng(1).permutation(len(labels)) if i not in chosen])[
    : int(sys.argv[1]) if len(sys.argv) > 1 else 5000
]
bigval = ImageTensorDataset(
    torch.from_numpy(images[rest].copy()).unsqueeze(1),
    torch.from_numpy(labels[rest]),
    (1, 28, 28),
    loaded.data.mean,
    loaded.data.std,
)


class DistillEval(MaskEvaluator):
    alpha = 0.7

    def _finetune(self, model):
        kd = Distill(self.model.eval(), self.alpha)
        opt = torch.optim.SGD(model.parameters(), lr=self.cfg.finetune_lr, momentum=0.9)
        model.train()
        for i in range(self.cfg.finetune_steps):
            x, y = self._train_batches[i % len(self._train_batches)]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            kd.objective(logits, x, nn.functional.cross_entropy(logits, y)).backward()
            opt.step()
        model.eval()


def rho(p, mask=None):
    p = np.asarray(p)
    if mask is None:
        return spearman(list(p), list(final))
    return spearman(list(p[mask]), list(final[mask]))


variants = [
    ("ft50-lr1", MaskEvaluator, dict(finetune_steps=50, finetune_lr=0.1), False),
    ("ft100-lr2", MaskEvaluator, dict(finetune_steps=100, finetune_lr=0.2), False),
    ("ft50-lr05", MaskEvaluator, dict(finetune_steps=50, finetune_lr=0.05), False),
    ("ft100-lr05", MaskEvaluator, dict(finetune_steps=100, finetune_lr=0.05), False),
    ("ft100-lr1", MaskEvaluator, dict(finetune_steps=100, finetune_lr=0.1), False),
    ("ft100-lr05-kd", DistillEval, dict(finetune_steps=100, finetune_lr=0.05), False),
    ("base20", MaskEvaluator, dict(), False),
    ("base20-bigval", MaskEvaluator, dict(), True),
    ("ft100-bigval", MaskEvaluator, dict(finetune_steps=100), True),
    ("ft100-kd-bigval", DistillEval, dict(finetune_steps=100), True),
    ("ft100-lr05-bigval", MaskEvaluator, dict(finetune_steps=100, finetune_lr=0.05), True),
    ("ft0-bn16-bigval", MaskEvaluator, dict(finetune_steps=0, bn_batches=16), True),
]
only = sys.argv[2].split(",") if len(sys.argv) > 2 else None
out = {}
for name, cls, kw, big in variants:
    if only and name not in only:
        continue
    torch.manual_seed(0)
    cfg = replace(recipe.evaluator_for(0), **kw)
    ev = cls(loaded.model, graph, loaded.data.train, bigval if big else loaded.data.val, cfg)
    t0 = time.perf_counter()
    res = [ev.evaluate(np.array(r["keep"])) for r in rows]
    s = (time.perf_counter() - t0) / len(rows)
    acc = [r.accuracy for r in res]
    loss = [-r.loss for r in res]
    print(
        f"{name}: acc rho all {rho(acc):.2f} seed0 {rho(acc, seed0):.2f} land {rho(acc, land):.2f} | "
        f"-loss rho all {rho(loss):.2f} seed0 {rho(loss, seed0):.2f} land {rho(loss, land):.2f}  ({s:.1f}s/call)",
        flush=True,
    )
    out[name] = {"acc": acc, "loss": [r.loss for r in res], "s": s}
json.dump(
    {"names": names, "final": final.tolist(), "variants": out},
    open(HERE / f"proxy-study-lr-{int(time.time())}.json", "w"),
)
