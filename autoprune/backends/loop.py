"""The loop the built-in backends share: a pruning phase, then fine-tuning with the mask fixed.

A backend only says how the mask forms while the pruning phase trains (hooks per step and per
epoch) and which elements survive at its end (`final_kept`). The loop owns everything else:
optimiser, learning-rate schedule, per-epoch metrics, per-epoch resumable state, fixing the
mask to exactly `keep` elements per unit, and the check that every pruned element is zero.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from autoprune.backends.base import BACKENDS, Backend, BackendConfig, BackendResult, EpochCallback
from autoprune.backends.common import MOMENTUM, param_dtype
from autoprune.errors import UsageError
from autoprune.graph.masking import UnitMap, apply_masks, keep_vectors, remove_masks
from autoprune.graph.units import UnitGraph
from autoprune.quant.fake import add_act_quant, add_weight_quant, on_levels
from autoprune.train import distributed
from autoprune.train.augment import recipe_record, training_batches
from autoprune.train.data import DataSplits, make_loader
from autoprune.train.device import on_device
from autoprune.train.loop import Distill, evaluate, set_seed, train_epoch
from autoprune.train.rng import restore_rng, rng_state

PHASES = ("prune", "finetune")


class MaskTrainer(Backend):
    """A backend made of a pruning phase (subclass hooks) and a fixed-mask fine-tune (shared)."""

    Options: ClassVar[type[Any]]
    distill: Distill | None = None  # set by `run` when the config distils
    # With bits: fake-quantise weights during the pruning phase too (else only while fine-tuning).
    quantise_while_pruning: ClassVar[bool] = False

    # --- what a backend decides ----------------------------------------------------------------
    @abstractmethod
    def setup(
        self, model: nn.Module, umap: UnitMap, keep: list[int], cfg: BackendConfig, opts: Any
    ) -> None:
        """Prepare the pruning phase (parametrizations, auxiliary state) on the dense model."""

    @abstractmethod
    def final_kept(self, model: nn.Module) -> list[Tensor]:
        """At the end of the pruning phase: the `keep[u]` indices each unit keeps."""

    def penalty(self) -> Tensor | None:
        return None

    def trainables(self) -> list[Tensor]:
        """Tensors outside the model that the hooks step from their gradients (gates): under
        torchrun their gradients are averaged across ranks like the model's."""
        return []

    def after_backward(self, step: int) -> None:
        return None

    def after_step(self, step: int) -> None:
        return None

    def epoch_metrics(self, model: nn.Module) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, Any]:
        """Everything but model and optimiser needed to resume (weights_only-loadable)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        return None

    # --- the loop ------------------------------------------------------------------------------
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
    ) -> BackendResult:
        # On the runtime's device (--device) throughout: the backend's state is made there; the
        # trained model and its kept indices come back to where the model was.
        with on_device(model):
            res = self._run(model, graph, keep, data, cfg, on_epoch_end, resume)
        res.kept = [k.cpu() for k in res.kept]
        res.info["recipe"] |= recipe_record(cfg.augment, data.spec.name, data.input_size)
        return res

    def _run(
        self,
        model: nn.Module,
        graph: UnitGraph,
        keep: np.ndarray,
        data: DataSplits,
        cfg: BackendConfig,
        on_epoch_end: EpochCallback | None,
        resume: dict[str, Any] | None,
    ) -> BackendResult:
        set_seed(cfg.seed)
        steps = max(1, math.ceil(len(data.train) / cfg.batch_size))  # type: ignore[arg-type]
        opts, keeps = self._bind(model, graph, keep, cfg, steps)
        umap = self.umap
        bits = cfg.bits
        self.distill = _teacher(model, cfg)
        act_quant = {} if bits is None else add_act_quant(model, graph, bits)
        history: list[dict[str, Any]] = list(resume["history"]) if resume else []
        phase = resume["phase"] if resume else "prune"
        start = int(resume["epoch"]) + 1 if resume else 0

        kept: list[Tensor]
        if phase == "prune":
            self.setup(model, umap, keeps, cfg, opts)
            if bits is not None and self.quantise_while_pruning:
                add_weight_quant(model, graph, bits)  # on top of the backend's mask
            opt = _optimizer(model, cfg, cfg.lr)
            if resume:
                _restore(model, opt, resume)
                self.load_state(resume["backend"])
                restore_rng(resume.get("rng"))  # dropout draws on where the killed run was
            self._phase(model, data, cfg, opt, "prune", start, history, on_epoch_end)
            # rank 0's choice on every rank under torchrun (the ranks' gates agree; now surely)
            kept = distributed.agree([k.to(torch.int64).cpu() for k in self.final_kept(model)])
            start = 0
        else:
            kept = [torch.as_tensor(k, dtype=torch.int64) for k in resume["kept"]]  # type: ignore[index]
        self.kept = kept
        if [len(k) for k in kept] != keeps:
            raise RuntimeError(
                f"backend {self.name!r} kept {[len(k) for k in kept]} elements, not {keeps}"
            )

        remove_masks(model, bake=False)  # the raw weights of every element go on into fine-tuning
        if bits is not None and cfg.match_priced is not None:
            kept, bits = cfg.match_priced(kept, model, bits)
            self.kept = kept
        apply_masks(model, umap.masks(keep_vectors(umap.sizes, kept, param_dtype(model))))
        if bits is not None:
            add_weight_quant(model, graph, bits)
        opt = _optimizer(model, cfg, cfg.lr if cfg.finetune_lr is None else cfg.finetune_lr)
        if phase == "finetune":
            _restore(model, opt, resume)  # type: ignore[arg-type]
            restore_rng(resume.get("rng"))  # type: ignore[union-attr]
        self._phase(model, data, cfg, opt, "finetune", start, history, on_epoch_end)
        remove_masks(model, bake=True)  # bakes the fake-quantised values too
        _check_exact(model, umap, kept, self.name)
        info: dict[str, Any] = {"backend": self.name, "options": dataclasses.asdict(opts),
                                "recipe": _recipe(cfg)}  # fmt: skip
        if self.distill is not None:
            info["distill"] = {"alpha": self.distill.alpha, "temperature": self.distill.temperature}
        if bits is not None:
            _check_levels(model, graph, bits.weight, self.name)
            info["act_scales"] = {name: q.scale for name, q in act_quant.items()}
        return BackendResult(model, kept, history, info, bits=bits)

    def _bind(
        self,
        model: nn.Module,
        graph: UnitGraph,
        keep: np.ndarray,
        cfg: BackendConfig,
        steps_per_epoch: int,
    ) -> tuple[Any, list[int]]:
        opts = BACKENDS.parse_options(self.name, cfg.options)
        keeps = _check_keep(graph, keep)
        self.graph = graph
        self.umap = UnitMap(model, graph)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * cfg.epochs
        return opts, keeps

    def prepare(
        self,
        model: nn.Module,
        graph: UnitGraph,
        keep: np.ndarray,
        cfg: BackendConfig,
        steps_per_epoch: int,
    ) -> dict[str, Any]:
        """Set up the pruning phase on `model` and return its per-step hooks for `train_epoch`.

        `run` does this itself; this is for callers that drive steps alone (overhead timing).
        """
        opts, keeps = self._bind(model, graph, keep, cfg, steps_per_epoch)
        self.setup(model, self.umap, keeps, cfg, opts)
        return self.hooks()

    def hooks(self) -> dict[str, Any]:
        """The pruning phase's hooks, as keyword arguments of `train_epoch`."""
        has_penalty = type(self).penalty is not MaskTrainer.penalty
        return {"penalty": self.penalty if has_penalty else None,
                "after_backward": self.after_backward, "after_step": self.after_step,
                "trainables": self.trainables()}  # fmt: skip

    def _phase(
        self,
        model: nn.Module,
        data: DataSplits,
        cfg: BackendConfig,
        opt: torch.optim.Optimizer,
        phase: str,
        start: int,
        history: list[dict[str, Any]],
        on_epoch_end: EpochCallback | None,
    ) -> None:
        epochs = cfg.epochs if phase == "prune" else cfg.finetune_epochs
        val = make_loader(data.val, batch_size=256, shuffle=False)
        total = max(1, epochs * self.steps_per_epoch)
        offset = 0 if phase == "prune" else cfg.epochs  # global epoch numbers in the history
        for epoch in range(start, epochs):
            first = epoch * self.steps_per_epoch
            scheduler = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(phase, first, total))
            lr = opt.param_groups[0]["lr"]
            # A fresh seeded order per epoch, so a resumed run sees the batches it would have.
            loader = training_batches(data, batch_size=cfg.batch_size, augment=cfg.augment,
                                      seed=cfg.seed * 100_003 + offset + epoch)  # fmt: skip
            hooks = self.hooks() if phase == "prune" else {}
            stats = train_epoch(model, loader, opt, scheduler=scheduler, step_offset=first,
                                distill=self.distill, progress=cfg.progress,
                                label_smoothing=cfg.label_smoothing,
                                desc=f"{self.name} {phase} {epoch + 1}/{epochs}",
                                **hooks)  # fmt: skip
            v = evaluate(model, val)
            row: dict[str, Any] = {
                "phase": phase, "epoch": offset + epoch, "train_loss": stats.loss,
                "train_acc": stats.accuracy, "val_loss": v.loss, "val_acc": v.accuracy, "lr": lr,
                "seconds": stats.seconds,
                "alive": [int(a.sum()) for a in self.umap.alive(model)],
            }  # fmt: skip
            if phase == "prune":
                row |= self.epoch_metrics(model)
            history.append(row)
            if on_epoch_end is not None:
                state = {"phase": phase, "epoch": epoch, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "history": history,
                         "rng": rng_state()}  # fmt: skip
                if phase == "prune":
                    state["backend"] = self.state()
                else:
                    state["kept"] = list(self.kept)
                on_epoch_end(offset + epoch, state)


def _teacher(model: nn.Module, cfg: BackendConfig) -> Distill | None:
    """The dense model, frozen, when the run distils (`model` is still dense when this runs)."""
    if not cfg.distill:
        return None
    if not 0.0 < cfg.distill <= 1.0 or not cfg.distill_temperature > 0:
        raise UsageError(
            f"--distill must be in (0, 1] and the temperature > 0, got {cfg.distill!r} "
            f"and {cfg.distill_temperature!r}"
        )
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    return Distill(teacher, cfg.distill, cfg.distill_temperature)


def _lr_factor(phase: str, first: int, total: int) -> Callable[[int], float]:
    """Prune at a constant rate, then anneal (cosine, per step) while the mask is fixed."""
    if phase == "prune":
        return lambda s: 1.0
    return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(first + s, total) / total))


def _check_keep(graph: UnitGraph, keep: np.ndarray) -> list[int]:
    keeps = [int(k) for k in np.asarray(keep).reshape(-1)]
    if len(keeps) != len(graph.units):
        raise UsageError(
            f"the allocation has {len(keeps)} keeps but the model has {len(graph.units)} units"
        )
    for unit, k in zip(graph.units, keeps, strict=True):
        if not 1 <= k <= unit.size:
            raise UsageError(
                f"unit {unit.name!r} keeps {k} of {unit.size}; keep must be in [1, {unit.size}]"
            )
    return keeps


def _recipe(cfg: BackendConfig) -> dict[str, Any]:
    """The training settings a run was made with, for its metrics.json."""
    names = ("epochs", "finetune_epochs", "batch_size", "lr", "finetune_lr", "weight_decay",
             "optimizer", "seed", "label_smoothing")  # fmt: skip
    return {name: getattr(cfg, name) for name in names}


def _optimizer(model: nn.Module, cfg: BackendConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {cfg.weight_decay!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "sgd":
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}; use 'sgd' or 'adam'")
    return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM, weight_decay=cfg.weight_decay)


def _restore(model: nn.Module, opt: torch.optim.Optimizer, resume: dict[str, Any]) -> None:
    model.load_state_dict(resume["model"])
    opt.load_state_dict(resume["optimizer"])


def _check_levels(
    model: nn.Module, graph: UnitGraph, bits: dict[str, tuple[int, ...]], name: str
) -> None:
    """With bits, every weight must end on its kernel's quantisation levels."""
    for lay in graph.layers:
        layer: Any = model.get_submodule(lay.name)
        if not on_levels(layer.weight.detach(), bits[lay.name]):
            raise RuntimeError(
                f"backend {name!r} left layer {lay.name!r} off its quantisation levels"
            )


def _check_exact(model: nn.Module, umap: UnitMap, kept: list[Tensor], name: str) -> None:
    """Every element outside `kept` must be exactly zero; a backend that leaks one is a bug."""
    for u, (alive, idx) in enumerate(zip(umap.alive(model), kept, strict=True)):
        allowed = torch.zeros_like(alive)
        allowed[idx] = True
        leaked = int((alive & ~allowed).sum())
        if leaked:
            raise RuntimeError(
                f"backend {name!r} left {leaked} pruned elements nonzero in unit {u}"
            )
