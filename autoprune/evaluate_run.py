"""`autoprune eval RUN`: test accuracy and measured costs of a run directory's model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autoprune.data import load_dataset, make_loader
from autoprune.errors import UsageError
from autoprune.export import load_program
from autoprune.measure import count_macs, count_nonzero_params, count_params
from autoprune.runs import load_pruned
from autoprune.training import evaluate


def evaluate_run(
    run: str | Path, *, dataset: str | None = None, data_dir: str | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Accuracy of RUN/checkpoint.pt on the test split, and agreement with RUN/model.pt2."""
    run = Path(run)
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise UsageError(f"{str(run)!r} has no checkpoint.pt; point at a run directory from train/search/prune")
    model, meta = load_pruned(ckpt)
    name = dataset or str(meta["dataset"])
    size = tuple(meta["input_size"])
    data = load_dataset(name, input_size=size, data_dir=data_dir, limit=limit)  # type: ignore[arg-type]
    loader = make_loader(data.test, batch_size=256, shuffle=False)
    result = evaluate(model, loader)
    report: dict[str, Any] = {
        "run": str(run), "model": meta["model"], "dataset": name, "accuracy": result.accuracy,
        "loss": result.loss, "samples": result.n, "macs": count_macs(model, size),
        "params": count_params(model), "nonzero_params": count_nonzero_params(model),
    }  # fmt: skip
    program = run / "model.pt2"
    if program.is_file():
        x, _ = next(iter(loader))
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        with torch.no_grad():
            diff = (load_program(program)(x * std + mean) - model(x)).abs().max().item()
        report["program_max_abs_diff"] = diff
    return report
