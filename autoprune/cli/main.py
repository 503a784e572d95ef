"""The `autoprune` command line: the parser, `main`, and the train / profile / search / prune
subcommands (one small class each over the Python API; the tooling ones are in cli_tools)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from autoprune import __version__
from autoprune.cli.base import (
    Command,
    common_args,
    echo,
    finish,
    parse_size,
)
from autoprune.cli.search import DEFAULT_METHOD, add_search_arguments
from autoprune.cli.tools import Bench, Dashboard, Eval, Export, LatencyTableCmd
from autoprune.cost.budgets import FLAG_METRIC, Budget, parse_budget
from autoprune.errors import AutoPruneError, UsageError


class Train(Command):
    name, help = "train", "train a dense model and write RUN/checkpoint.pt"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        common_args(p, model_required=True)
        p.add_argument("--epochs", type=int, default=10)
        p.add_argument("--lr", type=float, default=0.05)
        p.add_argument("--batch-size", type=int, default=128)
        p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
        _weight_decay_arg(p)
        p.add_argument("--out", required=True)

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.train import TrainRun, run_train
        from autoprune.train.loop import TrainConfig

        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          optimizer=args.optimizer, weight_decay=args.weight_decay,
                          seed=args.seed)  # fmt: skip
        metrics = run_train(TrainRun(args.model, args.dataset, args.out, args.data_dir,
                                     args.input_size, cfg, args.limit, not args.quiet,
                                     args.force))  # fmt: skip
        if args.json:
            print(json.dumps(metrics, indent=2, default=float))
        else:
            acc = metrics["final"]["accuracy"]
            echo(
                args,
                f"dense {args.model} on {args.dataset}: test accuracy {100 * acc:.2f}%; "
                f"wrote {args.out}",
            )
        return 0


class Profile(Command):
    name, help = "profile", "per-layer MACs and parameters of a model"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True)
        p.add_argument("--input-size", type=parse_size)
        p.add_argument("--dataset", help="take the number of classes from this dataset")
        p.add_argument("--granularity", choices=["channel", "weight"], default="channel")
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.profile import profile, render_profile

        report = profile(
            args.model,
            input_size=args.input_size,
            dataset=args.dataset,
            granularity=args.granularity,
        )
        print(json.dumps(report, indent=2) if args.json else render_profile(report))
        return 0


def _budgets(args: argparse.Namespace) -> list[Budget]:
    return [
        parse_budget(metric, getattr(args, f"budget_{flag}"))
        for flag, metric in FLAG_METRIC.items()
        if getattr(args, f"budget_{flag}", None) is not None
    ]


def _backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        default="reweighted",
        help="reweighted (default) | admm | magnitude | greg | hspg",
    )
    p.add_argument("--epochs", type=int, default=10, help="backend pruning epochs")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--finetune-lr", type=float, help="learning rate of fine-tuning (default: --lr)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    _weight_decay_arg(p)
    p.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                   help="distil the dense model's outputs into the pruned one with weight ALPHA "
                        "in [0, 1] (0: off)")  # fmt: skip
    p.add_argument("--importance", default="l1", help="l1 | l2 | taylor")
    p.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a backend-specific option, e.g. aux_lr=0.02 (repeatable)")  # fmt: skip


def _weight_decay_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight-decay", type=float, default=5e-4, metavar="WD",
                   help="L2 weight decay of the SGD / AdamW steps (default 5e-4)")  # fmt: skip


def _backend_options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--backend-option {pair!r} is not KEY=VALUE; write e.g. aux_lr=0.02")
        options[key.strip()] = value.strip()
    return options


def _backend_cfg(args: argparse.Namespace) -> Any:
    from autoprune.backends.base import BackendConfig

    return BackendConfig(epochs=args.epochs, finetune_epochs=args.finetune_epochs, lr=args.lr,
                         finetune_lr=args.finetune_lr, distill=args.distill,
                         batch_size=args.batch_size, weight_decay=args.weight_decay,
                         importance=args.importance, seed=args.seed,
                         progress=not args.quiet,
                         options=_backend_options(args.backend_option))  # fmt: skip


class Search(Command):
    name, help = "search", "search an allocation under budgets, train it, export it"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        common_args(p)
        p.add_argument("--checkpoint", help="dense checkpoint (from `autoprune train`)")
        for flag in FLAG_METRIC:
            p.add_argument(f"--budget-{flag}", metavar="B")
        p.add_argument(
            "--method",
            default=DEFAULT_METHOD,
            help="optuna (default) | uniform | random | rl | dsa",
        )
        p.add_argument("--granularity", choices=["channel", "weight"], default="channel")
        p.add_argument(
            "--no-prune", action="store_true", help="export the allocation without backend training"
        )
        p.add_argument(
            "--dense-epochs",
            type=int,
            help="without --checkpoint: train the dense model this long first (default 1)",
        )
        p.add_argument("--min-ratio", type=float, default=0.05, help="smallest keep ratio per unit")
        p.add_argument(
            "--latency-table",
            metavar="FILE",
            help="for --budget-latency: a table from `autoprune latency-table` "
            "(default: measure one)",
        )
        add_search_arguments(p)
        p.add_argument("--episodes", type=int, help="rl: episodes the agent plays (default 200)")
        p.add_argument("--agent", help="rl: ddpg (default) | td3 | sac")
        _backend_args(p)
        p.add_argument("--out", help="run directory (default runs/search-MODEL-DATASET-TIMESTAMP)")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.cli.search import (
            bit_space,
            evaluator_config,
            method_options,
            resolve_defaults,
        )
        from autoprune.cost.projection import ProjectionConfig
        from autoprune.pipeline.search import SearchRun, run_search
        from autoprune.train.loop import TrainConfig

        budgets = _budgets(args)
        if not budgets:
            raise UsageError(
                "no budget given; pass e.g. --budget-flops 50% (or -params, -size, -bops, -latency)"
            )
        resolve_defaults(args)
        options = method_options(args)
        options.update(
            {
                k: v
                for k, v in {"episodes": args.episodes, "agent": args.agent}.items()
                if v is not None
            }
        )
        cfg = SearchRun(
            dataset=args.dataset, out=args.out, budgets=budgets, model=args.model,
            data_dir=args.data_dir,
            checkpoint=args.checkpoint, input_size=args.input_size, method=args.method,
            method_options=options, evaluator=evaluator_config(args), resume=args.study is not None,
            granularity=args.granularity, seed=args.seed, no_prune=args.no_prune,
            backend=args.backend, backend_cfg=_backend_cfg(args),
            projection=ProjectionConfig(min_ratio=args.min_ratio),
            dense_train=TrainConfig(epochs=args.dense_epochs, seed=args.seed),
            limit=args.limit, progress=not args.quiet, overwrite=args.force,
            latency_table=args.latency_table, bits=bit_space(args),
        )  # fmt: skip
        metrics = run_search(cfg)
        finish(args, metrics, args.out)
        from autoprune.cost.latency import latency_warning

        warning = latency_warning(metrics)
        if warning:
            print(f"autoprune search: {warning}", file=sys.stderr)
        return 0


class Prune(Command):
    name, help = "prune", "train a dense checkpoint to an allocation with a backend"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--allocation", required=True)
        p.add_argument(
            "--checkpoint", help="dense checkpoint (default: the one the allocation names)"
        )
        p.add_argument("--dataset", help="default: the allocation's")
        p.add_argument("--data-dir")
        p.add_argument("--limit", type=int)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--resume", action="store_true", help="continue an interrupted run from its last epoch"
        )
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--json", action="store_true")
        p.add_argument("--force", action="store_true")
        _backend_args(p)
        p.add_argument("--out", required=True)

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.prune import PruneRun, run_prune

        cfg = PruneRun(allocation=args.allocation, out=args.out, backend=args.backend,
                       backend_cfg=_backend_cfg(args), data_dir=args.data_dir,
                       dataset=args.dataset, checkpoint=args.checkpoint, limit=args.limit,
                       progress=not args.quiet, overwrite=args.force,
                       resume=args.resume)  # fmt: skip
        finish(args, run_prune(cfg), args.out)
        return 0


COMMANDS: list[Command] = [
    Train(),
    Profile(),
    Search(),
    Prune(),
    Eval(),
    LatencyTableCmd(),
    Export(),
    Dashboard(),
    Bench(),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._command.run(args)
    except AutoPruneError as e:
        msg = " ".join(str(e).split())
        print(f"autoprune {args.command}: error: {msg}", file=sys.stderr)
        return e.exit_code
    except FileExistsError as e:
        print(
            f"autoprune {args.command}: error: {e} exists; choose another --out or pass --force",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"autoprune {args.command}: interrupted", file=sys.stderr)
        return 130


def run_cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run_cli()


__all__ = ["COMMANDS", "Command", "build_parser", "main", "parse_size"]
