"""The first stages of every run: load the model and its data, trace its units, price budgets.

Every check of user input (model, dataset, checkpoint, budgets, --out) happens here, before
anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from autoprune import __version__
from autoprune.cost.budgets import Budget, check_budgets
from autoprune.cost.model import CostModel
from autoprune.cost.projection import ProjectionConfig, min_keeps
from autoprune.errors import CheckpointError, UsageError
from autoprune.graph.units import Granularity, UnitGraph, trace_units
from autoprune.models import build_model, default_input_size
from autoprune.train.checkpoint import fit_state, read_weights
from autoprune.train.data import DataSplits, load_dataset, make_loader
from autoprune.train.loop import set_seed

CHECKPOINT_KIND_DENSE = "dense"
CHECKPOINT_KIND_PRUNED = "pruned"


@dataclass
class Loaded:
    """A model ready for a stage: the network, what it is, and its data."""

    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    num_classes: int
    data: DataSplits
    dataset: str
    checkpoint: str | None  # an autoprune checkpoint it came from (None: fresh, --weights or a
    # plain state dict, which a search saves as its own dense checkpoint)
    fresh: tuple[str, ...] = ()  # keys --weights left untrained (a classifier of another size)


def load_model_and_data(
    *,
    model: str | None,
    dataset: str,
    data_dir: str | None = None,
    checkpoint: str | None = None,
    input_size: tuple[int, int, int] | None = None,
    limit: int | None = None,
    download: bool = False,
    seed: int = 0,
    weights: str | None = None,
) -> Loaded:
    """Build (or restore from a dense checkpoint) a model and load its dataset at its input size.

    The model is initialised from `seed` (Python, NumPy and torch are seeded right before it is
    built), so the same seed gives the same initial weights whatever ran before in the process.
    `checkpoint` may also be a plain state dict of `model`; `weights` names torchvision's
    pretrained weights (autoprune.models.pretrained).
    """
    meta: dict[str, Any] = {}
    state = None
    if checkpoint is not None and weights is not None:
        raise UsageError("pass --checkpoint or --weights, not both")
    if checkpoint is not None:
        state, meta = read_weights(checkpoint, model)
        if meta.get("kind", CHECKPOINT_KIND_DENSE) != CHECKPOINT_KIND_DENSE:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} is already pruned; search on the dense one"
            )
        if model is not None and model != meta["model"]:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} holds {meta['model']!r}, not {model!r}"
            )
        model = str(meta["model"])
        input_size = tuple(meta["input_size"]) if "input_size" in meta else input_size
    if model is None:
        raise UsageError("no model given; pass --model NAME (see `autoprune profile --help`)")
    size = tuple(input_size) if input_size else default_input_size(model)
    data = load_dataset(dataset, input_size=size, data_dir=data_dir, limit=limit, download=download)  # type: ignore[arg-type]
    num_classes = int(meta.get("num_classes", data.spec.num_classes))
    set_seed(seed)
    net = build_model(model, num_classes=num_classes, input_size=size)  # type: ignore[arg-type]
    fresh: list[str] = []
    if state is not None:
        fit_state(net, state, source=f"checkpoint {checkpoint!r} of {model!r}")
        if meta.get("plain"):  # a plain state dict: the run saves its own dense checkpoint
            checkpoint = None
    if weights is not None:
        from autoprune.models.pretrained import load_pretrained

        fresh = load_pretrained(net, model, weights)
    return Loaded(net, model, size, num_classes, data, dataset, checkpoint,  # type: ignore[arg-type]
                  tuple(fresh))  # fmt: skip


def checkpoint_meta(loaded: Loaded, kind: str, seed: int, **extra: Any) -> dict[str, Any]:
    """What a checkpoint records beside its weights, so `load_model_and_data` can rebuild it."""
    return {
        "kind": kind, "model": loaded.name, "num_classes": loaded.num_classes,
        "input_size": list(loaded.input_size), "dataset": loaded.dataset, "seed": seed,
        "mean": list(loaded.data.mean), "std": list(loaded.data.std), "version": __version__,
        **extra,
    }  # fmt: skip


def eval_loader(ds: Any, batch: int = 256) -> Any:
    """Batches of `ds` in order, for measuring (no shuffling)."""
    return make_loader(ds, batch_size=batch, shuffle=False)


def refuse_existing(out: str, overwrite: bool) -> None:
    """Error before any work if `out` holds something and the user did not pass --force."""
    p = Path(out)
    if p.exists() and any(p.iterdir()) and not overwrite:
        raise UsageError(
            f"output directory {out!r} exists and is not empty; "
            "choose another --out or pass --force"
        )


def trace(loaded: Loaded, granularity: Granularity) -> tuple[UnitGraph, CostModel]:
    graph = trace_units(loaded.model, loaded.input_size, granularity, loaded.name)
    return graph, CostModel(graph)


def resolve_limits(
    budgets: list[Budget],
    cost_model: CostModel,
    projection: ProjectionConfig,
    *,
    smallest_model: CostModel | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Absolute limits per metric (errors for infeasible budgets) and the dense costs.

    Budgets in % are of the dense float model; `smallest_model` (default `cost_model`) prices the
    smallest allocation, e.g. at the smallest bit widths a search may choose.
    """
    dense_keep = cost_model.dense_keep
    smallest_keep = min_keeps(cost_model.sizes, projection, projection.step(cost_model))
    # sorted: a set's order changes with PYTHONHASHSEED, and allocation.json must not; latency
    # whenever a table prices it (--latency-aware without a latency budget records it too)
    base = {"macs", "params", "weights", "size", "bops"} | ({"latency"} & set(cost_model.metrics))
    metrics = sorted({b.metric for b in budgets} | base)
    dense = {m: cost_model.metric(m, dense_keep) for m in metrics}
    low = smallest_model or cost_model
    smallest = {m: low.metric(m, smallest_keep) for m in metrics}
    return check_budgets(budgets, dense, smallest), dense
