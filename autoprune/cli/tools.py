"""The tooling subcommands of `autoprune`: eval, latency-table, export, dashboard, bench."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autoprune.cli.base import Command, echo, parse_size, runtime_args
from autoprune.cost.budgets import format_value
from autoprune.errors import UsageError


class Eval(Command):
    name, help = "eval", "evaluate a run directory's model on a dataset's test split"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run")
        p.add_argument("--dataset", help="default: the run's")
        p.add_argument("--data-dir")
        p.add_argument("--limit", type=int)
        p.add_argument("--json", action="store_true")
        runtime_args(p)

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.evaluate_run import evaluate_run

        report = evaluate_run(
            args.run, dataset=args.dataset, data_dir=args.data_dir, limit=args.limit
        )
        if args.json:
            print(json.dumps(report, indent=2, default=float))
        else:
            print(" ".join(f"{k}={v}" for k, v in report.items()))
        return 0


class LatencyTableCmd(Command):
    name, help = (
        "latency-table",
        "time every prunable layer over kept widths on this machine (JSON table)",
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", required=True)
        p.add_argument("--input-size", type=parse_size, help="CxHxW; default: the model's own")
        p.add_argument(
            "--num-classes",
            type=int,
            help="classifier outputs; must match the searched model (default: the model's own)",
        )
        p.add_argument("--batch", type=int, default=1, help="images per timed forward pass")
        p.add_argument(
            "--threads", type=int, help="torch threads while timing (default: torch's setting)"
        )
        p.add_argument(
            "--rounds", type=int, default=9, help="interleaved timing rounds; medians are kept"
        )
        p.add_argument("--out", help="JSON file to write (default: latency-MODEL-CxHxW.json)")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--json", action="store_true")
        runtime_args(p)

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from autoprune.cost.latency import LatencyConfig, table_for
        from autoprune.cost.timing import TimingConfig

        for flag in ("batch", "rounds", "threads", "num_classes"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise UsageError(f"--{flag.replace('_', '-')} {value} must be a positive integer")
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = LatencyConfig(
            batch=args.batch, timing=TimingConfig(rounds=args.rounds, threads=args.threads)
        )
        table = table_for(args.model, input_size=args.input_size, num_classes=args.num_classes,
                          cfg=cfg, progress=not (args.quiet or args.json))  # fmt: skip
        size = "x".join(map(str, table.input_size))
        out = (
            args.out
            or f"latency-{''.join(c if c.isalnum() else '_' for c in args.model)}-{size}.json"
        )
        table.save(out)
        if args.json:
            print(json.dumps(table.to_dict(), indent=2))
        else:
            echo(args, f"{args.model} @ {size}: {len(table.layers)} layers, dense "
                         f"{format_value('latency', table.info['dense_model_s'])} "
                         f"at batch {table.batch}, {table.threads} threads, "
                         f"other jobs busy {table.info['others_cores']} cores; "
                         f"wrote {out}")  # fmt: skip
        return 0


class Export(Command):
    name, help = "export", "convert a run's model.pt2 to ONNX or compile it with AOTInductor"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", help="a run directory holding model.pt2")
        p.add_argument("--onnx", action="store_true", help="write RUN/model.onnx (dynamic batch), "
                       "checked against model.pt2 with onnxruntime")  # fmt: skip
        p.add_argument("--aoti", action="store_true", help="write RUN/model.aoti.pt2: model.pt2 "
                       "compiled for this CPU by AOTInductor (needs a C++ compiler), checked and "
                       "timed against it")  # fmt: skip
        p.add_argument("--out", help="file to write (default: RUN/model.onnx, RUN/model.aoti.pt2;"
                       " with one format only)")  # fmt: skip
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        if not (args.onnx or args.aoti):
            raise UsageError("choose a format to export to: pass --onnx or --aoti (or both)")
        if args.out and args.onnx and args.aoti:
            raise UsageError("--out names one file: export one format at a time with it")
        reports: dict[str, Any] = {}
        if args.onnx:
            from autoprune.export.onnx import export_onnx

            reports["onnx"] = export_onnx(args.run, args.out)
        if args.aoti:
            from autoprune.export.compiled import compile_program

            reports["aoti"] = compile_program(args.run, args.out)
        if args.json:
            print(json.dumps(reports if len(reports) > 1 else next(iter(reports.values())),
                             indent=2))  # fmt: skip
            return 0
        if "onnx" in reports:
            r = reports["onnx"]
            diff = max(r["max_abs_diff"].values())
            print(f"wrote {r['onnx']} ({r['bytes']:,} bytes); outputs match model.pt2 within "
                  f"{diff:.2g}")  # fmt: skip
        if "aoti" in reports:
            r = reports["aoti"]
            ms = {k: 1e3 * v for k, v in r["latency_s"].items()}
            print(f"wrote {r['aoti']} ({r['bytes']:,} bytes, compiled in {r['compile_s']:.0f} s); "
                  f"outputs match model.pt2 within {max(r['max_rel_diff'].values()):.2g} of their "
                  f"scale; {ms['model.aoti.pt2']:.3g} ms against model.pt2's "
                  f"{ms['model.pt2']:.3g} ms ({r['speedup']:.2f}x; {r['timed']})")  # fmt: skip
        return 0


class Dashboard(Command):
    name, help = "dashboard", "browse a run's Optuna study in optuna-dashboard (bound to 127.0.0.1)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("run", nargs="?", help="run directory of `autoprune search --method optuna`")
        p.add_argument(
            "--storage", metavar="URL", help="an Optuna storage URL instead of (or besides) RUN"
        )
        p.add_argument("--port", type=int, default=8080)
        p.add_argument(
            "--screenshot",
            metavar="FILE.png",
            help="render the study in headless Chromium, save the PNG and exit",
        )
        p.add_argument("--browser", help="with --screenshot: the Chromium executable")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.pipeline.dashboard import screenshot, serve

        if args.screenshot:
            path = screenshot(args.run, args.screenshot, storage=args.storage, browser=args.browser)
            print(f"wrote {path}")
            return 0
        serve(args.run, storage=args.storage, port=args.port)
        return 0


class Bench(Command):
    name, help = "bench", "run a named benchmark and write results/NAME/ (README table, runs)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from autoprune.bench import NAMES

        p.add_argument("benchmark", help=" | ".join(NAMES))
        p.add_argument("--data-dir", help="folder holding the dataset (torchvision layout)")
        p.add_argument("--out", help="default: results/NAME")
        p.add_argument(
            "--quick", action="store_true", help="embedded digits data and an epoch or two"
        )
        p.add_argument(
            "--only", help="comma-separated run names (default: all); finished runs are reused"
        )
        p.add_argument("--force", action="store_true", help="redo finished runs")
        p.add_argument("--quiet", action="store_true")
        p.add_argument("--json", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from autoprune.bench import BenchConfig, run_bench

        only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
        cfg = BenchConfig(data_dir=args.data_dir, out=args.out, quick=args.quick, only=only,
                          force=args.force, progress=not args.quiet)  # fmt: skip
        summary = run_bench(args.benchmark, cfg)
        if args.json:
            print(json.dumps(summary, indent=2, default=float))
        else:
            echo(args, f"wrote {args.out or 'results/' + args.benchmark}/README.md "
                       f"({_counted(summary)})")  # fmt: skip
        return 0


def _counted(summary: dict[str, Any]) -> str:
    """What a benchmark's summary holds: its runs, or the budgets of an allocation benchmark."""
    if isinstance(summary.get("runs"), list):
        return f"{len(summary['runs'])} runs"
    points = summary.get("points") or []
    return f"{len(points)} budget{'s' * (len(points) != 1)} with finished runs"
