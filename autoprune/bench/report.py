"""A benchmark's README (tables of measured rows and the checks they pass) and its .gitignore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprune.bench.runner import split_seed

NOTES = "NOTES.md"  # a benchmark folder's hand-written notes, appended to its README

# The published LeNet-5 / MNIST numbers of docs/conventions.md that this benchmark compares with.
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


def replicate_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by name with any -seedN suffix removed: a run and its seed replicates."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["run"]):
        groups.setdefault(split_seed(r["run"])[0], []).append(r)
    return groups


def _mean(group: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in group) / len(group)


def _accs(group: list[dict[str, Any]]) -> str:
    """Mean test accuracy, with the per-seed values when there are several."""
    mean = _pct(_mean(group, "test_accuracy"))
    if len(group) == 1:
        return mean
    seeds = " / ".join(f"{100 * r['test_accuracy']:.2f}" for r in group)
    return f"{mean} (mean of {len(group)} seeds: {seeds})"


def _noise(diff: float, groups: list[list[dict[str, Any]]]) -> str:
    """A note when a difference is smaller than the spread between the seeds of one group."""
    spreads = [_spread(g) for g in groups if len(g) > 1]
    if not spreads or abs(diff) >= max(spreads):
        return ""
    spread = 100 * max(spreads)
    return f"; {100 * diff:+.2f} points, within seed noise (seeds differ by up to {spread:.2f})"


def _spread(group: list[dict[str, Any]]) -> float:
    accs = [r["test_accuracy"] for r in group]
    return max(accs) - min(accs)


def checks(summary: dict[str, Any]) -> list[str]:
    """The benchmark's targets, each answered from the rows (seed replicates averaged)."""
    groups = replicate_groups(summary["runs"])
    drop = summary["max_drop_points"]
    lines = []
    within = [
        (n, g)
        for n, g in groups.items()
        if g[0]["backend"] == "reweighted"
        and g[0]["granularity"] == "weight"
        and _mean(g, "delta_points") >= -drop
    ]
    top = max(within, key=lambda ng: ng[1][0]["compression_ratio"], default=None)
    if top is None:
        lines.append(
            f"- reweighted within {drop} points of dense: no run (seeds averaged); "
            "71.2x target not met"
        )
    else:
        name, g = top
        ratio, macs = g[0]["compression_ratio"], g[0]["macs_fraction"]
        lines.append(
            f"- reweighted within {drop} points of dense: up to {ratio:.1f}x ({name}, "
            f"{_accs(g)}, {_pct(macs)} of dense MACs); "
            f"71.2x target {'met' if ratio >= 71.0 else 'not met'}, "
            f"310x target {'met' if ratio >= 310 and macs < 0.07 else 'not met'}"
        )
    dense_macs = summary["dense"]["macs"]
    for name, g in groups.items():
        if g[0]["granularity"] == "channel":
            lines.append(
                f"- structured {name}: the slimmed model executes {g[0]['macs']:,} MACs "
                f"({_pct(g[0]['macs'] / dense_macs)} of dense), test accuracy {_accs(g)}"
            )
    for name, g in groups.items():
        if g[0]["backend"] != "reweighted":
            continue
        for other_name, other in groups.items():
            if other[0]["allocation"] == g[0]["allocation"] and other[0]["backend"] != "reweighted":
                mine, theirs = _mean(g, "test_accuracy"), _mean(other, "test_accuracy")
                verdict = "beats" if mine > theirs else "does not beat"
                lines.append(
                    f"- {name} {verdict} {other_name} at the same allocation: "
                    f"{_accs(g)} vs {_accs(other)}{_noise(mine - theirs, [g, other])}"
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
        "Weights kept per layer are conv1 / conv2 / fc1 / fc2. Compression = all conv+linear "
        "weights",
        "over nonzero ones (biases excluded). MACs kept = nonzero weights x output positions, "
        "summed",
        "(for channel runs the slimmed model executes exactly these). Epochs = pruning + "
        "fine-tuning.",
        "Wall time on this machine's shared CPU. **Bold**: the best run of its backend "
        "(committed).",
        "",
        "| run | backend | granularity | weights kept per layer | compression | test acc "
        "| vs dense (pts) | MACs kept | epochs | wall time |",
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
            f"- training-step overhead of the {ov['backend']} masks "
            f"({ov['granularity']} granularity): "
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
    out += ["", "## Published (docs/conventions.md)", "", REFERENCE]
    return "\n".join(out) + "\n"


def write_readme(out: Path, text: str) -> None:
    """OUT/README.md: the rendered `text`, then OUT/NOTES.md when there is one.

    NOTES.md is the hand-written reading of the numbers; appending it here means a re-render from
    summary.json never loses it.
    """
    notes = out / NOTES
    extra = "\n" + notes.read_text() if notes.is_file() else ""
    (out / "README.md").write_text(text + extra)


def write_gitignore(out: Path, best: list[str]) -> None:
    """Commit the dense run and the best run of each backend; pruned checkpoints stay local.

    The exported model.pt2 is the artifact; a pruned checkpoint.pt stores its zeros densely and
    is as big as the dense one.
    """
    lines = [
        "# written by autoprune bench",
        "runs/*",
        *[f"!runs/{b}/" for b in best],
        "runs/*/checkpoint.pt",
        "runs/*/trials.json",
        "runs/*/epochs/",
    ]
    (out / ".gitignore").write_text("\n".join(lines) + "\n")
