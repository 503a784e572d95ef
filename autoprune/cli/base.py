"""Shared pieces of the `autoprune` command line: the subcommand base class, common flags,
help that lists what the registries hold, and what commands print."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from autoprune.cost.budgets import format_value

# Flags whose values are registered names: help lists the registry (imported only to print help,
# so a plain command starts fast) and the registry itself rejects an unknown name at run time.
REGISTRIES: dict[str, tuple[str, str]] = {
    "model": ("autoprune.models", "MODELS"),
    "dataset": ("autoprune.train.data", "DATASETS"),
    "method": ("autoprune.search", "SEARCH_METHODS"),
    "backend": ("autoprune.backends", "BACKENDS"),
    "importance": ("autoprune.graph.importance", "IMPORTANCE"),
    "optimizer": ("autoprune.train.loop", "OPTIMIZERS"),
    "sampler": ("autoprune.search.study", "SAMPLERS"),
    "agent": ("autoprune.search.rl_agents", "AGENTS"),
}
# Run-config classes whose field defaults a flag shows (the one place defaults live).
CONFIGS: dict[str, tuple[str, str]] = {
    "train": ("autoprune.train.loop", "TrainConfig"),
    "backend": ("autoprune.backends.base", "BackendConfig"),
    "evaluator": ("autoprune.search.evaluator", "EvaluatorConfig"),
    "final_round": ("autoprune.search.finalists", "FinalRound"),
    "projection": ("autoprune.cost.projection", "ProjectionConfig"),
}


def registry_names(kind: str) -> list[str]:
    module, attr = REGISTRIES[kind]
    names: list[str] = getattr(importlib.import_module(module), attr).names()
    return names


def config_default(config: str, field_name: str) -> Any:
    module, attr = CONFIGS[config]
    cls = getattr(importlib.import_module(module), attr)
    f = next(f for f in dataclasses.fields(cls) if f.name == field_name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def names_from(action: argparse.Action, kind: str, phrase: str = "one of") -> argparse.Action:
    """Mark `action` as taking a name registered in REGISTRIES[kind] (listed in its help)."""
    action.registry = (kind, phrase)  # type: ignore[attr-defined]
    return action


def default_from(
    action: argparse.Action, config: str, field_name: str | None = None
) -> argparse.Action:
    """Mark `action`'s default as the run config's (shown in help; the flag's own is None)."""
    action.config_default = (config, field_name or action.dest)  # type: ignore[attr-defined]
    return action


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with registered choices and the run configs' defaults filled in when printed."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        registry = getattr(action, "registry", None)
        if registry is not None:
            kind, phrase = registry
            text += f" ({phrase}: {', '.join(registry_names(kind))})"
        source = getattr(action, "config_default", None)
        if source is not None:
            default = config_default(*source)
            if default is not None:
                text += f" (default: {str(default).replace('%', '%%')})"
        return text


def given(args: argparse.Namespace, names: Mapping[str, str]) -> dict[str, Any]:
    """{config field: value} for the flags the user set (dest -> field); unset flags are None,
    so the config's own default applies."""
    return {field: getattr(args, dest) for dest, field in names.items()
            if getattr(args, dest, None) is not None}  # fmt: skip


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


def model_arg(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    names_from(
        p.add_argument(
            "--model",
            required=required,
            help="a torchvision classifier name, your own pkg.module:factory, or a zoo model",
        ),
        "model",
        "zoo",
    )


class Command:
    """A subcommand: declares its arguments and runs from the parsed namespace."""

    name: ClassVar[str]
    help: ClassVar[str]

    def add_arguments(self, p: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def runtime_args(p: argparse.ArgumentParser) -> None:
    """--device, --amp, --workers: where and how a command computes (autoprune.train.device)."""
    g = p.add_argument_group("device")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default: auto, CUDA when "
                   "available; under torchrun each process takes cuda:LOCAL_RANK)")  # fmt: skip
    g.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision: bf16 (CPU and CUDA) "
                   "or fp16 (CUDA only, with a GradScaler) (default: float32)")  # fmt: skip
    g.add_argument("--workers", type=int, metavar="N", help="DataLoader processes decoding "
                   "folder datasets (imagefolder) (default: 0, in the main process)")  # fmt: skip


@contextlib.contextmanager
def runtime_for(args: argparse.Namespace) -> Iterator[None]:
    """The command's runtime (its --device / --amp / --workers) while it runs; under torchrun
    the processes other than rank 0 print nothing (they only train)."""
    if not hasattr(args, "device"):  # a command that computes nothing on a device
        yield
        return
    from autoprune.train.device import Runtime, use_runtime

    runtime = Runtime(**given(args, {"device": "device", "amp": "amp", "workers": "workers"}))
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) > 0:
            args.quiet = True
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
        stack.enter_context(use_runtime(runtime))
        yield


def common_args(p: argparse.ArgumentParser, *, model_required: bool = False) -> None:
    model_arg(p, required=model_required)
    names_from(
        p.add_argument("--dataset", default="digits", help="dataset (default: digits)"), "dataset"
    )
    p.add_argument("--data-dir", help="folder holding the dataset (torchvision layout)")
    p.add_argument("--weights", metavar="NAME", help="torchvision's pretrained weights (DEFAULT, "
                   "IMAGENET1K_V1, ...) from the local hub cache ($TORCH_HOME/hub/checkpoints); "
                   "never downloaded")  # fmt: skip
    p.add_argument("--input-size", type=parse_size, help="CxHxW; default: the model's own")
    p.add_argument("--limit", type=int, help="use at most N samples per split (quick runs)")
    p.add_argument("--seed", type=int, help="seed of every random choice of the run (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    runtime_args(p)


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
