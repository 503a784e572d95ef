"""The backend flags `autoprune search` and `autoprune prune` share, and their BackendConfig."""

from __future__ import annotations

import argparse
from typing import Any

from autoprune.cli.base import default_from, given, names_from
from autoprune.errors import UsageError

BACKEND_FLAGS = {"epochs": "epochs", "finetune_epochs": "finetune_epochs", "lr": "lr",
                 "finetune_lr": "finetune_lr", "distill": "distill", "batch_size": "batch_size",
                 "weight_decay": "weight_decay", "importance": "importance",
                 "seed": "seed", "augment": "augment",
                 "label_smoothing": "label_smoothing"}  # fmt: skip


def backend_args(p: argparse.ArgumentParser) -> None:
    """The flags of the training backend (search and prune share them)."""
    g = p.add_argument_group("backend (trains the network to exactly the allocation)")
    names_from(g.add_argument("--backend", help="training backend (default: reweighted)"),
               "backend")  # fmt: skip
    default_from(g.add_argument("--epochs", type=int, help="pruning-phase epochs"), "backend")
    default_from(g.add_argument("--finetune-epochs", type=int, help="epochs with the mask fixed"),
                 "backend")  # fmt: skip
    default_from(g.add_argument("--lr", type=float, help="learning rate of the pruning phase"),
                 "backend")  # fmt: skip
    g.add_argument("--finetune-lr", type=float, help="learning rate of fine-tuning (default: --lr)")
    default_from(g.add_argument("--batch-size", type=int, help="images per step"), "backend")
    weight_decay_arg(g, "backend")
    recipe_args(g, "backend")
    default_from(g.add_argument("--distill", type=float, metavar="ALPHA",
                                help="distil the dense model's outputs into the pruned one with "
                                     "weight ALPHA in [0, 1] (0: off)"), "backend")  # fmt: skip
    default_from(names_from(g.add_argument("--importance", help="which elements a backend keeps "
                                           "first"), "importance"), "backend")  # fmt: skip
    g.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend-specific option, e.g. aux_lr=0.02 (repeatable); a wrong "
                        "name or value is refused before anything runs")  # fmt: skip


def weight_decay_arg(p: Any, config: str) -> None:
    """--weight-decay, showing the default of `config` (train or backend)."""
    text = "L2 weight decay of the SGD / AdamW steps"
    default_from(p.add_argument("--weight-decay", type=float, metavar="WD", help=text), config)


def recipe_args(p: Any, config: str) -> None:
    """--augment and --label-smoothing (autoprune.train.augment lists each dataset's recipe)."""
    p.add_argument("--augment", action="store_true", default=None, help="train with the "
                   "dataset's standard augmentation (cifar10: crop + flip; mnist-like: shifts; "
                   "imagefolder: random-resized crop + flip)")  # fmt: skip
    default_from(p.add_argument("--label-smoothing", type=float, metavar="EPS",
                                help="cross-entropy against labels smoothed by EPS"),
                 config)  # fmt: skip


def backend_options(pairs: list[str]) -> dict[str, str]:
    """Repeated --backend-option KEY=VALUE as a dict (checked later against the backend)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--backend-option {pair!r} is not KEY=VALUE; write e.g. aux_lr=0.02")
        options[key.strip()] = value.strip()
    return options


def backend_cfg(args: argparse.Namespace) -> Any:
    """A BackendConfig of the flags the user set; the config's defaults fill the rest."""
    from autoprune.backends.base import BackendConfig

    return BackendConfig(**given(args, BACKEND_FLAGS), progress=not args.quiet,
                         options=backend_options(args.backend_option))  # fmt: skip
