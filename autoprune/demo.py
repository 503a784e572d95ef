"""`make demo`: train LeNet-5 on the bundled digits, compress it to 25% of its MACs, show the table.

Runs in a few minutes on two CPU cores and needs no download: scikit-learn ships the data.
"""

from __future__ import annotations

import argparse
import time

from autoprune.backends.base import BackendConfig
from autoprune.cli.base import before_after_table
from autoprune.cost.budgets import parse_budget
from autoprune.pipeline.search import SearchRun, run_search
from autoprune.pipeline.train import TrainRun, run_train
from autoprune.train.loop import TrainConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--method", default="uniform")
    p.add_argument("--budget-flops", default="25%")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    dense_dir, pruned_dir = f"{args.out}/dense", f"{args.out}/pruned"
    print(f"1/2  training dense LeNet-5 on digits -> {dense_dir}")
    run_train(
        TrainRun(
            model="lenet5",
            dataset="digits",
            out=dense_dir,
            train=TrainConfig(epochs=20, lr=0.01),
            overwrite=True,
        )
    )
    print(
        f"2/2  searching ({args.method}) for --budget-flops {args.budget_flops}, "
        f"training to it -> {pruned_dir}"
    )
    metrics = run_search(
        SearchRun(
            dataset="digits",
            out=pruned_dir,
            budgets=[parse_budget("macs", args.budget_flops)],
            checkpoint=f"{dense_dir}/checkpoint.pt",
            method=args.method,
            backend_cfg=BackendConfig(epochs=15, finetune_epochs=10, lr=0.02),
            overwrite=True,
        )
    )
    print()
    print(before_after_table(metrics))
    print(
        f"\nrun directory: {pruned_dir}  (model.pt2 runs with plain torch)  "
        f"total {time.perf_counter() - t0:.0f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
