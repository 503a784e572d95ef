"""A benchmark's README (tables of measured rows and the checks they pass) and its .gitignore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REFERENCE = """\
| method | weights kept | ratio | accuracy |
|---|---|---|---|
| Han et al. 2015 (magnitude, iterative) | 36K | 12x | 99.23% |
| ADMM (Zhang et al. 2018), per layer 20 / 8 / 0.9 / 7 % | 6.05K | 71.2x | 99.2% |
| ADMM-NN (Ren et al. 2019) | | 85x | no loss |
| Unified / progressive ADMM (Ye et al.) | | 167x | no loss |
| AutoPrune (Xiao et al. 2019), 7% FLOPs | | 310x | no loss |
"""


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _row(r: dict[str, Any], best: set[str]) -> str:
    kept = " / ".join(f"{k:,}" for k in r["weights_per_layer"])
    name = f"**{r['run']}**" if r["run"] in best else r["run"]
    return (
        f"| {name} | {r['backend']} | {r['granularity']} | {kept} | {r['compression_ratio']:.1f}x "
        f"| {_pct(r['test_accuracy'])} | {r['delta_points']:+.2f} | {r['nonzero_macs']:,} "
        f"({_pct(r['macs_fraction'])}) | {r['epochs']} | {r['wall_time_s'] / 60:.1f} min |"
    )


def checks(summary: dict[str, Any]) -> list[str]:
    """The benchmark's targets, each answered from the rows."""
    rows = {r["run"]: r for r in summary["runs"]}
    drop = summary["max_drop_points"]
    lines = []
    within = [r for r in rows.values() if r["backend"] == "reweighted" and r["granularity"] == "weight"
              and r["delta_points"] >= -drop]  # fmt: skip
    top = max(within, key=lambda r: r["compression_ratio"], default=None)
    if top is None:
        lines.append(f"- reweighted within {drop} points of dense: no run yet")
    else:
        lines.append(
            f"- reweighted within {drop} points of dense: up to {top['compression_ratio']:.1f}x "
            f"({top['run']}, {_pct(top['macs_fraction'])} of dense MACs); "
            f"71.2x target {'met' if top['compression_ratio'] >= 71.0 else 'not met'}, "
            f"310x target {'met' if top['compression_ratio'] >= 310 and top['macs_fraction'] < 0.07 else 'not met'}"
        )
    dense_macs = summary["dense"]["macs"]
    for name, r in sorted(rows.items()):
        if r["granularity"] == "channel":
            lines.append(
                f"- structured {name}: the slimmed model executes {r['macs']:,} MACs "
                f"({_pct(r['macs'] / dense_macs)} of dense), test accuracy {_pct(r['test_accuracy'])}"
            )
    for name, r in sorted(rows.items()):
        if r["backend"] != "reweighted":
            continue
        for other in sorted(rows.values(), key=lambda x: x["run"]):
            if other["allocation"] == r["allocation"] and other["backend"] != "reweighted":
                verdict = (
                    "beats" if r["test_accuracy"] > other["test_accuracy"] else "does not beat"
                )
                lines.append(
                    f"- {name} {verdict} {other['run']} at the same allocation: "
                    f"{_pct(r['test_accuracy'])} vs {_pct(other['test_accuracy'])}"
                )
    return lines


def render_readme(summary: dict[str, Any]) -> str:
    dense = summary["dense"]
    best = set(summary["best"])
    out = [
        f"# {summary['benchmark']}"
        + (" (quick mode: digits, not MNIST)" if summary["quick"] else ""),
        "",
        "Written by `autoprune bench`; every number below is measured from the run directories in",
        "this folder (nonzero weights counted in each exported checkpoint). Reproduce with:",
        "",
        "```",
        summary["bench_command"],
        "```",
        "",
        f"Dense LeNet-5 (Caffe variant): test accuracy {_pct(dense['test_accuracy'])}, "
        f"{dense['weights']:,} weights, {dense['macs']:,} MACs, {dense['epochs']} epochs in "
        f"{dense['wall_time_s'] / 60:.1f} min, trained by `{summary['dense_command']}`.",
        "",
        "## Runs",
        "",
        "Weights kept per layer are conv1 / conv2 / fc1 / fc2. Compression = all conv+linear weights",
        "over nonzero ones (biases excluded). MACs kept = nonzero weights x output positions, summed",
        "(for channel runs the slimmed model executes exactly these). Epochs = pruning + fine-tuning.",
        "Wall time on this machine's shared CPU. **Bold**: the best run of its backend (committed).",
        "",
        "| run | backend | granularity | weights kept per layer | compression | test acc | vs dense (pts) "
        "| MACs kept | epochs | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[_row(r, best) for r in summary["runs"]],
        "",
        "## Targets",
        "",
        *checks(summary),
    ]
    ov = summary.get("overhead")
    if ov:
        out += [
            f"- training-step overhead of the {ov['backend']} masks ({ov['granularity']} granularity): "
            f"{ov['ratio']:.2f}x a dense step ({1e3 * ov['masked_step_s']:.1f} ms vs "
            f"{1e3 * ov['dense_step_s']:.1f} ms, median of {ov['rounds']} alternating blocks of "
            f"{ov['steps']} steps, batch {ov['batch_size']}, {ov['threads']} threads, one process)",
        ]
    out += [
        "",
        "## Commands",
        "",
        "Each run is `autoprune prune` on an allocation written by the benchmark:",
        "",
    ]
    out += [f"- {r['run']}: `{r['command']}`" for r in summary["runs"]]
    out += ["", "## Published (DESIGN.md)", "", REFERENCE]
    return "\n".join(out) + "\n"


def write_gitignore(out: Path, best: list[str]) -> None:
    """Commit the dense run and the best run of each backend; pruned checkpoints stay local.

    The exported model.pt2 is the artifact; a pruned checkpoint.pt stores its zeros densely and
    is as big as the dense one.
    """
    lines = ["# written by autoprune bench", "runs/*", *[f"!runs/{b}/" for b in best],
             "runs/*/checkpoint.pt", "runs/*/trials.json", "runs/*/epochs/"]  # fmt: skip
    (out / ".gitignore").write_text("\n".join(lines) + "\n")
