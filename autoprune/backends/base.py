"""What every training backend shares: its config, its result and the registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.graph.units import UnitGraph
from autoprune.quant.bits import BitAllocation
from autoprune.registry import RegisteredName, Registry
from autoprune.train.data import DataSplits

MatchPriced = Callable[
    [list[torch.Tensor], nn.Module, BitAllocation], tuple[list[torch.Tensor], BitAllocation]
]


@dataclass
class BackendConfig:
    """Training budget shared by every backend; each backend adds its own knobs."""

    epochs: int = 10  # regularised / pruning phase
    finetune_epochs: int = 5  # with the mask fixed to exactly the allocation
    batch_size: int = 128
    lr: float = 0.01
    finetune_lr: float | None = None  # None: `lr`; higher re-trains more (learning-rate rewinding)
    weight_decay: float = 5e-4
    # Weight of distillation from the dense model in both phases (0: plain cross-entropy); the
    # pruned network then learns the dense one's soft outputs as well as the labels.
    distill: float = 0.0
    distill_temperature: float = 4.0
    augment: bool = False  # the dataset's standard augmentation (autoprune.train.augment)
    label_smoothing: float = 0.0  # cross-entropy against smoothed labels in both phases
    optimizer: str = "sgd"
    importance: str = "l1"  # ranks elements where a backend needs an initial choice
    seed: int = 0
    progress: bool = True
    options: dict[str, Any] = field(
        default_factory=dict
    )  # backend-specific, checked by the backend
    bits: BitAllocation | None = None  # the allocation's bits: train quantisation-aware to them
    # With bits, once the pruning phase fixes the mask: (kept, model, bits) -> the kept elements
    # and bits to fine-tune with, so the artifact costs what the search priced
    # (autoprune.cost.bit_match.PricedKernels); None keeps both as they are.
    match_priced: MatchPriced | None = None


@dataclass
class BackendResult:
    """A trained model that matches the allocation exactly.

    `model` has dense shapes with every pruned element exactly zero (masks baked in); `kept`
    lists, per unit, the indices that survive (len == keep), which export uses to slim it.
    """

    model: nn.Module
    kept: list[torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    bits: BitAllocation | None = None  # the bits the model is quantised to (after match_priced)


# Called after every epoch with (epoch, state dict of everything needed to resume) so the caller
# can write a checkpoint; backends call it, the run directory decides where it goes.
EpochCallback = Callable[[int, dict[str, Any]], None]


class Backend(ABC):
    """Trains a dense model until every unit keeps exactly its `keep` elements, then fine-tunes."""

    name = RegisteredName(lambda: BACKENDS)  # the name it is registered under

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        graph: UnitGraph,
        keep: np.ndarray,
        data: DataSplits,
        cfg: BackendConfig,
        *,
        on_epoch_end: EpochCallback | None = None,
        resume: dict[str, Any] | None = None,
    ) -> BackendResult: ...


BACKENDS: Registry[type[Backend]] = Registry("backend")
