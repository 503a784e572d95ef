"""The search flags of `autoprune search` (methods, study storage, evaluator) and their defaults.

Bare `autoprune search --budget-flops 300M` means: ResNet-18 (torchvision, 1.82G MACs at its own
3x224x224 input, so 300M is a 6x cut) on the embedded digits set, trained densely for one epoch
because no --checkpoint is given, an Optuna (TPE) search of 20 trials scored by the shared
evaluator, the reweighted backend, and a run directory runs/search-resnet18-digits-TIMESTAMP.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from autoprune.cli.base import default_from, given, names_from

DEFAULT_MODEL = (
    "resnet18"  # a model whose dense cost (1.82G MACs) makes budgets like 300M meaningful
)
DENSE_EPOCHS_WITHOUT_CHECKPOINT = 1  # a short dense training so the search ranks a trained model


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of the search methods, their Optuna study and the shared evaluator."""
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, help="proposals to score (random, optuna; default 20)")
    names_from(
        g.add_argument(
            "--sampler",
            help="optuna sampler (default: tpe; nsga2 with --multi-objective)",
        ),
        "sampler",
    )
    g.add_argument(
        "--multi-objective",
        nargs="?",
        const="macs",
        metavar="COST",
        help="optuna: trade validation accuracy against COST (macs, the default | params | size) "
        "with NSGA-II and keep the Pareto front",
    )
    g.add_argument(
        "--pick",
        help="from the Pareto front: best (default) | knee | cheapest | 1%% (cheapest within 1 pt)",
    )
    g.add_argument(
        "--storage",
        metavar="URL",
        help="optuna study storage, any SQLAlchemy URL (default sqlite:///RUN/study.db)",
    )
    g.add_argument(
        "--study",
        metavar="NAME",
        help="optuna study name; an existing (interrupted) study of that name is resumed",
    )
    g.add_argument(
        "--n-jobs", type=int, help="optuna: worker processes sharing the study (default 1)"
    )
    g.add_argument(
        "--heartbeat", dest="heartbeat_s", type=int, metavar="S",
        help="optuna: a trial whose worker sends no heartbeat for 2 x S seconds is failed and "
        "retried by the others (default 10)",
    )  # fmt: skip
    g.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        default=None,
        help="optuna: do not make the uniform allocation a fresh study's first trial; rl: do not "
        "score it as a candidate beside the episodes",
    )
    g.add_argument("--steps", type=int, help="dsa: gradient steps on the keep ratios (default 200)")
    g.add_argument("--episodes", type=int, help="rl: episodes the agent plays (default 200)")
    names_from(g.add_argument("--agent", help="rl: the agent (default: ddpg)"), "agent")
    g.add_argument(
        "--train-weights",
        action="store_true",
        default=None,
        help="dsa: also train (a copy of) the weights under the soft masks while searching",
    )
    b = p.add_argument_group("bits (joint pruning and kernel-wise quantisation)")
    b.add_argument(
        "--bits",
        action="store_true",
        help="choose weight bits per kernel and activation bits per layer as well as keeps "
        "(every method; dsa takes uniform's widths); --budget-size then counts the packed "
        "artifact's bytes",
    )
    b.add_argument(
        "--weight-bits",
        metavar="LIST",
        help="with --bits: weight widths to choose from, each 1..15 (default 2,3,4,5,6,8; one "
        "value fixes it)",
    )
    b.add_argument(
        "--act-bits",
        metavar="LIST",
        help="with --bits: activation widths; one value fixes it (default 32: float, not "
        "quantised), several (e.g. 4,6,8) are searched per layer",
    )
    e = p.add_argument_group("evaluator (scores allocations on the validation split)")
    evaluator = {
        "--eval-importance": (str, "importance", "which elements a unit keeps while scoring"),
        "--bn-batches": (int, "bn_batches", "training batches for BatchNorm recalibration"),
        "--finetune-steps": (int, "finetune_steps", "SGD steps before scoring (0: none)"),
        "--eval-lr": (float, "finetune_lr", "learning rate of those steps"),
        "--val-limit": (int, "val_limit", "score on the first N validation images (default all)"),
    }
    for flag, (kind, field_name, text) in evaluator.items():
        action = default_from(e.add_argument(flag, type=kind, help=text), "evaluator", field_name)
        if field_name == "importance":
            names_from(action, "importance")
    rounds = {
        "--finalists": ("finalists", "re-score the K best distinct allocations of a search (and "
                        "the best start it was handed) on more fine-tune orders and return the "
                        "best mean (0: the best single score)"),
        "--final-orders": ("orders", "fresh fine-tune orders each finalist is scored on"),
    }  # fmt: skip
    for flag, (field_name, text) in rounds.items():
        default_from(e.add_argument(flag, type=int, metavar="K" if field_name == "finalists"
                                    else "R", help=text), "final_round", field_name)  # fmt: skip


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user gave: a method that takes no such option rejects it by name."""
    flags = {
        "trials": args.trials,
        "sampler": args.sampler,
        "multi_objective": args.multi_objective,
        "pick": args.pick,
        "storage": args.storage,
        "study": args.study,
        "n_jobs": args.n_jobs,
        "heartbeat_s": args.heartbeat_s,
        "warm_start": args.warm_start,
        "steps": args.steps,
        "train_weights": args.train_weights,
        "episodes": args.episodes,
        "agent": args.agent,
    }
    return {k: v for k, v in flags.items() if v is not None}


def bit_space(args: argparse.Namespace) -> Any:
    """The widths `--bits` chooses from, or None without --bits."""
    from autoprune.errors import UsageError
    from autoprune.search.bit_space import BitSpace

    if not args.bits:
        for flag in ("weight_bits", "act_bits"):
            if getattr(args, flag) is not None:
                name = "--" + flag.replace("_", "-")
                raise UsageError(f"{name} sets the widths that --bits chooses from; add --bits")
        return None
    return BitSpace.parse(args.weight_bits, args.act_bits)


def evaluator_config(args: argparse.Namespace) -> Any:
    from autoprune.search.evaluator import EvaluatorConfig

    flags = {"eval_importance": "importance", "bn_batches": "bn_batches",
             "finetune_steps": "finetune_steps", "eval_lr": "finetune_lr", "val_limit": "val_limit",
             "seed": "seed"}  # fmt: skip
    return EvaluatorConfig(**given(args, flags))


def final_round(args: argparse.Namespace) -> Any:
    from autoprune.errors import UsageError
    from autoprune.search.finalists import FinalRound

    if args.final_orders is not None and not args.finalists:
        raise UsageError("--final-orders sets how often the final round re-scores; add "
                         "--finalists K (the number of allocations it re-scores)")  # fmt: skip
    return FinalRound(**given(args, {"finalists": "finalists", "final_orders": "orders"}))


def resolve_defaults(args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other flags (model, out, dense epochs) in place."""
    if args.model is None and args.checkpoint is None:
        args.model = DEFAULT_MODEL
    if args.method is None:  # SearchRun's own default, said there once
        from autoprune.pipeline.search import SearchRun

        args.method = next(f.default for f in dataclasses.fields(SearchRun) if f.name == "method")
    if args.dense_epochs is None:
        pretrained = args.checkpoint or args.weights  # trained already: no dense epochs
        args.dense_epochs = 0 if pretrained else DENSE_EPOCHS_WITHOUT_CHECKPOINT
    if args.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        args.out = f"runs/search-{args.model or 'checkpoint'}-{args.dataset}-{stamp}"
