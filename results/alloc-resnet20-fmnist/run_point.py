"""Run one budget of alloc-resnet20-fmnist: its landscape, then the named methods one after the other
(the same calls `autoprune bench alloc-resnet20-fmnist --only POINT` makes, in another order)."""
import dataclasses, sys, time
from pathlib import Path
from autoprune.bench.alloc_report import LANDSCAPE
from autoprune.bench.alloc_resnet20 import (NAME, Recipe, _random_keep, budgets_of, dense_checkpoint,
                                            subset_folder)
from autoprune.bench.alloc_runs import search_runs, train_fixed
from autoprune.bench.base import BenchConfig

point, methods = sys.argv[1], sys.argv[2].split(",")
out = Path("results") / NAME
recipe = Recipe()
cfg = BenchConfig(data_dir="../shared/data", only=[point], progress=False)
data_dir = subset_folder(out, recipe, cfg.data_dir)
dense = dense_checkpoint(out, recipe, data_dir, cfg)
budgets = budgets_of(dict(recipe.points)[point])
folder = out / "runs" / point
for method in methods:
    t = time.time()
    if method == LANDSCAPE:
        for i in range(recipe.landscape):
            train_fixed(folder / f"{LANDSCAPE}-{i}-seed0", recipe, recipe.dataset, dense, budgets,
                        _random_keep(i, recipe.projection), LANDSCAPE, 0, data_dir, cfg)
    else:
        search_runs(folder, dataclasses.replace(recipe, methods=(method,)), recipe.dataset, dense,
                    budgets, data_dir, cfg)
    print(method, "done", round(time.time() - t), flush=True)
