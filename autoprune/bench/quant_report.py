"""README.md of `autoprune bench lenet5-mnist-quant`, rendered from its summary.json."""

from __future__ import annotations

from typing import Any


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_quant_readme(s: dict[str, Any]) -> str:
    dense = s["dense"]
    t = s["targets"]
    lines = [
        "# lenet5-mnist-quant",
        "",
        "Written by `autoprune bench`; every number is measured from the run directories in this",
        "folder. Reproduce with:",
        "",
        f"```\n{s['bench_command']}\n```",
        "",
        f"Dense LeNet-5 (Caffe variant, `{dense['checkpoint']}`): "
        f"test accuracy {_pct(dense['test_accuracy'])},",
        f"{dense['weights']:,} conv+linear weights = "
        f"{dense['fp32_weight_bytes']:,} bytes in float32.",
        "",
        "Each run prunes to per-layer keep ratios "
        "(weights kept per layer: conv1 / conv2 / fc1 / fc2)",
        "and gives every kernel (output filter or row) its own bits "
        "from importance quantiles of the",
        "dense weights (`4b` = 4 bits for all kernels of the layer, "
        "`3b:0.5+2b:0.5` = 3 bits for the",
        "half with the larger L2 norms, 2 for the rest); activations stay float. Training is",
        "quantisation-aware and ends with every weight on its kernel's levels; export writes",
        "`model.apq` (format: `autoprune/artifact.py`). "
        "Weight levels are mid-rise ((k + 1/2) s: pruned",
        "zeros live in the sparse index, so 1 bit is a per-kernel binary weight).",
        "",
        "- **storage ratio** = float32 bytes of all conv+linear weights / bytes of `model.apq` on",
        "  disk (header, sparse indices, per-kernel step sizes, codes, biases "
        "and checksum included);",
        "- **weight-data-only ratio** = the same float32 bytes / bytes of the weight codes alone",
        "  (nonzeros x their kernel's bits), ADMM-NN's convention;",
        "- **test acc (apq)** is measured on the model rebuilt from `model.apq` "
        "(`autoprune eval`);",
        "- predicted bytes: the cost model at search time (from per-layer keeps) / exact (from the",
        "  per-kernel nonzero counts) — the exact one equals the file size.",
        "",
        "| run | weights kept per layer | compression | weight bits (rule) | mean bits per layer "
        "| test acc (apq) | vs dense (pts) | model.apq bytes | storage ratio "
        "| weight-data-only ratio | predicted bytes (search / exact) | epochs | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["runs"]:
        name = f"**{r['run']}**" if r["run"] == s["best"] else r["run"]
        kept = " / ".join(f"{c:,}" for c in r["weights_per_layer"])
        mean = " / ".join(f"{b:.2f}" for b in r["mean_weight_bits_per_layer"])
        lines.append(
            f"| {name} | {kept} | {r['compression_ratio']:.1f}x | {r['bits_rule']} | {mean} "
            f"| {_pct(r['artifact_test_accuracy'])} | {r['artifact_delta_points']:+.2f} "
            f"| {r['artifact_bytes']:,} | {r['storage_ratio']:.1f}x "
            f"| {r['weight_data_only_ratio']:,.0f}x "
            f"| {r['predicted_bytes_search']:,.0f} / {r['predicted_bytes_exact']:,} "
            f"| {r['epochs']} "
            f"| {r['wall_time_s'] / 60:.1f} min |"
        )
    ok = [r for r in s["runs"] if r["artifact_delta_points"] >= -s["max_drop_points"]]
    lines += ["", "## Targets", ""]
    lines.append(
        f"- within {s['max_drop_points']} points of dense: "
        + (", ".join(r["run"] for r in ok) if ok else "no run")
    )
    for key, label, who in (
        ("storage_ratio", "storage ratio", "Deep Compression"),
        ("weight_data_only_ratio", "weight-data-only ratio", "ADMM-NN"),
    ):
        hit = [r["run"] for r in ok if r[key] > t[key]]
        any_hit = [r["run"] for r in s["runs"] if r[key] > t[key]]
        lines.append(
            f"- {label} above {who}'s {t[key]:,.0f}x within the accuracy bound: "
            + (
                ", ".join(hit)
                if hit
                else f"no run (at any accuracy: {', '.join(any_hit) or 'none'})"
            )
        )
    if s["best"]:
        lines += [
            "",
            f"Best run: `runs/{s['best']}/model.apq` (every run's artifact is committed).",
        ]
    lines += [
        "",
        "## Commands",
        "",
        "Each run is `autoprune prune` on an allocation (with `weight_bits`) "
        "written by the benchmark:",
        "",
    ]
    lines += [f"- {r['run']}: `{r['command']}`" for r in s["runs"]]
    lines += [
        "",
        "Evaluate an artifact alone: "
        "`autoprune eval results/lenet5-mnist-quant/runs/NAME/model.apq "
        "--dataset mnist --data-dir /work/shared/data`.",
        "",
    ]
    return "\n".join(lines)
