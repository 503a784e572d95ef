"""The `autoprune` command line: one small class per subcommand over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from autoprune import __version__
from autoprune.cli.backend import backend_args, backend_cfg, recipe_args, weight_decay_arg
from autoprune.cli.base import (
    Command,
    HelpFormatter,
    common_args,
    default_from,
    echo,
    finish,
    given,
    model_arg,
    names_from,
    parse_size,
    runtime_args,
    runtime_for,
)
from autoprune.cli.search import add_search_arguments
from autoprune.cli.tools import Bench, Dashboard, Eval, Export, LatencyTableCmd
from autoprune.cost.budgets import FLAG_METRIC, Budget, parse_budget
from autoprune.errors import AutoPruneError, UsageError

DESCRIPTION = """\
Compress a neural network under hard budgets. Say how many MACs, parameters, bytes or
milliseconds the model may cost; autoprune decides how many channels (or weights) every layer
keeps and how many bits each kernel gets, trains the network to exactly that allocation, and
exports a smaller model whose costs are measured on the exported file.

A five-minute tour on the embedded digits data (seconds each):
  autoprune train   --model lenet5 --dataset digits --epochs 3 --out runs/dense
  autoprune profile --model lenet5
  autoprune search  --checkpoint runs/dense/checkpoint.pt --budget-flops 25% --out runs/small
  autoprune prune   --allocation runs/small/allocation.json --backend magnitude --out runs/mag
  autoprune eval    runs/small
  autoprune dashboard runs/small

`autoprune COMMAND --help` lists a command's flags, the names they accept and their defaults.
"""

# flag dest -> TrainConfig field, for `train` and for the dense training of `search`
TRAIN_FLAGS = {"epochs": "epochs", "lr": "lr", "batch_size": "batch_size",
               "optimizer": "optimizer", "weight_decay": "weight_decay",
               "seed": "seed", "augment": "augment", "label_smoothing": "label_smoothing",
               "warmup_epochs": "warmup_epochs"}  # fmt: skip


class Train(Command):
    name, help = "train", "train a dense model: RUN/checkpoint.pt, model.pt2, metrics.json"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        common_args(p, model_required=True)
        default_from(p.add_argument("--epochs", type=int, help="training epochs"), "train")
        default_from(p.add_argument("--lr", type=float, help="peak learning rate"), "train")
        default_from(p.add_argument("--batch-size", type=int, help="images per step"), "train")
        default_from(names_from(p.add_argument("--optimizer", help="optimiser"), "optimizer"),
                     "train")  # fmt: skip
        weight_decay_arg(p, "train")
        recipe_args(p, "train")
        default_from(p.add_argument("--warmup-epochs", type=float, metavar="E", help="linear "
                                    "learning-rate warm-up before the schedule"),
                     "train")  # fmt: skip
        p.add_argument("--checkpoint", help="start from these weights: an autoprune checkpoint "
                       "or a plain state dict (.pth / .pt) of --model")  # fmt: skip
        p.add_argument("--out", required=True, help="run directory to write")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.train import TrainRun, run_train
        from autoprune.train.loop import TrainConfig

        cfg = TrainConfig(**given(args, TRAIN_FLAGS))
        metrics = run_train(TrainRun(model=args.model, dataset=args.dataset, out=args.out,
                                     data_dir=args.data_dir, input_size=args.input_size,
                                     train=cfg, limit=args.limit, progress=not args.quiet,
                                     overwrite=args.force, checkpoint=args.checkpoint,
                                     weights=args.weights))  # fmt: skip
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
    name, help = "profile", "per-layer MACs and parameters of a model, and its units"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        model_arg(p, required=True)
        p.add_argument("--input-size", type=parse_size, help="CxHxW; default: the model's own")
        names_from(
            p.add_argument("--dataset", help="take the number of classes from this dataset"),
            "dataset",
        )
        p.add_argument(
            "--granularity", choices=["channel", "weight"], default="channel",
            help="channel units (physically slimmed) or weight units (sparse) (default: channel)",
        )  # fmt: skip
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")

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


class Search(Command):
    name, help = "search", "search an allocation under budgets, train it, export it"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        common_args(p)
        p.add_argument("--checkpoint", help="dense checkpoint (from `autoprune train`)")
        b = p.add_argument_group(
            "budgets (one or several; B is e.g. 300M, 1.2G, 45K, 50%, 2MB, 512KB, 5ms)"
        )
        for flag, text in BUDGET_HELP.items():
            b.add_argument(f"--budget-{flag}", metavar="B", help=text)
        names_from(p.add_argument("--method", help="search method (default: optuna)"), "method")
        p.add_argument(
            "--granularity", choices=["channel", "weight"],
            help="channel: whole channels, physically slimmed; weight: single weights, sparse "
                 "(default: channel)",
        )  # fmt: skip
        p.add_argument(
            "--no-prune", action="store_true", help="export the allocation without backend training"
        )
        p.add_argument(
            "--dense-epochs",
            type=int,
            help="without --checkpoint: train the dense model this long first (default 1)",
        )
        default_from(p.add_argument("--min-ratio", type=float,
                                    help="smallest keep ratio per unit"), "projection")  # fmt: skip
        default_from(p.add_argument("--round-to", type=int, metavar="N",
                                    help="keep a multiple of N channels in every unit (or all "
                                         "of it): widths the hardware runs faster"),
                     "projection")  # fmt: skip
        p.add_argument(
            "--latency-aware", action="store_true", default=None,
            help="move MACs between units by a latency table's time per MAC, so the budgets buy "
                 "as much speed as they can (uses --latency-table, else measures one)",
        )  # fmt: skip
        default_from(p.add_argument("--latency-spread", type=float, metavar="F",
                                    help="with --latency-aware: each unit stays within this "
                                         "factor of its projected keep"),
                     "projection")  # fmt: skip
        p.add_argument(
            "--latency-table",
            metavar="FILE",
            help="for --budget-latency or --latency-aware: a table from `autoprune latency-table` "
            "(default: measure one)",
        )
        add_search_arguments(p)
        backend_args(p)
        p.add_argument("--out", help="run directory (default runs/search-MODEL-DATASET-TIMESTAMP)")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.cli.search import (
            bit_space,
            evaluator_config,
            final_round,
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
        dense = TrainConfig(**given(args, {"dense_epochs": "epochs", "seed": "seed",
                                           "augment": "augment",
                                           "label_smoothing": "label_smoothing"}))  # fmt: skip
        cfg = SearchRun(
            dataset=args.dataset, out=args.out, budgets=budgets, model=args.model,
            data_dir=args.data_dir, checkpoint=args.checkpoint, weights=args.weights,
            input_size=args.input_size, method_options=method_options(args),
            evaluator=evaluator_config(args), final_round=final_round(args),
            resume=args.study is not None, no_prune=args.no_prune, backend_cfg=backend_cfg(args),
            projection=ProjectionConfig(**given(args, {"min_ratio": "min_ratio",
                                                       "round_to": "round_to",
                                                       "latency_aware": "latency_aware",
                                                       "latency_spread": "latency_spread"})),
            dense_train=dense, limit=args.limit, progress=not args.quiet, overwrite=args.force,
            latency_table=args.latency_table, bits=bit_space(args),
            **given(args, {"method": "method", "granularity": "granularity", "seed": "seed",
                           "backend": "backend"}),
        )  # fmt: skip
        metrics = run_search(cfg)
        finish(args, metrics, args.out)
        from autoprune.cost.latency import latency_warning

        warning = latency_warning(metrics)
        if warning:
            print(f"autoprune search: {warning}", file=sys.stderr)
        return 0


BUDGET_HELP = {
    "flops": "multiply-accumulates of conv and linear layers (MACs; reports show 2 x MACs too)",
    "params": "parameters (nonzero ones at --granularity weight)",
    "size": "bytes of the weights (with --bits: of the packed model.apq, indices included)",
    "bops": "bit operations: MACs x weight bits x activation bits",
    "latency": "time per batch on this machine, priced by a measured latency table",
}


class Prune(Command):
    name, help = "prune", "train a dense checkpoint to an allocation with a backend"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--allocation", required=True, help="an allocation.json from `search`")
        p.add_argument(
            "--checkpoint", help="dense checkpoint (default: the one the allocation names)"
        )
        names_from(p.add_argument("--dataset", help="default: the allocation's"), "dataset")
        p.add_argument("--data-dir", help="folder holding the dataset (torchvision layout)")
        p.add_argument("--limit", type=int, help="use at most N samples per split (quick runs)")
        p.add_argument("--seed", type=int, help="seed of the backend's training (default 0)")
        p.add_argument(
            "--resume", action="store_true", help="continue an interrupted run from its last epoch"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.add_argument("--force", action="store_true", help="replace an existing --out directory")
        runtime_args(p)
        backend_args(p)
        p.add_argument("--out", required=True, help="run directory to write")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.prune import PruneRun, run_prune

        cfg = PruneRun(allocation=args.allocation, out=args.out,
                       backend_cfg=backend_cfg(args), data_dir=args.data_dir,
                       dataset=args.dataset, checkpoint=args.checkpoint, limit=args.limit,
                       progress=not args.quiet, overwrite=args.force, resume=args.resume,
                       **given(args, {"backend": "backend"}))  # fmt: skip
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
    parser = argparse.ArgumentParser(
        prog="autoprune", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help,
                           formatter_class=HelpFormatter)  # fmt: skip
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd, _parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with runtime_for(args):
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
