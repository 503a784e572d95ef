"""The torchvision-coverage report: summary.json and README.md, from the measured rows only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torchvision

from autoprune.bench.report import write_readme

# The binding budget counts as met "within 1%" when the export keeps at least this share.
TIGHT = 0.49
# Tracing and verification at a model's default input stay under this resident memory (GB).
MEMORY_GB = 4.0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    exported = [r for r in rows if "macs_ratio" in r]
    met = [r for r in exported if r["budget_met"]]
    return {
        "models": len(rows),
        "exported": len(exported),
        "budget_met": len(met),
        "budget_tight": sum(r["macs_ratio"] >= TIGHT for r in met),
        "predicted_equals_measured": sum(r["predicted_equals_measured"] for r in exported),
        "fully_prunable": sum(not r.get("frozen") and "units" in r for r in rows),
        "with_frozen_units": sorted(r["model"] for r in rows if r.get("frozen")),
        "failed": {r["model"]: r["error"] for r in rows if r.get("error")},
        "default_traced": sum("trace_peak_gb" in r.get("default", {}) for r in rows),
        "default_peak_gb": max(_default_peaks(rows).values(), default=None),
        "default_over_memory": sorted(
            m for m, gb in _default_peaks(rows).items() if gb > MEMORY_GB
        ),
        "default_failed": {
            r["model"]: r["default"]["error"] for r in rows if r.get("default", {}).get("error")
        },
    }


def _default_peaks(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Peak memory of tracing + verification at each model's default input, where measured (a
    worker stopped at the memory cap counts as the cap's peak)."""
    return {
        r["model"]: r["default"].get("trace_peak_gb", r["default"].get("peak_gb", 0.0))
        for r in rows
        if "default" in r
    }


def write_report(
    out: Path, rows: list[dict[str, Any]], *, command: str, budget: str, limits: dict[str, Any]
) -> dict[str, Any]:
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    summary = {"summary": summarise(rows), "runs": rows, "command": command, "limits": limits,
               "versions": versions}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    write_readme(out, render(summary, budget))  # and NOTES.md, the hand-written reading
    return summary


def _row(r: dict[str, Any]) -> str:
    frozen = r.get("frozen") or []
    ratio = f"{100 * r['macs_ratio']:.2f}%" if "macs_ratio" in r else "-"
    exact = {True: "yes", False: "**no**"}.get(bool(r.get("predicted_equals_measured")), "-")
    exact = exact if "predicted_equals_measured" in r else "-"
    peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "-"
    trace = f"{r['trace_s']} s, {r['trace_peak_gb']:.2f} GB" if "trace_s" in r else "-"
    d = r.get("default", {})
    default = (
        f"{d['input']}: {d['trace_s']} s, {d['trace_peak_gb']:.2f} GB"
        if "trace_s" in d
        else (f"{d['input']}: {d['error']}" if d else "-")
    )
    note = r.get("error") or (f"{frozen[0]['name']}: {frozen[0]['reason']}" if frozen else "")
    return (
        f"| {r['model']} | {r.get('input', '-')} | {r.get('units', '-')} | {len(frozen)} | "
        f"{ratio} | {exact} | {trace} | {default.replace('|', '/')} | {r.get('search_s', '-')} | "
        f"{r.get('wall_s', '-')} | {peak} | {note.replace('|', '/')} |"
    )


def render(summary: dict[str, Any], budget: str) -> str:
    s, rows = summary["summary"], summary["runs"]
    traced = [r["trace_peak_gb"] for r in rows if "trace_peak_gb" in r]
    failed = "".join(f"\n- {m}: {e}" for m, e in s["failed"].items()) or " none"
    lines = [
        "# torchvision coverage: uniform " + budget + " MACs, --no-prune, every classifier",
        "",
        f"Command: `{summary['command']}` (torch {summary['versions']['torch']}, torchvision "
        f"{summary['versions']['torchvision']}). Each model runs `autoprune search --model M "
        f"--dataset fake --input-size 3xSxS --method uniform --budget-flops {budget} --no-prune` "
        "in its own process (peak resident memory VmHWM from /proc, capped at "
        f"{summary['limits']['memory_gb']:g} GB); the MAC ratio is FlopCounterMode on the exported "
        "model.pt2 against an untouched torchvision model of the same input and classes. "
        "Tracing and verification run first in the worker (their peak memory is the first "
        "column's); the search after them also evaluates the model on a few images.",
        "",
        f"- {s['models']} models; {s['exported']} exported; {s['budget_met']} with the budget met "
        f"({s['budget_tight']} of them at {100 * TIGHT:.0f}% or more of the dense MACs)",
        f"- predicted MACs = measured MACs on {s['predicted_equals_measured']} of {s['exported']}",
        f"- fully prunable (no frozen unit): {s['fully_prunable']}; with frozen units: "
        f"{len(s['with_frozen_units'])} ({', '.join(s['with_frozen_units']) or 'none'})",
        f"- tracing + verification peak memory: at most {max(traced, default=0):.2f} GB at the "
        "inputs above; at each model's default input (224, inception_v3 299; 1000 classes, "
        "its own process): "
        + (
            f"at most {s['default_peak_gb']:.2f} GB over {s['default_traced']} models, over "
            f"{MEMORY_GB:g} GB: {', '.join(s['default_over_memory']) or 'none'}"
            if s["default_peak_gb"] is not None
            else "not measured"
        )
        + "".join(f"; {m} failed: {e}" for m, e in s["default_failed"].items()),
        f"- failed:{failed}",
        "",
        "| model | input | prunable units | frozen | MACs exported / untouched | predicted = "
        "measured | trace + verify (time, peak) | at the default input | search s | wall s | "
        "peak GB | note (error, or the first frozen unit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
        "",
    ]
    return "\n".join(lines)
