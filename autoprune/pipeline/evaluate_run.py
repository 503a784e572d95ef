"""`autoprune eval RUN`: test accuracy and measured costs of a run directory's model.

A run with bits is evaluated as its compressed artifact (RUN/model.apq, or a .apq path given
directly): the model rebuilt from the file is the one that counts. A run whose exported files
were edited after it was written is refused (RUN/manifest.json holds their sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autoprune.cost.measure import count_macs, count_nonzero_params, count_params
from autoprune.errors import UsageError
from autoprune.export.program import load_program
from autoprune.pipeline.finish import load_pruned
from autoprune.quant.artifact import ARTIFACT, load_artifact
from autoprune.rundir import check_unchanged
from autoprune.train.checkpoint import load_checkpoint
from autoprune.train.data import load_dataset, make_loader
from autoprune.train.loop import evaluate


def evaluate_run(
    run: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Accuracy of RUN/checkpoint.pt on the test split, and agreement with RUN/model.pt2."""
    run = Path(run)
    check_unchanged(run.parent if run.suffix == ".apq" else run)  # never metrics of edited files
    if run.suffix == ".apq" or (run / ARTIFACT).is_file():
        return _evaluate_artifact(run, dataset=dataset, data_dir=data_dir, limit=limit)
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        raise UsageError(
            f"{str(run)!r} has no checkpoint.pt; point at a run directory from train/search/prune"
        )
    model, meta = load_pruned(ckpt)
    name = dataset or str(meta["dataset"])
    size = tuple(meta["input_size"])
    data = load_dataset(name, input_size=size, data_dir=data_dir, limit=limit)
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


def _evaluate_artifact(
    path: Path, *, dataset: str | None, data_dir: str | None, limit: int | None
) -> dict[str, Any]:
    run = path.parent if path.suffix == ".apq" else path
    file = path if path.suffix == ".apq" else path / ARTIFACT
    model, meta = load_artifact(file)
    name = dataset
    if name is None and (run / "checkpoint.pt").is_file():
        name = str(load_checkpoint(run / "checkpoint.pt")[1]["dataset"])
    if name is None:
        raise UsageError(f"{str(file)!r} does not name its dataset; pass --dataset")
    size = tuple(meta["input_size"])
    data = load_dataset(name, input_size=size, data_dir=data_dir, limit=limit)
    loader = make_loader(data.test, batch_size=256, shuffle=False)
    result = evaluate(model, loader)
    graph, bits, counts = meta["graph"], meta["bits"], meta["counts"]
    fp32 = 4.0 * sum(lay.weights for lay in graph.layers)
    code_bits = (n * b for lay in graph.layers
                 for n, b in zip(counts[lay.name], bits.weight[lay.name], strict=True))  # fmt: skip
    code_bytes = sum(code_bits) / 8
    report: dict[str, Any] = {
        "run": str(path), "artifact": str(file), "model": meta["model"], "dataset": name,
        "accuracy": result.accuracy, "loss": result.loss, "samples": result.n,
        "artifact_bytes": meta["bytes"], "nonzero_weights": sum(map(sum, counts.values())),
        "storage_ratio": fp32 / meta["bytes"],
        "weight_data_only_ratio": fp32 / max(code_bytes, 1e-9),
    }  # fmt: skip
    program = run / "model.pt2"
    if program.is_file():
        x, _ = next(iter(loader))
        mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
        with torch.no_grad():
            diff = (load_program(program)(x * std + mean) - model(x)).abs().max().item()
        report["program_max_abs_diff"] = diff
    return report
