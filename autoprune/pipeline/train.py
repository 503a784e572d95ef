"""`autoprune train`: a dense model, its checkpoint, program and metrics in a run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from autoprune.export.fast import FastExportConfig
from autoprune.export.program import export_program, model_metrics
from autoprune.pipeline.load import (
    CHECKPOINT_KIND_DENSE,
    checkpoint_meta,
    eval_loader,
    load_model_and_data,
    refuse_existing,
)
from autoprune.rundir import staged_run_dir, write_json_atomic, writes_out
from autoprune.train.augment import recipe_record, training_batches
from autoprune.train.checkpoint import save_checkpoint
from autoprune.train.loop import TrainConfig, fit, set_seed


@dataclass(kw_only=True)
class TrainRun:
    model: str
    dataset: str
    out: str
    data_dir: str | None = None
    input_size: tuple[int, int, int] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    limit: int | None = None
    checkpoint: str | None = None  # start from these weights (autoprune's, or a plain .pth)
    weights: str | None = None  # or from torchvision's pretrained weights (DEFAULT, ...)
    progress: bool = True
    overwrite: bool = False


@writes_out  # --out is checked and locked before any work
def run_train(cfg: TrainRun) -> dict[str, Any]:
    """Dense training: checkpoint.pt, model.pt2 and metrics.json in cfg.out."""
    loaded = load_model_and_data(model=cfg.model, dataset=cfg.dataset, data_dir=cfg.data_dir,
                                 input_size=cfg.input_size, limit=cfg.limit,
                                 seed=cfg.train.seed, checkpoint=cfg.checkpoint,
                                 weights=cfg.weights)  # fmt: skip
    refuse_existing(cfg.out, cfg.overwrite)
    set_seed(cfg.train.seed)
    t0 = time.perf_counter()
    train_loader = training_batches(loaded.data, batch_size=cfg.train.batch_size,
                                    seed=cfg.train.seed, augment=cfg.train.augment)  # fmt: skip
    history = fit(
        loaded.model, train_loader, eval_loader(loaded.data.val), cfg.train, progress=cfg.progress
    )
    train_s = time.perf_counter() - t0
    with staged_run_dir(cfg.out, overwrite=cfg.overwrite) as stage:
        meta = checkpoint_meta(loaded, CHECKPOINT_KIND_DENSE, cfg.train.seed)
        save_checkpoint(stage / "checkpoint.pt", state_dict=loaded.model.state_dict(), meta=meta)
        exported = export_program(
            loaded.model, loaded.input_size, loaded.data.mean, loaded.data.std,
            stage / "model.pt2", fast=FastExportConfig(),
        )  # fmt: skip
        dense = model_metrics(loaded.model, loaded.input_size, eval_loader(loaded.data.test))
        metrics = {
            "schema": "autoprune.metrics/v1", "stage": "train", "model": loaded.name,
            "dataset": loaded.dataset, "seed": cfg.train.seed, "threads": torch.get_num_threads(),
            "dense": dense, "final": dense,
            "history": history, "train_config": cfg.train.__dict__,
            "recipe": recipe_record(cfg.train.augment, loaded.dataset, loaded.input_size),
            "wall_time_s": {"train": train_s}, "export": exported,
        }  # fmt: skip
        write_json_atomic(stage / "metrics.json", metrics)
    return metrics
