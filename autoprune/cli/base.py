"""Shared pieces of the `autoprune` command line: the subcommand base class, common flags,
and what commands print."""

from __future__ import annotations

import argparse
import json
from typing import Any, ClassVar

from autoprune.cost.budgets import format_value


def parse_size(text: str) -> tuple[int, int, int]:
    """`3x224x224` -> (3, 224, 224)."""
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"expected CxHxW like 3x224x224, got {text!r}")
    return parts


def echo(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text)


class Command:
    """A subcommand: declares its arguments and runs from the parsed namespace."""

    name: ClassVar[str]
    help: ClassVar[str]

    def add_arguments(self, p: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def common_args(p: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    p.add_argument(
        "--model", required=model_required, help="zoo or torchvision name, or pkg.module:factory"
    )
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (default) | mnist | fashion-mnist | cifar10 | imagefolder | fake",
    )
    p.add_argument("--data-dir", help="folder holding the dataset (torchvision layout)")
    p.add_argument("--input-size", type=parse_size, help="CxHxW; default: the model's own")
    p.add_argument("--limit", type=int, help="use at most N samples per split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")


def finish(args: argparse.Namespace, metrics: dict[str, Any], out: str) -> None:
    if args.json:
        print(json.dumps(metrics, indent=2, default=float))
    else:
        echo(args, before_after_table(metrics))
        echo(args, f"wrote {out}")


def before_after_table(metrics: dict[str, Any]) -> str:
    d, f = metrics["dense"], metrics["final"]

    def acc(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    rows = [
        ("test accuracy", acc(d.get("accuracy")), acc(f.get("accuracy"))),
        ("MACs", format_value("macs", d["macs"]), format_value("macs", f["macs"])),
        ("FLOPs (2 x MACs)", format_value("macs", d["flops"]), format_value("macs", f["flops"])),
        ("params", format_value("params", d["params"]), format_value("params", f["params"])),
        (
            "nonzero params",
            format_value("params", d["nonzero_params"]),
            format_value("params", f["nonzero_params"]),
        ),
    ]
    if d.get("latency_s") and f.get("latency_s"):
        rows.append(
            (
                "latency (batch 1)",
                format_value("latency", d["latency_s"]),
                format_value("latency", f["latency_s"]),
            )
        )
    w = max(len(r[0]) for r in rows)
    lines = [f"{'':{w}}  {'dense':>12}  {'final':>12}"]
    lines += [f"{a:{w}}  {b:>12}  {c:>12}" for a, b, c in rows]
    if "compression_ratio" in metrics:
        lines.append(
            f"compression {metrics['compression_ratio']:.2f}x (weights), "
            f"MACs {metrics['macs_ratio']:.2f}x"
        )
    return "\n".join(lines)
